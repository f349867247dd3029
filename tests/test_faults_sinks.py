"""Issue 4, "prove it loses nothing": every HTTP backend misbehaving, through the real pipeline.

Each test drives `once` / `status --json` / `replay --dead-letters` (the real CLI code, run in
this process to keep the suite fast) against the Duvo simulator with Jobs in it, and sends to
two sinks: the backend's strict fake receiver ("remote") and a file sink ("local") that is the
reference for what should have arrived and in which order. Every test is parametrized over
datadog, splunk_hec and loki, and checks outcome counts exactly (delivered, dead letters,
backlog) as well as what the fake holds.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.state.store import StateStore
from tests.conftest import cli_in_process, terminal_ids, write_config
from tests.fakes.datadog import DatadogFake
from tests.fakes.loki import FakeLoki
from tests.fakes.splunk_hec import INTERNAL_ERROR, SERVER_BUSY, FakeSplunkHec, Fault

BATCH = 10  # remote sink batch size: several batches per run, so order and partial progress show
JOBS = 24  # three remote batches
GOOD_SECRET = "good-credential-7f3a9c"
WRONG_SECRET = "wrong-credential-51d2e8"


# ---- one interface over the three fakes ------------------------------------------------------


class Backend:
    """A fake receiver behind the operations these tests need, restartable on the same port."""

    kind = ""
    reject_reason = ""  # what the backend's refusal of one event says (kept in the dead letter)
    auth_words = ""  # what the stopped sink's reason says
    streams_per_batch = 1  # requests a batch takes when all goes well

    def __init__(self) -> None:
        self.fake: Any = None
        self.port = 0
        self.url = ""

    def start(self, **options: Any) -> Backend:
        self.fake = self._make(self.port, **options).start()
        self.url = self.fake.url
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.fake is not None:
            self.fake.stop()
            self.fake = None

    def restart(self, **options: Any) -> Backend:
        """A fresh fake at the same URL: the backend came back (or was fixed); its records start empty."""
        self.stop()
        return self.start(**options)

    def sink_yaml(self, *, secret: str = GOOD_SECRET, timeout: float = 5.0, attempts: int = 3) -> str:
        lines = [
            f"- type: {self.kind}",
            "  name: remote",
            f"  url: {self.url}",
            *(f"  {line}" for line in self._credentials(secret).splitlines()),
            f"  timeout: {timeout}",
            f"  batch: {{max_events: {BATCH}, flush_interval: 0}}",
            f"  retry: {{initial_backoff: 0.01, max_backoff: 0.05, max_attempts: {attempts}}}",
        ]
        return "\n".join(lines) + "\n"

    # -- backend specific -----------------------------------------------------------------

    def _make(self, port: int, **options: Any) -> Any:
        raise NotImplementedError

    def _credentials(self, secret: str) -> str:
        raise NotImplementedError

    def stored_ids(self) -> list[str]:
        """run_id of every event the backend stored, in arrival order, duplicates included."""
        raise NotImplementedError

    def request_ids(self) -> list[list[str]]:
        """Per data request (arrival order), the run_ids it carried, as far as the fake parsed them."""
        raise NotImplementedError

    def answered_too_large(self) -> int:
        """How many data requests the backend refused as too large."""
        raise NotImplementedError

    def fail_next(self, status: int, *, retry_after: int | None = None) -> None:
        raise NotImplementedError

    def slow_next(self, seconds: float, times: int) -> None:
        """The next requests are answered (and stored) only after ``seconds``."""
        raise NotImplementedError

    def drop_after_next(self) -> None:
        """The next request is stored, then its connection closed without an answer."""
        raise NotImplementedError

    def reject(self, run_id: str) -> None:
        """Refuse, permanently, any request holding the event of ``run_id``."""
        raise NotImplementedError

    def too_large_options(self) -> dict[str, Any]:
        """Options for `start` that give the backend a body limit a batch of BATCH events exceeds."""
        return {}

    def script_too_large(self) -> None:
        """For a backend whose real limit the sink never reaches: answer 413 as it would."""


class DatadogBackend(Backend):
    kind = "datadog"
    reject_reason = "Invalid log entry"
    auth_words = "Datadog rejected the API key (403 Forbidden)"

    def _make(self, port: int, **options: Any) -> DatadogFake:
        return DatadogFake(api_key=GOOD_SECRET, port=port)

    def _credentials(self, secret: str) -> str:
        return f"api_key: {secret}\nhostname: test-host"

    def stored_ids(self) -> list[str]:
        return self.fake.stored_run_ids

    def request_ids(self) -> list[list[str]]:
        # The fake keeps logs, not request bodies: a stored request's logs are the next
        # `entries` stored ones (202, or None for stored-then-dropped); refused ones store none.
        stored, position, result = self.fake.stored_run_ids, 0, []
        for request in self.fake.log_requests():
            count = request.entries if request.status in (202, None) else 0
            result.append(stored[position : position + count])
            position += count
        return result

    def answered_too_large(self) -> int:
        return sum(1 for r in self.fake.log_requests() if r.status == 413)

    def fail_next(self, status: int, *, retry_after: int | None = None) -> None:
        # Datadog's rate-limit answers carry X-RateLimit-Reset (seconds until the window resets).
        headers = {"X-Ratelimit-Reset": str(retry_after)} if retry_after is not None else {}
        self.fake.script(status, headers=headers)

    def slow_next(self, seconds: float, times: int) -> None:
        self.fake.script(delay=seconds, times=times)

    def drop_after_next(self) -> None:
        self.fake.script(drop_after=True)

    def reject(self, run_id: str) -> None:
        self.fake.reject_run_ids(run_id)

    def script_too_large(self) -> None:
        # The sink never builds a request over the intake's 5 MB / 1,000 logs itself, so the only
        # way to see the intake's 413 is to have it answer one (as it would behind a smaller proxy
        # limit); twice, so the half is split again.
        self.fake.script(413, body={"errors": ["Request too large"]}, times=2)


class SplunkBackend(Backend):
    kind = "splunk_hec"
    reject_reason = "code 6 Invalid data format"
    auth_words = "Splunk HEC rejected the token (403, code 4 Invalid token)"

    def _make(self, port: int, **options: Any) -> FakeSplunkHec:
        return FakeSplunkHec(token=GOOD_SECRET, port=port, **options)

    def _credentials(self, secret: str) -> str:
        return f"token: {secret}\nhost: test-host"

    def stored_ids(self) -> list[str]:
        return [event["run_id"] for event in self.fake.events]

    def request_ids(self) -> list[list[str]]:
        return [_hec_run_ids(r.decoded) for r in self.fake.data_requests()]

    def answered_too_large(self) -> int:
        limit = self.fake.max_content_length
        return sum(1 for r in self.fake.data_requests() if len(r.decoded) > limit)

    def fail_next(self, status: int, *, retry_after: int | None = None) -> None:
        body = dict(INTERNAL_ERROR) if status >= 500 else dict(SERVER_BUSY)
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.fake.script(Fault(status, body, headers))

    def slow_next(self, seconds: float, times: int) -> None:
        self.fake.script(*[Fault.slow(seconds) for _ in range(times)])

    def drop_after_next(self) -> None:
        self.fake.script(Fault.stored_then_dropped())

    def reject(self, run_id: str) -> None:
        self.fake.reject(lambda envelope: envelope["event"].get("run_id") == run_id)

    def too_large_options(self) -> dict[str, Any]:
        return {"max_content_length": 4_000}  # three events per request (about 1 KB each)


class LokiBackend(Backend):
    kind = "loki"
    reject_reason = "HTTP 400 from Loki: entry refused by the fake"
    auth_words = "push refused with HTTP 401"
    streams_per_batch = 2  # one push per stream (label set): the two statuses `populate` makes

    def _make(self, port: int, **options: Any) -> FakeLoki:
        return FakeLoki(bearer_token=GOOD_SECRET, port=port, **options)

    def _credentials(self, secret: str) -> str:
        return f"bearer_token: {secret}"

    def stored_ids(self) -> list[str]:
        return [event["run_id"] for event in self.fake.stored]

    def request_ids(self) -> list[list[str]]:
        result = []
        for request in self.fake.push_requests():
            streams = (request.payload or {}).get("streams", [])
            result.append([json.loads(v[1])["run_id"] for s in streams for v in s["values"]])
        return result

    def answered_too_large(self) -> int:
        return sum(1 for r in self.fake.push_requests() if r.status == 413)

    def fail_next(self, status: int, *, retry_after: int | None = None) -> None:
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        self.fake.script(status, headers=headers)

    def slow_next(self, seconds: float, times: int) -> None:
        self.fake.script(delay=seconds, times=times)

    def drop_after_next(self) -> None:
        self.fake.script(drop_after=True)

    def reject(self, run_id: str) -> None:
        self.fake.reject(lambda entry: entry.event.get("run_id") == run_id, body="entry refused by the fake")

    def too_large_options(self) -> dict[str, Any]:
        return {"max_body_bytes": 2_500}  # two entries per push (about 1 KB each)


def _hec_run_ids(decoded: bytes) -> list[str]:
    if decoded[:2] == b"\x1f\x8b":
        decoded = gzip.decompress(decoded)
    return [json.loads(line)["event"]["run_id"] for line in decoded.splitlines() if line.strip()]


BACKENDS = {"datadog": DatadogBackend, "splunk_hec": SplunkBackend, "loki": LokiBackend}


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    made = BACKENDS[request.param]()
    yield made
    made.stop()


# ---- helpers -----------------------------------------------------------------------------------


def populate(sim: Any, count: int) -> None:
    # Alternating statuses: Loki gets two streams per batch, the others a mix of log levels.
    for index in range(count):
        sim.world.create_job(team_id="team-sim", status="completed" if index % 2 else "failed")


def configure(tmp_path: Path, sim: Any, backend: Backend, **sink: Any) -> Path:
    local = f"- type: file\n  name: local\n  path: {tmp_path / 'runs.jsonl'}\n  batch: {{flush_interval: 0}}\n"
    # Diagnosis is off: it enqueues failed Jobs after the pass's others (README "Diagnosis"), and
    # these tests count pushes and order by batches of Jobs in creation order.
    return write_config(
        tmp_path, sim.url, sinks=local + backend.sink_yaml(**sink), extra="diagnose: {enabled: false}\n"
    )


def file_ids(tmp_path: Path) -> list[str]:
    """The reference: what the file sink got, in outbox order."""
    path = tmp_path / "runs.jsonl"
    return [json.loads(line)["run_id"] for line in path.read_text().splitlines()] if path.exists() else []


def once(config: Path) -> Any:
    return cli_in_process("once", "--config", str(config))


def sink_status(config: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    result = cli_in_process("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    return data, {s["name"]: s for s in data["sinks"]}


def assert_counts(sink: dict[str, Any], *, delivered: int, dead: int = 0, backlog: int = 0) -> None:
    got = {"delivered": sink["delivered"], "dead_letters": sink["dead_letters"], "backlog": sink["backlog"]}
    assert got == {"delivered": delivered, "dead_letters": dead, "backlog": backlog}, sink


def assert_in_order(backend: Backend, stored: list[str], reference: list[str], *, except_: str | None = None) -> None:
    """Each event of ``reference`` (the outbox order) but ``except_`` once and in that order. Loki
    orders entries by timestamp inside a stream and pushes one stream per request, so for it the
    order holds batch by batch."""
    expected = [run_id for run_id in reference if run_id != except_]
    assert Counter(stored) == Counter(expected)
    if backend.streams_per_batch > 1:
        position = {run_id: index for index, run_id in enumerate(reference)}
        batches = [position[run_id] // BATCH for run_id in stored]
        assert batches == sorted(batches)
    else:
        assert stored == expected


# ---- the faults --------------------------------------------------------------------------------


def test_down_for_several_runs_then_back_delivers_the_backlog_in_order(backend, sim, tmp_path):
    backend.start().stop()  # reserve a port, then nothing listens there: connection refused
    config = configure(tmp_path, sim, backend)
    for round_number in range(1, 4):
        populate(sim, 8)
        result = once(config)
        assert result.returncode == 6, result.stderr
        assert "remote (backlog)" in result.stderr
        expected = len(terminal_ids(sim))
        assert expected == 8 * round_number
        _, sinks = sink_status(config)
        assert_counts(sinks["remote"], delivered=0, backlog=expected)
        assert sinks["remote"]["last_error"] and sinks["remote"]["stopped"] is None
        assert_counts(sinks["local"], delivered=expected)  # the other sink is not held back
        assert Counter(file_ids(tmp_path)) == Counter(dict.fromkeys(terminal_ids(sim), 1))

    backend.start()  # back, at the same URL
    result = once(config)
    assert result.returncode == 0, result.stderr
    assert_in_order(backend, backend.stored_ids(), file_ids(tmp_path))
    data, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=24)
    assert_counts(sinks["local"], delivered=24)
    assert data["outbox"]["events"] == 0  # pruned: every sink has them


SLOW = 0.8  # seconds the backend takes to answer; the sink gives up after TIMEOUT
TIMEOUT = 0.25


def test_slower_than_the_timeout_is_retried_and_nothing_is_lost(backend, sim, tmp_path):
    backend.start()
    populate(sim, JOBS)
    backend.slow_next(SLOW, times=2)
    config = configure(tmp_path, sim, backend, timeout=TIMEOUT)
    result = once(config)
    assert result.returncode == 0, result.stderr
    reference = file_ids(tmp_path)
    first_batch = set(reference[:BATCH])
    _, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=JOBS)  # counted once, although possibly stored 3 times
    # Two timed-out attempts, then the batch went through; then the two other batches. The slow
    # requests are still being handled (and stored, late) after the sink gave up on them.
    requests = 2 + 3 * backend.streams_per_batch
    deadline = time.monotonic() + 10
    while len(backend.request_ids()) < requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(backend.request_ids()) == requests
    counts = Counter(backend.stored_ids())
    assert set(counts) == set(reference)
    # At least once: the timed-out requests may have been stored after all, and only they repeat.
    assert {run_id for run_id, n in counts.items() if n > 1} <= first_batch
    assert max(counts.values()) <= 3
    assert all(counts[run_id] == 1 for run_id in reference[BATCH:])


def test_5xx_and_429_are_retried_and_retry_after_is_waited_out(backend, sim, tmp_path):
    backend.start()
    populate(sim, JOBS)
    backend.fail_next(500)
    backend.fail_next(429, retry_after=1)
    config = configure(tmp_path, sim, backend)
    started = time.monotonic()
    result = once(config)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # Exactly one request per answer: two refused, then the three batches. The sink's own backoff
    # is at most 0.05 s here, so only the backend's one-second hint explains the wait.
    assert len(backend.request_ids()) == 2 + 3 * backend.streams_per_batch
    assert elapsed >= 1.0
    assert_in_order(backend, backend.stored_ids(), file_ids(tmp_path))
    _, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=JOBS)


def test_one_event_refused_permanently_is_dead_lettered_then_replayed(backend, sim, tmp_path):
    backend.start()
    populate(sim, JOBS)
    bad = sim.world.jobs()[4]["id"]  # one event among others, inside a remote batch
    backend.reject(bad)
    config = configure(tmp_path, sim, backend)
    result = once(config)
    assert result.returncode == 7, result.stderr  # delivered but for one dead letter: said by the exit code
    reference = file_ids(tmp_path)
    assert bad in reference
    assert_in_order(backend, backend.stored_ids(), reference, except_=bad)  # all the others, each once
    _, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=JOBS - 1, dead=1)
    assert_counts(sinks["local"], delivered=JOBS)
    with StateStore(str(tmp_path / "state.db"), create=False) as store:
        letters = store.dead_letters("remote")
    assert [letter.run_id for letter in letters] == [bad]
    assert backend.reject_reason in letters[0].reason  # the backend's own words

    # Still refused: replay says so and keeps the dead letter.
    result = cli_in_process("replay", "--dead-letters", "--config", str(config))
    assert result.returncode == 7
    assert "sink remote: 0 delivered, 1 rejected again" in result.stdout
    assert sink_status(config)[1]["remote"]["dead_letters"] == 1

    backend.restart()  # fixed: accepts everything
    result = cli_in_process("replay", "--dead-letters", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "sink remote: 1 delivered, 0 rejected again" in result.stdout
    assert backend.stored_ids() == [bad]
    _, sinks = sink_status(config)
    assert sinks["remote"]["dead_letters"] == 0
    assert sinks["remote"]["delivered"] == JOBS
    with StateStore(str(tmp_path / "state.db"), create=False) as store:
        assert store.dead_letters("remote") == []
        resolved = store.dead_letters("remote", pending_only=False)
    assert [letter.run_id for letter in resolved] == [bad]
    # Nothing left to replay: a second replay sends nothing.
    result = cli_in_process("replay", "--dead-letters", "--config", str(config))
    assert result.returncode == 0 and result.stdout == ""
    assert backend.stored_ids() == [bad]


def test_too_large_is_split_and_everything_is_delivered_once(backend, sim, tmp_path):
    backend.start(**backend.too_large_options())
    backend.script_too_large()
    populate(sim, JOBS)
    # One attempt per batch: only splitting inside that attempt can deliver a refused batch (a
    # retry of the same batch would leave a backlog and exit 6).
    config = configure(tmp_path, sim, backend, attempts=1)
    result = once(config)
    assert result.returncode == 0, result.stderr
    assert backend.answered_too_large() >= 1
    assert_in_order(backend, backend.stored_ids(), file_ids(tmp_path))
    # Smaller requests after the refusal: more requests than batches.
    assert len(backend.request_ids()) > 3 * backend.streams_per_batch
    _, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=JOBS)


def test_stored_then_connection_dropped_is_a_retry_not_a_success(backend, sim, tmp_path):
    backend.start()
    backend.drop_after_next()
    populate(sim, JOBS)
    config = configure(tmp_path, sim, backend)
    result = once(config)
    assert result.returncode == 0, result.stderr
    reference = file_ids(tmp_path)
    requests = backend.request_ids()
    dropped = requests[0]
    assert dropped and set(dropped) <= set(reference[:BATCH])
    # The cursor did not move on the dropped attempt: the same events went again, next.
    assert requests[1] == dropped
    counts = Counter(backend.stored_ids())
    # At least once: every event there, the dropped request's events twice, nothing else repeated.
    assert counts == Counter(reference) + Counter(dropped)
    _, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=JOBS)  # the dropped attempt was never counted


def test_rejected_credentials_stop_the_sink_keep_the_backlog_and_hide_the_secret(backend, sim, tmp_path):
    backend.start()
    populate(sim, JOBS)
    config = configure(tmp_path, sim, backend, secret=WRONG_SECRET)
    result = once(config)
    assert result.returncode == 6, result.stderr
    assert "remote (stopped)" in result.stderr
    assert len(backend.request_ids()) == 1  # stopped at the first refusal: no retry storm
    data, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=0, backlog=JOBS)
    assert backend.auth_words in sinks["remote"]["stopped"]
    assert_counts(sinks["local"], delivered=JOBS)
    text = cli_in_process("status", "--config", str(config))
    assert "STOPPED: " + sinks["remote"]["stopped"] in text.stdout
    for output in (result, text):
        for secret in (WRONG_SECRET, GOOD_SECRET):
            assert secret not in output.stdout + output.stderr
            assert base64.b64encode(secret.encode()).decode() not in output.stdout + output.stderr
    assert WRONG_SECRET not in json.dumps(data)

    config = configure(tmp_path, sim, backend, secret=GOOD_SECRET)  # fixed
    result = once(config)
    assert result.returncode == 0, result.stderr
    assert_in_order(backend, backend.stored_ids(), file_ids(tmp_path))
    _, sinks = sink_status(config)
    assert_counts(sinks["remote"], delivered=JOBS)
    assert sinks["remote"]["stopped"] is None
