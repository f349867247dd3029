"""Property: whatever the interleaving of Job creation, status changes, deletions, page reads and
crashes, extraction exports every Job that finished exactly once (real Extractor, real SQLite).

The API is `tests.model_api.ModelApi`: the simulator's paging semantics in memory, so hypothesis
can try hundreds of schedules per second. Mutations run *between page reads* of a pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.config import ExtractSettings, RecheckSettings
from exporter.source.extraction import Extractor
from exporter.state.store import StateStore
from tests.model_api import ModelApi

TERMINAL = ["completed", "failed", "stopped", "interrupted"]
OPEN = ["pending", "starting", "running", "waiting"]
EXAMPLES = int(os.environ.get("DUVO_PROPERTY_EXAMPLES", "120"))


class Crash(Exception):
    """A process death mid-pass: whatever was committed stays, the rest is gone."""


@dataclass(frozen=True)
class Create:
    status: str
    gap: float  # seconds after the previous Job's creation: 0 = same instant (ties)


@dataclass(frozen=True)
class Burst:
    """Many Jobs in the same second (second-precision timestamps make ties common)."""

    count: int
    status: str


@dataclass(frozen=True)
class SetStatus:
    pick: int
    status: str


@dataclass(frozen=True)
class Delete:
    pick: int


@dataclass(frozen=True)
class DeleteJustRead:
    """Deletes a row of the page just served: everything after it shifts back by one."""

    pick: int


mutation = st.one_of(
    st.builds(Burst, st.integers(5, 40), st.sampled_from(OPEN + TERMINAL)),
    st.builds(Create, st.sampled_from(OPEN + TERMINAL), st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 2.0])),
    st.builds(SetStatus, st.integers(0, 10_000), st.sampled_from(OPEN + TERMINAL)),
    st.builds(Delete, st.integers(0, 10_000)),
    st.builds(DeleteJustRead, st.integers(0, 10_000)),
)


@dataclass(frozen=True)
class Pass:
    before: list  # mutations before the pass
    during: list  # (request number, mutation) applied when that request is made
    crash_at: int | None  # the pass dies at this request (a restart follows)


passes = st.builds(
    Pass,
    st.lists(mutation, max_size=25),
    st.lists(st.tuples(st.integers(1, 12), mutation), max_size=12),
    st.one_of(st.none(), st.integers(1, 10)),
)


class World:
    def __init__(self, api: ModelApi) -> None:
        self.api = api
        self.clock = 0.0
        self.ever_deleted: set[str] = set()

    def apply(self, change: object) -> None:
        api = self.api
        if isinstance(change, Create):
            self.clock += change.gap
            api.add(status=change.status, at_seconds=self.clock)
        elif isinstance(change, Burst):
            self.clock = float(int(self.clock) + 1)
            for _ in range(change.count):
                api.add(status=change.status, at_seconds=self.clock)
        elif isinstance(change, SetStatus) and api.runs:
            run_id = sorted(api.runs)[change.pick % len(api.runs)]
            if api.runs[run_id]["status"] not in TERMINAL:  # terminal is final in Duvo
                api.set_status(run_id, change.status)
        elif isinstance(change, Delete) and api.runs:
            run_id = sorted(api.runs)[change.pick % len(api.runs)]
            self.ever_deleted.add(run_id)
            api.delete(run_id)
        elif isinstance(change, DeleteJustRead) and api.last_served:
            run_id = api.last_served[change.pick % len(api.last_served)]
            self.ever_deleted.add(run_id)
            api.delete(run_id)


@pytest.mark.timeout(3600)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    schedule=st.lists(passes, min_size=1, max_size=8),
    since_mode=st.sampled_from(["inclusive", "exclusive", "seconds", "exclusive_seconds"]),
    page_size=st.integers(2, 6),
    emit=st.sampled_from(["terminal", "transitions"]),
    recheck=st.sampled_from(
        [
            RecheckSettings(),  # the sweep, then the age schedule beyond its cap
            RecheckSettings(sweep_pages=0),  # the age schedule alone
            RecheckSettings(sweep_pages=1),  # a sweep that covers only the newest few
            # The sweep alone: the age schedule never comes due, so every outcome of a Job seen
            # open must be found by the status lists.
            RecheckSettings(sweep_pages=10_000, min_interval="100000h", max_interval="100000h"),
        ]
    ),
)
def test_every_finished_job_is_exported_exactly_once(schedule, since_mode, page_size, emit, recheck):
    api = ModelApi(since_mode=since_mode)
    world = World(api)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "state.db")
        now = [1_900_000_000.0]

        def extractor() -> Extractor:
            # A fresh Extractor and connection: what a restarted process would have.
            return Extractor(
                api,
                StateStore(path, synchronous="normal"),  # crashes here are in-process: no fsync needed
                ["t"],
                ExtractSettings(emit=emit, recheck=recheck),
                page_size=page_size,
                start_from="beginning",
                clock=lambda: now[0],
            )

        for step in schedule:
            for change in step.before:
                world.apply(change)
            during = sorted(step.during, key=lambda item: item[0])
            count = [0]

            def on_request(_: ModelApi, during=during, step=step, count=count) -> None:
                count[0] += 1
                if step.crash_at is not None and count[0] == step.crash_at:
                    raise Crash()
                for at, change in during:
                    if at == count[0]:
                        world.apply(change)

            api.on_request = on_request
            now[0] += 7200  # every open Job is due again
            ex = extractor()
            with contextlib.suppress(Crash):
                ex.run_pass()
            ex.store.close()

        # Let everything finish, then pass until quiet.
        api.on_request = None
        for run_id, run in api.runs.items():
            if run["status"] not in TERMINAL:
                api.set_status(run_id, "completed")
        # One quiet pass must be enough: a listing that ends early without cause is a defect
        # too (lag that repeats every pass).
        now[0] += 7200
        ex = extractor()
        ex.run_pass()
        ex.store.close()

        with StateStore(path) as store:
            bodies = [json.loads(b) for (b,) in store._conn.execute("SELECT body FROM outbox ORDER BY seq")]
        finished = [b["run_id"] for b in bodies if b["event"] == "run.finished"]
        assert len(finished) == len(set(finished)), "a Job was exported twice"
        missing = api.terminal_ids() - set(finished)
        assert not missing, f"terminal Jobs never exported: {sorted(missing)}"
        unexpected = set(finished) - api.terminal_ids() - world.ever_deleted
        assert not unexpected, f"exported but not terminal: {sorted(unexpected)}"
        waits = [b["event_id"] for b in bodies if b["event"] == "run.waiting"]
        assert len(waits) == len(set(waits)), "a wait was announced twice"
        if emit == "terminal":
            assert not waits
