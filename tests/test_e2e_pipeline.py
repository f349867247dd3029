"""The pipeline end to end over real HTTP: the simulator in, the real CLI, files and fakes out."""

from __future__ import annotations

import json
import random
import time

import pytest

from tests.conftest import cli, exported, sim_faults, stable_port, terminal_ids, write_config
from tests.fakes.datadog import DatadogFake

STATUSES = ["completed", "failed", "stopped", "interrupted", "pending", "running", "waiting", "starting"]


def populate(sim, count: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    return [sim.world.create_job(team_id="team-sim", status=rng.choice(STATUSES))["id"] for _ in range(count)]


def finish_all(sim) -> None:
    for job in sim.world.jobs():
        if job["status"] not in ("completed", "failed", "stopped", "interrupted"):
            sim.world.set_status(job["id"], random.choice(["completed", "failed"]))


def test_basic_export_then_late_transitions(sim, tmp_path):
    populate(sim, 250)
    config = write_config(tmp_path, sim.url)
    result = cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    first = exported(tmp_path / "runs.jsonl")
    assert set(first) == terminal_ids(sim)
    assert max(first.values()) == 1

    # Jobs that were open finish later; new Jobs arrive.
    finish_all(sim)
    populate(sim, 30, seed=4)
    result = cli("once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    second = exported(tmp_path / "runs.jsonl")
    assert set(second) == terminal_ids(sim)
    assert max(second.values()) == 1

    lines = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    event = lines[0]
    assert set(event) >= {
        "run_id", "team_id", "agent_id", "status", "created_at", "started_at", "completed_at",
        "duration_seconds", "pending_human_request", "run", "exported_at", "event_id", "event",
    }  # fmt: skip
    assert event["run"]["id"] == event["run_id"]
    assert event["team_id"] == "team-sim"


@pytest.mark.parametrize("since_mode", ["inclusive", "exclusive", "seconds", "exclusive_seconds"])
def test_inserts_during_paging_in_every_since_mode(tmp_path, since_mode):
    from exporter.simulator import Simulator, SimulatorOptions

    options = SimulatorOptions(jobs_per_second=0.0, requests_per_minute=None, since_mode=since_mode, seed=11)
    with Simulator(options).start() as sim:
        populate(sim, 400, seed=5)
        sim_faults(sim, insert_during_paging=3)
        config = write_config(tmp_path, sim.url, page_size=25)
        for _ in range(3):
            assert cli("once", "--config", str(config)).returncode == 0
        sim_faults(sim, insert_during_paging=0)
        finish_all(sim)
        for _ in range(2):
            result = cli("once", "--config", str(config))
            assert result.returncode == 0, result.stderr
        counts = exported(tmp_path / "runs.jsonl")
        assert set(counts) == terminal_ids(sim)
        assert max(counts.values()) == 1


def test_429_retry_after_is_respected(sim, tmp_path):
    populate(sim, 30)
    sim_faults(sim, burst_429=2)
    config = write_config(tmp_path, sim.url, requests_per_minute=240)
    started = time.monotonic()
    result = cli("once", "--config", str(config))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert set(exported(tmp_path / "runs.jsonl")) == terminal_ids(sim)
    stats = sim.stats()
    assert stats["rate_limited"] >= 2
    assert elapsed >= 1.0  # the simulator's Retry-After was waited out, not hammered


def test_5xx_timeouts_and_malformed_bodies_are_survived(sim, tmp_path):
    populate(sim, 200)
    sim_faults(sim, error_rate=0.25, malformed_rate=0.1, reset_rate=0.05)
    # diagnose.share 0.01: reading logs through the faults takes at most 3 s a pass (README "Diagnosis")
    config = write_config(tmp_path, sim.url, page_size=20, max_attempts=8, extra="diagnose: {share: 0.01}\n")
    for _ in range(4):
        result = cli("once", "--config", str(config))
        assert result.returncode in (0, 5), result.stderr
    # Every request now outlasts the read timeout: the pass fails cleanly with exit code 5 and
    # keeps what it committed.
    sim_faults(sim, error_rate=0.0, malformed_rate=0.0, reset_rate=0.0, slow_seconds=1.5)
    slow = write_config(tmp_path, sim.url, name="slow.yaml", read_timeout=0.5, max_attempts=2)
    result = cli("once", "--config", str(slow))
    assert result.returncode == 5, result.stderr
    assert "unavailable" in result.stderr.lower() or "timed out" in result.stderr.lower()
    sim_faults(sim, slow_seconds=0.0)
    finish_all(sim)
    for _ in range(2):
        result = cli("once", "--config", str(config))
        assert result.returncode == 0, result.stderr
    counts = exported(tmp_path / "runs.jsonl")
    assert set(counts) == terminal_ids(sim)
    assert max(counts.values()) == 1


def test_a_sink_down_for_several_passes_catches_up_in_order(sim, tmp_path):
    port = stable_port()
    url = f"http://127.0.0.1:{port}"  # nothing listens yet: connection refused
    sinks = f"""\
- type: file
  name: local
  path: {tmp_path / "runs.jsonl"}
  batch: {{flush_interval: 0}}
- type: datadog
  name: dd
  api_key: dd-test-key
  url: {url}
  retry: {{initial_backoff: 0.05, max_backoff: 0.1, max_attempts: 2}}
"""
    config = write_config(tmp_path, sim.url, sinks=sinks)
    for round_number in range(3):
        populate(sim, 40, seed=round_number)
        result = cli("once", "--config", str(config))
        assert result.returncode == 6, result.stderr  # the datadog backlog is kept
        assert set(exported(tmp_path / "runs.jsonl")) == terminal_ids(sim)  # file sink unaffected
    status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
    dd = next(s for s in status["sinks"] if s["name"] == "dd")
    assert dd["backlog"] == len(terminal_ids(sim)) and dd["last_error"]

    back = DatadogFake(api_key="dd-test-key", port=port).start()
    try:
        result = cli("once", "--config", str(config))
        assert result.returncode == 0, result.stderr
        delivered = [log["run_id"] for log in back.stored]
        in_file = [json.loads(line)["run_id"] for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
        assert delivered == in_file  # same events, same order
        status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
        assert all(s["backlog"] == 0 for s in status["sinks"])
        assert status["outbox"]["events"] == 0  # pruned once every sink had them
    finally:
        back.stop()
