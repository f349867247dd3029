"""`reset-sink NAME --to T` and `replay --sink NAME --since T`: one sink re-sent or skipped, the
others untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, cli_in_process, exported, write_config
from transport import timestamps

# Sink b writes into a directory, so it fails and holds the outbox; b_fixed is the same sink fixed.
SINKS = """\
- type: file
  name: a
  path: {tmp}/a.jsonl
  batch: {{flush_interval: 0}}
- type: file
  name: b
  path: {b_path}
  batch: {{flush_interval: 0}}
  retry: {{max_attempts: 1, initial_backoff: 0.01}}
"""


def _configs(tmp_path: Path, sim_url: str) -> tuple[str, str]:
    (tmp_path / "b-is-a-directory").mkdir()
    broken = write_config(
        tmp_path, sim_url, sinks=SINKS.format(tmp=tmp_path, b_path=tmp_path / "b-is-a-directory"), name="broken.yaml"
    )
    fixed = write_config(tmp_path, sim_url, sinks=SINKS.format(tmp=tmp_path, b_path=tmp_path / "b.jsonl"))
    return str(broken), str(fixed)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with stdin not a terminal (as under cron or CI)."""
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        env=os.environ.copy(),
    )


def _sinks(config: str) -> dict[str, dict]:
    return {s["name"]: s for s in json.loads(cli_in_process("status", "--json", "--config", config).stdout)["sinks"]}


def _two_rounds(sim, config: str) -> tuple[set[str], str, set[str]]:
    """Three Jobs exported, then the time T, then four more: b fails throughout, so the outbox
    holds all seven. Returns (first ids, T, second ids)."""
    first = {sim.world.create_job(team_id="team-sim", status="completed")["id"] for _ in range(3)}
    assert cli_in_process("once", "--config", config).returncode == 6  # b cannot write
    time.sleep(0.01)  # T strictly after the first enqueue, to the millisecond
    moment = timestamps.format_utc(timestamps.now())
    time.sleep(0.01)
    second = {sim.world.create_job(team_id="team-sim", status="failed")["id"] for _ in range(4)}
    assert cli_in_process("once", "--config", config).returncode == 6
    assert set(exported(Path(config).parent / "a.jsonl")) == first | second
    return first, moment, second


def test_reset_sink_backward_resends_forward_skips_and_asks_first(sim, tmp_path):
    broken, fixed = _configs(tmp_path, sim.url)
    first, moment, second = _two_rounds(sim, broken)
    before = _sinks(broken)
    assert before["b"]["cursor"] == 0 and before["a"]["cursor"] == 7

    # Off a terminal and without --yes it says what it would do, refuses in one line, exit 2.
    refused = _run("reset-sink", "a", "--to", moment, "--config", broken)
    assert refused.returncode == 2, refused.stderr
    assert "4 event(s) still in the outbox will be sent to a again" in refused.stdout
    errors = [line for line in refused.stderr.splitlines() if "error" in line]
    assert errors == ["duvo-exporter: error: reset-sink: not moved: confirm on a terminal, or pass --yes in scripts"]
    assert _sinks(broken) == before

    moved = _run("reset-sink", "a", "--to", moment, "--yes", "--config", broken)
    assert moved.returncode == 0, moved.stderr
    assert "cursor 7 -> 3" in moved.stdout
    assert _sinks(broken)["a"]["cursor"] == 3 and _sinks(broken)["b"]["cursor"] == 0
    assert cli_in_process("once", "--config", broken).returncode == 6
    counts = exported(tmp_path / "a.jsonl")
    assert {run_id: counts[run_id] for run_id in first | second} == {
        **dict.fromkeys(first, 1),
        **dict.fromkeys(second, 2),
    }

    # Forward: b skips everything enqueued so far, then, fixed, gets only what comes next.
    forward = _run("reset-sink", "b", "--to", "0s", "--yes", "--config", fixed)
    assert forward.returncode == 0, forward.stderr
    assert "7 event(s) will be skipped, never sent to b" in forward.stdout
    later = sim.world.create_job(team_id="team-sim", status="stopped")["id"]
    assert cli_in_process("once", "--config", fixed).returncode == 0
    assert set(exported(tmp_path / "b.jsonl")) == {later}

    unknown = _run("reset-sink", "nope", "--to", "1h", "--yes", "--config", fixed)
    assert unknown.returncode == 2 and "no sink named 'nope' in the state (sinks: a, b)" in unknown.stderr
    bad_time = _run("reset-sink", "a", "--to", "last week", "--yes", "--config", fixed)
    assert bad_time.returncode == 2 and "--to: 'last week' is not a time" in bad_time.stderr


def test_reset_sink_confirms_on_a_terminal(sim, tmp_path):
    import pty

    broken, _ = _configs(tmp_path, sim.url)
    _, moment, _ = _two_rounds(sim, broken)
    for answer, code, cursor in ((b"n\n", 2, 7), (b"y\n", 0, 3)):
        leader, follower = pty.openpty()
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "exporter", "reset-sink", "a", "--to", moment, "--config", broken],
                stdin=follower,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=ROOT,
            )
            os.write(leader, answer)
            _, stderr = process.communicate(timeout=60)
        finally:
            os.close(leader)
            os.close(follower)
        assert process.returncode == code, stderr
        assert _sinks(broken)["a"]["cursor"] == cursor


def test_replay_since_resends_the_outbox_part_to_one_sink_only(sim, tmp_path):
    broken, _ = _configs(tmp_path, sim.url)
    first, moment, second = _two_rounds(sim, broken)
    before = _sinks(broken)

    result = _run("replay", "--sink", "a", "--since", moment, "--config", broken)
    assert result.returncode == 0, result.stderr
    assert "4 event(s) from the outbox, 0 re-exported from the API" in result.stdout
    counts = exported(tmp_path / "a.jsonl")
    assert {r: counts[r] for r in first | second} == {**dict.fromkeys(first, 1), **dict.fromkeys(second, 2)}
    after = _sinks(broken)
    assert after["b"]["cursor"] == before["b"]["cursor"] == 0  # b's cursor never moves
    assert after["b"]["backlog"] == 7  # and the copies for a are not b's backlog


def test_replay_since_re_exports_what_the_outbox_no_longer_holds(sim, tmp_path):
    _, fixed = _configs(tmp_path, sim.url)
    jobs = {sim.world.create_job(team_id="team-sim", status="completed")["id"] for _ in range(5)}
    assert cli_in_process("once", "--config", fixed).returncode == 0
    assert json.loads(cli_in_process("status", "--json", "--config", fixed).stdout)["outbox"]["events"] == 0  # pruned
    checkpoint = json.loads(cli_in_process("status", "--json", "--config", fixed).stdout)["checkpoints"]

    result = _run("replay", "--sink", "a", "--since", "1h", "--config", fixed)
    assert result.returncode == 0, result.stderr
    assert "0 event(s) from the outbox, 5 re-exported from the API" in result.stdout
    assert exported(tmp_path / "a.jsonl") == dict.fromkeys(jobs, 2)
    assert exported(tmp_path / "b.jsonl") == dict.fromkeys(jobs, 1)
    after = json.loads(cli_in_process("status", "--json", "--config", fixed).stdout)
    assert after["checkpoints"] == checkpoint
    assert after["backfills"] == []  # a finished replay leaves nothing to resume

    # The dead-letter replay is still the default, and --since needs a sink.
    assert _run("replay", "--config", fixed).returncode == 0
    assert _run("replay", "--dead-letters", "--config", fixed).returncode == 0
    no_sink = _run("replay", "--since", "1h", "--config", fixed)
    assert no_sink.returncode == 2 and "replay --since needs --sink NAME" in no_sink.stderr
