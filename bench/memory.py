"""Scenario 4, memory: peak RSS of the exporter over a small and a large backfill.

The real daemon (`python -m exporter run`) runs as a child process with a file sink until the sink
has every Job; its peak RSS is the kernel's high-water mark for that process (VmHWM), and its RSS is
sampled every half second for the chart. The simulator runs in its own process. The backlog stays
in SQLite (the outbox and the Jobs table), so RSS should not grow with the backfill.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.common import MB, Sizes, fresh_dir, log, wait_until, write_config
from bench.procs import ExporterProcess, start_simulator
from bench.receivers import sink_yaml

TARGET_MB = 150.0


def delivered(state: Path, sink: str) -> int:
    """The sink's delivered count, read beside the running daemon (WAL allows a reader)."""
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT delivered FROM sink_cursors WHERE sink = ?", (sink,)).fetchone()
    except sqlite3.Error:
        return 0
    return row[0] if row else 0


def _downsample(series: list[tuple[float, int]], points: int = 400) -> list[tuple[float, float]]:
    step = max(1, len(series) // points)
    return [(round(t, 2), rss / MB) for t, rss in series[::step]]


def _one(n: int) -> dict[str, Any]:
    # At most ~5 Jobs per second of history, so `since` windows look like a busy real team.
    simulator = start_simulator(
        backfill=n,
        jobs_per_second=0.0,
        requests_per_minute=None,
        late_fraction=0.0,
        start_ago=120.0,
        backfill_window_seconds=max(6 * 3600.0, n / 5),
    )
    folder = fresh_dir(f"memory-{n}")
    try:
        config = write_config(
            folder, simulator.call("url"), sink_yaml("file", str(folder / "runs.jsonl"), name="file"), every="30s"
        )
        child = ExporterProcess("run", config, folder / "daemon.log", sample_every=0.5)
        state = folder / "state.db"
        complete = wait_until(lambda: delivered(state, "file") >= n or not child.running(), timeout=1800, every=1.0)
        elapsed = time.monotonic() - child.started
        child.terminate()
        usage = child.wait(60)
        got = delivered(state, "file")
        return {
            "jobs": n,
            "complete": complete and got >= n,
            "delivered": got,
            "peak_rss_mb": usage.peak_rss_bytes / MB,
            "wall_seconds": elapsed,
            "cpu_seconds": usage.cpu_seconds,
            "jobs_per_second": n / elapsed,
            "state_db_mb": state.stat().st_size / MB if state.exists() else None,
            "returncode": usage.returncode,
            "rss_series": _downsample(usage.sampled_rss),
        }
    finally:
        simulator.close()
        (folder / "runs.jsonl").unlink(missing_ok=True)  # up to ~1 GB of JSON Lines


def run(sizes: Sizes) -> dict[str, Any]:
    results = []
    for n in sizes.memory_jobs:
        log(f"memory: backfill of {n:,} Jobs through the daemon with a file sink")
        result = _one(n)
        log(f"  {n:,} Jobs: peak RSS {result['peak_rss_mb']:.1f} MB, {result['jobs_per_second']:,.0f} Jobs/s")
        results.append(result)
    return {"runs": results, "target_mb": TARGET_MB}
