"""What every scenario shares: sizes (full or --quick), the work folder, config files, the machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.procs import ROOT

WORK = ROOT / "var" / "bench"
RESULTS = WORK / "results.json"
DOCS = ROOT / "docs"
SIM_KEY = "dv_sim_key"
TEAM = "team-sim"
BACKENDS = ("datadog", "splunk_hec", "loki")
TERMINAL = frozenset({"completed", "failed", "stopped", "interrupted"})
MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    quick: bool
    throughput_jobs: int  # scenario 1
    profile_jobs: int  # the cProfile'd extraction and drains (profiling slows everything down)
    rate_seconds: float  # scenario 2: how long the budget-bound backfill runs
    rate_budget: int  # requests per minute, simulator and exporter alike
    rate_naive_seconds: float
    efficiency_hours: float  # scenario 3: simulated steady state
    memory_jobs: tuple[int, ...]  # scenario 4
    freshness_seconds: float  # scenario 5
    freshness_history_hours: float
    naive_backfill_jobs: int  # scenario 6's throughput row


FULL = Sizes(
    quick=False,
    throughput_jobs=100_000,
    profile_jobs=10_000,
    rate_seconds=130.0,
    rate_budget=3000,
    rate_naive_seconds=65.0,
    efficiency_hours=4.0,
    memory_jobs=(10_000, 1_000_000),
    freshness_seconds=180.0,
    freshness_history_hours=4.0,
    naive_backfill_jobs=100_000,
)
QUICK = Sizes(
    quick=True,
    throughput_jobs=10_000,
    profile_jobs=3_000,
    rate_seconds=25.0,
    rate_budget=3000,
    rate_naive_seconds=15.0,
    efficiency_hours=2.0,
    memory_jobs=(2_000, 20_000),
    freshness_seconds=75.0,
    freshness_history_hours=1.0,
    naive_backfill_jobs=10_000,
)


def fresh_dir(name: str) -> Path:
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def write_config(
    folder: Path,
    sim_url: str,
    sinks: str,
    *,
    requests_per_minute: float = 1_000_000,
    synchronous: str = "normal",
    every: str = "30s",
    page_size: int = 100,
    extract: str = "",
    max_outbox_events: int = 1_000_000,
    name: str = "exporter.yaml",
) -> Path:
    """An exporter config against the simulator; `sinks` is the YAML list (receivers.sink_yaml)."""
    text = (
        "duvo:\n"
        f"  base_url: {sim_url}\n"
        f"  api_key: {SIM_KEY}\n"
        f"  team_id: {TEAM}\n"
        "  start_from: beginning\n"
        f"  requests_per_minute: {requests_per_minute}\n"
        f"  page_size: {page_size}\n"
        f"schedule: {{every: {every}}}\n"
        "state:\n"
        f"  path: {folder / 'state.db'}\n"
        f"  synchronous: {synchronous}\n"
        f"  max_outbox_events: {max_outbox_events}\n"
        + (f"extract:\n{textwrap.indent(extract, '  ')}" if extract else "")
        + "sinks:\n"
        + textwrap.indent(sinks, "  ")
    )
    path = folder / name
    path.write_text(text)
    return path


def clean_work() -> None:
    """Drop the bulky leftovers (state files, JSON Lines output); logs and results stay."""
    for pattern in ("*/state.db*", "*/runs.jsonl"):
        for path in WORK.glob(pattern):
            path.unlink(missing_ok=True)


def load(path: Path) -> Any:
    from exporter.config import load_config

    return load_config(path)


def quiet_logs() -> None:
    """The exporter logs a line per pass; the benchmark prints its own progress."""
    from exporter.logsetup import configure_logging

    configure_logging("warning")


def wait_until(predicate: Callable[[], bool], timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        import psutil

        memory = psutil.virtual_memory().total
    except ImportError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "exporter", "sinks"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": memory,
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "os": f"{platform.system()} {platform.release()}",
        "commit": commit,
        "dirty": dirty,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg()[0],  # other work on the machine when the run started
    }


def save_result(name: str, result: dict[str, Any]) -> None:
    """Results are kept per scenario, so `--only X` refreshes X and keeps the others' numbers."""
    WORK.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[name] = result
    RESULTS.write_text(json.dumps(data, indent=1, default=str))


def load_results() -> dict[str, Any]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
