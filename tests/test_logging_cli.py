"""Logging as the real CLI does it: libraries quiet unless --library-log-level, --log-format
json|console (and their environment variables), JSON off a terminal and console text on one."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.simulator import Simulator
from tests.conftest import ROOT, cli, write_config

OWN = ("exporter", "sinks", "transport")


def json_lines(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def loggers(records: list[dict[str, Any]]) -> set[str]:
    return {record["logger"] for record in records}


def foreign(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["logger"].partition(".")[0] not in OWN]


@pytest.fixture
def config(sim: Simulator, tmp_path: Path) -> Path:
    for status in ("completed", "failed", "running", "pending"):
        sim.world.create_job(team_id="team-sim", status=status)
    return write_config(tmp_path, sim.url)


# ---- libraries stay quiet unless asked ----------------------------------------------------------


def test_once_at_debug_shows_the_exporter_and_no_library(config: Path) -> None:
    assert cli("once", "--config", str(config)).returncode == 0
    # The second pass has open Jobs to sweep, which the exporter logs at debug.
    result = cli("once", "--config", str(config), "--log-level", "debug")
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stderr)  # stderr is a pipe here: JSON by default
    assert any(r["level"] == "debug" and r["logger"].startswith("exporter.") for r in records), result.stderr
    assert any(r["event"] == "pass finished" for r in records)
    assert foreign(records) == [], loggers(records)


def test_library_log_level_debug_brings_urllib3_back(config: Path) -> None:
    result = cli("once", "--config", str(config), "--library-log-level", "debug")
    assert result.returncode == 0, result.stderr
    records = json_lines(result.stderr)
    assert "urllib3.connectionpool" in loggers(records)
    # The exporter's own level is still info.
    assert not [r for r in records if r["level"] == "debug" and r["logger"].startswith("exporter.")]
    assert any(r["event"] == "pass finished" for r in records)


def test_library_log_level_from_the_environment(config: Path) -> None:
    result = cli("once", "--config", str(config), env={"DUVO_EXPORTER_LIBRARY_LOG_LEVEL": "debug"})
    assert result.returncode == 0, result.stderr
    assert "urllib3.connectionpool" in loggers(json_lines(result.stderr))
    # The command line wins over the environment.
    environment = {"DUVO_EXPORTER_LIBRARY_LOG_LEVEL": "debug"}
    result = cli("once", "--config", str(config), "--library-log-level", "warning", env=environment)
    assert foreign(json_lines(result.stderr)) == []


@contextlib.contextmanager
def daemon(config: Path, log: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config), *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)


def wait_for_line(log: Path, needle: str, process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if needle in log.read_text():
            return True
        time.sleep(0.05)
    return needle in log.read_text()


def test_the_daemon_at_info_shows_no_apscheduler_lines(config: Path, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with daemon(config, log) as process:
        # APScheduler logs "Running job" before the job runs: by the end of the pass it has spoken.
        assert wait_for_line(log, '"pass finished"', process), log.read_text()
    assert process.returncode == 0
    records = json_lines(log.read_text())
    assert foreign(records) == [], loggers(records)
    assert {"running", "pass finished", "stopped"} <= {r["event"] for r in records}


def test_library_log_level_info_shows_the_daemons_apscheduler_lines(config: Path, tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    with daemon(config, log, "--library-log-level", "info") as process:
        assert wait_for_line(log, "executed successfully", process), log.read_text()
    records = json_lines(log.read_text())
    events = [r["event"] for r in records if r["logger"].startswith("apscheduler.")]
    assert any(e.startswith("Added job") for e in events), events
    assert any(e.startswith("Running job") for e in events), events


# ---- --log-format ------------------------------------------------------------------------------


def assert_console(stderr: str, *, colours: bool) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert any("pass finished" in line for line in lines), stderr
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    assert ("\x1b[" in stderr) is colours


def test_log_format_console_off_a_terminal(config: Path) -> None:
    result = cli("once", "--config", str(config), "--log-format", "console")
    assert result.returncode == 0, result.stderr
    assert_console(result.stderr, colours=False)  # no colour codes in a file or pipe
    assert "[info" in result.stderr


def test_log_format_json_is_the_default_off_a_terminal(config: Path) -> None:
    for args in ((), ("--log-format", "json"), ("--log-format", "auto")):
        result = cli("once", "--config", str(config), *args)
        assert result.returncode == 0, result.stderr
        assert any(r["event"] == "pass finished" for r in json_lines(result.stderr)), args


def test_log_format_from_the_environment(config: Path) -> None:
    result = cli("once", "--config", str(config), env={"DUVO_EXPORTER_LOG_FORMAT": "console"})
    assert result.returncode == 0, result.stderr
    assert_console(result.stderr, colours=False)
    result = cli("once", "--config", str(config), "--log-format", "json", env={"DUVO_EXPORTER_LOG_FORMAT": "console"})
    assert any(r["event"] == "pass finished" for r in json_lines(result.stderr))


@pytest.mark.parametrize(
    ("variable", "value"), [("DUVO_EXPORTER_LOG_FORMAT", "xml"), ("DUVO_EXPORTER_LIBRARY_LOG_LEVEL", "loud")]
)
def test_a_bad_value_in_the_environment_is_a_usage_error(config: Path, variable: str, value: str) -> None:
    result = cli("once", "--config", str(config), env={variable: value})
    assert result.returncode == 2
    assert repr(value) in result.stderr and variable in result.stderr
    assert "Traceback" not in result.stderr


def on_a_terminal(*args: str) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; its exit code and what it wrote there."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env={**os.environ, "TERM": "xterm"},
        )
    finally:
        os.close(terminal)
    output = b""
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError as exc:  # EIO: the child closed its end
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(controller)
    return process.wait(timeout=60), output.decode("utf-8", "replace").replace("\r\n", "\n")


def test_console_on_a_terminal_unless_json_is_asked_for(config: Path) -> None:
    code, text = on_a_terminal("once", "--config", str(config))
    assert code == 0, text
    assert_console(text, colours=True)

    # A container started with -t still wants JSON for its log collector.
    code, text = on_a_terminal("once", "--config", str(config), "--log-format", "json")
    assert code == 0, text
    assert any(r["event"] == "pass finished" for r in json_lines(text)), text
