"""Scenario 1, throughput: a backfill with the rate limit lifted, through all three backend sinks.

- Phases measured apart, in this process (the simulator and each receiver run in their own):
  extraction into the outbox (`Exporter.extract`, workers not started), then each sink's
  `SinkWorker.drain` alone. CPU is `time.process_time()` of this process, which runs nothing else
  meanwhile, so "Jobs/s/core" is Jobs per CPU second.
- Extraction again with `state.synchronous: full` (the default) beside `normal`.
- End to end: the real daemon (`python -m exporter run`) as a child with all three sinks, from
  start until every receiver holds every Job; its CPU comes from the kernel's rusage of that child.
- A cProfile'd run (CPU clock) on a smaller backfill says where the time goes.
- The guide's naive script on the same backfill (scenario 6).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench.common import BACKENDS, MB, TEAM, Sizes, fresh_dir, load, log, wait_until, write_config
from bench.naive import NaivePipeline, datadog_forwarder
from bench.procs import ExporterProcess, Remote, start_simulator
from bench.profiling import profiled
from bench.receivers import DATADOG_KEY, sink_yaml, start_receiver

EXTRACTION_TARGET = 20_000  # Jobs/s/core
SINK_TARGET = 5_000

# Every backfill Job has finished (late_fraction 0, history ending 2 minutes ago): N Jobs, N events.
BACKFILL = {
    "jobs_per_second": 0.0,
    "requests_per_minute": None,
    "late_fraction": 0.0,
    "start_ago": 120.0,
    "backfill_window_seconds": 6 * 3600.0,
}
# Loki's pacing (2 MB/s by default, to stay under stock Loki's ingestion limit) would make the
# Loki figure a measure of the pacing: it is off here and only here.
SINK_OPTIONS: dict[str, dict[str, Any]] = {"loki": {"max_bytes_per_second": 0}}


def sinks_for(receivers: dict[str, Remote]) -> str:
    return "".join(
        sink_yaml(kind, receiver.call("url"), **SINK_OPTIONS.get(kind, {})) for kind, receiver in receivers.items()
    )


def _extract(folder: Path, sim_url: str, receivers: dict[str, Remote], synchronous: str) -> tuple[Any, dict[str, Any]]:
    from exporter.pipeline import Exporter

    config = write_config(folder, sim_url, sinks_for(receivers), synchronous=synchronous)
    exporter = Exporter(load(config))
    cpu, wall = time.process_time(), time.perf_counter()
    report = exporter.extract(threading.Event())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return exporter, {
        "synchronous": synchronous,
        "events": report.events,
        "requests": report.requests,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "jobs_per_cpu_second": report.events / cpu,
        "jobs_per_wall_second": report.events / wall,
        "cpu_us_per_job": cpu / report.events * 1e6,
    }


def _drain(exporter: Any, receivers: dict[str, Remote], n: int) -> dict[str, Any]:
    results = {}
    for worker in exporter.workers:
        receiver = receivers[worker.name]
        receiver.call("reset")
        cpu, wall = time.process_time(), time.perf_counter()
        outcome = worker.drain(threading.Event())
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        got = receiver.call("summary")
        results[worker.name] = {
            "outcome": outcome,
            "cpu_seconds": cpu,
            "wall_seconds": wall,
            "jobs_per_cpu_second": n / cpu,
            "jobs_per_wall_second": n / wall,
            "cpu_us_per_job": cpu / n * 1e6,
            "received": got["distinct_finished"],
            "duplicates": got["duplicates"],
            "requests": got["requests"],
            "wire_bytes_per_job": got["bytes"] / max(1, got["distinct_finished"]),
        }
        log(f"  drain {worker.name}: {n / cpu:,.0f} Jobs/CPU-s, {n / wall:,.0f} Jobs/s wall ({outcome})")
    return results


def _end_to_end(sim_url: str, receivers: dict[str, Remote], n: int) -> dict[str, Any]:
    folder = fresh_dir("throughput-e2e")
    for receiver in receivers.values():
        receiver.call("reset")
    config = write_config(folder, sim_url, sinks_for(receivers), synchronous="normal")
    child = ExporterProcess("run", config, folder / "daemon.log")
    done = wait_until(
        lambda: all(r.call("finished_count") >= n for r in receivers.values()) or not child.running(),
        timeout=1800,
        every=0.25,
    )
    elapsed = time.monotonic() - child.started
    child.terminate()
    usage = child.wait(60)
    received = {kind: r.call("summary") for kind, r in receivers.items()}
    return {
        "complete": done and all(s["distinct_finished"] >= n for s in received.values()),
        "wall_seconds": elapsed,
        "jobs_per_second": n / elapsed,
        "cpu_seconds": usage.cpu_seconds,
        "cpu_us_per_job": usage.cpu_seconds / n * 1e6,
        "jobs_per_cpu_second": n / usage.cpu_seconds,
        "peak_rss_mb": usage.peak_rss_bytes / MB,
        "returncode": usage.returncode,
        "received": {kind: s["distinct_finished"] for kind, s in received.items()},
        "duplicates": {kind: s["duplicates"] for kind, s in received.items()},
    }


def _naive(sim_url: str, receiver: Remote, n: int) -> dict[str, Any]:
    receiver.call("reset")
    folder = fresh_dir("throughput-naive")
    naive = NaivePipeline(
        sim_url, "dv_sim_key", TEAM, datadog_forwarder(receiver.call("url"), DATADOG_KEY), folder / "offset"
    )
    cpu, wall = time.process_time(), time.perf_counter()
    naive.invoke()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    naive.close()
    got = receiver.call("summary")
    return {
        "requests": naive.stats.requests,
        "failures": naive.stats.failures,
        "errors": naive.stats.errors,
        "received": got["distinct_finished"],
        "lost": n - got["distinct_finished"],
        "duplicates": got["duplicates"],
        "open_records": got["open_events"],
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "jobs_per_second": n / wall,
        "cpu_us_per_job": cpu / n * 1e6,
    }


def _profile(n: int, receivers: dict[str, Remote]) -> dict[str, Any]:
    simulator = start_simulator(backfill=n, **BACKFILL)
    try:
        folder = fresh_dir("throughput-profile")
        from exporter.pipeline import Exporter

        config = write_config(folder, simulator.call("url"), sinks_for(receivers), synchronous="normal")
        exporter = Exporter(load(config))
        profiles = {}
        _, profiles["extraction"] = profiled(lambda: exporter.extract(threading.Event()))
        for worker in exporter.workers:
            _, profiles[worker.name] = profiled(lambda w=worker: w.drain(threading.Event()))
        exporter.close()
        return {"jobs": n, "phases": profiles}
    finally:
        simulator.close()


def run(sizes: Sizes) -> dict[str, Any]:
    n = sizes.throughput_jobs
    log(f"throughput: backfill of {n:,} Jobs, rate limit lifted")
    receivers = {kind: start_receiver(kind) for kind in BACKENDS}
    simulator = start_simulator(backfill=n, **BACKFILL)
    try:
        sim_url = simulator.call("url")
        exporter, extraction = _extract(fresh_dir("throughput"), sim_url, receivers, "normal")
        log(
            f"  extraction (synchronous normal): {extraction['jobs_per_cpu_second']:,.0f} Jobs/CPU-s, "
            f"{extraction['jobs_per_wall_second']:,.0f} Jobs/s wall"
        )
        assert extraction["events"] == n, f"extracted {extraction['events']} of {n}"
        sinks = _drain(exporter, receivers, n)
        exporter.close()

        naive = _naive(sim_url, receivers["datadog"], n)
        log(f"  naive script: {naive['jobs_per_second']:,.0f} Jobs/s, {naive['requests']} Duvo requests")

        exporter_full, extraction_full = _extract(fresh_dir("throughput-full"), sim_url, receivers, "full")
        exporter_full.close()
        log(
            f"  extraction (synchronous full): {extraction_full['jobs_per_cpu_second']:,.0f} Jobs/CPU-s, "
            f"{extraction_full['jobs_per_wall_second']:,.0f} Jobs/s wall"
        )

        log("  end to end: the daemon with all three sinks")
        e2e = _end_to_end(sim_url, receivers, n)
        log(f"  end to end: {e2e['jobs_per_second']:,.0f} Jobs/s, {e2e['cpu_us_per_job']:.0f} CPU-us/Job")
    finally:
        simulator.close()
    try:
        log(f"  profiling on {sizes.profile_jobs:,} Jobs")
        profile = _profile(sizes.profile_jobs, receivers)
    finally:
        for receiver in receivers.values():
            receiver.close()
    return {
        "jobs": n,
        "extraction": extraction,
        "extraction_full": extraction_full,
        "sinks": sinks,
        "end_to_end": e2e,
        "profile": profile,
        "naive": naive,
        "targets": {"extraction": EXTRACTION_TARGET, "sink": SINK_TARGET},
    }
