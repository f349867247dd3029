"""The Prometheus metrics, all named duvo_exporter_*, in a registry of their own.

Process counters (requests, passes, deliveries, webhooks) come from the pipeline's Observer hooks
and start at zero with the process. What describes the state (backlogs, lag, open Jobs, stopped
sinks, the webhook queue) is read from the state file at each scrape, so it is right after a
restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.observe import Observer
from exporter.state.store import StateStore
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
    ) -> None:
        self.state_path = state_path
        self.teams = list(teams)
        self.sinks = list(sinks)
        self.clock = clock
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
        except Exception as exc:  # StateError, sqlite3 errors: a scrape must not break the server
            log.warning("metrics: could not read the state file", error=str(exc))
            self.close()
        yield from (open_jobs, lag, backlog, oldest, stopped, queued)


def build_registry(
    state_path: str, teams: Sequence[str], sinks: Sequence[str]
) -> tuple[CollectorRegistry, PrometheusObserver, StateCollector]:
    registry = CollectorRegistry(auto_describe=False)
    observer = PrometheusObserver(registry, sinks)
    collector = StateCollector(state_path, teams, sinks)
    registry.register(collector)
    return registry, observer, collector
