"""The sweep: listing the open statuses finds every Job that finished since the last pass.

The age schedule is switched off in these tests (re-checks due only after an hour), so whatever
is found is found by the sweep alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exporter.config import ExtractSettings, RecheckSettings
from exporter.source.duvo_client import DuvoError
from exporter.source.extraction import Extractor
from exporter.source.sweep import list_pages, page_allowance, plan_sweep
from exporter.state.store import KnownRun, StateStore
from tests.conftest import cli, exported, terminal_ids, write_config
from tests.model_api import ModelApi

T0 = 1_900_000_000.0
NO_AGE_CHECKS = {"min_interval": "1h", "max_interval": "1h"}


def make(tmp_path: Path, api: ModelApi, sweep_pages: int = 20, **settings: Any) -> Extractor:
    return Extractor(
        api,
        StateStore(str(tmp_path / "s.db"), synchronous="normal"),
        ["t"],
        ExtractSettings(recheck=RecheckSettings(sweep_pages=sweep_pages, **NO_AGE_CHECKS), **settings),
        page_size=100,
        start_from="beginning",
        clock=lambda: T0,
    )


def finished(ex: Extractor) -> list[str]:
    return [json.loads(b)["run_id"] for (b,) in ex.store._conn.execute("SELECT body FROM outbox ORDER BY seq")]


def known(run_id: str, status: str, second: int) -> KnownRun:
    return KnownRun(run_id, "t", f"2026-05-17T00:00:{second:02d}.000Z", status, False, 0.0, 0, None)


# ---- planning ---------------------------------------------------------------------------------


def test_plan_covers_the_newest_open_jobs_within_the_page_cap():
    runs = [known(f"r{i:03d}", "running", i % 60) for i in range(250)]
    runs.sort(key=lambda r: (r.created_at, r.run_id))
    plan = plan_sweep(runs, page_size=100, max_pages=2)
    assert plan is not None
    # Two pages read 199 rows: every page after the first re-reads its anchor row.
    assert len(plan.covered) == 199 and plan.estimated_pages == 2
    assert set(plan.covered) == {r.run_id for r in runs[51:]}
    assert plan.since == runs[51].created_at and plan.statuses == ("running",)


def test_pages_count_the_anchor_row_and_the_allowance_has_a_page_of_slack_per_status():
    assert [list_pages(n, 100) for n in (0, 1, 100, 101, 199, 200, 298)] == [1, 1, 1, 2, 2, 3, 3]
    runs = [known("a", "waiting", 1), known("b", "running", 2)]
    plan = plan_sweep(runs, page_size=100, max_pages=20)
    assert plan is not None
    # 150 running now (new Jobs were read since the plan): 2 pages + 1; waiting: 1 + 1.
    assert page_allowance(plan, {"running": 150, "waiting": 1, "pending": 40}, 100) == 5


def test_plan_lists_each_status_held_and_never_covers_unknown_statuses():
    runs = [known("a", "waiting", 1), known("b", "paused_by_admin", 2), known("c", "running", 3)]
    runs.append(known("d", "pending", 4))
    plan = plan_sweep(runs, page_size=100, max_pages=20)
    assert plan is not None
    assert plan.statuses == ("pending", "running", "waiting")
    assert set(plan.covered) == {"a", "c", "d"}  # no status filter can list "paused_by_admin"
    assert plan.since == runs[0].created_at and plan.estimated_pages == 3


def test_plan_is_none_without_open_jobs_or_pages():
    assert plan_sweep([], 100, 20) is None
    assert plan_sweep([known("a", "running", 1)], 100, 0) is None
    assert plan_sweep([known("a", "mystery", 1)], 100, 20) is None


def test_a_status_that_would_overflow_the_cap_ends_the_covered_range():
    # Newest first: 1 running (1 page), then a waiting Job would need a second page.
    runs = [known("old", "waiting", 1), known("new", "running", 2)]
    plan = plan_sweep(runs, page_size=100, max_pages=1)
    assert plan is not None and set(plan.covered) == {"new"} and plan.since == runs[1].created_at


# ---- passes -----------------------------------------------------------------------------------


def test_the_sweep_finds_late_finishes_the_age_schedule_would_not_look_at_yet(tmp_path):
    api = ModelApi()
    open_ids = []
    for i in range(2000):
        if i % 8 == 0:
            open_ids.append(api.add("running", at_seconds=i))
        else:
            api.add("completed", at_seconds=i)
    ex = make(tmp_path, api)
    ex.run_pass()
    assert len(open_ids) == 250 and ex.store.open_run_stats()["open"] == 250
    late = open_ids[::50]  # 5 Jobs spread over the whole window
    for run_id in late:
        api.set_status(run_id, "failed")
    before = len(finished(ex))
    report = ex.run_pass()
    assert sorted(finished(ex)[before:]) == sorted(late)
    # One page for new Jobs, three for the 245 still running, and 5 GETs (re-listing 2,000 rows
    # would take 20 pages).
    assert report.sweep_pages == 3 and report.gets == 5 and report.pages == 4
    assert ex.store.open_run_stats()["open"] == 245


def test_without_the_sweep_the_same_finishes_wait_for_the_age_schedule(tmp_path):
    api = ModelApi()
    ids = [api.add("running", at_seconds=i) for i in range(20)]
    ex = make(tmp_path, api, sweep_pages=0)
    ex.run_pass()
    api.set_status(ids[3], "completed")
    report = ex.run_pass()
    assert finished(ex) == [] and report.sweep_pages == 0 and api.status_lists == 0


def test_recent_finishes_are_fetched_by_relisting_their_window(tmp_path):
    api = ModelApi()
    ids = [api.add("running", at_seconds=i) for i in range(300)]
    ex = make(tmp_path, api)
    ex.run_pass()
    for run_id in ids:
        api.set_status(run_id, "completed")
    report = ex.run_pass()
    assert sorted(finished(ex)) == sorted(ids)
    assert report.gets == 0  # 300 changed Jobs in 300 rows: re-listed, not fetched one by one
    assert report.sweep_pages == 1  # an empty `running` list proves all 300 left it


def test_a_job_that_moved_to_a_status_not_swept_is_fetched_and_stays_open(tmp_path):
    api = ModelApi()
    run_id = api.add("running", at_seconds=0)
    for i in range(500):
        api.add("completed", at_seconds=10 + i)
    ex = make(tmp_path, api, emit="transitions")
    ex.run_pass()
    api.runs[run_id].update(status="waiting", pending_human_request={"id": "hr-1"})
    report = ex.run_pass()
    assert report.gets == 1
    assert ex.store.open_run_stats()["by_status"] == {"waiting": 1}
    # Next pass lists `waiting` and finds it there: no GET, no second announcement.
    report = ex.run_pass()
    assert report.gets == 0 and report.sweep_pages == 1
    api.set_status(run_id, "completed")
    ex.run_pass()
    events = [json.loads(b) for (b,) in ex.store._conn.execute("SELECT body FROM outbox ORDER BY seq")]
    mine = [(e["event"], e["status"]) for e in events if e["run_id"] == run_id]
    assert mine == [("run.waiting", "waiting"), ("run.finished", "completed")]


def test_a_covered_job_deleted_while_open_is_dropped(tmp_path):
    api = ModelApi()
    run_id = api.add("running", at_seconds=0)
    ex = make(tmp_path, api)
    ex.run_pass()
    api.delete(run_id)
    report = ex.run_pass()
    assert report.gone == 1 and ex.store.open_run_stats()["open"] == 0


def test_open_jobs_beyond_the_cap_stay_on_the_age_schedule(tmp_path):
    api = ModelApi()
    ids = [api.add("running", at_seconds=i) for i in range(300)]
    ex = make(tmp_path, api, sweep_pages=1)
    ex.run_pass()
    oldest, newest = ids[0], ids[-1]
    api.set_status(oldest, "completed")
    api.set_status(newest, "completed")
    report = ex.run_pass()
    assert finished(ex) == [newest]  # the oldest is beyond the 100 newest the one page covers
    assert report.sweep_pages == 1


def test_a_sweep_list_that_keeps_shifting_concludes_nothing_and_loses_nothing(tmp_path):
    api = ModelApi()
    for i in range(400):
        api.add("running", at_seconds=i // 50)  # 50 per second: `since` cannot skip past a shift
    ex = make(tmp_path, api)
    ex.run_pass()
    lists = [api.status_lists]

    def finish_a_row_of_the_page_just_read(model: ModelApi) -> None:
        if model.status_lists > lists[0] and model.last_served:
            lists[0] = model.status_lists
            model.set_status(model.last_served[0], "completed")  # what follows shifts back by one

    api.on_request = finish_a_row_of_the_page_just_read
    report = ex.run_pass()
    api.on_request = None
    # Nothing is fetched on the strength of a list that kept shifting under every page...
    assert report.sweeps_incomplete == 1 and report.gets == 0
    # ... and whatever finished meanwhile is found by the next sweeps, each Job once.
    for _ in range(2):
        ex.run_pass()
    assert sorted(finished(ex)) == sorted(api.terminal_ids()) and api.terminal_ids()
    assert len(finished(ex)) == len(set(finished(ex)))


class NoStatusFilterApi(ModelApi):
    def list_runs(self, team_id: str, **kwargs: Any):  # type: ignore[override]
        if kwargs.get("status") is not None:
            self.requests += 1
            raise DuvoError("Duvo API refused GET /teams/t/runs (400): unknown parameter status", status=400)
        return super().list_runs(team_id, **kwargs)


def test_an_api_that_refuses_the_status_filter_falls_back_to_the_age_schedule(tmp_path, capsys):
    api = NoStatusFilterApi()
    ids = [api.add("running", at_seconds=i) for i in range(3)]
    ex = Extractor(
        api,
        StateStore(str(tmp_path / "s.db"), synchronous="normal"),
        ["t"],
        ExtractSettings(recheck=RecheckSettings(min_interval="0s", max_interval="0s")),
        start_from="beginning",
        clock=lambda: T0,
    )
    ex.run_pass()
    api.set_status(ids[1], "completed")
    ex.run_pass()  # the sweep is refused; the Jobs it was to vouch for are re-checked by age
    assert finished(ex) == [ids[1]]
    requests = api.requests
    ex.run_pass()
    assert api.requests - requests == 1  # one list for new and due Jobs; no status filter tried again
    assert "refused a status filter" in capsys.readouterr().out


# ---- over HTTP, against the simulator ---------------------------------------------------------


def test_over_http_the_sweep_alone_exports_a_late_outcome(sim, tmp_path):
    world = sim.world
    open_ids = [world.create_job(team_id="team-sim", status="running")["id"] for _ in range(5)]
    for _ in range(150):
        world.create_job(team_id="team-sim", status="completed")
    config = write_config(tmp_path, sim.url)
    text = config.read_text().replace("recheck: {min_interval: 0s, max_interval: 0s}", "recheck: {min_interval: 1h}")
    config.write_text(text)
    assert cli("once", "--config", str(config)).returncode == 0
    world.set_status(open_ids[2], "failed")
    world.set_status(open_ids[4], "waiting", {"id": "hr-9"})
    result = cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    got = exported(tmp_path / "runs.jsonl")
    assert set(got) == terminal_ids(sim) and max(got.values()) == 1
    assert open_ids[2] in got


def test_a_status_list_that_grows_faster_than_it_is_read_ends_the_sweep_within_its_allowance(tmp_path):
    api = ModelApi()
    for i in range(150):
        api.add("running", at_seconds=i)
    ex = make(tmp_path, api)
    ex.run_pass()
    lists = [api.status_lists]

    def flood(model: ModelApi) -> None:
        if model.status_lists > lists[0]:  # a sweep page: more new running Jobs than a page reads
            lists[0] = model.status_lists
            for _ in range(150):
                model.add("running")

    api.on_request = flood
    report = ex.run_pass()
    assert report.sweep_pages == 2 + 1  # 150 open: 2 pages, and one page of slack
    assert report.gets == 0 and report.sweeps_incomplete == 1  # an unfinished list proves nothing


def test_a_sweep_list_never_moves_the_checkpoint_past_jobs_it_filters_out(tmp_path):
    api = ModelApi()
    for i in range(5):
        api.add("running", at_seconds=i)
    ex = make(tmp_path, api)
    ex.run_pass()
    checkpoint = ex.store.checkpoint("t")
    made: list[str] = []

    def create_during_the_sweep(model: ModelApi) -> None:
        if model.status_lists == 1 and not made:
            made.append(model.add("completed", at_seconds=100))  # no `running` list shows this one
            made.append(model.add("running", at_seconds=200))  # ... but it shows this newer one

    api.on_request = create_during_the_sweep
    ex.run_pass()
    assert made and ex.store.checkpoint("t") == checkpoint
    api.on_request = None
    ex.run_pass()
    assert made[0] in finished(ex)
