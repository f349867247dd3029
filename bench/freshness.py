"""Scenario 5, freshness: from a Job turning terminal in the simulator to its first byte at a sink.

The simulator generates Jobs in real time (2 per second, its default lifecycles: most finish within
seconds, 10% run for minutes to hours) with the real 300/min limit, on top of hours of history, so
that Jobs which started long ago finish during the run as they do in a steady state. A warm-up
`once` (rate limit lifted) reads that history first, as a daemon that had been running would have;
then the real daemon runs with `schedule.every: 30s` and otherwise default settings (240
requests/min, `synchronous: full`, each backend's default batching and Loki's pacing) against the
three receivers, which note when each Job's finished outcome first arrives. The lag is that time
minus the Job's `completed_at`.

Jobs that finished in the first seconds or in the last 40 seconds of the run are left out: the first
could have finished before the daemon started, the last may still be on their way at the end.
The guide's naive script runs beside it on the same simulator (its own API key and budget, cron
every 30 s, its own Datadog receiver, starting at the end of the history): it delivers a Job only
if the Job had finished when read.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from bench.common import BACKENDS, TEAM, Sizes, fresh_dir, log, write_config
from bench.naive import NaivePipeline, datadog_forwarder
from bench.procs import ExporterProcess, start_simulator
from bench.receivers import DATADOG_KEY, sink_yaml, start_receiver

INTERVAL = 30.0
JOBS_PER_SECOND = 2.0
NAIVE_KEY = "dv_naive_key"
SETTLE = 5.0  # seconds after the daemon started before a finished Job counts
TAIL = 40.0  # seconds before the end after which a finished Job no longer counts


def _percentile(lags: list[float], censored: list[float], q: float) -> tuple[float | None, bool]:
    """Nearest-rank percentile where Jobs that had not arrived by the end rank above every arrival.
    Returns (value, True) when the rank falls among those: the lag is then at least `value`."""
    total = len(lags) + len(censored)
    if not total:
        return None, False
    rank = max(1, min(total, round(q / 100 * total + 0.5)))
    if rank <= len(lags):
        return sorted(lags)[rank - 1], False
    return min(censored), True


def _lags(
    arrivals: dict[str, tuple[float, int]],
    times: dict[str, tuple[float, float | None]],
    lo: float,
    hi: float,
    ended: float,
    final: bool = False,
) -> dict[str, Any]:
    """Lag statistics. A Job not arrived by the end ranks above every arrival (its lag is at least
    the time to the end), unless `final`: then it is lost for good and only arrivals are ranked."""
    considered = {run: t for run, t in times.items() if t[1] is not None and lo <= t[1] <= hi}
    lags: list[float] = []
    censored: list[float] = []  # not arrived by the end: the lag is at least this
    long_lags: list[float] = []
    long_censored: list[float] = []
    for run, (created, completed) in considered.items():
        finished = completed or 0.0
        arrival = arrivals.get(run)
        is_long = finished - created > INTERVAL  # ran longer than a pass interval: found by a re-check
        if arrival is None:
            censored.append(ended - finished)
            if is_long:
                long_censored.append(ended - finished)
            continue
        lags.append(arrival[0] - finished)
        if is_long:
            long_lags.append(arrival[0] - finished)
    if final:
        censored, long_censored = [], []
    p50, p50_open = _percentile(lags, censored, 50)
    p95, p95_open = _percentile(lags, censored, 95)
    long_p50, long_p50_open = _percentile(long_lags, long_censored, 50)
    long_p95, long_p95_open = _percentile(long_lags, long_censored, 95)
    return {
        "considered": len(considered),
        "delivered": len(lags),
        "missing": len(considered) - len(lags),
        "duplicates": sum(count - 1 for run, (_, count) in arrivals.items() if run in considered),
        "p50": p50,
        "p50_at_least": p50_open,
        "p95": p95,
        "p95_at_least": p95_open,
        "max": max(lags) if lags else None,
        "long_jobs": len(long_lags) + len(long_censored),
        "long_p50": long_p50,
        "long_p50_at_least": long_p50_open,
        "long_p95": long_p95,
        "long_p95_at_least": long_p95_open,
        "lags": [round(lag, 2) for lag in lags],
    }


def run(sizes: Sizes) -> dict[str, Any]:
    seconds = sizes.freshness_seconds
    log(f"freshness: the daemon every {INTERVAL:.0f} s for {seconds:.0f} s, {JOBS_PER_SECOND:g} Jobs/s")
    history = sizes.freshness_history_hours * 3600
    simulator = start_simulator(
        jobs_per_second=JOBS_PER_SECOND,
        backfill=int(JOBS_PER_SECOND * history),
        backfill_window_seconds=history,
        requests_per_minute=None,
        api_keys={"dv_sim_key": None, NAIVE_KEY: None},
    )
    receivers = {kind: start_receiver(kind) for kind in BACKENDS}
    naive_receiver = start_receiver("datadog")
    folder = fresh_dir("freshness")
    try:
        sim_url = simulator.call("url")
        sinks = "".join(sink_yaml(kind, r.call("url")) for kind, r in receivers.items())
        config = write_config(folder, sim_url, sinks, requests_per_minute=240, synchronous="full", every="30s")
        warmup = write_config(folder, sim_url, sinks, synchronous="full", name="warmup.yaml")
        log(f"  warm-up: reading {sizes.freshness_history_hours:g} h of history")
        ExporterProcess("once", warmup, folder / "warmup.log").wait(900)
        for receiver in receivers.values():
            receiver.call("reset")
        simulator.call("configure", requests_per_minute=300)
        simulator.call("reset_rate_limits")
        (folder / "naive-offset").write_text(str(simulator.call("counts")["jobs_total"]))
        naive = NaivePipeline(
            sim_url,
            NAIVE_KEY,
            TEAM,
            datadog_forwarder(naive_receiver.call("url"), DATADOG_KEY),
            folder / "naive-offset",
        )
        stop = threading.Event()
        simulator.call("reset_stats")
        started = time.time()
        child = ExporterProcess("run", config, folder / "daemon.log")
        cron = threading.Thread(target=naive.run_every, args=(INTERVAL, stop), daemon=True)
        cron.start()
        time.sleep(seconds)
        ended = time.time()
        stop.set()
        child.terminate()
        usage = child.wait(60)
        cron.join(60)
        naive.close()
        # The daemon's share of the API: everything the simulator answered less the script's.
        daemon_requests = simulator.call("requests")["requests_total"] - naive.stats.requests
        times = simulator.call("job_times")
        lo, hi = started + SETTLE, ended - TAIL
        sinks_result = {kind: _lags(r.call("arrivals"), times, lo, hi, ended) for kind, r in receivers.items()}
        # "A sink" = the first of the three to receive it.
        first: dict[str, tuple[float, int]] = {}
        for r in sinks_result:
            for run_id, (at, count) in receivers[r].call("arrivals").items():
                if run_id not in first or at < first[run_id][0]:
                    first[run_id] = (at, count)
        any_sink = _lags(first, times, lo, hi, ended)
        naive_result = _lags(naive_receiver.call("arrivals"), times, lo, hi, ended, final=True)
        for kind, res in {**sinks_result, "naive": naive_result}.items():
            log(
                f"  {kind}: p50 {res['p50'] or 0:.1f} s, p95 {'>= ' * res['p95_at_least']}{res['p95'] or 0:.1f} s "
                f"over {res['considered']} Jobs, {res['missing']} not delivered by the end"
            )
        return {
            "interval_seconds": INTERVAL,
            "run_seconds": seconds,
            "jobs_per_second": JOBS_PER_SECOND,
            "jobs_created": len(times),
            "history_hours": sizes.freshness_history_hours,
            "sinks": sinks_result,
            "any_sink": any_sink,
            "naive": naive_result,
            "daemon_requests": daemon_requests,
            "daemon_requests_per_minute": daemon_requests / ((ended - started) / 60),
            "daemon_returncode": usage.returncode,
            "daemon_peak_rss_mb": usage.peak_rss_bytes / (1024 * 1024),
            "target_p95": INTERVAL + 2.0,
        }
    finally:
        simulator.close()
        for receiver in [*receivers.values(), naive_receiver]:
            receiver.close()
