"""Insights: aggregates and percentiles against hand-computed values, alert hysteresis over a
scripted sequence of Jobs and passes, summaries once per step, and a restart keeps it all."""

from __future__ import annotations

import json

import pytest

from exporter.config import InsightSettings
from exporter.delivery.shaping import EventShaper
from exporter.insights.aggregates import aggregate, percentile
from exporter.insights.engine import InsightEngine
from exporter.insights.facts import fact_from_event
from exporter.state.store import RunFact, StateStore
from sinks.settings import FieldSettings, FilterSettings

T0 = 1_800_000_000.0  # a multiple of 3600: step boundaries fall on it
TARGETS = {"run.summary": ["s"], "alert.started": ["s"], "alert.cleared": ["s"]}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def add(store: StateStore, facts: list[RunFact]) -> None:
    store.commit_extraction("t", [], [], None, facts=facts)


def fact(n: int, status: str, at: float, duration: float | None = 10.0, agent: str = "a", recovered: bool = False):
    return RunFact(f"r{agent}{n}", "t", agent, status, at, duration, recovered)


def outbox(store: StateStore) -> list[dict]:
    return [json.loads(e.body) for e in store.read_outbox(0, 10_000, 100_000_000)]


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 11)]
    assert percentile(values, 0.5) == 5.0
    assert percentile(values, 0.95) == 10.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) is None
    twenty = [float(v) for v in range(1, 21)]
    assert percentile(twenty, 0.95) == 19.0  # ceil(0.95 * 20) = 19th value


def test_aggregates_against_hand_computed_values():
    rows = [
        ("t", "a", "r1", "completed", T0 + 1, 10.0, 0),
        ("t", "a", "r2", "completed", T0 + 2, 20.0, 1),  # retried, then succeeded
        ("t", "a", "r3", "failed", T0 + 3, 30.0, 0),
        ("t", "a", "r4", "stopped", T0 + 4, None, 0),
        ("t", "a", "r5", "completed", T0 + 5, 100.0, 0),
        ("t", "b", "r6", "failed", T0 + 6, 5.0, 1),  # recovered but failed: not a retried success
        ("t", "a", "r7", "completed", T0 - 1, 999.0, 0),  # before the window
        ("t", "a", "r8", "completed", T0 + 10, 999.0, 0),  # at the end: excluded
    ]
    found = aggregate(rows, T0, T0 + 10)
    a = found[("t", "a")]
    assert a.jobs == 5 and dict(a.statuses) == {"completed": 3, "failed": 1, "stopped": 1}
    assert a.failure_rate == 0.2
    assert a.retried_success == 1
    assert a.duration_avg == 40.0  # (10 + 20 + 30 + 100) / 4
    assert a.duration_p50 == 20.0  # ceil(0.5 * 4) = 2nd of 10, 20, 30, 100
    assert a.duration_p95 == 100.0
    assert a.duration_max == 100.0
    assert a.newest_failed(5) == ["r3"] and a.slowest(2) == ["r5", "r3"]
    b = found[("t", "b")]
    assert b.jobs == 1 and b.failure_rate == 1.0 and b.retried_success == 0


def test_a_fact_comes_from_the_run_finished_event():
    event = {
        "run_id": "r1",
        "team_id": "t",
        "agent_id": "a",
        "status": "completed",
        "completed_at": "2027-01-15T08:00:10.000Z",
        "duration_seconds": 9.5,
        "diagnosis": {"recovered": True},
    }
    got = fact_from_event(event, read_at=T0 + 60)
    assert got.completed_at == 1_800_000_010.0 and got.duration == 9.5 and got.recovered
    assert fact_from_event(event, read_at=T0).completed_at == T0  # completed "in the future": when read
    bare = fact_from_event({"run_id": "r2", "team_id": "t", "agent_id": None, "status": "failed"}, read_at=5.0)
    assert bare.completed_at == 5.0 and bare.duration is None and not bare.recovered and bare.agent_id == "unknown"


def test_insight_events_reach_only_sinks_that_ask_for_them():
    summary = {"event": "run.summary", "team_id": "t", "agent_id": "a"}
    job = {"event": "run.finished", "team_id": "t", "agent_id": "a", "status": "failed"}
    plain = EventShaper(FilterSettings(), FieldSettings())
    assert plain.accepts(job) and not plain.accepts(summary)
    asking = EventShaper(FilterSettings(events=["run.finished", "run.summary"], statuses=["failed"]), FieldSettings())
    assert asking.accepts(job) and asking.accepts(summary)  # a status filter does not apply to summaries
    other_agent = EventShaper(FilterSettings(events=["run.summary"], agents=["b"]), FieldSettings())
    assert not other_agent.accepts(summary)


def settings(**overrides) -> InsightSettings:
    base = {"windows": ["1h"], "steps": ["5m"], "baseline": "1h", "min_jobs": 10}
    return InsightSettings(**{**base, **overrides})


def test_failure_alert_starts_once_and_clears_with_hysteresis(tmp_path):
    """Threshold 10%, hysteresis 0.2: starts above 10%, clears only under 8%."""
    clock = Clock(T0)
    store = StateStore(str(tmp_path / "s.db"))
    engine = InsightEngine(store, settings(), TARGETS, clock)
    # 20 Jobs in the hour, 2 failed: 10% is not above the threshold.
    add(store, [fact(i, "failed" if i < 2 else "completed", T0 - 3000 + i) for i in range(20)])
    assert engine.evaluate().started == 0
    # A third failure: 3/21 = 14.3% > 10%: one alert.started.
    clock.now = T0 + 60
    add(store, [fact(20, "failed", T0 + 30)])
    assert engine.evaluate().started == 1
    # Passes with nothing new: no repeat.
    for minute in (2, 3, 4):
        clock.now = T0 + minute * 60
        result = engine.evaluate()
        assert (result.started, result.cleared) == (0, 0)
    # 3/30 = 10% and 3/35 = 8.6%: below the threshold but not under 8%: still active.
    add(store, [fact(21 + i, "completed", T0 + 300 + i) for i in range(9)])
    clock.now = T0 + 310
    assert engine.evaluate().cleared == 0
    add(store, [fact(30 + i, "completed", T0 + 320 + i) for i in range(5)])
    clock.now = T0 + 330
    assert engine.evaluate().cleared == 0
    # 3/38 = 7.9% < 8%: cleared, once.
    add(store, [fact(35 + i, "completed", T0 + 340 + i) for i in range(3)])
    clock.now = T0 + 350
    assert engine.evaluate().cleared == 1
    clock.now = T0 + 360
    assert engine.evaluate().cleared == 0
    alerts = [e for e in outbox(store) if e["event"].startswith("alert.")]
    assert [(e["event"], e["alert"]) for e in alerts] == [
        ("alert.started", "failure_rate"),
        ("alert.cleared", "failure_rate"),
    ]
    started, cleared = alerts
    assert started["value"] == round(3 / 21, 4) and started["threshold"] == 0.1 and started["window"] == "1h"
    assert started["agent_id"] == "a" and started["team_id"] == "t"
    assert started["example_run_ids"] == ["ra20", "ra1", "ra0"]  # newest failures first
    assert started["event_id"] == f"alert:failure_rate:t:a:1h:{int(T0 + 60)}:started"
    assert cleared["event_id"] == f"alert:failure_rate:t:a:1h:{int(T0 + 60)}:cleared"
    assert cleared["value"] == round(3 / 38, 4)
    assert "run_id" not in started
    store.close()


def test_too_few_jobs_never_start_an_alert(tmp_path):
    clock = Clock(T0)
    store = StateStore(str(tmp_path / "s.db"))
    engine = InsightEngine(store, settings(), TARGETS, clock)
    add(store, [fact(i, "failed", T0 - 100 + i) for i in range(9)])  # 100% failed, 9 < min_jobs
    assert engine.evaluate().started == 0
    store.close()


def test_a_restart_keeps_aggregates_and_episodes_and_repeats_nothing(tmp_path):
    path = str(tmp_path / "s.db")
    clock = Clock(T0)
    store = StateStore(path)
    engine = InsightEngine(store, settings(), TARGETS, clock)
    add(store, [fact(i, "failed" if i < 5 else "completed", T0 - 1000 + i) for i in range(20)])
    first = engine.evaluate()
    assert first.started == 1 and first.summaries == 1
    store.close()
    # A new process on the same state: same facts, the episode is known, the step was summarised.
    store = StateStore(path)
    engine = InsightEngine(store, settings(), TARGETS, clock)
    clock.now = T0 + 60
    again = engine.evaluate()
    assert (again.started, again.cleared, again.summaries) == (0, 0, 0)
    rows = store.fact_rows(T0 - 3600, T0 + 1)
    assert len(rows) == 20
    assert aggregate(rows, T0 - 3600)[("t", "a")].failure_rate == 0.25
    # The next step boundary gives one new summary with the same aggregates.
    clock.now = T0 + 300
    assert engine.evaluate().summaries == 1
    summaries = [e for e in outbox(store) if e["event"] == "run.summary"]
    assert [s["event_id"] for s in summaries] == [f"summary:t:a:1h:{int(T0)}", f"summary:t:a:1h:{int(T0 + 300)}"]
    assert summaries[1]["jobs"] == 20 and summaries[1]["failure_rate"] == 0.25
    store.close()


def test_a_summary_per_assignment_window_and_step(tmp_path):
    clock = Clock(T0 + 10)
    store = StateStore(str(tmp_path / "s.db"))
    engine = InsightEngine(store, settings(windows=["1h", "24h"], steps=["5m", "1h"]), TARGETS, clock)
    add(
        store,
        [
            fact(1, "completed", T0 - 50, 10.0),
            fact(2, "failed", T0 - 40, 20.0),
            fact(3, "completed", T0 - 30, 30.0, recovered=True),
            fact(4, "completed", T0 - 7200, 40.0),  # in the 24 h window only
            fact(5, "completed", T0 - 20, 5.0, agent="b"),
            fact(6, "completed", T0 + 5, 5.0),  # after the step end: next step
        ],
    )
    assert engine.evaluate().summaries == 4  # (a, b) x (1h, 24h)
    clock.now = T0 + 200
    assert engine.evaluate().summaries == 0  # within the same step
    by_id = {e["event_id"]: e for e in outbox(store) if e["event"] == "run.summary"}
    hour = by_id[f"summary:t:a:1h:{int(T0)}"]
    assert hour["jobs"] == 3 and hour["statuses"] == {"completed": 2, "failed": 1} and hour["retried_success"] == 1
    assert hour["duration_avg_seconds"] == 20.0 and hour["duration_p50_seconds"] == 20.0
    assert hour["duration_p95_seconds"] == 30.0 and hour["duration_max_seconds"] == 30.0
    assert hour["window_start"] == "2027-01-15T07:00:00.000Z" and hour["window_end"] == "2027-01-15T08:00:00.000Z"
    day = by_id[f"summary:t:a:24h:{int(T0)}"]
    assert day["jobs"] == 4 and day["duration_avg_seconds"] == 25.0
    store.close()


def test_latency_regression_against_the_baseline(tmp_path):
    clock = Clock(T0)
    store = StateStore(str(tmp_path / "s.db"))
    engine = InsightEngine(store, settings(latency_multiple=1.5, hysteresis=0.2), TARGETS, clock)
    # Baseline hour: 10 Jobs of 10..19 s (p95 19 s); this hour: 10 Jobs of 30 s (> 28.5 s).
    add(store, [fact(i, "completed", T0 - 7000 + i, 10.0 + i) for i in range(10)])
    add(store, [fact(100 + i, "completed", T0 - 1000 + i, 30.0) for i in range(10)])
    result = engine.evaluate()
    assert result.started == 1
    (alert,) = [e for e in outbox(store) if e["event"] == "alert.started"]
    assert alert["alert"] == "latency" and alert["value"] == 30.0 and alert["threshold"] == 28.5
    assert len(alert["example_run_ids"]) == 5
    # The slow Jobs age out of the hour; fast ones replace them: 20 s < 28.5 x 0.8 = 22.8 s.
    clock.now = T0 + 3000
    add(store, [fact(200 + i, "completed", T0 + 2500 + i, 20.0) for i in range(10)])
    result = engine.evaluate()
    assert result.cleared == 1
    store.close()


def test_no_sink_asking_means_no_events_but_the_state_moves(tmp_path):
    clock = Clock(T0)
    store = StateStore(str(tmp_path / "s.db"))
    engine = InsightEngine(store, settings(), {}, clock)
    add(store, [fact(i, "failed", T0 - 100 + i) for i in range(20)])
    result = engine.evaluate()
    assert result.started == 1 and result.summaries == 1
    assert outbox(store) == []
    assert len(store.alert_episodes()) == 1
    store.close()


def test_facts_are_recorded_once_and_pruned_beyond_the_horizon(tmp_path):
    clock = Clock(T0)
    store = StateStore(str(tmp_path / "s.db"))
    engine = InsightEngine(store, settings(), {}, clock)
    add(store, [fact(1, "completed", T0 - 100), fact(2, "failed", T0 - 3 * 86400)])
    add(store, [fact(1, "completed", T0 - 100)])  # the same Job again (a repeat): counted once
    engine.evaluate()
    assert [r[2] for r in store.fact_rows(0, T0 + 1)] == ["ra1"]
    totals = {(r[1], r[2]): r[3] for r in store.run_totals()}
    assert totals == {("a", "completed"): 1, ("a", "failed"): 1}  # totals are never pruned
    store.close()


@pytest.mark.parametrize(
    "block, problem",
    [
        ("{windows: [1h], steps: [5m, 1h]}", "insights: steps must have one entry per window"),
        ("{windows: [1h, 60m], steps: [5m, 5m]}", "insights: windows has duplicates"),
        ("{windows: [1h], steps: [2h]}", "insights: the step of window 1h must be between 1m and the window"),
        ("{failure_threshold: 1.5}", "insights.failure_threshold: input should be less than 1 (got 1.5)"),
        ("{windows: [soon]}", "insights.windows[0]: 'soon' is not a duration"),
    ],
)
def test_insight_settings_are_validated_with_their_path(block, problem):
    from tests.test_config import BASE, problems

    found = problems(BASE + f"insights: {block}\n")
    assert len(found) == 1 and found[0].startswith(problem), found


def test_a_job_exported_by_a_webhook_records_its_fact_with_its_event_once(tmp_path):
    """The webhook processor's path (Extractor.apply_fetched) goes through the same commit as a
    pass: the fact is written in the transaction that enqueues run.finished, once per run_id."""
    from exporter.config import ExtractSettings
    from exporter.source.extraction import Extractor

    store = StateStore(str(tmp_path / "s.db"))
    extractor = Extractor(None, store, ["t"], ExtractSettings(), clock=lambda: T0 + 60)  # type: ignore[arg-type]
    run = {
        "id": "r1",
        "team_id": "t",
        "agent_id": "a",
        "status": "completed",
        "created_at": "2027-01-15T07:59:00Z",
        "started_at": "2027-01-15T07:59:30Z",
        "completed_at": "2027-01-15T08:00:00Z",
    }
    assert extractor.apply_fetched("t", dict(run)) == 1
    assert extractor.apply_fetched("t", dict(run)) == 0  # a repeat: no event, no second fact
    assert store.fact_rows(0, 2e9) == [("t", "a", "r1", "completed", T0, 30.0, 0)]
    assert [(r[0], r[1], r[2], r[3]) for r in store.run_totals()] == [("t", "a", "completed", 1)]
    assert store.duration_totals()["t"][:2] == (1, 30.0)
    store.close()


def test_with_insights_off_no_event_and_no_episode_but_facts_are_still_pruned(tmp_path):
    clock = Clock(T0)
    store = StateStore(str(tmp_path / "s.db"))
    engine = InsightEngine(store, settings(enabled=False), TARGETS, clock)
    add(store, [fact(i, "failed", T0 - 100 + i) for i in range(20)] + [fact(99, "completed", T0 - 5 * 86400)])
    result = engine.evaluate()
    assert (result.started, result.summaries) == (0, 0) and outbox(store) == [] and store.alert_episodes() == {}
    assert len(store.fact_rows(0, T0 + 1)) == 20
    store.close()
