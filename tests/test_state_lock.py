"""One writer per state file: a second daemon (or `once`, `replay`) is refused with one line that
names the process holding it; a dead holder (kill -9 included) never blocks a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.state.lock import StateLock, holder_of
from exporter.state.store import StateError, StateStore
from tests.conftest import ROOT, cli, write_config


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


def wait_for_holder(state: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = holder_of(str(state))
        if holder:
            return holder
        time.sleep(0.05)
    raise AssertionError("the daemon never took the state lock")


def test_lock_is_exclusive_names_the_holder_and_is_released(tmp_path):
    state = str(tmp_path / "state.db")
    StateStore(state).close()
    with StateLock(state, "run"):
        assert holder_of(state) == f"pid {os.getpid()}, `run`"
        with pytest.raises(StateError) as refused:
            StateLock(state, "once").acquire()
        assert str(refused.value) == (
            f"state file {state} is in use by another duvo-exporter (pid {os.getpid()}, `run`); "
            "stop it, or give this one its own state.path"
        )
    assert holder_of(state) is None
    with StateLock(state, "once"):  # released: taken again at once
        pass


def test_a_second_daemon_and_once_are_refused_while_one_runs(sim, tmp_path):
    sim.world.create_job(team_id="team-sim", status="completed")
    config = write_config(tmp_path, sim.url, extra="schedule: {every: 1s}\n")
    first = start_daemon(config, tmp_path / "first.log")
    try:
        wait_for_holder(tmp_path / "state.db")
        for command in ("run", "once", "replay"):
            result = cli(command, "--config", str(config), timeout=60)
            assert result.returncode == 3, (command, result.stderr)
            [line] = [line for line in result.stderr.splitlines() if not line.startswith("{")]
            assert line == (
                f"duvo-exporter: error: state file {tmp_path / 'state.db'} is in use by another duvo-exporter "
                f"(pid {first.pid}, `run`); stop it, or give this one its own state.path"
            ), command
        # Reading is not writing: status works beside the daemon and says who writes.
        status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
        assert status["writer"] == f"pid {first.pid}, `run`"
    finally:
        first.kill()  # kill -9: the kernel drops the lock with the process
        first.wait(10)
    assert holder_of(str(tmp_path / "state.db")) is None
    result = cli("once", "--config", str(config), timeout=60)
    assert result.returncode == 0, result.stderr


def test_sigterm_releases_the_lock(sim, tmp_path):
    config = write_config(tmp_path, sim.url, extra="schedule: {every: 1s}\n")
    daemon = start_daemon(config, tmp_path / "d.log")
    try:
        wait_for_holder(tmp_path / "state.db")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)
    assert holder_of(str(tmp_path / "state.db")) is None
