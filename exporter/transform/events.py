"""RunEvent: the one canonical event built from a Duvo run record, keyed by run_id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from transport import timestamps

TERMINAL_STATUSES = frozenset({"completed", "failed", "stopped", "interrupted"})
KNOWN_OPEN_STATUSES = frozenset({"pending", "starting", "running", "waiting"})

EVENT_FINISHED = "run.finished"  # the Job reached a terminal status
EVENT_WAITING = "run.waiting"  # the Job paused for human input (emit: transitions)
# Insights (exporter/insights): per Assignment, not per Job; they carry no run_id. Sinks get them
# only when their filter.events names them.
EVENT_SUMMARY = "run.summary"  # health aggregates of an Assignment over a window, once per step
EVENT_ALERT_STARTED = "alert.started"  # an Assignment's failure rate or p95 duration crossed a threshold
EVENT_ALERT_CLEARED = "alert.cleared"  # ... and went back below it (with hysteresis)
JOB_EVENTS = frozenset({EVENT_FINISHED, EVENT_WAITING})
INSIGHT_EVENTS = frozenset({EVENT_SUMMARY, EVENT_ALERT_STARTED, EVENT_ALERT_CLEARED})


@dataclass(frozen=True)
class RunEvent:
    event_id: str  # "<run_id>:<status>": the same outcome always has the same id
    event: str
    run_id: str
    team_id: str
    agent_id: str | None
    status: str
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    duration_seconds: float | None
    pending_human_request: Any
    run: dict[str, Any]  # the untouched source record
    exported_at: str
    # What the message log says about the Job (exporter/transform/diagnosis.py); {"state": "skipped"}
    # when not read. Extraction fills it in for the Jobs it diagnoses.
    diagnosis: dict[str, Any] | None = None
    issues: dict[str, Any] | None = None  # Duvo's quality flags: {flagged, severity}

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event": self.event,
            "run_id": self.run_id,
            "team_id": self.team_id,
            "agent_id": self.agent_id,
            "status": self.status,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "duration_seconds": self.duration_seconds,
            "pending_human_request": self.pending_human_request,
            "run": self.run,
            "exported_at": self.exported_at,
            "diagnosis": self.diagnosis if self.diagnosis is not None else {"state": "skipped"},
            "issues": self.issues if self.issues is not None else issues_of(self.run),
        }


ISSUE_SEVERITIES = ("low", "medium", "critical")


def issues_of(run: dict[str, Any]) -> dict[str, Any]:
    """``{flagged, severity}`` from the record's ``has_issues`` / ``issue_severity`` (the fields the
    list filters of the same names select on); null where the record does not say."""
    flagged = run.get("has_issues")
    severity = run.get("issue_severity")
    severity = severity if isinstance(severity, str) and severity else None
    if not isinstance(flagged, bool):
        flagged = True if severity is not None else None
    return {"flagged": flagged, "severity": severity if flagged is not False else None}


def duration_seconds(started_at: datetime | None, completed_at: datetime | None) -> float | None:
    if started_at is None or completed_at is None:
        return None
    return round((completed_at - started_at).total_seconds(), 3)


def build(
    run: dict[str, Any],
    team_id: str,
    event: str,
    exported_at: str | datetime,
    event_id: str | None = None,
    created_at: str | None = None,
    diagnosis: dict[str, Any] | None = None,
) -> RunEvent:
    """Extraction passes ``exported_at`` and ``created_at`` already normalized (formatted once per
    page and per row: this is the hot path); other callers may pass a datetime."""
    if isinstance(exported_at, datetime):
        exported_at = timestamps.format_utc(exported_at)
    run_id = str(run["id"])
    status = str(run.get("status"))
    started, started_text = timestamps.read(run.get("started_at"))
    completed, completed_text = timestamps.read(run.get("completed_at"))
    agent_id = run.get("agent_id")
    return RunEvent(
        event_id=event_id or f"{run_id}:{status}",
        event=event,
        run_id=run_id,
        team_id=str(run.get("team_id") or team_id),
        agent_id=str(agent_id) if agent_id is not None else None,
        status=status,
        created_at=created_at if created_at is not None else timestamps.normalize(run.get("created_at")),
        started_at=started_text,
        completed_at=completed_text,
        duration_seconds=duration_seconds(started, completed),
        pending_human_request=run.get("pending_human_request"),
        run=run,
        exported_at=exported_at,
        diagnosis=diagnosis,
        issues=issues_of(run),
    )
