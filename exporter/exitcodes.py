"""Process exit codes (documented in the README and `duvo-exporter --help`)."""

OK = 0
INTERNAL = 1  # a bug: please report it with the log
CONFIG = 2  # bad command line or configuration; nothing was done
STATE = 3  # the state file cannot be used (corrupt, foreign, newer, unwritable); nothing was changed
DUVO_AUTH = 4  # the Duvo API rejected the key (401/403); fix duvo.api_key
DUVO_UNAVAILABLE = 5  # the Duvo API stayed unavailable after retries; state is consistent, run again
SINK = 6  # a sink could not deliver (its backlog is kept) or failed `check --connect`
DEAD_LETTERS = 7  # `once`/`replay`: a backend rejected events permanently (see status --dead-letters)
INTERRUPTED = 130  # `backfill`/`replay --since` stopped by SIGINT/SIGTERM: the same command resumes

DESCRIPTION = """exit codes:
  0  success
  1  internal error (a bug; please report it with the log)
  2  bad command line or configuration (one line per problem, naming the YAML path)
  3  state file unusable: corrupt, another application's, newer version, unwritable
  4  the Duvo API rejected the API key (401/403)
  5  the Duvo API stayed unavailable after retries (state is consistent; run again)
  6  a sink could not deliver (its backlog is kept) or failed check --connect
  7  a backend rejected events permanently: they are dead letters (once, replay;
     see status --dead-letters; once --dead-letter-exit-code 0 accepts them)
  130  backfill or replay --since stopped by SIGINT/SIGTERM (run it again to resume)
 (a closed stdout, as in `status --json | head`, ends a command quietly)"""
