"""Scenario 7, webhooks: from Duvo's webhook leaving the simulator to the first byte at a sink.

The simulator (in this process) starts Jobs through POST /teams/{team}/runs with a `webhook_url`
pointing at the daemon's POST /webhooks/duvo, at a steady rate, with its default lifecycles (all
short: `late_fraction: 0`) and the real 300/min limit. Its webhook sender POSTs when a Job finishes
and notes the time; the daemon (its own process, default settings: 240 requests/min,
`synchronous: full`, Datadog's default batching, a pass every 5 minutes so that polling finds
nothing first) queues the run_id, fetches GET /runs/{id} and exports it; the Datadog receiver (its
own process) notes when each Job's finished outcome first arrives. The latency is the difference.
Sender and receiver read the same clock (one machine).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import requests

from bench.common import SIM_KEY, TEAM, Sizes, fresh_dir, log, percentile, wait_until, write_config
from bench.procs import ExporterProcess
from bench.receivers import sink_yaml, start_receiver
from exporter.simulator import Simulator, SimulatorOptions

TOKEN = "bench-webhook-token-0123456789"
TARGET_P95 = 2.0
JOBS_PER_SECOND = 2.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(sizes: Sizes) -> dict[str, Any]:
    jobs = 100 if sizes.quick else 300
    folder = fresh_dir("webhooks")
    receiver = start_receiver("datadog")
    sim = Simulator(SimulatorOptions(jobs_per_second=0.0, late_fraction=0.0, requests_per_minute=300)).start()
    port = _free_port()
    config = write_config(
        folder,
        sim.url,
        sink_yaml("datadog", receiver.call("url")),
        requests_per_minute=240,
        synchronous="full",
        every="5m",
    )
    config.write_text(config.read_text() + f"server: {{listen: 127.0.0.1:{port}}}\nwebhooks: {{token: {TOKEN}}}\n")
    daemon = ExporterProcess("run", config, folder / "daemon.log")
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return requests.get(f"{base}/readyz", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        if not wait_until(up, 60, every=0.1):
            raise RuntimeError(f"the daemon did not get ready; see {folder / 'daemon.log'}")
        agent = sim.world.agents(TEAM)[0]
        hook = f"{base}/webhooks/duvo?token={TOKEN}"
        log(f"webhooks: starting {jobs} Jobs at {JOBS_PER_SECOND}/s, each announcing its end by webhook")
        started = time.monotonic()
        for n in range(jobs):
            answer = requests.post(
                f"{sim.url}/teams/{TEAM}/runs",
                json={"agent_id": agent, "webhook_url": hook},
                headers={"Authorization": f"Bearer {SIM_KEY}"},
                timeout=10,
            )
            answer.raise_for_status()
            time.sleep(max(0.0, started + (n + 1) / JOBS_PER_SECOND - time.monotonic()))
        wait_until(lambda: len(sim.webhooks.sent_terminal) >= jobs, 120)
        wait_until(lambda: receiver.call("finished_count") >= jobs, 60)
        arrivals = receiver.call("arrivals")
        sent = dict(sim.webhooks.sent_terminal)
        latencies = [arrivals[run][0] - at for run, at in sent.items() if run in arrivals]
        missing = sorted(set(sent) - set(arrivals))
        repeats = sum(1 for _, count in arrivals.values() if count > 1)
        rejected = [d for d in sim.webhooks.deliveries if d[2] != 202]
    finally:
        daemon.terminate()
        daemon.wait(30)
        sim.stop()
        receiver.close()
    result = {
        "jobs": jobs,
        "jobs_per_second": JOBS_PER_SECOND,
        "webhooks_sent": len(sent),
        "webhooks_not_accepted": len(rejected),
        "arrived": len(latencies),
        "missing": len(missing),
        "repeats": repeats,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else None,
        "target_p95": TARGET_P95,
    }
    log(
        f"webhooks: p50 {result['p50']:.3f} s, p95 {result['p95']:.3f} s, max {result['max']:.3f} s "
        f"over {len(latencies)} Jobs ({len(missing)} missing, {repeats} repeated)"
    )
    return result
