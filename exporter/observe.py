"""Observer: what the pipeline reports as it works (requests, passes, deliveries, webhooks).

The pipeline calls these hooks and nothing else; `exporter.server.metrics.PrometheusObserver`
turns them into Prometheus metrics when the daemon's server is on. The default does nothing, so
`once`, the tests and the benchmarks carry no metrics machinery.
"""

from __future__ import annotations


class Observer:
    """No-op hooks. Implementations must be thread-safe and must never raise."""

    def duvo_request(self, endpoint: str, code: str) -> None:
        """One HTTP attempt to the Duvo API: ``endpoint`` a template (``/runs/{run_id}``), never an
        id; ``code`` the HTTP status or ``error`` (no response: connection error, timeout)."""

    def rate_limited(self) -> None:
        """The Duvo API answered 429."""

    def rate_limit_waited(self, seconds: float) -> None:
        """Seconds spent waiting on the rate limit (pacing and Retry-After)."""

    def pass_finished(self, outcome: str, seconds: float) -> None:
        """An extraction pass ended: ``ok``, ``incomplete`` or ``failed``."""

    def jobs_extracted(self, count: int) -> None:
        """Events written to the outbox (by a pass or a webhook)."""

    def sink_sent(self, sink: str, count: int) -> None:
        """Events a backend accepted."""

    def sink_retried(self, sink: str, count: int) -> None:
        """Events of a batch that failed and will be sent again."""

    def sink_dead_lettered(self, sink: str, count: int) -> None:
        """Events a backend rejected permanently."""

    def webhook_received(self, outcome: str) -> None:
        """A POST /webhooks/duvo: ``accepted``, ``unauthorized``, ``too_large`` or ``malformed``."""


NULL_OBSERVER = Observer()
