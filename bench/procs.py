"""Processes for the benchmarks: every party runs in its own process, so the exporter's CPU and RSS
are its own and not the simulator's or a receiver's.

- `Remote` hosts an object (the simulator, a fake receiver) in a spawned process and calls its
  methods over a pipe.
- `SimHost` is the Duvo API simulator as such an object.
- `ExporterProcess` runs the real CLI (`python -m exporter run|once`) as a child and reports its
  wall time, CPU time (from the kernel's rusage of that child alone) and peak RSS (VmHWM).
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _serve(conn: Connection, factory: str, kwargs: dict[str, Any]) -> None:
    module, name = factory.split(":")
    obj = getattr(importlib.import_module(module), name)(**kwargs)
    conn.send(("ready", os.getpid()))
    while True:
        try:
            method, args, kw = conn.recv()
        except EOFError:  # the parent went away
            method, args, kw = "__close__", (), {}
        if method == "__close__":
            try:
                obj.close()
            finally:
                conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(obj, method)(*args, **kw)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Remote:
    """An object living in its own (spawned) process; `call` runs one of its methods there."""

    def __init__(self, factory: str, **kwargs: Any) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self._process = ctx.Process(target=_serve, args=(child, factory, kwargs), daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(120):
            self._process.terminate()
            raise RuntimeError(f"{factory} did not start")
        status, self.pid = self._conn.recv()
        assert status == "ready"

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._conn.send((method, args, kwargs))
            status, value = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"{method}: {value}")
        return value

    def close(self) -> None:
        if not self._process.is_alive():
            return
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            self.call("__close__")
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SimHost:
    """The Duvo API simulator, served from its own process (see `Remote`)."""

    def __init__(self, start_ago: float | None = None, manual_clock: bool = False, **options: Any) -> None:
        from exporter.simulator import ManualClock, Simulator, SimulatorOptions

        if start_ago is not None:
            # Generated history ends this long ago, so every backfill Job has had time to finish.
            options["start"] = datetime.now(UTC) - timedelta(seconds=start_ago)
        self.clock = ManualClock(options.get("start")) if manual_clock else None
        self.sim = Simulator(SimulatorOptions(**options), clock=self.clock).start()

    def url(self) -> str:
        return self.sim.url

    def requests(self) -> dict[str, Any]:
        """Requests by endpoint and status (cheap: no walk over the Jobs)."""
        return self.sim.app.stats.snapshot()

    def counts(self) -> dict[str, Any]:
        return self.sim.world.counts()

    def reset_stats(self) -> None:
        self.sim.app.stats.reset()

    def reset_rate_limits(self) -> None:
        self.sim.app.limiter.reset()

    def terminal_ids(self) -> set[str]:
        return self.sim.world.terminal_ids()

    def job_times(self) -> dict[str, tuple[float, float | None]]:
        """run_id -> (created_at, completed_at or None while open), epoch seconds, for every Job."""
        from transport import timestamps

        times: dict[str, tuple[float, float | None]] = {}
        for job in self.sim.world.jobs():
            created = timestamps.parse(job.get("created_at"))
            completed = timestamps.parse(job.get("completed_at"))
            finished = job["status"] in ("completed", "failed", "stopped", "interrupted") and completed is not None
            times[job["id"]] = (
                created.timestamp() if created else 0.0,
                completed.timestamp() if finished and completed else None,
            )
        return times

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self.sim.app.configure(**changes)

    def advance(self, seconds: float) -> float:
        """Move the manual clock; returns the new time as epoch seconds."""
        assert self.clock is not None, "started without manual_clock"
        return self.clock.advance(seconds).timestamp()

    def now(self) -> float:
        return self.sim.world.now().timestamp()

    def close(self) -> None:
        self.sim.stop()


def start_simulator(**options: Any) -> Remote:
    return Remote("bench.procs:SimHost", **options)


# ---- the exporter as a child process ----------------------------------------------------------


@dataclass
class ProcessUsage:
    wall_seconds: float = 0.0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    # The kernel's high-water mark of the exporter's RSS (VmHWM, read while it runs). Not
    # ru_maxrss: that one survives exec, so it would report this (larger) parent's size at fork.
    peak_rss_bytes: int = 0
    sampled_rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, RSS)
    returncode: int | None = None

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_user + self.cpu_system


def _high_water_mark(pid: int) -> int:
    """VmHWM from /proc: the peak RSS since the process's last exec, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class ExporterProcess:
    """`python -m exporter <command> --config <path>` as a child, with its RSS sampled."""

    def __init__(self, command: str, config: Path, log: Path, sample_every: float = 0.25) -> None:
        self.started = time.monotonic()
        self.usage = ProcessUsage()
        self._log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", command, "--config", str(config), "--log-level", "warning"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self._stop_sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, args=(sample_every,), daemon=True)
        self._sampler.start()

    def _sample(self, every: float) -> None:
        import psutil

        try:
            handle = psutil.Process(self.process.pid)
            while not self._stop_sampling.is_set():
                rss = handle.memory_info().rss
                self.usage.sampled_rss.append((time.monotonic() - self.started, rss))
                self.usage.peak_rss_bytes = max(self.usage.peak_rss_bytes, rss, _high_water_mark(self.process.pid))
                self._stop_sampling.wait(every)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            return

    def _reap(self, block: bool) -> bool:
        """Collect the child's exit and its own rusage (os.wait4: this child only). Popen.poll()
        and wait() must never be used here: they would reap it first and lose the rusage."""
        if self.usage.returncode is not None:
            return True
        pid, status, rusage = os.wait4(self.process.pid, 0 if block else os.WNOHANG)
        if not pid:
            return False
        self.process.returncode = self.usage.returncode = os.waitstatus_to_exitcode(status)
        self.usage.wall_seconds = time.monotonic() - self.started
        self.usage.cpu_user = rusage.ru_utime
        self.usage.cpu_system = rusage.ru_stime
        return True

    def running(self) -> bool:
        return not self._reap(block=False)

    def terminate(self) -> None:
        if self.running():
            self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 600) -> ProcessUsage:
        deadline = time.monotonic() + timeout
        while not self._reap(block=False):
            if time.monotonic() > deadline:
                self.process.kill()
                self._reap(block=True)
                break
            time.sleep(0.05)
        self._stop_sampling.set()
        self._sampler.join(5)
        self._log.close()
        return self.usage
