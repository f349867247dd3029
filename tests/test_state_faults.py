"""Bad state through the real CLI: an unusable state file is refused with one clear line and
exit code 3 and is left byte-for-byte alone; a full disk under the state store or the file sink
fails clearly, and once there is room again nothing has been lost or repeated.

tests/test_state.py covers the same files at the StateStore level; here it is what a user meets.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from exporter.delivery.worker import SinkWorker
from exporter.state.store import SCHEMA_VERSION, StateStore
from sinks.file import FileSink, FileSinkSettings
from tests.conftest import (
    NOBODY,
    ROOT,
    TERMINAL,
    cli,
    cli_in_process,
    exported,
    run_unprivileged,
    terminal_ids,
    write_config,
)

COMMANDS = ("once", "run", "status")


def config_for(directory: Path, sim_url: str, state: Path, **extra: object) -> Path:
    # 240/min is the default, so loading the config logs no warning: stderr holds only the error.
    extra.setdefault("requests_per_minute", 240)
    config = write_config(directory, sim_url, **extra)
    config.write_text(config.read_text().replace(str(directory / "state.db"), str(state)))
    return config


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file in the state directory, by name: sidecars (-wal, -shm) appearing count too."""
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir()) if path.is_file()}


def assert_refused(result: subprocess.CompletedProcess[str], *fragments: str, logs: bool = False) -> None:
    """Exit code 3 and one error line on stderr naming the problem; with ``logs``, JSON log
    lines may come before it, but no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    if logs:
        lines = [line for line in lines if not line.startswith("{")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("duvo-exporter: error: ") and "state file" in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ---- unusable files ------------------------------------------------------------------------------


def corrupt(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))  # the magic, then garbage


def foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers(name) VALUES ('ada')")
    conn.commit()
    conn.close()


def newer(path: Path) -> None:
    StateStore(str(path)).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()


UNUSABLE: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt": (corrupt, "corrupt or not an SQLite database"),
    "foreign": (foreign, "another application"),
    "newer-schema": (newer, "newer duvo-exporter"),
}


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_unusable_state_file_is_refused_by_every_command_and_left_alone(sim, tmp_path, kind):
    make, message = UNUSABLE[kind]
    sim.world.create_job(team_id="team-sim", status="completed")
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    make(state_dir / "state.db")
    before = snapshot(state_dir)
    config = config_for(tmp_path, sim.url, state_dir / "state.db")
    for command in COMMANDS:
        if command == "run":  # a subprocess: a daemon that got past the check would hit the timeout
            result = cli(command, "--config", str(config), timeout=30)
        else:
            result = cli_in_process(command, "--config", str(config))
        assert_refused(result, message, str(state_dir / "state.db"))
        assert snapshot(state_dir) == before, command
    assert sim.stats()["requests_total"] == 0  # refused before talking to Duvo
    assert not (tmp_path / "runs.jsonl").exists()


# ---- permissions (as an unprivileged user: root ignores them) ------------------------------------


@contextlib.contextmanager
def world_readable_dir() -> Iterator[Path]:
    """pytest's tmp_path is private to root; the unprivileged user must read the config in here."""
    directory = Path(tempfile.mkdtemp(prefix="duvo-state-faults-"))
    os.chmod(directory, 0o755)
    try:
        yield directory
    finally:
        for path in [directory, *directory.rglob("*")]:
            with contextlib.suppress(OSError):
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
        shutil.rmtree(directory, ignore_errors=True)


def unprivileged_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "exporter", *args]
    return run_unprivileged(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def give_away(*paths: Path) -> None:
    if os.geteuid() == 0:
        for path in paths:
            os.chown(path, NOBODY, NOBODY)


def test_read_only_directory_without_a_state_file(sim):
    with world_readable_dir() as base:
        state_dir = base / "state"
        state_dir.mkdir()
        config = config_for(base, sim.url, state_dir / "state.db")
        os.chmod(config, 0o644)
        give_away(state_dir)
        os.chmod(state_dir, 0o555)
        for command in ("once", "run"):
            assert_refused(unprivileged_cli(command, "--config", str(config)), "cannot create state file")
        status = unprivileged_cli("status", "--config", str(config))
        assert status.returncode == 0 and "no state yet" in status.stdout, status.stderr
        assert sim.stats()["requests_total"] == 0  # refused before talking to Duvo
        # `check --connect` finds it before `once` does
        check = unprivileged_cli("check", "--connect", "--config", str(config))
        assert check.returncode == 3, check.stdout + check.stderr
        assert f"state.path ({state_dir / 'state.db'}): FAILED: directory {state_dir} is not writable" in check.stdout
        assert list(state_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("directory_mode", "file_mode"),
    [(0o555, 0o600), (0o555, 0o400), (0o755, 0o400)],
    ids=["read-only-dir", "read-only-dir-and-file", "read-only-file"],
)
def test_existing_state_that_cannot_be_written(sim, directory_mode, file_mode):
    """A state file the exporter may not write must stop `once` and `run` with code 3 (never an
    internal error), and stay untouched. `status` only reads: where SQLite can read the file it
    may show it, and otherwise it is refused the same way."""
    with world_readable_dir() as base:
        state_dir = base / "state"
        state_dir.mkdir()
        state = state_dir / "state.db"
        StateStore(str(state)).close()  # a valid, empty state file in WAL mode
        config = config_for(base, sim.url, state)
        os.chmod(config, 0o644)
        give_away(state_dir, state)
        os.chmod(state, file_mode)
        os.chmod(state_dir, directory_mode)
        before = state.read_bytes()
        for command in ("once", "run"):
            assert_refused(unprivileged_cli(command, "--config", str(config)), "not writable")
            assert state.read_bytes() == before
        check = unprivileged_cli("check", "--connect", "--config", str(config))
        assert check.returncode == 3, check.stdout + check.stderr
        [line] = [line for line in check.stdout.splitlines() if line.startswith("state.path")]
        assert line.startswith(f"state.path ({state}): FAILED: state file") and "not writable" in line, line
        assert state.read_bytes() == before
        result = unprivileged_cli("status", "--config", str(config))
        if directory_mode & 0o200:
            assert result.returncode == 0, result.stderr  # SQLite could add its -shm beside the file
        else:
            assert_refused(result, "not writable")
        assert state.read_bytes() == before
        assert not (base / "runs.jsonl").exists()


# ---- a full disk ---------------------------------------------------------------------------------


class SmallDisk:
    """A directory that runs out of space: a tmpfs of ``size`` bytes when this process may mount
    one (root), else RLIMIT_FSIZE on the CLI subprocesses (every file they write is capped, and
    SIGXFSZ is ignored so a write fails with EFBIG instead of killing the process)."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.mounted = False
        self.full = True
        path.mkdir()

    def __enter__(self) -> SmallDisk:
        if os.geteuid() == 0 and shutil.which("mount"):
            result = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0755", "tmpfs", str(self.path)],
                capture_output=True,
            )
            self.mounted = result.returncode == 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)

    def make_room(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,size=256m", str(self.path)], check=True, capture_output=True)
        self.full = False

    def _limit(self) -> None:  # runs in the child between fork and exec
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.size, self.size))

    def _preexec(self) -> Callable[[], None] | None:
        return self._limit if self.full and not self.mounted else None

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if self._preexec() is None:
            return cli_in_process(*args)  # the same code path, without a second interpreter's start-up
        return subprocess.run(
            [sys.executable, "-m", "exporter", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            preexec_fn=self._preexec(),
        )

    def popen(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as stderr:
            return subprocess.Popen(
                [sys.executable, "-m", "exporter", *args],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                preexec_fn=self._preexec(),
            )


def populate(sim, count: int) -> None:
    # Bulky records so the state outgrows a 1 MB disk within one pass; a few stay open.
    for n in range(count):
        status = "running" if n % 10 == 0 else "completed"
        sim.world.create_job(team_id="team-sim", status=status, notes="n" * 400)


def finish_all(sim) -> None:
    for job in sim.world.jobs():
        if job["status"] not in TERMINAL:
            sim.world.set_status(job["id"], "failed")


def assert_each_terminal_job_once(sim, out: Path) -> Counter[str]:
    lines = out.read_text().splitlines()
    for line in lines:
        json.loads(line)  # no torn or glued line anywhere
    counts = exported(out)
    missing = terminal_ids(sim) - set(counts)
    assert not missing, f"{len(missing)} terminal Jobs never exported"
    assert set(counts) == terminal_ids(sim)
    return counts


def test_full_disk_under_the_state_store(sim, tmp_path):
    """`once` and `run` stop with a clear error (exit 3, the state store's code) instead of an
    internal error; with room again, one run exports every terminal Job.

    A sink may have had a batch accepted whose cursor write then failed: the process that sent
    it never sends it again, but once it has stopped the next run cannot know, so repeats are
    bounded by one batch per sink (the README's promise), and only of events already written."""
    batch = 100
    sinks = f"""\
- type: file
  name: local
  path: {tmp_path / "runs.jsonl"}
  batch: {{max_events: {batch}, flush_interval: 0}}
"""
    populate(sim, 3000)
    with SmallDisk(tmp_path / "disk", 1 << 20) as disk:
        config = config_for(tmp_path, sim.url, disk.path / "state.db", sinks=sinks, requests_per_minute=60000)
        result = disk.cli("once", "--config", str(config))
        assert_refused(result, str(disk.path / "state.db"), logs=True)
        assert any(word in result.stderr for word in ("full", "disk I/O", "too large")), result.stderr

        # The daemon must not spin on a state it cannot write: it stops, saying why.
        log = tmp_path / "daemon.log"
        daemon_config = config_for(
            tmp_path,
            sim.url,
            disk.path / "state.db",
            name="daemon.yaml",
            extra="schedule: {every: 1s}\n",
            sinks=sinks,
            requests_per_minute=60000,
        )
        daemon = disk.popen("run", "--config", str(daemon_config), log=log)
        try:
            code = daemon.wait(20)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(10)
            pytest.fail("the daemon kept running on a full state disk:\n" + log.read_text()[-3000:])
        text = log.read_text()
        assert code == 3, text[-3000:]
        # Stopped by a failing pass, or refused at start when even setting up needs a write.
        assert "state store failed; stopping" in text or "duvo-exporter: error: state file" in text, text[-3000:]
        assert "Exception in thread" not in text, text[-3000:]  # no thread died on the way out

        written_before = exported(tmp_path / "runs.jsonl")
        assert max(written_before.values(), default=1) == 1  # no resend while the daemon lived

        disk.make_room()
        finish_all(sim)
        result = disk.cli("once", "--config", str(config))
        assert result.returncode == 0, result.stderr
        counts = assert_each_terminal_job_once(sim, tmp_path / "runs.jsonl")
        repeated = {run_id for run_id, count in counts.items() if count > 1}
        assert max(counts.values()) <= 2
        assert len(repeated) <= batch, f"{len(repeated)} repeats, more than the one batch in flight"
        assert repeated <= set(written_before)
        status = json.loads(cli_in_process("status", "--json", "--config", str(config)).stdout)
        assert status["open_jobs"]["open"] == 0
        assert [sink["backlog"] for sink in status["sinks"]] == [0]


def test_full_disk_under_the_file_sink_keeps_the_backlog(sim, tmp_path):
    """The sink's writes fail: `once` exits 6 with the backlog kept in the outbox; with room again
    every terminal Job is in the file, every line whole. Repeats are bounded by the one batch that
    was being written when the disk filled."""
    batch = 100
    populate(sim, 2000)
    with SmallDisk(tmp_path / "disk", 1 << 20) as disk:
        if not disk.mounted:
            pytest.skip("needs a tmpfs mount (root): a file size limit would cap the state file too")
        out = disk.path / "runs.jsonl"
        sinks = f"""\
- type: file
  name: local
  path: {out}
  batch: {{max_events: {batch}, flush_interval: 0}}
  retry: {{initial_backoff: 0.05, max_backoff: 0.1, max_attempts: 3}}
"""
        config = config_for(tmp_path, sim.url, tmp_path / "state.db", sinks=sinks, requests_per_minute=60000)
        for _ in range(2):  # and a second run against the still-full disk
            result = disk.cli("once", "--config", str(config))
            assert result.returncode == 6, result.stderr
            assert "No space left on device" in result.stderr
            status = json.loads(cli_in_process("status", "--json", "--config", str(config)).stdout)
            (local,) = status["sinks"]
            assert local["backlog"] > 0 and local["last_error"]
            assert local["backlog"] + local["delivered"] == len(terminal_ids(sim))

        disk.make_room()
        finish_all(sim)
        result = disk.cli("once", "--config", str(config))
        assert result.returncode == 0, result.stderr
        counts = assert_each_terminal_job_once(sim, out)
        repeats = sum(count - 1 for count in counts.values())
        print(f"\nfile sink on a full disk: {len(counts)} Jobs, {repeats} repeated (batch {batch})")
        assert repeats == 0  # a failed write is cut back, so the retry repeats nothing
        status = json.loads(cli_in_process("status", "--json", "--config", str(config)).stdout)
        assert [sink["backlog"] for sink in status["sinks"]] == [0]
        assert status["outbox"]["events"] == 0  # pruned once the only sink had everything


def test_a_state_error_while_a_sink_idles_does_not_end_its_delivery(tmp_path, monkeypatch):
    """The daemon's sink worker prunes the outbox whenever it runs dry. A write failing there
    (disk full, or the state locked by another process beyond SQLite's 30 s timeout) must be
    retried like any delivery failure, not end the worker thread while the daemon runs on."""
    store = StateStore(str(tmp_path / "state.db"))
    store.ensure_cursors(["local"])
    settings = FileSinkSettings(
        type="file", name="local", path=str(tmp_path / "runs.jsonl"), batch={"flush_interval": 0.05}
    )
    worker = SinkWorker(FileSink(settings), settings, StateStore(str(tmp_path / "state.db")), ["local"])
    worker.backoff = lambda attempt, hint: 0.05  # type: ignore[method-assign]
    failures = {"left": 2}
    real_prune = StateStore.prune_outbox

    def flaky_prune(self: StateStore, active: list[str]) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real_prune(self, active)

    monkeypatch.setattr(StateStore, "prune_outbox", flaky_prune)
    stop, wake = threading.Event(), threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop, wake), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 5
        while failures["left"] and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # past both failures: the worker must be idling again, not dead
        assert thread.is_alive(), "the sink worker thread died on a state error"
        assert failures["left"] == 0, "the idle worker never pruned"
        events = [
            (f"r{i}", f"r{i}:completed", json.dumps({"run_id": f"r{i}", "event": "run.finished"})) for i in range(5)
        ]
        store.commit_extraction("team", [], events, None)
        wake.set()
        deadline = time.monotonic() + 5
        while len(exported(tmp_path / "runs.jsonl")) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert exported(tmp_path / "runs.jsonl") == {f"r{i}": 1 for i in range(5)}
    finally:
        stop.set()
        wake.set()
        thread.join(5)
        store.close()
        worker.store.close()
