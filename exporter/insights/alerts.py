"""Alert episodes with hysteresis: one alert.started when a value goes above its threshold, one
alert.cleared when it falls below threshold x (1 - hysteresis), never one per pass.

Two kinds per Assignment and window:
- ``failure_rate``: failed / all Jobs in the window, with at least ``min_jobs`` Jobs (the guide's
  "above 10% for a well-established Assignment"). The threshold is the configured rate.
- ``latency``: the p95 duration in the window against the p95 of the baseline span just before
  it, both with at least ``min_jobs`` durations. The threshold is baseline p95 x multiple.

An active episode with too few Jobs to judge stays as it is; one whose window holds no Job at
all clears (value 0): nothing is failing or slow any more.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.insights.aggregates import Aggregate
from exporter.state.store import AlertEpisode

FAILURE_RATE = "failure_rate"
LATENCY = "latency"


@dataclass(frozen=True)
class Reading:
    """One evaluation: the value and threshold now, or None when there is too little to judge."""

    kind: str
    team_id: str
    agent_id: str
    window: str
    value: float | None
    threshold: float | None
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class Transition:
    episode: AlertEpisode
    started: bool  # False: cleared
    examples: tuple[str, ...]


def failure_reading(
    agg: Aggregate | None, team: str, agent: str, window: str, threshold: float, min_jobs: int, examples: int
) -> Reading:
    if agg is None or agg.jobs == 0:
        return Reading(FAILURE_RATE, team, agent, window, 0.0, threshold)
    if agg.jobs < min_jobs:
        return Reading(FAILURE_RATE, team, agent, window, None, threshold)
    return Reading(FAILURE_RATE, team, agent, window, agg.failure_rate, threshold, tuple(agg.newest_failed(examples)))


def latency_reading(
    agg: Aggregate | None,
    baseline: Aggregate | None,
    team: str,
    agent: str,
    window: str,
    multiple: float,
    min_jobs: int,
    examples: int,
) -> Reading:
    if agg is None or not agg.durations:
        return Reading(LATENCY, team, agent, window, 0.0, None)
    if len(agg.durations) < min_jobs or baseline is None or len(baseline.durations) < min_jobs:
        return Reading(LATENCY, team, agent, window, None, None)
    base = baseline.duration_p95
    assert base is not None
    return Reading(LATENCY, team, agent, window, agg.duration_p95, base * multiple, tuple(agg.slowest(examples)))


def decide(
    reading: Reading, active: AlertEpisode | None, hysteresis: float, now: float
) -> Transition | AlertEpisode | None:
    """A Transition to emit, an updated active episode (same episode, new value) or None."""
    value, threshold = reading.value, reading.threshold
    if active is None:
        if value is not None and threshold is not None and value > threshold:
            episode = AlertEpisode(
                reading.kind, reading.team_id, reading.agent_id, reading.window, now, value, threshold
            )
            return Transition(episode, True, reading.examples)
        return None
    if value is None:
        return None  # too few Jobs to judge: the episode goes on
    clear_below = (threshold if threshold is not None else active.threshold) * (1 - hysteresis)
    if (value == 0.0 and threshold is None) or value < clear_below:
        episode = AlertEpisode(
            active.kind, active.team_id, active.agent_id, active.window, active.since, value,
            threshold if threshold is not None else active.threshold,
        )  # fmt: skip
        return Transition(episode, False, reading.examples)
    if threshold is None:
        return None
    return AlertEpisode(active.kind, active.team_id, active.agent_id, active.window, active.since, value, threshold)
