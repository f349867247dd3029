"""Scenario 3, request efficiency: Duvo requests per 100 exported Jobs in a steady state.

Hours of steady state run in seconds on a simulated clock: the simulator's World reads a
ManualClock and the exporter's extractor reads the same time, and the benchmark moves both by one
pass interval (5 minutes, the default schedule) before each pass. Jobs arrive at 1 per second
(300 per pass). About 30% of them are still open when first seen: a `late_fraction` of them run
for minutes to an hour (time_scale 4 divides the simulator's 2 min - 4 h), the rest for seconds.
The first hour is warm-up (the longest Jobs reach a steady mix); requests and exported Jobs are
counted after it.

Compared on the identical workload (same seed, same simulated start):
- the exporter as configured by default (`extract.recheck`: the sweep of the open statuses each
  pass, the age schedule beyond its cap, and per fetch the cheaper mix of re-listing the window
  and GET /runs/{id});
- the exporter without the sweep (`sweep_pages: 0`: the age schedule, age x 0.25 in [0s, 1h]),
  and the same with `min_interval: 30m`;
- re-checking every open Job on every pass with GET /runs/{id} (no sweep, recheck max_interval
  0s, and the planner forced to GETs): what a careful hand-written poller does;
- the guide's naive script (scenario 6), which never looks at a Job twice.

Diagnosis (README "Diagnosis": GET /runs/{id}/messages for the failed, interrupted and stopped
Jobs, on by default) is counted apart: `requests`/`per_100` stay extraction's list pages and
GETs, and `diagnosis_requests`/`diagnosis_per_100` are the messages requests on top.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import TEAM, Sizes, fresh_dir, load, log, write_config
from bench.naive import Collector, NaivePipeline
from bench.procs import Remote, start_simulator
from bench.receivers import sink_yaml

INTERVAL = 300.0
JOBS_PER_SECOND = 1.0
LATE_FRACTION = 0.42
TIME_SCALE = 4.0
WARMUP_HOURS = 1.0
TARGET = 1.5  # requests per 100 exported Jobs
VARIANTS: dict[str, dict[str, Any]] = {
    "exporter": {},
    # Without the sweep: open Jobs only on the age schedule (the default before the sweep).
    "exporter_no_sweep": {"extract": "recheck: {sweep_pages: 0}\n"},
    # Re-checks spaced out (a knob, traded against freshness).
    "exporter_recheck_30m": {"extract": "recheck: {sweep_pages: 0, min_interval: 30m}\n"},
    "recheck_all_by_get": {"recheck_all": True},
}


def _simulator(start: datetime) -> Remote:
    return start_simulator(
        manual_clock=True,
        start=start,
        seed=7,
        jobs_per_second=JOBS_PER_SECOND,
        late_fraction=LATE_FRACTION,
        time_scale=TIME_SCALE,
        requests_per_minute=None,
    )


def _exporter_variant(
    name: str, start: datetime, passes: int, warmup: int, recheck_all: bool = False, extract: str = ""
) -> dict[str, Any]:
    from exporter.pipeline import Exporter

    simulator = _simulator(start)
    folder = fresh_dir(f"efficiency-{name}")
    try:
        if recheck_all:
            extract = "recheck: {sweep_pages: 0, min_interval: 0s, max_interval: 0s}\n"
        config = write_config(
            folder,
            simulator.call("url"),
            sink_yaml("file", str(folder / "runs.jsonl"), name="file"),
            every="5m",
            extract=extract,
        )
        exporter = Exporter(load(config))
        now = [simulator.call("now")]
        exporter.extractor.clock = lambda: now[0]
        if recheck_all:
            # Every due open Job by GET, never by re-listing its window.
            exporter.extractor._plan = lambda team, due, checkpoint, listing_cost=0: len(due)  # type: ignore[method-assign]
        per_pass = []
        for index in range(passes):
            now[0] = simulator.call("advance", INTERVAL)
            report = exporter.extract(threading.Event())
            per_pass.append(
                {
                    "pass": index,
                    "pages": report.pages,
                    "sweep_pages": report.sweep_pages,
                    "gets": report.gets,
                    "events": report.events,
                    "diagnosis": report.diagnosis_requests,
                    "diagnosed": report.diagnosed,
                }
            )
        measured = per_pass[warmup:]
        requests = sum(p["pages"] + p["gets"] for p in measured)
        events = sum(p["events"] for p in measured)
        diagnosis = sum(p["diagnosis"] for p in measured)
        sim_requests = simulator.call("requests")["requests_total"]
        # A last sweep re-checks every open Job, so "lost" counts only what could never arrive.
        exporter.store.make_all_open_due()
        exporter.extract(threading.Event())
        truth = simulator.call("terminal_ids")
        rows = exporter.store._conn.execute("SELECT run_id FROM outbox").fetchall()
        exported = [row[0] for row in rows]
        states = _diagnosis_states(exporter.store)
        exporter.close()
        seen = _first_seen_open(folder / "state.db")
        return {
            "requests": requests,
            "pages": sum(p["pages"] for p in measured),
            "sweep_pages": sum(p["sweep_pages"] for p in measured),
            "gets": sum(p["gets"] for p in measured),
            "exported": events,
            "per_100": 100 * requests / max(1, events),
            "diagnosis_requests": diagnosis,
            "diagnosed": sum(p["diagnosed"] for p in measured),
            "diagnosis_per_100": 100 * diagnosis / max(1, events),
            "diagnosis_states": states,
            "simulator_requests_total": sim_requests,
            "lost": len(truth - set(exported)),
            "duplicates": len(exported) - len(set(exported)),
            "first_seen_open": seen,
            "per_pass": per_pass,
        }
    finally:
        simulator.close()


def _diagnosis_states(store: Any) -> dict[str, int]:
    """How many exported events carry each diagnosis.state (skipped = not selected)."""
    counts: dict[str, int] = {}
    for (state,) in store._conn.execute("SELECT json_extract(body, '$.diagnosis.state') FROM outbox"):
        counts[str(state)] = counts.get(str(state), 0) + 1
    return counts


def _first_seen_open(path: Any) -> float:
    """Share of Jobs that were not finished when first listed (still open, or checked again)."""
    with sqlite3.connect(path) as conn:
        total, open_first = conn.execute("SELECT count(*), sum(terminal = 0 OR checks > 0) FROM runs").fetchone()
    return (open_first or 0) / max(1, total)


def _naive(start: datetime, passes: int, warmup: int) -> dict[str, Any]:
    simulator = _simulator(start)
    folder = fresh_dir("efficiency-naive")
    try:
        collector = Collector()
        naive = NaivePipeline(simulator.call("url"), "dv_sim_key", TEAM, collector, folder / "offset")
        before = None
        exported_before = 0
        for index in range(passes):
            if index == warmup:
                before = naive.stats.requests
                exported_before = len(collector.finished)
            simulator.call("advance", INTERVAL)
            naive.invoke()
        naive.close()
        requests = naive.stats.requests - (before or 0)
        exported = len(collector.finished) - exported_before
        truth = simulator.call("terminal_ids")
        return {
            "requests": requests,
            "exported": exported,
            "per_100": 100 * requests / max(1, exported),
            "lost": len(truth - set(collector.finished)),
            "lost_share": len(truth - set(collector.finished)) / max(1, len(truth)),
            "duplicates": sum(count - 1 for count in collector.finished.values()),
            "open_records": collector.open_records,
        }
    finally:
        simulator.close()


def run(sizes: Sizes) -> dict[str, Any]:
    passes = int(sizes.efficiency_hours * 3600 / INTERVAL)
    warmup = int(WARMUP_HOURS * 3600 / INTERVAL)
    # A simulated past, so that no timestamp lies in the future of the real clock.
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=sizes.efficiency_hours + 1)
    log(f"request efficiency: {sizes.efficiency_hours:g} simulated hours, a pass every {INTERVAL:.0f} s")
    variants = {}
    for name, options in VARIANTS.items():
        variants[name] = _exporter_variant(name, start, passes, warmup, **options)
        v = variants[name]
        log(
            f"  {name}: {v['per_100']:.2f} requests per 100 exported ({v['pages']} pages, {v['gets']} GETs); "
            f"{v['first_seen_open']:.0%} first seen open; lost {v['lost']}, duplicated {v['duplicates']}; "
            f"diagnosis: {v['diagnosis_requests']} messages requests, {v['diagnosis_per_100']:.2f} per 100 exported "
            f"({v['diagnosis_states']})"
        )
    naive = _naive(start, passes, warmup)
    log(f"  naive script: {naive['per_100']:.2f} requests per 100 delivered; lost {naive['lost']}")
    return {
        "interval_seconds": INTERVAL,
        "jobs_per_second": JOBS_PER_SECOND,
        "late_fraction": LATE_FRACTION,
        "time_scale": TIME_SCALE,
        "hours": sizes.efficiency_hours,
        "warmup_hours": WARMUP_HOURS,
        "variants": variants,
        "naive": naive,
        "target": TARGET,
    }
