"""SinkWorker: the cursor moves only past finished events; nothing is lost or reordered."""

import json
import threading
from collections.abc import Sequence

import pytest

from exporter.delivery.worker import SinkWorker, replay_dead_letters
from exporter.state.store import StateError, StateStore
from sinks.base import Event, Rejection, SendResult
from sinks.settings import FieldSettings, FilterSettings, RetrySettings, SinkSettings


class ScriptedSink:
    """Answers with scripted results, then accepts; records what it was given."""

    def __init__(self, script: Sequence[SendResult | None] = ()) -> None:
        self.name = "s"
        self.script = list(script)
        self.calls: list[list[str]] = []
        self.delivered: list[str] = []

    def send(self, events: Sequence[Event]) -> SendResult:
        ids = [e["run_id"] for e in events]
        self.calls.append(ids)
        result = self.script.pop(0) if self.script else None
        result = result or SendResult.ok(len(events))
        rejected = {r.index for r in result.rejected}
        self.delivered += [i for n, i in enumerate(ids[: result.done]) if n not in rejected]
        return result

    def healthcheck(self) -> None:
        pass

    def close(self) -> None:
        pass


def settings(**overrides) -> SinkSettings:
    base = {"name": "s", "retry": RetrySettings(initial_backoff=0.001, max_backoff=0.002, max_attempts=3)}
    base.update(overrides)
    return SinkSettings(**base)


def fill(store: StateStore, n: int, status=lambda i: "completed") -> None:
    events = []
    for i in range(n):
        body = {"run_id": f"r{i}", "status": status(i), "agent_id": "a", "event": "run.finished", "run": {"x": i}}
        events.append((f"r{i}", f"r{i}:{status(i)}", json.dumps(body)))
    store.commit_extraction("t", [], events, None)


def make(tmp_path, sink, **overrides) -> tuple[SinkWorker, StateStore]:
    store = StateStore(str(tmp_path / "s.db"))
    store.ensure_cursors(["s"])
    return SinkWorker(sink, settings(**overrides), store, ["s"]), store


def test_drains_in_order_in_batches(tmp_path):
    sink = ScriptedSink()
    worker, store = make(tmp_path, sink, batch={"max_events": 4})
    fill(store, 10)
    assert worker.drain(threading.Event()) == "drained"
    assert sink.delivered == [f"r{i}" for i in range(10)]
    assert [len(c) for c in sink.calls] == [4, 4, 2]
    assert store.cursor("s").delivered == 10
    assert store.outbox_size() == 0  # pruned: the only sink has everything


def test_partial_success_advances_only_past_the_finished_prefix(tmp_path):
    sink = ScriptedSink([SendResult.retry("503", done=3)])
    worker, store = make(tmp_path, sink)
    fill(store, 5)
    assert worker.drain(threading.Event()) == "drained"
    assert sink.calls == [["r0", "r1", "r2", "r3", "r4"], ["r3", "r4"]]
    assert sink.delivered == ["r0", "r1", "r2", "r3", "r4"]


def test_rejections_become_dead_letters_with_the_reason_and_replay(tmp_path):
    sink = ScriptedSink([SendResult.ok(4, [Rejection(1, "field too long")])])
    worker, store = make(tmp_path, sink)
    fill(store, 4)
    worker.drain(threading.Event())
    [letter] = store.dead_letters("s")
    assert (letter.run_id, letter.reason) == ("r1", "field too long")
    assert store.cursor("s").rejected == 1 and store.cursor("s").delivered == 3
    delivered, still, error = replay_dead_letters(sink, settings(), store)
    assert (delivered, still, error) == (1, 0, None)
    assert store.dead_letters("s") == []
    assert sink.delivered.count("r1") == 1


def test_retries_give_up_after_max_attempts_keeping_the_backlog(tmp_path):
    sink = ScriptedSink([SendResult.retry("down")] * 10)
    worker, store = make(tmp_path, sink)
    fill(store, 3)
    assert worker.drain(threading.Event()) == "backlog"
    assert len(sink.calls) == 3
    assert store.cursor("s").seq == 0 and store.backlog(0) == 3
    assert store.cursor("s").last_error == "down"


def test_fatal_stops_the_sink_and_keeps_the_backlog(tmp_path):
    sink = ScriptedSink([SendResult.stop("401 bad token")])
    worker, store = make(tmp_path, sink)
    fill(store, 3)
    assert worker.drain(threading.Event()) == "stopped"
    assert store.cursor("s").stopped_reason == "401 bad token"
    assert store.backlog(0) == 3
    store.ensure_cursors(["s"])  # a restart gives it another chance
    assert store.cursor("s").stopped_reason is None


def test_filter_skips_events_and_still_advances(tmp_path):
    sink = ScriptedSink()
    worker, store = make(tmp_path, sink, filter=FilterSettings(statuses=["failed"]))
    fill(store, 6, status=lambda i: "failed" if i % 3 == 0 else "completed")
    assert worker.drain(threading.Event()) == "drained"
    assert sink.delivered == ["r0", "r3"]
    assert store.cursor("s").filtered == 4 and store.cursor("s").seq == 6


def test_field_shaping_include_exclude_rename(tmp_path):
    seen: list[dict] = []

    class Capture(ScriptedSink):
        def send(self, events):
            seen.extend(events)
            return SendResult.ok(len(events))

    worker, store = make(
        tmp_path,
        Capture(),
        fields=FieldSettings(include=["run_id", "status", "run.x", "agent_id"], rename={"agent_id": "assignment"}),
    )
    fill(store, 1)
    worker.drain(threading.Event())
    assert seen == [{"run_id": "r0", "status": "completed", "run": {"x": 0}, "assignment": "a"}]


def test_retry_after_hint_wins_over_backoff(tmp_path):
    worker, _ = make(tmp_path, ScriptedSink())
    assert worker.backoff(1, 7.5) == 7.5
    delays = [worker.backoff(n, None) for n in range(1, 6)]
    assert all(0 < d <= 0.002 for d in delays)


class FailingAdvanceStore(StateStore):
    """A state store whose cursor writes fail ``failures`` times (a full disk), then succeed."""

    def __init__(self, path: str, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    def advance_cursor(self, *args, **kwargs) -> None:
        if self.failures:
            self.failures -= 1
            raise StateError("state file s.db: database or disk is full")
        super().advance_cursor(*args, **kwargs)


def test_a_batch_the_backend_accepted_is_recorded_not_resent_when_the_state_write_fails(tmp_path):
    """The send succeeded, the cursor write did not: the retry records the cursor and never
    hands the same events to the backend again while the process lives."""
    store = FailingAdvanceStore(str(tmp_path / "s.db"), failures=3)
    store.ensure_cursors(["s"])
    fill(store, 10)
    sink = ScriptedSink()
    worker = SinkWorker(sink, settings(batch={"max_events": 4}), store, ["s"])
    for _ in range(3):
        with pytest.raises(StateError):
            worker.deliver_batch()
    assert sink.calls == [["r0", "r1", "r2", "r3"]]  # sent once, although its record failed 3 times
    assert worker.drain(threading.Event()) == "drained"
    assert sink.delivered == [f"r{i}" for i in range(10)]
    assert store.cursor("s").delivered == 10
    assert worker.counters.delivered == 10


def test_the_daemon_loop_pauses_on_a_state_error_and_resends_nothing(tmp_path):
    store = FailingAdvanceStore(str(tmp_path / "s.db"), failures=5)
    store.ensure_cursors(["s"])
    fill(store, 6)
    sink = ScriptedSink()
    worker = SinkWorker(sink, settings(batch={"max_events": 4}), store, ["s"])
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, wake))
    thread.start()
    try:
        for _ in range(500):
            if store.cursor("s").delivered == 6:
                break
            threading.Event().wait(0.01)
    finally:
        stop.set()
        wake.set()
        thread.join(5)
    assert sink.delivered == [f"r{i}" for i in range(6)]
    assert [len(call) for call in sink.calls] == [4, 2]
