"""Shared fixtures: the simulator on 127.0.0.1, config files, and running the CLI for real."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog

from exporter.simulator import Simulator, SimulatorOptions

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"completed", "failed", "stopped", "interrupted"}


@pytest.fixture
def sim() -> Iterator[Simulator]:
    """A quiet simulator: no generated Jobs, tests create and finish Jobs themselves."""
    with Simulator(SimulatorOptions(jobs_per_second=0.0, requests_per_minute=None)).start() as simulator:
        yield simulator


NOBODY = 65534


@contextlib.contextmanager
def _reachable_by_nobody() -> Iterator[None]:
    """Grant traverse permission on the folders above this checkout and the interpreter for as
    long as an unprivileged subprocess runs: a clone under `mktemp -d` sits in a 0700 folder."""
    import fcntl
    import stat

    # Test suites run side by side on one machine (several checkouts) grant and restore the same
    # folders (/root, the interpreter's): one machine-wide lock keeps one from revoking what the
    # other's subprocess is still using.
    with open(os.path.join(tempfile.gettempdir(), "duvo-exporter-tests-unprivileged.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        folders = {ROOT, *ROOT.parents, *Path(os.path.realpath(sys.executable)).parents}
        changed: list[tuple[Path, int]] = []
        for folder in folders:
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                os.chmod(folder, mode | stat.S_IXOTH)
                changed.append((folder, mode))
        try:
            yield
        finally:
            for folder, mode in changed:
                os.chmod(folder, stat.S_IMODE(mode))


def run_unprivileged(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``command`` as nobody when we are root (root ignores file permissions)."""
    if os.geteuid() != 0:
        return subprocess.run(command, **kwargs)
    with _reachable_by_nobody():
        return subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command], **kwargs
        )


def stable_port() -> int:
    """A free port below the kernel's ephemeral range, for a backend that must come back on the
    same port: while it is down, an outgoing connection could otherwise be given its port."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, max(20001, min(low, 32768) - 1))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def sim_faults(simulator: Simulator, **faults: Any) -> dict[str, Any]:
    response = requests.post(f"{simulator.control_url}/faults", json=faults, timeout=5)
    response.raise_for_status()
    return response.json()


def write_config(
    tmp_path: Path, sim_url: str, *, sinks: str | None = None, extra: str = "", name: str = "exporter.yaml", **duvo: Any
) -> Path:
    # Tests that are not about the rate limit should not wait for it.
    duvo.setdefault("requests_per_minute", 60000)
    duvo.setdefault("read_timeout", 5)
    duvo_lines = "".join(f"  {key}: {json.dumps(value)}\n" for key, value in duvo.items())
    sinks = sinks or textwrap.dedent(
        f"""\
        - type: file
          name: local
          path: {tmp_path / "runs.jsonl"}
          batch: {{flush_interval: 0}}
        """
    )
    text = (
        "duvo:\n"
        f"  base_url: {sim_url}\n"
        "  api_key: ${DUVO_API_KEY:-dv_sim_key}\n"
        "  team_id: team-sim\n"
        "  start_from: beginning\n"
        "  connect_timeout: 2\n"
        f"{duvo_lines}"
        "state:\n"
        f"  path: {tmp_path / 'state.db'}\n"
        "extract:\n"
        "  recheck: {min_interval: 0s, max_interval: 0s}\n"
        f"{extra}"
        "sinks:\n" + textwrap.indent(sinks, "  ")
    )
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def cli_in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m exporter ARGS` run in this process (same code path as `cli`, without the ~1 s of
    interpreter start-up), its stdout/stderr captured. Logging, structlog and signal handlers are
    restored afterwards so that later tests see the process as it was."""
    from exporter import logsetup
    from exporter.cli import main

    out, err = io.StringIO(), io.StringIO()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    root = logging.getLogger()
    level = root.level
    structlog_config = structlog.get_config()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if logsetup._handler is not None:
            root.removeHandler(logsetup._handler)
            logsetup._handler = None
        root.setLevel(level)
        structlog.configure(**structlog_config)
    return subprocess.CompletedProcess(["exporter", *args], code, out.getvalue(), err.getvalue())


def exported(path: Path) -> Counter[str]:
    """run_id -> how many run.finished events the file sink holds."""
    counts: Counter[str] = Counter()
    if path.exists():
        text = path.read_text()
        # A line without its newline is still being written: not delivered yet.
        for line in text[: text.rfind("\n") + 1].splitlines():
            event = json.loads(line)
            if event["event"] == "run.finished":
                counts[event["run_id"]] += 1
    return counts


def terminal_ids(simulator: Simulator) -> set[str]:
    return {job["id"] for job in simulator.world.jobs() if job["status"] in TERMINAL}
