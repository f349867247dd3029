"""`replay --sink NAME --since T`: send one sink again what it was sent from T on.

Two parts, neither of which moves any cursor:

- Events still in the outbox, enqueued at or after T, that the sink has had already (at or
  before its cursor) are enqueued again as copies for that sink only (one per event_id). Other
  sinks skip the copies (they count as filtered there), so their cursors and backlogs are unchanged.
  Events the sink has not had yet are left alone: it receives them anyway.
- If the outbox no longer holds everything since T (delivered events are pruned), the Jobs
  created from T up to the oldest event still held are re-exported from the API, as a backfill
  for that sink does (exporter/source/backfill.py). An event_id the sink is still to receive (from the
  re-export, or a copy not delivered yet) is not copied, so running it again adds no repeats.

Then the sink's backlog is delivered, as `once` does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from exporter import exitcodes
from exporter.config import Config
from exporter.delivery.worker import drain_workers
from exporter.source.backfill import BackfillPlan, Progress, delivery_code, list_windows
from transport import timestamps

log = structlog.get_logger(__name__)


def run_replay_since(config: Config, sink: str, since: datetime, error: Callable[[str], None]) -> int:
    from exporter.pipeline import Exporter
    from exporter.scheduler import install_stop_handlers
    from exporter.source.duvo_client import DuvoAuthError, DuvoError

    stop = threading.Event()
    install_stop_handlers(stop)
    exporter = Exporter(config, command="replay")
    try:
        store = exporter.store
        targets = [w for w in exporter.workers if w.name == sink]
        since_text = timestamps.format_utc(since)
        low, _ = store.outbox_bounds()
        oldest = store.oldest_held_enqueued_at()
        code = exitcodes.OK
        reexported = 0
        outcome = "done"
        # Delivered events are pruned: if some were and the outbox starts after T, the gap
        # [T, oldest held) is read from the API again.
        if low > 1 and (oldest is None or oldest > since.timestamp()):
            cutoff = datetime.fromtimestamp(oldest, tz=UTC) if oldest is not None else timestamps.now()
            plan = BackfillPlan(
                since=since_text, until=timestamps.format_utc(cutoff), sink=sink, restart=True, kind="replay"
            )
            log.info(
                "part of the window is no longer in the outbox; re-exporting it from the API",
                sink=sink,
                since=since_text,
                until=plan.until,
            )
            with Progress() as progress:
                try:
                    outcome = list_windows(exporter, plan, stop, progress)
                except DuvoAuthError as exc:
                    error(str(exc))
                    code = exitcodes.DUVO_AUTH
                except DuvoError as exc:
                    error(f"re-export incomplete (what was read is kept and is delivered now): {exc}")
                    code = exitcodes.DUVO_UNAVAILABLE
            reexported = sum(r.events for r in plan.results)
            if outcome == "done":  # a replay lists its window afresh each time: nothing to resume
                for result in plan.results:
                    store.forget_backfill(result.backfill.name)
        copied = 0
        if outcome == "done" and code == exitcodes.OK:
            copied = store.copy_to_sink(sink, enqueued_since=since.timestamp())
        outcomes = drain_workers(targets, stop)
        code = delivery_code(targets, outcomes, code, error)
        if outcome == "stop" or stop.is_set():
            error(f"replay interrupted; run it again (duvo-exporter replay --sink {sink} --since {since_text})")
            return exitcodes.INTERRUPTED if code == exitcodes.OK else code
        if outcome == "outbox_full":
            error("the outbox stayed full (a sink cannot keep up); run the replay again later")
            code = code or exitcodes.SINK
        print(
            f"replay to {sink} since {since_text}: {copied} event(s) from the outbox, "
            f"{reexported} re-exported from the API"
        )
        return code
    finally:
        exporter.close()
