"""Micro-benchmarks of the hot paths (pytest-benchmark), so a regression shows up in review.

Not a pass/fail timing test: it asserts only that each path did its work. Run with
`python -m bench.run --only micro` (summarised in docs/benchmarks.md), or directly:

    .venv/bin/python -m pytest bench/micro -q --benchmark-columns=mean,stddev,rounds

Every benchmark handles a batch of BATCH events per round, made from simulated Duvo records
(the same records the simulator serves), so per-event cost = mean / BATCH.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.config import ExtractSettings
from exporter.simulator import SimulatorOptions, World
from exporter.source.extraction import Extractor, PassReport
from exporter.state.store import RunUpdate, StateStore
from exporter.transform import events as run_events
from transport import timestamps

BATCH = 100


@pytest.fixture(scope="module")
def runs() -> list[dict[str, Any]]:
    """BATCH finished Jobs as the API renders them."""
    world = World(SimulatorOptions(backfill=BATCH * 2, jobs_per_second=0.0, late_fraction=0.0, seed=5))
    finished = [job for job in world.jobs() if job["status"] in run_events.TERMINAL_STATUSES]
    assert len(finished) >= BATCH
    return finished[:BATCH]


@pytest.fixture(scope="module")
def event_dicts(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    exported_at = timestamps.format_utc(datetime.now(UTC))
    return [run_events.build(run, "team-sim", run_events.EVENT_FINISHED, exported_at).to_dict() for run in runs]


def test_event_build(benchmark: Any, runs: list[dict[str, Any]]) -> None:
    """RunEvent from an API record, as a dict (its serialisation is in test_extraction_page)."""
    exported_at = timestamps.format_utc(datetime.now(UTC))

    def build() -> list[dict[str, Any]]:
        return [run_events.build(run, "team-sim", run_events.EVENT_FINISHED, exported_at).to_dict() for run in runs]

    built = benchmark(build)
    assert len(built) == BATCH and built[0]["run_id"] == runs[0]["id"]


def test_extraction_page(benchmark: Any, runs: list[dict[str, Any]], tmp_path: Path) -> None:
    """Extraction's work for one page once the rows are fetched: classify each row, build and
    serialise its event, commit Jobs, events and checkpoint in one transaction."""
    store = StateStore(str(tmp_path / "state.db"), synchronous="normal")
    extractor = Extractor(None, store, ["team-sim"], ExtractSettings())  # type: ignore[arg-type]
    report = PassReport()
    counter = iter(range(1_000_000))

    def fresh_rows() -> tuple[tuple[Any, ...], dict[str, Any]]:
        n = next(counter)  # new ids every round, so every row is a new finished Job
        rows = [{**run, "id": f"{run['id'][:-6]}{n:06d}"} for run in runs]
        return ("team-sim", rows, report), {"checkpoint": rows[-1]["created_at"]}

    benchmark.pedantic(extractor._commit_rows, setup=fresh_rows, rounds=200, warmup_rounds=5)
    store.close()
    assert report.events == report.runs_seen == BATCH * 205


def test_encode_file(benchmark: Any, event_dicts: list[dict[str, Any]]) -> None:
    from sinks.file import encode

    body = benchmark(encode, event_dicts)
    assert body.count(b"\n") == BATCH


def test_encode_datadog(benchmark: Any, event_dicts: list[dict[str, Any]]) -> None:
    """Each event to a datadog-api-client HTTPLogItem, then to the dict the client serialises."""
    from datadog_api_client.model_utils import data_to_dict
    from datadog_api_client.v2.model.http_log import HTTPLog

    from sinks.datadog import DatadogSink, DatadogSinkSettings

    sink = DatadogSink(
        DatadogSinkSettings(type="datadog", name="dd", api_key="k", url="http://127.0.0.1:9", hostname="bench")
    )

    def encode() -> Any:
        sink._encoded.clear()
        items = [sink._encode(event)[0] for event in event_dicts]  # type: ignore[index]
        return data_to_dict(HTTPLog(items, _check_type=False))

    body = benchmark(encode)
    sink.close()
    assert len(body) == BATCH and body[0]["run_id"] == event_dicts[0]["run_id"]


def test_encode_splunk_hec(benchmark: Any, event_dicts: list[dict[str, Any]]) -> None:
    from sinks.splunk_hec import SplunkHecSink, SplunkHecSinkSettings

    sink = SplunkHecSink(
        SplunkHecSinkSettings(type="splunk_hec", name="hec", token="t", url="http://127.0.0.1:9", host="bench")
    )
    body = benchmark(lambda: b"".join(sink._envelope(event) for event in event_dicts))  # type: ignore[misc]
    sink.close()
    assert body.count(b"\n") == BATCH


def test_encode_loki(benchmark: Any, event_dicts: list[dict[str, Any]]) -> None:
    from sinks.loki_encode import Encoder, push_body

    encoder = Encoder({"service": "duvo"})

    def encode() -> list[bytes]:
        return [push_body(stream.labels, stream.entries) for stream in encoder.streams(event_dicts)]

    bodies = benchmark(encode)
    assert sum(len(json.loads(body)["streams"][0]["values"]) for body in bodies) == BATCH


def _rows(event_dicts: list[dict[str, Any]], round_number: int) -> tuple[list[RunUpdate], list[tuple[str, str, str]]]:
    updates, events = [], []
    for event in event_dicts:
        run_id = f"{event['run_id']}-{round_number}"
        updates.append(RunUpdate(run_id, "team-sim", event["created_at"], event["status"], True, None, None))
        events.append((run_id, f"{run_id}:{event['status']}", json.dumps(event, separators=(",", ":"))))
    return updates, events


def test_outbox_write(benchmark: Any, event_dicts: list[dict[str, Any]], tmp_path: Path) -> None:
    """One page's transaction: BATCH Job rows, BATCH outbox events and the checkpoint."""
    store = StateStore(str(tmp_path / "state.db"), synchronous="normal")
    counter = iter(range(1_000_000))

    def fresh_page() -> tuple[tuple[Any, ...], dict[str, Any]]:
        # New run ids every round (built outside the timed part), so every round inserts.
        updates, events = _rows(event_dicts, next(counter))
        return ("team-sim", updates, events, "2026-01-01T00:00:00.000Z"), {}

    written = benchmark.pedantic(store.commit_extraction, setup=fresh_page, rounds=200, warmup_rounds=5)
    store.close()
    assert written == BATCH


def test_outbox_read(benchmark: Any, event_dicts: list[dict[str, Any]], tmp_path: Path) -> None:
    """A sink worker's read of one batch from its cursor."""
    store = StateStore(str(tmp_path / "state.db"), synchronous="normal")
    for n in range(20):
        store.commit_extraction("team-sim", [], _rows(event_dicts, n)[1], None)
    batch = benchmark(store.read_outbox, 500, BATCH, 4_000_000)
    store.close()
    assert len(batch) == BATCH
