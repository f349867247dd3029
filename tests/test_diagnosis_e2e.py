"""Diagnosis end to end over HTTP: the simulator serves scripted message logs, the exporter reads
them within its budget, and a log that cannot be read never blocks or loses an export."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from exporter.config import load_config
from exporter.pipeline import Exporter
from tests.conftest import exported, terminal_ids, write_config
from tests.test_diagnosis import TIMEOUT, call, human, text


def events(tmp_path: Path) -> dict[str, dict[str, Any]]:
    path = tmp_path / "runs.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return {event["run_id"]: event for event in map(json.loads, lines) if event["event"] == "run.finished"}


def one_pass(config: Path) -> Any:
    exporter = Exporter(load_config(config), command="once")
    try:
        report = exporter.extract(threading.Event())
        exporter.drain(threading.Event())
        return report
    finally:
        exporter.close()


def job(sim, status: str, messages: list[Any] | None = None, **fields: Any) -> str:
    if messages is not None:
        fields["messages"] = messages
    return sim.world.create_job(team_id="team-sim", status=status, **fields)["id"]


def test_each_case_of_log_reaches_the_event(sim, tmp_path):
    tool_error = job(
        sim, "failed", [text(0, "Plan", role="user"), call(1, "gmail.search"), call(4, "pdf.extract", TIMEOUT)]
    )
    exhausted = job(sim, "failed", [call(1, "http.request", TIMEOUT), call(2, "http.request", TIMEOUT)])
    reason = job(sim, "stopped", [call(1, "gmail.search"), text(2, "Job stopped by a user", role="system")])
    hitl = job(sim, "interrupted", [call(1, "gmail.search"), human(5, "Approve the refund?")])
    empty = job(sim, "failed", [])
    malformed = job(
        sim,
        "failed",
        ["junk", {"type": "weird"}, {"type": "tool_call", "tool_call": {"name": "x"}, "tool_result": "no"}],
    )
    retried = job(sim, "completed", [call(1, "sheets.append_row", TIMEOUT), call(2, "sheets.append_row")])
    flagged = job(sim, "completed", has_issues=True, issue_severity="critical")
    config = write_config(tmp_path, sim.url)
    report = one_pass(config)
    got = events(tmp_path)
    assert set(got) == terminal_ids(sim)
    assert report.diagnosis_requests == 6  # the six failed/stopped/interrupted Jobs, one page each

    failure = got[tool_error]["diagnosis"]
    assert failure["state"] == "complete"
    assert failure["failure"] == {"tool": "pdf.extract", "error": TIMEOUT["message"], "code": "timeout",
                                  "at": "2026-05-17T10:00:04.000Z", "step": 2}  # fmt: skip
    assert got[exhausted]["diagnosis"]["recovered"] is False
    assert got[exhausted]["diagnosis"]["retries"] == {"http.request": 1}
    assert got[reason]["diagnosis"]["failure"]["reason"] == "Job stopped by a user"
    assert got[hitl]["diagnosis"]["human"]["question"] == "Approve the refund?"
    assert got[empty]["diagnosis"]["steps"]["count"] == 0 and got[empty]["diagnosis"]["failure"] is None
    assert got[malformed]["diagnosis"]["state"] == "complete"
    assert got[malformed]["diagnosis"]["steps"] == {"count": 3, "tool_calls": 1, "seconds": None, "slowest": None}
    # Completed Jobs are not read by default (diagnose.completed_sample: 0).
    assert got[retried]["diagnosis"] == {"state": "skipped"}
    assert got[flagged]["issues"] == {"flagged": True, "severity": "critical"}
    assert got[tool_error]["issues"] == {"flagged": False, "severity": None}


def test_completed_jobs_are_read_when_sampled(sim, tmp_path):
    retried = job(sim, "completed", [call(1, "sheets.append_row", TIMEOUT), call(2, "sheets.append_row")])
    config = write_config(tmp_path, sim.url, extra="diagnose: {completed_sample: 1.0}\n")
    one_pass(config)
    diagnosis = events(tmp_path)[retried]["diagnosis"]
    assert diagnosis["recovered"] is True and diagnosis["retries"] == {"sheets.append_row": 1}


def test_a_long_log_reads_its_tail(sim, tmp_path):
    long_log = [call(k, "browser.open") for k in range(248)] + [call(300, "pdf.extract", TIMEOUT)] * 2
    medium_log = [call(k, "browser.open") for k in range(149)] + [call(300, "pdf.extract", TIMEOUT)]
    long_id, medium_id = job(sim, "failed", long_log), job(sim, "failed", medium_log)
    config = write_config(tmp_path, sim.url)
    report = one_pass(config)
    got = events(tmp_path)
    assert report.diagnosis_requests == 4  # the first page (total), then the last one
    assert got[long_id]["diagnosis"]["state"] == "partial"
    assert got[long_id]["diagnosis"]["failure"]["step"] == 249
    assert got[long_id]["diagnosis"]["steps"]["count"] == 250
    assert got[medium_id]["diagnosis"]["state"] == "complete"  # 100 + the last 50: all of it
    assert got[medium_id]["diagnosis"]["failure"]["step"] == 149

    (tmp_path / "runs.jsonl").unlink()
    (tmp_path / "state.db").unlink()
    config = write_config(tmp_path, sim.url, extra="diagnose: {max_pages: 1}\n")
    one_pass(config)
    head_only = events(tmp_path)[long_id]["diagnosis"]
    assert head_only["state"] == "partial" and head_only["failure"] is None


@pytest.mark.parametrize("status", [503, 404, 429])
def test_a_log_that_cannot_be_read_never_blocks_or_loses_an_export(sim, tmp_path, status):
    failed = [job(sim, "failed", [call(1, "x", TIMEOUT)]) for _ in range(3)]
    job(sim, "completed")
    sim.faults.update(messages_error_status=status)
    config = write_config(tmp_path, sim.url, max_attempts=2)
    one_pass(config)
    got = events(tmp_path)
    assert set(got) == terminal_ids(sim)
    assert max(exported(tmp_path / "runs.jsonl").values()) == 1
    assert {got[run_id]["diagnosis"]["state"] for run_id in failed} == {"unavailable"}
    messages = sum(sim.stats()["requests"]["messages"].values())
    # A 404 is one Job's; after a 503 or 429 outlasting the retries, no other log is asked for this pass.
    assert messages == (3 if status == 404 else 2)


def test_jobs_beyond_the_budget_wait_one_pass_and_never_more(sim, tmp_path):
    failed = [job(sim, "failed", [call(1, "x", TIMEOUT)]) for _ in range(3)]
    done = job(sim, "completed")
    config = write_config(tmp_path, sim.url, extra="diagnose: {max_requests_per_pass: 1}\n")
    report = one_pass(config)
    first = events(tmp_path)
    assert report.diagnosis_requests == 1 and report.held == 2
    assert set(first) == {done, failed[0]}  # the others wait; the completed Job did not
    assert first[failed[0]]["diagnosis"]["state"] == "complete"

    report = one_pass(config)
    second = events(tmp_path)
    assert set(second) == terminal_ids(sim)
    assert max(exported(tmp_path / "runs.jsonl").values()) == 1
    # One gets this pass's request; the other, held a pass already and still without budget,
    # goes out now saying so.
    states = sorted(second[run_id]["diagnosis"]["state"] for run_id in failed[1:])
    assert states == ["complete", "unavailable"]
    assert any("budget" in second[run_id]["diagnosis"].get("reason", "") for run_id in failed[1:])
    assert report.held == 0


def test_a_crash_after_holding_loses_nothing(sim, tmp_path):
    """Held events live in the state file, committed with the Job's record: a new process releases them."""
    failed = [job(sim, "failed", [call(1, "x", TIMEOUT)]) for _ in range(2)]
    config = write_config(tmp_path, sim.url, extra="diagnose: {max_requests_per_pass: 1}\n")
    exporter = Exporter(load_config(config), command="once")
    exporter.extract(threading.Event())
    assert exporter.store.held_count() == 1
    exporter.close()  # no drain: as if killed
    one_pass(config)
    assert set(events(tmp_path)) == set(failed)
    assert max(exported(tmp_path / "runs.jsonl").values()) == 1


def test_the_simulator_serves_scripted_logs_paged(sim):
    import requests

    run_id = job(sim, "failed", [{"n": k} for k in range(250)])
    url = f"{sim.url}/runs/{run_id}/messages"
    headers = {"Authorization": "Bearer dv_sim_key"}
    page = requests.get(url, params={"limit": 100, "offset": 200}, headers=headers, timeout=5).json()
    assert page["total"] == 250 and [m["n"] for m in page["messages"]] == list(range(200, 250))
    answer = requests.post(f"{sim.control_url}/jobs/{run_id}/messages", json={"messages": [{"n": 1}]}, timeout=5)
    assert answer.json() == {"total": 1}
    assert requests.get(url, headers=headers, timeout=5).json() == {"messages": [{"n": 1}], "total": 1}


def test_a_webhooks_job_is_read_at_once_and_waits_when_the_budget_is_spent(sim, tmp_path):
    """The webhook thread's Extractor shares the pass's Diagnoser: within budget the event goes out
    with its diagnosis at once; beyond it the Job is held and the next pass releases it."""
    from exporter.config import DiagnoseSettings, ExtractSettings
    from exporter.source.duvo_client import DuvoClient
    from exporter.source.extraction import Extractor
    from exporter.source.message_log import Diagnoser
    from exporter.state.store import StateStore

    first = job(sim, "failed", [call(1, "x", TIMEOUT)])
    second = job(sim, "failed", [call(1, "y", TIMEOUT)])
    with DuvoClient(sim.url, "dv_sim_key", requests_per_minute=60_000) as client:
        store = StateStore(str(tmp_path / "s.db"))
        extractor = Extractor(client, store, ["team-sim"], ExtractSettings(), start_from="beginning")
        extractor.diagnoser = Diagnoser(client, DiagnoseSettings(), budget=1)
        assert extractor.apply_fetched("team-sim", client.get_run(first)) == 1
        assert extractor.apply_fetched("team-sim", client.get_run(second)) == 0  # held: no budget left
        assert [h.run_id for h in store.held_for_diagnosis()] == [second]
        extractor.run_pass()
        bodies = [json.loads(e.body) for e in store.read_outbox(0, 100, 10_000_000)]
        assert {b["run_id"]: b["diagnosis"]["failure"]["tool"] for b in bodies} == {first: "x", second: "y"}
        assert store.held_count() == 0
        store.close()


def test_every_sink_carries_the_diagnosis_and_the_flags_nested():
    """Datadog: nested attributes (@diagnosis.failure.tool); Loki: in the JSON line (`| json` gives
    diagnosis_failure_tool), not in structured metadata; Splunk and the file sink: the event as is."""
    from exporter.transform import events as run_events
    from exporter.transform.diagnosis import diagnose
    from sinks.datadog_encode import to_log
    from sinks.loki_encode import Encoder

    run = {"id": "r1", "status": "failed", "has_issues": True, "issue_severity": "medium"}
    diagnosis = diagnose([call(1, "pdf.extract", TIMEOUT)], "failed")
    event = run_events.build(run, "t", run_events.EVENT_FINISHED, "2026-05-17T10:00:00.000Z", diagnosis=diagnosis)
    body = event.to_dict()
    log = to_log(body, service="duvo", hostname="h")
    assert log["diagnosis"]["failure"]["tool"] == "pdf.extract"
    assert log["issues"] == {"flagged": True, "severity": "medium"}
    encoder = Encoder({"service": "duvo"})
    line = json.loads(encoder.line(body))
    assert line["diagnosis"]["failure"]["code"] == "timeout"
    assert "human" not in line["diagnosis"]  # null-valued keys are left out at any depth
    assert set(encoder.metadata(body)) == {"run_id", "team_id", "level"}


def test_the_simulators_generated_logs_show_diagnosis(tmp_path):
    """What the demo and the benchmark see: failed Jobs end on a tool error that was retried and
    never recovered, some completed ones retried and recovered, stopped ones say why."""
    from collections import Counter

    from exporter.simulator import Simulator, SimulatorOptions

    options = SimulatorOptions(jobs_per_second=0.0, backfill=300, requests_per_minute=None, seed=5)
    with Simulator(options).start() as simulator:
        config = write_config(tmp_path, simulator.url, extra="diagnose: {completed_sample: 1.0}\n")
        one_pass(config)
        got = events(tmp_path)
        assert set(got) == terminal_ids(simulator)
    by_status: dict[str, list[dict[str, Any]]] = {}
    for event in got.values():
        by_status.setdefault(event["status"], []).append(event["diagnosis"])
    assert {d["state"] for ds in by_status.values() for d in ds} <= {"complete", "partial"}
    started_failures = [d for d in by_status["failed"] if d["steps"]["tool_calls"]]
    assert started_failures and all(d["failure"]["tool"] and d["failure"]["code"] for d in started_failures)
    assert all(d["recovered"] is False for d in started_failures)
    assert Counter(d["recovered"] for d in by_status["completed"])[True] > 0
    assert all(d["failure"] is None for d in by_status["completed"])
    assert any("reason" in (d["failure"] or {}) for d in by_status["stopped"])


def test_once_leaves_nothing_held(sim, tmp_path):
    """`once` has no next pass to wait for: beyond the budget, out now as unavailable."""
    from tests.conftest import cli

    failed = [job(sim, "failed", [call(1, "x", TIMEOUT)]) for _ in range(3)]
    config = write_config(tmp_path, sim.url, extra="diagnose: {max_requests_per_pass: 1}\n")
    result = cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    got = events(tmp_path)
    assert set(got) == set(failed)
    assert sorted(got[run_id]["diagnosis"]["state"] for run_id in failed) == ["complete", "unavailable", "unavailable"]
