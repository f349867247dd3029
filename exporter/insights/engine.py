"""InsightEngine: once per pass, the summaries that are due and the alert transitions, enqueued
in one transaction with the state that records them (StateStore.commit_insights).

Summaries: each window has a step (5m for 1h, 1h for 24h by default). When a step boundary
``end`` has passed since the last summary of an Assignment and window, one run.summary covers
``[end - window, end)``, with event_id ``summary:<team>:<agent>:<window>:<end>``. After a pause
longer than a step only the latest step is summarised. A Job read after its step ended is
counted by later steps only.

Alerts: evaluated over ``[now - window, now]`` at every pass (the baseline of a latency alert
is the ``baseline`` span before that). Active episodes live in the state, so a restart neither
repeats nor loses them; event_ids name the episode's start.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from exporter import jsoncodec
from exporter.config import InsightSettings
from exporter.insights import alerts
from exporter.insights.aggregates import aggregate
from exporter.insights.summary import alert_event, summary_event
from exporter.state.store import AlertEpisode, StateStore

log = structlog.get_logger(__name__)


@dataclass
class InsightReport:
    summaries: int = 0
    started: int = 0
    cleared: int = 0


class InsightEngine:
    def __init__(
        self,
        store: StateStore,
        settings: InsightSettings,
        targets: Mapping[str, Sequence[str]],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``targets``: event type -> the sinks whose filter.events asks for it. The events are
        enqueued for those sinks only (one outbox row each); with none, the state still moves."""
        self.store = store
        self.settings = settings
        self.targets = {kind: list(sinks) for kind, sinks in targets.items()}
        self.clock = clock

    def _enqueue(self, events: list[tuple[str, str, str]], event: dict[str, Any]) -> None:
        body = jsoncodec.dumps(event)
        for sink in self.targets.get(event["event"], ()):
            events.append((event["event_id"], body, sink))

    def evaluate(self) -> InsightReport:
        settings = self.settings
        now = self.clock()
        horizon = settings.horizon_seconds
        if not settings.enabled:
            # Facts are recorded with every run.finished all the same (the metrics count them);
            # only their pruning goes on.
            self.store.prune_facts(now - horizon - 3600)
            return InsightReport()
        rows = self.store.fact_rows(now - horizon, math.inf)
        last_ends = self.store.summary_ends()
        active = self.store.alert_episodes()
        report = InsightReport()
        events: list[tuple[str, str, str]] = []
        summaries: list[tuple[str, str, str, float]] = []
        started: list[AlertEpisode] = []
        updated: list[AlertEpisode] = []
        cleared: list[tuple[str, str, str, str]] = []
        baseline = float(horizon - max(w for _, w, _ in settings.window_seconds))
        for name, window, step in settings.window_seconds:
            # Summaries, at the last step boundary.
            end = math.floor(now / step) * step
            for (team, agent), agg in sorted(aggregate(rows, end - window, end).items()):
                if last_ends.get((team, agent, name), -math.inf) >= end:
                    continue
                event = summary_event(agg, name, end - window, end, now)
                self._enqueue(events, event)
                summaries.append((team, agent, name, end))
                report.summaries += 1
            # Alerts, over the window ending now.
            current = aggregate(rows, now - window)
            before = aggregate(rows, now - window - baseline, now - window)
            keys = set(current) | {(e.team_id, e.agent_id) for e in active.values() if e.window == name}
            for team, agent in sorted(keys):
                agg = current.get((team, agent))
                readings = (
                    alerts.failure_reading(
                        agg, team, agent, name, settings.failure_threshold, settings.min_jobs, settings.examples
                    ),
                    alerts.latency_reading(
                        agg,
                        before.get((team, agent)),
                        team,
                        agent,
                        name,
                        settings.latency_multiple,
                        settings.min_jobs,
                        settings.examples,
                    ),
                )
                for reading in readings:
                    key = (reading.kind, team, agent, name)
                    outcome = alerts.decide(reading, active.get(key), settings.hysteresis, now)
                    if isinstance(outcome, alerts.Transition):
                        event = alert_event(outcome, now)
                        self._enqueue(events, event)
                        if outcome.started:
                            started.append(outcome.episode)
                            report.started += 1
                        else:
                            cleared.append(key)
                            report.cleared += 1
                        (log.warning if outcome.started else log.info)(
                            event["message"], alert=event["event"], event_id=event["event_id"]
                        )
                    elif outcome is not None:
                        updated.append(outcome)
        self.store.commit_insights(
            events,
            summaries=summaries,
            started=started,
            updated=updated,
            cleared=cleared,
            prune_before=now - horizon - 3600,
        )
        return report
