"""What the pipeline (`exporter`) and the backends (`sinks`) both speak, one job per module:

- `errors`: a transport failure as one short line (host:port and the cause);
- `ratelimit`: Retry-After parsing and the token bucket that paces requests;
- `timestamps`: RFC 3339 times as the Duvo API and the backends exchange them;
- `durations`: durations as written in the config (30s, 5m, 17h).

It imports neither package, so `sinks` depends on nothing in `exporter`.
"""
