"""Scenario 2, rate-limit utilisation: the simulator enforces a budget, the exporter is given the same.

The budget is scaled up (3,000 requests/min instead of 300) so that minutes of backfill fit in the
run; `page_size` is 20 so that this 2-core machine's CPU, which also runs the simulator, is not
what limits the request rate: the scenario measures pacing, not throughput. The exporter is the
real daemon (`python -m exporter run`) with a file sink. The simulator's request counters are
sampled every second: the achieved rate is requests over the measured time, and every 60-second
window is checked against the budget (the simulator's limit is a sliding 60-second window).

The naive script gets the same budget on a fresh window, run by "cron" every 30 s (the guide's
5 minutes, scaled like the budget), reading 100-row pages until it is caught up or fails.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.common import TEAM, Sizes, fresh_dir, log, write_config
from bench.naive import NaivePipeline, datadog_forwarder
from bench.procs import ExporterProcess, Remote, start_simulator
from bench.receivers import DATADOG_KEY, sink_yaml, start_receiver

PAGE_SIZE = 20
UTILISATION_TARGET = 0.95
NAIVE_KEY = "dv_naive_key"
NAIVE_CRON_SECONDS = 30.0
NAIVE_PAGES_PER_SECOND = 80  # more than this machine manages, so the naive script never catches up


class Sampler(threading.Thread):
    """(seconds, requests, 429s) from the simulator's counters, once a second."""

    def __init__(self, simulator: Remote) -> None:
        super().__init__(daemon=True)
        self.simulator = simulator
        self.samples: list[tuple[float, int, int]] = []
        self.halt = threading.Event()
        self.started_at = time.monotonic()

    def run(self) -> None:
        while True:
            stats = self.simulator.call("requests")
            self.samples.append((time.monotonic() - self.started_at, stats["requests_total"], stats["rate_limited"]))
            if self.halt.wait(1.0):
                return

    def first_request_at(self) -> float | None:
        return next((t for t, requests, _ in self.samples if requests > 0), None)


def analyse(samples: list[tuple[float, int, int]], budget: int) -> dict[str, Any]:
    """Rate over the whole measured span (from the last sample before the first request), and per 60 s."""
    start = next((i for i, (_, requests, _) in enumerate(samples) if requests > 0), None)
    if start is None:
        return {"requests": 0}
    start = max(0, start - 1)
    t0, r0, _ = samples[start]
    t1, r1, limited = samples[-1]
    windows = []
    for t, requests, _ in samples[start:]:
        if t - t0 < 60:
            continue
        earlier = max((s for s in samples[start:] if s[0] <= t - 60), key=lambda s: s[0])
        windows.append((requests - earlier[1]) * 60 / (t - earlier[0]))
    per_minute = (r1 - r0) * 60 / (t1 - t0)
    return {
        "requests": r1 - r0,
        "seconds": t1 - t0,
        "per_minute": per_minute,
        "utilisation": per_minute / budget,
        "window_min": min(windows) if windows else None,
        "window_max": max(windows) if windows else None,
        "rate_limited": limited,
        "series": [(round(t - t0, 2), requests - r0) for t, requests, _ in samples[start:]],
    }


def _exporter(simulator: Remote, budget: int, seconds: float) -> dict[str, Any]:
    folder = fresh_dir("ratelimit")
    sinks = sink_yaml("file", str(folder / "runs.jsonl"), name="file")
    config = write_config(
        folder, simulator.call("url"), sinks, requests_per_minute=budget, page_size=PAGE_SIZE, every="30s"
    )
    sampler = Sampler(simulator)
    child = ExporterProcess("run", config, folder / "daemon.log")
    sampler.started_at = child.started
    sampler.start()
    while child.running():
        first = sampler.first_request_at()
        if first is not None and time.monotonic() - child.started >= first + seconds:
            break
        time.sleep(0.2)
    sampler.halt.set()
    sampler.join()
    child.terminate()
    usage = child.wait(60)
    result = analyse(sampler.samples, budget)
    result["returncode"] = usage.returncode
    result["log_tail"] = (folder / "daemon.log").read_text()[-2000:]
    return result


def _naive(simulator: Remote, budget: int, seconds: float) -> dict[str, Any]:
    simulator.call("reset_stats")
    simulator.call("reset_rate_limits")
    receiver = start_receiver("datadog")
    folder = fresh_dir("ratelimit-naive")
    try:
        naive = NaivePipeline(
            simulator.call("url"),
            NAIVE_KEY,
            TEAM,
            datadog_forwarder(receiver.call("url"), DATADOG_KEY),
            folder / "offset",
        )
        sampler = Sampler(simulator)
        sampler.start()
        stop = threading.Event()
        cron = threading.Thread(target=naive.run_every, args=(NAIVE_CRON_SECONDS, stop), daemon=True)
        cron.start()
        time.sleep(seconds)
        stop.set()
        cron.join(120)
        sampler.halt.set()
        sampler.join()
        naive.close()
        result = analyse(sampler.samples, budget)
        result.update(
            invocations=naive.stats.invocations,
            failed_invocations=naive.stats.failures,
            errors=naive.stats.errors[:2],
        )
        return result
    finally:
        receiver.close()


def _simulator(backfill: int, budget: int) -> Remote:
    return start_simulator(
        backfill=backfill,
        jobs_per_second=0.0,
        late_fraction=0.0,
        start_ago=120.0,
        backfill_window_seconds=6 * 3600.0,
        requests_per_minute=budget,
        api_keys={"dv_sim_key": None, NAIVE_KEY: None},
    )


def run(sizes: Sizes) -> dict[str, Any]:
    budget, seconds = sizes.rate_budget, sizes.rate_seconds
    naive_seconds = sizes.rate_naive_seconds
    # Enough Jobs that the exporter never catches up: its rows per minute at the budget.
    needed = int(budget * seconds / 60 * (PAGE_SIZE - 1) * 1.3)
    log(f"rate limit: budget {budget}/min for {seconds:.0f} s (page_size {PAGE_SIZE}), backfill {needed:,}")
    simulator = _simulator(needed, budget)
    try:
        exporter = _exporter(simulator, budget, seconds)
        log(
            f"  exporter: {exporter['per_minute']:.0f}/min = {exporter['utilisation']:.1%} of the budget, "
            f"{exporter['rate_limited']} x 429"
        )
    finally:
        simulator.close()
    # The naive script is not paced, so it reads as fast as this machine lets it (~60-100 pages/s).
    needed = int(NAIVE_PAGES_PER_SECOND * naive_seconds * 100)
    log(f"  naive script for {naive_seconds:.0f} s, cron every {NAIVE_CRON_SECONDS:.0f} s, backfill {needed:,}")
    simulator = _simulator(needed, budget)
    try:
        naive = _naive(simulator, budget, naive_seconds)
        log(
            f"  naive script: {naive.get('per_minute', 0):.0f}/min, {naive.get('rate_limited', 0)} x 429, "
            f"{naive['failed_invocations']} of {naive['invocations']} runs failed"
        )
    finally:
        simulator.close()
    return {
        "budget": budget,
        "page_size": PAGE_SIZE,
        "measure_seconds": seconds,
        "exporter": exporter,
        "naive": naive,
        "naive_seconds": naive_seconds,
        "naive_cron_seconds": NAIVE_CRON_SECONDS,
        "target": UTILISATION_TARGET,
    }
