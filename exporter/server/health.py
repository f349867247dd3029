"""Readiness: the last pass succeeded within 3 intervals and no sink is stopped."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from exporter import jsoncodec
from exporter.config import ScheduleSettings
from exporter.state.pass_record import LAST_PASS_KEY, PassRecord
from exporter.state.store import StateStore

INTERVALS = 3  # a pass may be late by this many intervals before the exporter is not ready


def interval_seconds(schedule: ScheduleSettings, now: datetime | None = None) -> float:
    """The time between passes; for a cron schedule, the gap between its next two firings."""
    if schedule.interval_seconds:
        return schedule.interval_seconds
    from exporter.scheduler import trigger_for

    trigger = trigger_for(schedule)
    now = now or datetime.now(UTC)
    first = trigger.get_next_fire_time(None, now)
    if first is None:
        return 300.0
    second = trigger.get_next_fire_time(first, first + timedelta(seconds=1))
    return (second - first).total_seconds() if second is not None else 300.0


@dataclass(frozen=True)
class Readiness:
    ready: bool
    reason: str | None = None

    def body(self) -> bytes:
        payload = {"ready": True} if self.ready else {"ready": False, "reason": self.reason}
        return jsoncodec.dumps(payload).encode() + b"\n"


def readiness(
    store: StateStore, interval: float, sinks: Sequence[str], now: float | None = None, since: float = 0.0
) -> Readiness:
    """``since``: when this process started; a pass recorded by an earlier process does not count."""
    now = time.time() if now is None else now
    raw = store.meta(LAST_PASS_KEY)
    record = PassRecord.from_dict(jsoncodec.loads(raw)) if raw is not None else None
    if record is None or (record.finished_at or 0.0) < since:
        return Readiness(False, "no pass has finished yet")
    if record.outcome == "failed":
        return Readiness(False, f"the last pass failed: {record.error or 'unknown error'}")
    age = now - (record.finished_at or 0.0)
    if age > INTERVALS * interval:
        return Readiness(
            False, f"the last pass finished {age:.0f}s ago, more than {INTERVALS} intervals ({interval:.0f}s each)"
        )
    wanted = set(sinks)
    for cursor in store.cursors():
        if cursor.sink in wanted and cursor.stopped_reason:
            return Readiness(False, f"sink {cursor.sink} is stopped: {' '.join(cursor.stopped_reason.split())}")
    return Readiness(True)
