"""Metrics in process: the Duvo client's and sink workers' hooks, and the gauges read from the state."""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest

from exporter.observe import Observer
from exporter.server.metrics import build_registry
from exporter.source.duvo_client import DuvoClient, DuvoUnavailable
from exporter.state.store import RunUpdate, StateStore
from tests.conftest import sim_faults
from transport import timestamps


class Recorder(Observer):
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()
        self.throttled = 0
        self.waited = 0.0

    def duvo_request(self, endpoint: str, code: str) -> None:
        self.requests[(endpoint, code)] += 1

    def rate_limited(self) -> None:
        self.throttled += 1

    def rate_limit_waited(self, seconds: float) -> None:
        self.waited += seconds


def test_the_client_reports_requests_by_endpoint_template_code_and_429s(sim):
    recorder = Recorder()
    job = sim.world.create_job(team_id="team-sim", status="completed")
    client = DuvoClient(sim.url, "dv_sim_key", requests_per_minute=60000, observer=recorder, backoff_initial=0.01)
    try:
        client.list_runs("team-sim")
        client.get_run(job["id"])
        assert client.get_run("00000000-0000-4000-8000-000000000000") is None
        client.list_messages(job["id"])
        sim_faults(sim, burst_429=1, burst_retry_after=0)
        client.list_runs("team-sim")
    finally:
        client.close()
    assert recorder.requests == {
        ("/teams/{team_id}/runs", "200"): 2,
        ("/teams/{team_id}/runs", "429"): 1,
        ("/runs/{run_id}", "200"): 1,
        ("/runs/{run_id}", "404"): 1,
        ("/runs/{run_id}/messages", "200"): 1,
    }
    assert recorder.throttled == 1


def test_no_answer_is_code_error():
    recorder = Recorder()
    client = DuvoClient("http://127.0.0.1:9", "dv_sim_key", max_attempts=1, connect_timeout=1, observer=recorder)
    try:
        with contextlib.suppress(DuvoUnavailable):
            client.list_runs("team-sim")
    finally:
        client.close()
    assert recorder.requests == {("/teams/{team_id}/runs", "error"): 1}


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels or None)


def test_state_gauges_are_read_from_the_state_so_they_hold_after_a_restart(tmp_path):
    path = str(tmp_path / "state.db")
    now = time.time()
    checkpoint = timestamps.format_utc(datetime.fromtimestamp(now, UTC) - timedelta(seconds=120))
    with StateStore(path) as store:
        store.ensure_cursors(["a", "b"])
        updates = [RunUpdate("r1", "t", checkpoint, "running", False, now + 60, None)]
        events = [("r2", "r2:completed", "{}"), ("r3", "r3:failed", "{}")]
        store.commit_extraction("t", updates, events, checkpoint, checked_at=now - 30)
        store.advance_cursor("a", 1, delivered=1, filtered=0)  # a has delivered r2, b nothing
        store.record_sink_error("b", "403 forbidden", stopped=True)
        store.queue_webhook("r4", "run_completed", "completed", now)
    # A fresh process: the counters start at zero, the state-derived gauges do not.
    registry, observer, collector = build_registry(path, ["t"], ["a", "b"])
    try:
        assert sample(registry, "duvo_exporter_open_jobs") == 1
        assert 119 <= sample(registry, "duvo_exporter_checkpoint_lag_seconds", team="t") < 180
        assert sample(registry, "duvo_exporter_sink_backlog_events", sink="a") == 1
        assert sample(registry, "duvo_exporter_sink_backlog_events", sink="b") == 2
        assert 29 <= sample(registry, "duvo_exporter_sink_oldest_undelivered_age_seconds", sink="b") < 90
        assert sample(registry, "duvo_exporter_sink_stopped", sink="a") == 0
        assert sample(registry, "duvo_exporter_sink_stopped", sink="b") == 1
        assert sample(registry, "duvo_exporter_webhooks_queued") == 1
        assert sample(registry, "duvo_exporter_sink_events_sent_total", sink="a") == 0
        observer.sink_sent("a", 3)
        observer.pass_finished("ok", 1.5)
        observer.duvo_request("/runs/{run_id}", "200")
        assert sample(registry, "duvo_exporter_sink_events_sent_total", sink="a") == 3
        assert sample(registry, "duvo_exporter_passes_total", outcome="ok") == 1
        assert sample(registry, "duvo_exporter_pass_duration_seconds_sum") == 1.5
        text = generate_latest(registry).decode()
        assert 'duvo_exporter_duvo_requests_total{code="200",endpoint="/runs/{run_id}"} 1.0' in text
    finally:
        collector.close()


def test_a_state_that_cannot_be_read_leaves_the_scrape_working(tmp_path):
    registry, _observer, collector = build_registry(str(tmp_path / "missing.db"), ["t"], ["a"])
    text = generate_latest(registry).decode()  # no exception, the process metrics are there
    assert "duvo_exporter_passes_total" in text
    assert sample(registry, "duvo_exporter_open_jobs") is None
    collector.close()


def test_the_served_families_are_exactly_the_names_the_deploy_dashboard_uses(tmp_path):
    from tests.test_deploy import METRICS

    with StateStore(str(tmp_path / "state.db")) as store:
        store.ensure_cursors(["a"])
        store.set_initial_checkpoint("t", "2026-01-01T00:00:00Z")
    registry, _observer, collector = build_registry(str(tmp_path / "state.db"), ["t"], ["a"])
    try:
        served = set()
        for family in registry.collect():
            served.add(family.name + ("_total" if family.type == "counter" else ""))
        assert served == METRICS
    finally:
        collector.close()
