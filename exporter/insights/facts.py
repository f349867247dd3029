"""What the insights keep of one finished Job, taken from its run.finished event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exporter.state.store import RunFact
from transport import timestamps

UNKNOWN_AGENT = "unknown"


def recovered(event: Mapping[str, Any]) -> bool:
    """True for a Job that retried and then succeeded, as the diagnosis says (False without one)."""
    diagnosis = event.get("diagnosis")
    return isinstance(diagnosis, Mapping) and diagnosis.get("recovered") is True


def fact_from_event(event: Mapping[str, Any], read_at: float) -> RunFact:
    """The fact of a run.finished event; a Job without completed_at counts at ``read_at``, and
    one whose completed_at is ahead of ``read_at`` (clock skew) at ``read_at``: a time in the
    future would keep it in every window for too long."""
    moment = timestamps.parse(event.get("completed_at"))
    duration = event.get("duration_seconds")
    return RunFact(
        run_id=str(event["run_id"]),
        team_id=str(event.get("team_id") or ""),
        agent_id=str(event.get("agent_id") or UNKNOWN_AGENT),
        status=str(event.get("status")),
        completed_at=min(moment.timestamp(), read_at) if moment is not None else read_at,
        duration=float(duration) if isinstance(duration, int | float) and duration >= 0 else None,
        recovered=recovered(event),
    )
