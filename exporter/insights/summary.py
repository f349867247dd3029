"""The run.summary and alert.* events: per Assignment, keyed by stable event_ids, no run_id."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from exporter.insights.aggregates import Aggregate
from exporter.insights.alerts import FAILURE_RATE, Transition
from exporter.transform import events as run_events
from transport import timestamps


def _time(moment: float) -> str:
    return timestamps.format_utc(datetime.fromtimestamp(moment, tz=UTC))


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summary_event_id(team: str, agent: str, window: str, end: float) -> str:
    return f"summary:{team}:{agent}:{window}:{int(end)}"


def alert_event_id(kind: str, team: str, agent: str, window: str, since: float, started: bool) -> str:
    return f"alert:{kind}:{team}:{agent}:{window}:{int(since)}:{'started' if started else 'cleared'}"


def summary_event(agg: Aggregate, window: str, start: float, end: float, exported_at: float) -> dict[str, Any]:
    return {
        "event_id": summary_event_id(agg.team_id, agg.agent_id, window, end),
        "event": run_events.EVENT_SUMMARY,
        "team_id": agg.team_id,
        "agent_id": agg.agent_id,
        "window": window,
        "window_start": _time(start),
        "window_end": _time(end),
        "jobs": agg.jobs,
        "statuses": dict(sorted(agg.statuses.items())),
        "failed": agg.failed,
        "failure_rate": _round(agg.failure_rate),
        "retried_success": agg.retried_success,
        "duration_count": len(agg.durations),
        "duration_avg_seconds": agg.duration_avg,
        "duration_p50_seconds": agg.duration_p50,
        "duration_p95_seconds": agg.duration_p95,
        "duration_max_seconds": agg.duration_max,
        "exported_at": _time(exported_at),
    }


def alert_event(transition: Transition, exported_at: float) -> dict[str, Any]:
    episode = transition.episode
    name = run_events.EVENT_ALERT_STARTED if transition.started else run_events.EVENT_ALERT_CLEARED
    what = "failure rate" if episode.kind == FAILURE_RATE else "p95 duration (s)"
    verb = "above" if transition.started else "back below"
    return {
        "event_id": alert_event_id(
            episode.kind, episode.team_id, episode.agent_id, episode.window, episode.since, transition.started
        ),
        "event": name,
        "alert": episode.kind,  # failure_rate or latency
        "team_id": episode.team_id,
        "agent_id": episode.agent_id,
        "window": episode.window,
        "value": _round(episode.value),
        "threshold": _round(episode.threshold),
        "episode_started_at": _time(episode.since),
        "example_run_ids": list(transition.examples),
        "message": f"{what} of Assignment {episode.agent_id} over {episode.window} is {_round(episode.value)}, "
        f"{verb} {_round(episode.threshold)}",
        "exported_at": _time(exported_at),
    }
