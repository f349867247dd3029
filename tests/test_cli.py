"""The command line as users meet it: --help, exit codes, status/check output, no secrets."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cli, write_config
from tests.fakes.datadog import DatadogFake

COMMANDS = ["run", "once", "check", "status", "replay", "backfill", "reset-sink", "demo", "simulate"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere_documents_exit_codes(command):
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "--help" in result.stdout
    if command:
        assert "--log-level" in result.stdout
        # The simulator reads no config: offering --config there would be a lie.
        assert ("--config" in result.stdout) == (command != "simulate")
    if command == "simulate":  # every option says what it does
        text = " ".join(result.stdout.split())
        assert "--seed SEED seed for Job ids" in text and "--jobs-per-second RATE new Jobs created" in text
        assert "--backfill JOBS Jobs already there" in text


def test_console_script_and_version():
    result = subprocess.run([str(ROOT / ".venv/bin/duvo-exporter"), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("duvo-exporter ")


def test_bad_key_fails_fast_with_exit_4(sim, tmp_path):
    config = write_config(tmp_path, sim.url)
    for command in ("once", "run"):
        started = time.monotonic()
        result = cli(command, "--config", str(config), env={"DUVO_API_KEY": "dv_WRONG_KEY_123"}, timeout=60)
        assert result.returncode == 4, (command, result.stderr)
        assert time.monotonic() - started < 20
        assert "dv_WRONG_KEY_123" not in result.stderr + result.stdout
        assert "api_key" in result.stderr
    stats = sim.stats()
    assert stats["by_status"].get("401", 0) <= 4  # no retry storm: one attempt per command and team


def test_corrupt_state_file_exits_3_and_is_left_alone(sim, tmp_path):
    config = write_config(tmp_path, sim.url)
    garbage = b"definitely not sqlite" * 50
    (tmp_path / "state.db").write_bytes(garbage)
    for command in ("once", "status"):
        result = cli(command, "--config", str(config))
        assert result.returncode == 3
        assert "corrupt or not an SQLite database" in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("duvo-exporter: error:")]
        assert len(errors) == 1 and "Traceback" not in result.stderr
    assert (tmp_path / "state.db").read_bytes() == garbage


def test_status_text_and_json(sim, tmp_path):
    for status in ("completed", "failed", "running", "waiting"):
        sim.world.create_job(team_id="team-sim", status=status)
    config = write_config(tmp_path, sim.url)
    assert cli("once", "--config", str(config)).returncode == 0
    text = cli("status", "--config", str(config))
    assert text.returncode == 0
    assert "checkpoint: team team-sim" in text.stdout
    assert "open jobs: 2 (running 1, waiting 1)" in text.stdout
    data = json.loads(cli("status", "--json", "--config", str(config)).stdout)
    assert data["open_jobs"]["open"] == 2
    [sink] = data["sinks"]
    assert sink["name"] == "local" and sink["delivered"] == 2 and sink["backlog"] == 0


def test_status_before_any_pass_says_so_plainly(sim, tmp_path):
    config = str(write_config(tmp_path, sim.url))
    result = cli("status", "--config", config)
    assert result.returncode == 0, result.stderr
    assert "no state yet: the exporter has not run" in result.stdout
    data = json.loads(cli("status", "--json", "--config", config).stdout)
    assert data == {"state_path": str(tmp_path / "state.db"), "initialized": False}
    assert not (tmp_path / "state.db").exists()  # status only reads


def test_check_connect_reports_each_part_and_hides_secrets(sim, tmp_path):
    fake = DatadogFake(api_key="dd-SECRET-key-42").start()
    try:
        sinks = f"""\
- type: file
  name: local
  path: {tmp_path / "runs.jsonl"}
- type: datadog
  name: dd
  api_key: ${{DD_KEY}}
  url: {fake.url}
"""
        config = write_config(tmp_path, sim.url, sinks=sinks)
        good = cli("check", "--connect", "--config", str(config), env={"DD_KEY": "dd-SECRET-key-42"})
        assert good.returncode == 0, good.stdout + good.stderr
        assert "duvo: OK" in good.stdout and "sinks[1] (dd, datadog): OK" in good.stdout
        bad = cli("check", "--connect", "--config", str(config), env={"DD_KEY": "dd-WRONG-key-77"})
        assert bad.returncode == 6
        # named as a configuration error names it, inside the message too
        assert "sinks[1] (dd, datadog): FAILED: Datadog rejected the API key" in bad.stdout
        assert "check sinks[1].api_key" in bad.stdout
        wrong_duvo = cli(
            "check", "--connect", "--config", str(config), env={"DD_KEY": "x" * 8, "DUVO_API_KEY": "dv_NOPE_999"}
        )
        assert wrong_duvo.returncode == 4 and "duvo: FAILED" in wrong_duvo.stdout
        for result in (good, bad, wrong_duvo):
            output = result.stdout + result.stderr
            for secret in ("dd-SECRET-key-42", "dd-WRONG-key-77", "dv_NOPE_999"):
                assert secret not in output
    finally:
        fake.stop()


def test_logs_are_json_lines_when_not_a_tty(sim, tmp_path):
    sim.world.create_job(team_id="team-sim", status="completed")
    result = cli("once", "--config", str(write_config(tmp_path, sim.url)))
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert lines and all({"timestamp", "level", "event"} <= set(line) for line in lines)
    assert any(line["event"] == "pass finished" for line in lines)


def test_python_dash_m_exporter_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "duvo-exporter" in result.stdout


RFC3339 = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"


def test_status_shows_the_last_pass_and_every_time_in_rfc3339(sim, tmp_path):
    import re

    sim.world.create_job(team_id="team-sim", status="completed")
    sim.world.create_job(team_id="team-sim", status="running")
    config = str(write_config(tmp_path, sim.url))
    assert cli("once", "--config", config).returncode == 0
    data = json.loads(cli("status", "--json", "--config", config).stdout)
    last = data["last_pass"]
    assert last["outcome"] == "ok" and last["events"] == 1 and last["requests"] >= 1 and last["error"] is None
    assert data["writer"] is None  # `once` has exited
    times = [last["started_at"], last["finished_at"], data["open_jobs"]["next_check_at"]]
    times += [sink["last_success_at"] for sink in data["sinks"]]
    assert all(re.match(RFC3339, value) for value in times), times
    text = cli("status", "--config", config).stdout
    assert f"last pass: ok at {last['finished_at']} (1 event(s)" in text and "writer: none running" in text

    # The API goes away: the pass fails, and status says how and when.
    sim.stop()
    failed = cli("once", "--config", config, timeout=120)
    assert failed.returncode == 5
    last = json.loads(cli("status", "--json", "--config", config).stdout)["last_pass"]
    assert last["outcome"] == "failed" and "127.0.0.1" in last["error"]
    assert "last pass: failed at" in cli("status", "--config", config).stdout


def test_check_connect_tries_the_state_path_and_leaves_it_alone(sim, tmp_path):
    """(An unwritable state path failing the check: tests/test_state_faults.py.)"""
    good = write_config(tmp_path, sim.url, name="good.yaml")
    assert cli("once", "--config", str(good)).returncode == 0
    before = (tmp_path / "state.db").read_bytes()
    result = cli("check", "--connect", "--config", str(good))
    assert result.returncode == 0 and f"state.path ({tmp_path / 'state.db'}): OK" in result.stdout
    assert (tmp_path / "state.db").read_bytes() == before


def test_simulate_on_a_busy_port_is_one_line_and_claims_nothing():
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("simulate", "--port", str(port), timeout=30)
    assert result.returncode == 2
    assert result.stdout == ""  # no "simulator on ..." line for a server that never ran
    assert result.stderr.strip() == f"duvo-exporter: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_simulate_stops_on_sigterm():
    import signal

    from tests.conftest import stable_port

    port = stable_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(f"Duvo API simulator on http://127.0.0.1:{port}/v2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_reader_that_goes_away_ends_status_quietly(sim, tmp_path):
    from exporter.state.store import OutboxEvent, StateStore

    config = str(write_config(tmp_path, sim.url))
    with StateStore(str(tmp_path / "state.db")) as store:  # more output than a pipe holds
        store.ensure_cursors(["local"])
        dead = [(OutboxEvent(i, f"r{i}", f"r{i}:failed", "{}"), "refused: " + "x" * 300) for i in range(400)]
        store.advance_cursor("local", 400, delivered=0, filtered=0, dead=dead)
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "status", "--json", "--dead-letters", "--config", config],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(10)
    proc.stdout.close()  # as `| head -c 10` does
    stderr = proc.stderr.read().decode()
    assert proc.wait(30) == 0, stderr
    assert [line for line in stderr.splitlines() if not line.startswith("{")] == []  # no traceback, no error


def test_demo_runs_outside_the_checkout(tmp_path):
    """The demo config ships in the package: no config/ folder is needed in the working directory."""
    result = subprocess.run(
        [str(ROOT / ".venv/bin/duvo-exporter"), "demo", "--duration", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "exactly once" in result.stdout
    assert (tmp_path / "var/demo/runs.jsonl").exists()


def test_the_demo_config_is_package_data():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "demo.yaml" in project["tool"]["setuptools"]["package-data"]["exporter"]
    assert (ROOT / "config/demo.yaml").resolve() == (ROOT / "exporter/demo.yaml").resolve()
