"""`duvo-exporter demo`: the simulator, the exporter and a file sink, with progress and a summary
that checks every finished Job arrived exactly once. No credentials, nothing leaves 127.0.0.1."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from collections import Counter
from importlib import resources
from pathlib import Path

from exporter import exitcodes
from exporter.config import load_config
from exporter.logsetup import register_secret
from exporter.pipeline import Exporter
from exporter.simulator import Simulator, SimulatorOptions

TERMINAL = {"completed", "failed", "stopped", "interrupted"}
# Shipped inside the package, so `duvo-exporter demo` works wherever it is installed.
DEMO_CONFIG = str(resources.files("exporter") / "demo.yaml")


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo(args: argparse.Namespace) -> int:
    options = SimulatorOptions(
        seed=7,
        jobs_per_second=4.0,
        late_fraction=0.3,
        time_scale=120.0,  # a Job's minutes pass in seconds, so late outcomes show up in the demo
        backfill=400,
        backfill_window_seconds=1800.0,
        requests_per_minute=300,
        timestamp_style="mixed",
    )
    with Simulator(options).start() as simulator:
        os.environ["DUVO_SIM_URL"] = simulator.url
        config = load_config(args.config or DEMO_CONFIG)
        if args.output:
            config.sinks[0].path = args.output  # type: ignore[attr-defined]
        for secret in config.secrets():
            register_secret(secret)
        output = Path(config.sinks[0].path)  # type: ignore[attr-defined]
        state = Path(config.state.path)
        # The demo shows a first run: start from nothing each time.
        for stale in (output, state, Path(f"{state}-wal"), Path(f"{state}-shm")):
            stale.unlink(missing_ok=True)
        _say(f"Duvo API simulator: {simulator.url} (400 Jobs from the last 30 min, ~4 new Jobs/s, 30% finish late)")
        _say(f"Exporting every {config.schedule.every} to {output} for {args.duration:g}s ...")
        exporter = Exporter(config, command="demo")
        stop = threading.Event()
        exporter.start_workers(stop)
        started = time.monotonic()
        interval = config.schedule.interval_seconds or 2.0
        passes = 0
        try:
            while time.monotonic() - started < args.duration:
                report = exporter.extract(stop)
                passes += 1
                _progress(passes, report, exporter, output)
                stop.wait(interval)
            # A final sweep: re-check every open Job now, then compare with the simulator's truth.
            truth_at = simulator.world.jobs()
            exporter.store.make_all_open_due()
            exporter.extract(stop)  # also wakes the sink workers
            # The demo ends here, so no next pass would release what this one held for its
            # diagnosis: out now (diagnosed while the budget lasts, else `unavailable`).
            exporter.release_held()
            _wait_drained(exporter, timeout=15.0)
        finally:
            stop.set()
            exporter.join_workers(5.0)
            requests = simulator.stats()
            exporter.close()
        return _summary(truth_at, output, passes, requests, time.monotonic() - started)


def _progress(number: int, report: object, exporter: Exporter, output: Path) -> None:
    stats = exporter.store.open_run_stats()
    delivered = _count_lines(output)
    _say(
        f"  pass {number:>2}: {getattr(report, 'requests', 0):>3} requests, "
        f"{getattr(report, 'events', 0):>4} new events, {getattr(report, 'diagnosis_requests', 0):>3} logs read; "
        f"open Jobs tracked {stats['open']:>4}; "
        f"written to file {delivered:>5}"
    )


def _wait_drained(exporter: Exporter, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        high = exporter.store.outbox_bounds()[1]
        if all(exporter.store.cursor(name).seq >= high for name in exporter.sink_names):
            return
        time.sleep(0.1)


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except FileNotFoundError:
        return 0


def _summary(truth: list[dict], output: Path, passes: int, sim_stats: dict, elapsed: float) -> int:
    finished = {job["id"]: job["status"] for job in truth if job["status"] in TERMINAL}
    exported: Counter[str] = Counter()
    if output.exists():
        for line in output.read_text(encoding="utf-8").splitlines():
            event = json.loads(line)
            if event.get("event") == "run.finished":
                exported[event["run_id"]] += 1
    missing = [run_id for run_id in finished if run_id not in exported]
    duplicates = [run_id for run_id, count in exported.items() if count > 1]
    by_status = Counter(finished.values())
    requests = sim_stats.get("requests_total", sim_stats.get("requests", "?"))
    throttled = sim_stats.get("rate_limited", sim_stats.get("429s", 0))
    _say("")
    _say(f"Summary after {elapsed:.0f}s and {passes} passes:")
    _say(
        f"  simulator: {len(truth)} Jobs, {len(finished)} finished ("
        + ", ".join(f"{status} {count}" for status, count in by_status.most_common())
        + f"), {len(truth) - len(finished)} still open"
    )
    _say(f"  Duvo API requests: {requests} (429s: {throttled})")
    _say(f"  {output}: {sum(exported.values())} run.finished events")
    ok = not missing and not duplicates
    _say(
        f"  every finished Job exported exactly once: {'YES' if ok else 'NO'} "
        f"({len(missing)} missing, {len(duplicates)} duplicated)"
    )
    return exitcodes.OK if ok else exitcodes.INTERNAL
