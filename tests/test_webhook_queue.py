"""The webhook queue and its processor, readiness and the recheck floor, in process (no HTTP)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from exporter.config import ExtractSettings, RecheckSettings, ScheduleSettings
from exporter.server.health import interval_seconds, readiness
from exporter.source.duvo_client import DuvoUnavailable
from exporter.source.extraction import Extractor
from exporter.source.webhook_queue import WebhookProcessor
from exporter.state.pass_record import LAST_PASS_KEY
from exporter.state.store import StateStore
from tests.model_api import ModelApi

T0 = 1_900_000_000.0


class Flaky:
    """The model API, whose get_run fails while ``down``."""

    def __init__(self, api: ModelApi) -> None:
        self.api, self.down = api, False
        self.hidden: set[str] = set()  # Jobs of a team we do not read: never in our lists

    def list_runs(self, *args, **kwargs):
        page = self.api.list_runs(*args, **kwargs)
        return type(page)([row for row in page.data if row["id"] not in self.hidden], page.total)

    def get_run(self, run_id: str):
        if self.down:
            raise DuvoUnavailable("Duvo API unavailable for GET /runs/x after 1 attempts: HTTP 503", status=503)
        return self.api.get_run(run_id)


def setup(tmp_path: Path, api: ModelApi, clock: list[float]):
    source = Flaky(api)
    settings = ExtractSettings(recheck=RecheckSettings(sweep_pages=0))
    path = str(tmp_path / "s.db")
    pass_extractor = Extractor(
        source, StateStore(path, synchronous="normal"), ["t"], settings, start_from="beginning", clock=lambda: clock[0]
    )
    store = StateStore(path, synchronous="normal")
    own = Extractor(
        source, store, ["t"], settings, start_from="beginning", clock=lambda: clock[0],
        commit_lock=pass_extractor.commit_lock,
    )  # fmt: skip
    processor = WebhookProcessor(own, store, ["t"], clock=lambda: clock[0])
    return source, pass_extractor, processor


def outbox(store: StateStore) -> list[dict]:
    return [json.loads(b) for (b,) in store._conn.execute("SELECT body FROM outbox ORDER BY seq")]


def test_a_queued_job_the_pass_listed_is_exported_once_whoever_sees_it_first(tmp_path):
    api, clock = ModelApi(), [T0]
    run_id = api.add("running")
    _source, ex, processor = setup(tmp_path, api, clock)
    ex.run_pass()  # listed while running: known, of team t
    api.set_status(run_id, "completed")
    processor.store.queue_webhook(run_id, "run_completed", "completed", clock[0])
    assert processor.drain() == 1
    assert [e["event_id"] for e in outbox(processor.store)] == [f"{run_id}:completed"]
    assert processor.store.webhooks_queued() == 0
    # A repeat, then the pass: nothing more.
    processor.store.queue_webhook(run_id, "run_completed", "completed", clock[0] + 1)
    processor.drain()
    ex.run_pass()
    assert len(outbox(processor.store)) == 1


def test_a_record_without_a_team_is_exported_only_if_a_configured_team_lists_it(tmp_path):
    api, clock = ModelApi(), [T0]
    source, _ex, processor = setup(tmp_path, api, clock)
    # The model's records carry no team_id (as the guide's), and no pass has listed these.
    shown, hidden = api.add("completed"), api.add("completed")
    source.hidden = {hidden}
    before = api.requests
    for run_id in (shown, hidden):
        processor.store.queue_webhook(run_id, "run_completed", "completed", clock[0])
    processor.drain()
    assert [e["run_id"] for e in outbox(processor.store)] == [shown]
    assert processor.dropped == 1 and processor.store.webhooks_queued() == 0
    assert api.requests - before == 4  # a GET and one list request each


def test_a_record_of_another_team_is_dropped_and_of_a_configured_one_exported(tmp_path):
    api, clock = ModelApi(), [T0]
    _source, ex, processor = setup(tmp_path, api, clock)
    ours, theirs = api.add("completed"), api.add("completed")
    api.runs[ours]["team_id"] = "t"
    api.runs[theirs]["team_id"] = "someone-else"
    for run_id in (ours, theirs):
        processor.store.queue_webhook(run_id, "run_completed", "completed", clock[0])
    processor.drain()
    assert [e["run_id"] for e in outbox(processor.store)] == [ours]
    ex.run_pass()  # the pass lists it later: not again (the model API lists every team's Jobs)
    assert [e["run_id"] for e in outbox(processor.store)].count(ours) == 1


def test_fetch_failures_back_off_and_keep_the_row_and_a_404_drops_it(tmp_path):
    api, clock = ModelApi(), [T0]
    source, _ex, processor = setup(tmp_path, api, clock)
    run_id = api.add("completed")
    api.runs[run_id]["team_id"] = "t"
    processor.store.queue_webhook(run_id, "run_completed", "completed", clock[0])
    source.down = True
    processor.drain()
    row = processor.store._conn.execute("SELECT attempts, next_attempt_at, last_error FROM webhook_queue").fetchone()
    assert row[0] == 1 and row[1] > clock[0] and "503" in row[2]
    assert processor.drain() == 0  # not due yet
    source.down = False
    clock[0] = row[1]
    processor.drain()
    assert len(outbox(processor.store)) == 1 and processor.store.webhooks_queued() == 0
    processor.store.queue_webhook("gone-0001", "run_failed", "failed", clock[0])
    processor.drain()
    assert processor.store.webhooks_queued() == 0 and processor.dropped == 1


def test_a_repeat_that_arrives_while_the_job_is_fetched_stays_queued(tmp_path):
    api, clock = ModelApi(), [T0]
    source, _ex, processor = setup(tmp_path, api, clock)
    run_id = api.add("running")
    api.runs[run_id]["team_id"] = "t"
    processor.store.queue_webhook(run_id, "run_running", "running", clock[0])
    item = processor.store.due_webhooks(clock[0])[0]
    # The Job finishes and its webhook arrives between our read of the queue and our commit.
    api.set_status(run_id, "completed")
    processor.store.queue_webhook(run_id, "run_completed", "completed", clock[0] + 1)
    source.api.set_status(run_id, "running")  # what our fetch sees (it happened just before)
    processor.process(item)
    assert processor.store.webhooks_queued() == 1  # the newer notification is still to do
    api.set_status(run_id, "completed")
    clock[0] += 1
    processor.drain()
    assert [e["event_id"] for e in outbox(processor.store)] == [f"{run_id}:completed"]


def test_the_processor_thread_wakes_on_demand_and_stops(tmp_path):
    api, clock = ModelApi(), [time.time()]
    _source, _ex, processor = setup(tmp_path, api, clock)
    run_id = api.add("completed")
    api.runs[run_id]["team_id"] = "t"
    exported = threading.Event()
    processor.on_exported = exported.set
    stop = threading.Event()
    thread = threading.Thread(target=processor.run, args=(stop,), daemon=True)
    thread.start()
    # The thread uses the processor's connection; the server queues through another one.
    with StateStore(str(tmp_path / "s.db")) as other:
        other.queue_webhook(run_id, "run_completed", "completed", clock[0])
    processor.wake.set()
    assert exported.wait(10)
    stop.set()
    processor.wake.set()
    thread.join(10)
    assert not thread.is_alive()


def test_the_recheck_floor_spaces_age_schedule_rechecks_while_webhooks_flow(tmp_path):
    api, clock = ModelApi(base=datetime.fromtimestamp(T0 - 60, UTC)), [T0]
    _source, ex, _processor = setup(tmp_path, api, clock)
    api.add("running")
    floor = [0.0]
    ex.recheck_floor = lambda: floor[0]
    ex.run_pass()
    (first,) = ex.store._conn.execute("SELECT next_check_at FROM runs").fetchone()
    assert first - clock[0] < 1800
    floor[0] = 1800.0
    clock[0] = first  # due: re-checked, and the next check is at least the floor away
    ex.run_pass()
    (second,) = ex.store._conn.execute("SELECT next_check_at FROM runs").fetchone()
    assert second - clock[0] >= 1800


def test_readiness_rules(tmp_path):
    store = StateStore(str(tmp_path / "r.db"))
    store.ensure_cursors(["a", "b"])
    now = T0
    assert readiness(store, 60, ["a", "b"], now).reason == "no pass has finished yet"
    record = {"started_at": now - 5, "finished_at": now - 4, "outcome": "ok", "events": 0, "requests": 1}
    store.set_meta(LAST_PASS_KEY, record)
    assert readiness(store, 60, ["a", "b"], now).ready
    assert not readiness(store, 60, ["a", "b"], now + 181).ready  # more than 3 intervals
    assert "3 intervals" in readiness(store, 60, ["a", "b"], now + 181).reason
    store.set_meta(LAST_PASS_KEY, {**record, "outcome": "incomplete", "error": "stopped early: budget"})
    assert readiness(store, 60, ["a", "b"], now).ready
    store.set_meta(LAST_PASS_KEY, {**record, "outcome": "failed", "error": "Duvo API unavailable"})
    assert readiness(store, 60, ["a", "b"], now).reason == "the last pass failed: Duvo API unavailable"
    store.set_meta(LAST_PASS_KEY, record)
    store.record_sink_error("b", "403 forbidden:\ncheck the key", stopped=True)
    answer = readiness(store, 60, ["a", "b"], now)
    assert answer.reason == "sink b is stopped: 403 forbidden: check the key"
    assert readiness(store, 60, ["a"], now).ready  # a sink no longer configured does not count
    assert json.loads(answer.body()) == {"ready": False, "reason": answer.reason}
    # After a restart, the last process's pass does not count until this one has passed.
    restarted = readiness(store, 60, ["a"], now, since=now - 1)
    assert restarted.reason == "no pass has finished yet"


def test_the_interval_of_a_cron_schedule_is_the_gap_between_firings():
    assert interval_seconds(ScheduleSettings(every="45s")) == 45
    assert interval_seconds(ScheduleSettings(cron="*/10 * * * *")) == 600
