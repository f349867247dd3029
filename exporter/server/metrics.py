"""The Prometheus metrics, all named duvo_exporter_*, in a registry of their own.

Process counters (requests, passes, deliveries, webhooks) come from the pipeline's Observer hooks
and start at zero with the process. What describes the state (backlogs, lag, open Jobs, stopped
sinks, the webhook queue) is read from the state file at each scrape, so it is right after a
restart.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config import InsightSettings
from exporter.insights.aggregates import aggregate
from exporter.observe import Observer
from exporter.state.store import DURATION_BUCKETS, StateStore
from transport import timestamps

log = structlog.get_logger(__name__)

PREFIX = "duvo_exporter_"
PASS_OUTCOMES = ("ok", "incomplete", "failed")
WEBHOOK_OUTCOMES = ("accepted", "unauthorized", "too_large", "malformed")


class PrometheusObserver(Observer):
    """The Observer hooks as Prometheus counters and a histogram, in ``registry``."""

    def __init__(self, registry: CollectorRegistry, sinks: Sequence[str] = ()) -> None:
        self.passes = Counter(f"{PREFIX}passes", "Extraction passes by outcome", ["outcome"], registry=registry)
        self.pass_duration = Histogram(
            f"{PREFIX}pass_duration_seconds",
            "How long extraction passes took",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=registry,
        )
        self.requests = Counter(
            f"{PREFIX}duvo_requests",
            "HTTP requests to the Duvo API by endpoint template and status code (error: no response)",
            ["endpoint", "code"],
            registry=registry,
        )
        self.rate_limited_total = Counter(
            f"{PREFIX}duvo_rate_limited", "429 answers from the Duvo API", registry=registry
        )
        self.rate_limit_wait = Counter(
            f"{PREFIX}rate_limit_wait_seconds", "Seconds waited on the Duvo rate limit", registry=registry
        )
        self.jobs = Counter(f"{PREFIX}jobs_extracted", "Events written to the outbox", registry=registry)
        self.sent = Counter(f"{PREFIX}sink_events_sent", "Events a backend accepted", ["sink"], registry=registry)
        self.retried = Counter(
            f"{PREFIX}sink_events_retried", "Events of failed batches, to be sent again", ["sink"], registry=registry
        )
        self.dead = Counter(
            f"{PREFIX}sink_events_dead_lettered",
            "Events a backend rejected permanently",
            ["sink"],
            registry=registry,
        )
        self.webhooks = Counter(
            f"{PREFIX}webhooks_received", "POST /webhooks/duvo by outcome", ["outcome"], registry=registry
        )
        # Every known label value from the start, so dashboards see zeros rather than no series.
        for outcome in PASS_OUTCOMES:
            self.passes.labels(outcome)
        for outcome in WEBHOOK_OUTCOMES:
            self.webhooks.labels(outcome)
        for sink in sinks:
            self.sent.labels(sink)
            self.retried.labels(sink)
            self.dead.labels(sink)

    def duvo_request(self, endpoint: str, code: str) -> None:
        self.requests.labels(endpoint, code).inc()

    def rate_limited(self) -> None:
        self.rate_limited_total.inc()

    def rate_limit_waited(self, seconds: float) -> None:
        self.rate_limit_wait.inc(seconds)

    def pass_finished(self, outcome: str, seconds: float) -> None:
        self.passes.labels(outcome).inc()
        self.pass_duration.observe(seconds)

    def jobs_extracted(self, count: int) -> None:
        if count:
            self.jobs.inc(count)

    def sink_sent(self, sink: str, count: int) -> None:
        self.sent.labels(sink).inc(count)

    def sink_retried(self, sink: str, count: int) -> None:
        self.retried.labels(sink).inc(count)

    def sink_dead_lettered(self, sink: str, count: int) -> None:
        self.dead.labels(sink).inc(count)

    def webhook_received(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()


class StateCollector(Collector):
    """Gauges read from the state file at each scrape, through its own connection."""

    def __init__(
        self,
        state_path: str,
        teams: Sequence[str],
        sinks: Sequence[str],
        clock: Callable[[], float] = time.time,
        insights: InsightSettings | None = None,
    ) -> None:
        self.state_path = state_path
        self.teams = list(teams)
        self.sinks = list(sinks)
        self.clock = clock
        self.insights = insights if insights is not None else InsightSettings()
        self._lock = threading.Lock()  # scrapes may overlap; the connection is one
        self._store: StateStore | None = None

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None

    def collect(self) -> Iterator[Metric]:
        open_jobs = GaugeMetricFamily(f"{PREFIX}open_jobs", "Jobs seen that have not finished yet")
        lag = GaugeMetricFamily(
            f"{PREFIX}checkpoint_lag_seconds",
            "Now minus the team's checkpoint (newest created_at read)",
            labels=["team"],
        )
        backlog = GaugeMetricFamily(
            f"{PREFIX}sink_backlog_events", "Events in the outbox the sink has not delivered", labels=["sink"]
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}sink_oldest_undelivered_age_seconds",
            "Age of the oldest event the sink has not delivered (0: none)",
            labels=["sink"],
        )
        stopped = GaugeMetricFamily(
            f"{PREFIX}sink_stopped", "1 when the sink stopped on a fatal error (fix and restart)", labels=["sink"]
        )
        queued = GaugeMetricFamily(f"{PREFIX}webhooks_queued", "Webhooks received and not processed yet")
        try:
            with self._lock:
                if self._store is None:
                    self._store = StateStore(self.state_path, create=False)
                store = self._store
                now = self.clock()
                open_jobs.add_metric([], store.open_run_stats()["open"])
                checkpoints = store.checkpoints()
                for team in self.teams:
                    moment = timestamps.parse(checkpoints.get(team))
                    if moment is not None:
                        lag.add_metric([team], max(0.0, now - moment.timestamp()))
                cursors = {cursor.sink: cursor for cursor in store.cursors()}
                for sink in self.sinks:
                    cursor = cursors.get(sink)
                    if cursor is None:
                        continue
                    count, enqueued_at = store.sink_backlog(sink, cursor.seq)
                    backlog.add_metric([sink], count)
                    oldest.add_metric([sink], max(0.0, now - enqueued_at) if enqueued_at is not None else 0.0)
                    stopped.add_metric([sink], 1.0 if cursor.stopped_reason else 0.0)
                queued.add_metric([], store.webhooks_queued())
                job_metrics = self._job_metrics(store, now)
        except Exception as exc:  # StateError, sqlite3 errors: a scrape must not break the server
            log.warning("metrics: could not read the state file", error=str(exc))
            self.close()
            job_metrics = self._job_metrics(None, 0.0)
        yield from (open_jobs, lag, backlog, oldest, stopped, queued, *job_metrics)

    def _job_metrics(self, store: StateStore | None, now: float) -> list[Metric]:
        """The Jobs' own metrics (exporter/insights), from the state: cumulative counts and the
        duration histogram since the state file began (true counters across restarts), and each
        Assignment's failure ratio over the insight windows. At most ``insights.max_agents``
        agents are labelled, the first seen; the rest add up under agent="other"."""
        runs = CounterMetricFamily(
            "duvo_runs", "Finished Duvo Jobs by team, Assignment and status", labels=["team", "agent", "status"]
        )
        durations = HistogramMetricFamily(
            "duvo_run_duration_seconds", "Duration of finished Duvo Jobs (completed_at - started_at)", labels=["team"]
        )
        ratio = GaugeMetricFamily(
            "duvo_agent_failure_ratio",
            "Failed / finished Jobs of an Assignment over the window (absent without Jobs)",
            labels=["team", "agent", "window"],
        )
        if store is None:
            return [runs, durations, ratio]
        labelled: set[tuple[str, str]] = set()
        counts: dict[tuple[str, str, str], int] = {}
        for team, agent, status, count, _first in store.run_totals():
            if (team, agent) not in labelled and len(labelled) < self.insights.max_agents:
                labelled.add((team, agent))
            shown = agent if (team, agent) in labelled else OTHER_AGENT
            counts[(team, shown, status)] = counts.get((team, shown, status), 0) + count
        for labels, count in sorted(counts.items()):
            runs.add_metric(list(labels), count)
        for team, (_count, total, buckets) in store.duration_totals().items():
            cumulative, running = [], 0
            for bound, in_bucket in zip((*DURATION_BUCKETS, math.inf), buckets, strict=True):
                running += in_bucket
                cumulative.append((_le(bound), running))
            durations.add_metric([team], cumulative, sum_value=total)
        rows = store.fact_rows(now - max(w for _, w, _ in self.insights.window_seconds), math.inf)
        for name, window, _step in self.insights.window_seconds:
            totals: dict[tuple[str, str], list[int]] = {}
            for (team, agent), agg in aggregate(rows, now - window).items():
                shown = agent if (team, agent) in labelled else OTHER_AGENT
                pair = totals.setdefault((team, shown), [0, 0])
                pair[0] += agg.failed
                pair[1] += agg.jobs
            for (team, agent), (failed, jobs) in sorted(totals.items()):
                ratio.add_metric([team, agent, name], failed / jobs)
        return [runs, durations, ratio]


OTHER_AGENT = "other"


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


def build_registry(
    state_path: str, teams: Sequence[str], sinks: Sequence[str], insights: InsightSettings | None = None
) -> tuple[CollectorRegistry, PrometheusObserver, StateCollector]:
    registry = CollectorRegistry(auto_describe=False)
    observer = PrometheusObserver(registry, sinks)
    collector = StateCollector(state_path, teams, sinks, insights=insights)
    registry.register(collector)
    return registry, observer, collector
