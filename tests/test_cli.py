"""The command line as users meet it: --help, exit codes, status/check output, no secrets."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, cli, write_config
from tests.fakes.datadog import DatadogFake

COMMANDS = ["run", "once", "check", "status", "replay", "demo", "simulate"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_everywhere_documents_exit_codes(command):
    result = cli(*([command] if command else []), "--help")
    assert result.returncode == 0
    assert "exit codes:" in result.stdout and "--help" in result.stdout
    if command:
        assert "--config" in result.stdout and "--log-level" in result.stdout


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


def test_status_before_any_pass_is_a_clear_error(sim, tmp_path):
    result = cli("status", "--config", str(write_config(tmp_path, sim.url)))
    assert result.returncode == 3 and "does not exist" in result.stderr


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
        assert "duvo: OK" in good.stdout and "sink dd (datadog): OK" in good.stdout
        bad = cli("check", "--connect", "--config", str(config), env={"DD_KEY": "dd-WRONG-key-77"})
        assert bad.returncode == 6
        assert "sink dd (datadog): FAILED" in bad.stdout
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
