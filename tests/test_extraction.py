"""Extraction decisions: re-check planning, progressive back-off, the outbox bound, emit modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.config import ExtractSettings, RecheckSettings
from exporter.source.extraction import Extractor
from exporter.state.store import StateStore
from tests.model_api import ModelApi

T0 = 1_900_000_000.0


def make(tmp_path: Path, api: ModelApi, clock: list[float], **settings) -> Extractor:
    store_kwargs = settings.pop("store", {})
    return Extractor(
        api,
        StateStore(str(tmp_path / "s.db"), synchronous="normal"),
        ["t"],
        ExtractSettings(**settings),
        page_size=100,
        start_from="beginning",
        clock=lambda: clock[0],
        **store_kwargs,
    )


def events(ex: Extractor) -> list[dict]:
    return [json.loads(b) for (b,) in ex.store._conn.execute("SELECT body FROM outbox ORDER BY seq")]


def test_many_recent_open_jobs_are_rechecked_by_relisting(tmp_path):
    api = ModelApi()
    ids = [api.add("running") for _ in range(300)]
    clock = [T0]
    ex = make(tmp_path, api, clock, recheck=RecheckSettings(max_interval="0s", sweep_pages=0))
    ex.run_pass()
    for run_id in ids:
        api.set_status(run_id, "completed")
    before = api.requests
    report = ex.run_pass()
    # 300 open Jobs: 3 list pages instead of 300 GETs.
    assert report.gets == 0 and api.requests - before <= 4
    assert len(events(ex)) == 300


def test_few_old_open_jobs_among_many_finished_are_fetched_one_by_one(tmp_path):
    api = ModelApi()
    old = [api.add("waiting", at_seconds=i) for i in range(3)]
    for i in range(2000):
        api.add("completed", at_seconds=10 + i)
    clock = [T0]
    ex = make(tmp_path, api, clock, recheck=RecheckSettings(max_interval="0s", sweep_pages=0))
    ex.run_pass()
    for run_id in old:
        api.set_status(run_id, "failed")
    before = api.requests
    report = ex.run_pass()
    # Re-listing 2,000 rows would take 20 pages; 3 GETs and 1 page for new Jobs are cheaper.
    assert report.gets == 3 and api.requests - before == 4
    assert {e["run_id"] for e in events(ex) if e["status"] == "failed"} == set(old)


def test_long_open_jobs_are_checked_progressively_less_often(tmp_path):
    api = ModelApi()
    api.base = api.base.replace(year=2030)  # created "now" relative to the clock below
    run_id = api.add("waiting", at_seconds=0)
    created = api.base.timestamp()
    clock = [created + 60]
    ex = make(tmp_path, api, clock, recheck=RecheckSettings(min_interval="0s", max_interval="1h", age_factor=0.25))
    ex.run_pass()
    intervals = []
    for age in (60, 3600, 4 * 3600, 3 * 86400):
        clock[0] = created + age
        ex.store.postpone_checks([run_id], 0)  # due now
        ex.run_pass()
        (next_check,) = ex.store._conn.execute("SELECT next_check_at FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        intervals.append(next_check - clock[0])
    assert intervals == [15.0, 900.0, 3600.0, 3600.0]


def test_outbox_bound_pauses_extraction_without_losing_anything(tmp_path):
    api = ModelApi()
    for i in range(450):
        api.add("completed", at_seconds=i)
    clock = [T0]
    ex = make(tmp_path, api, clock, store={"max_outbox_events": 200})
    report = ex.run_pass()
    assert report.halted == "outbox_full"
    held = len(events(ex))
    assert 200 <= held < 300
    checkpoint = ex.store.checkpoint("t")
    assert ex.run_pass().halted == "outbox_full" and ex.store.checkpoint("t") == checkpoint
    # A sink catches up: everything it finished is pruned, and extraction resumes where it paused.
    ex.store.ensure_cursors(["s"])
    ex.store.advance_cursor("s", 10**9, delivered=held, filtered=0)
    ex.store.prune_outbox(["s"])
    seen = held
    for _ in range(3):
        ex.run_pass()
        seen += len(events(ex))
        ex.store.advance_cursor("s", 10**9, delivered=0, filtered=0)
        ex.store.prune_outbox(["s"])
    assert seen == 450


def test_transitions_mode_announces_each_wait_once(tmp_path):
    api = ModelApi()
    run_id = api.add("running")
    clock = [T0]
    ex = make(tmp_path, api, clock, emit="transitions", recheck=RecheckSettings(max_interval="0s"))
    ex.run_pass()
    api.runs[run_id].update(status="waiting", pending_human_request={"id": "hr-1", "question": "approve?"})
    ex.run_pass()
    ex.run_pass()  # still waiting on the same request: no new event
    api.runs[run_id].update(status="running", pending_human_request=None)
    ex.run_pass()
    api.runs[run_id].update(status="waiting", pending_human_request={"id": "hr-2", "question": "again?"})
    ex.run_pass()
    api.set_status(run_id, "completed")
    ex.run_pass()
    got = [(e["event"], e["event_id"]) for e in events(ex)]
    assert got == [
        ("run.waiting", f"{run_id}:waiting:hr-1"),
        ("run.waiting", f"{run_id}:waiting:hr-2"),
        ("run.finished", f"{run_id}:completed"),
    ]
    assert events(ex)[0]["pending_human_request"] == {"id": "hr-1", "question": "approve?"}


def test_a_job_deleted_while_open_is_dropped_not_retried_forever(tmp_path):
    api = ModelApi()
    run_id = api.add("running", at_seconds=0)
    for i in range(500):
        api.add("completed", at_seconds=100 + i)
    clock = [T0]
    ex = make(tmp_path, api, clock, recheck=RecheckSettings(max_interval="0s"))
    ex.run_pass()
    api.delete(run_id)
    report = ex.run_pass()
    assert report.gone == 1
    assert ex.store.open_run_stats()["open"] == 0


def test_unknown_status_is_kept_open_and_rows_pass_through_untouched(tmp_path):
    api = ModelApi()
    run_id = api.add("paused_by_admin")
    api.runs[run_id]["brand_new_field"] = {"x": 1}
    clock = [T0]
    ex = make(tmp_path, api, clock, recheck=RecheckSettings(max_interval="0s"))
    ex.run_pass()
    assert ex.store.open_run_stats()["by_status"] == {"paused_by_admin": 1}
    api.set_status(run_id, "completed")
    ex.run_pass()
    [event] = events(ex)
    assert event["run"]["brand_new_field"] == {"x": 1}


class ApiDown(Exception):
    pass


def test_rows_read_before_an_error_are_committed_with_their_checkpoint(tmp_path):
    """Rows are committed a few pages at a time; an error mid-listing still commits every row
    read before it, with the checkpoint up to them, so the next pass neither re-exports nor skips."""
    api = ModelApi()
    for i in range(1000):
        api.add("completed", at_seconds=i)

    def fail_on_the_fourth_page(model: ModelApi) -> None:
        if model.requests == 4:
            raise ApiDown("unavailable")

    api.on_request = fail_on_the_fourth_page
    clock = [T0]
    ex = make(tmp_path, api, clock)
    with pytest.raises(ApiDown):
        ex.run_pass()
    # Three pages read (100 + 99 + 99 rows, each page re-reading its anchor) before the fourth failed.
    assert len(events(ex)) == 298
    assert ex.store.checkpoint("t") == max(e["created_at"] for e in events(ex))
    api.on_request = None
    ex.run_pass()
    ids = [e["run_id"] for e in events(ex)]
    assert len(ids) == len(set(ids)) == 1000
