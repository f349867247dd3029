"""Soak (`make soak`, not CI): the `run` daemon under steady load and faults for a long time.

The simulator generates Jobs at a steady rate (many finishing minutes later), with moderate 5xx,
malformed bodies, connection resets and an occasional burst of 429s. The daemon (a pass every
5 s) exports to a file sink and to a fake Datadog intake that goes down and comes back up again
and again. For DUVO_SOAK_SECONDS (default 900) we sample the daemon's resident memory, then stop
the faults and the load, finish every open Job, and wait for the daemon to catch up.

Memory criterion. The first third is warm-up (imports, SQLite's page caches, connection pools,
the allocator's arenas). A leak grows with the work done, so it shows as the peak of the last
third rising above the peak of the second third: that rise must stay within max(20 MiB, 15% of
the second third's peak). Peaks rather than means, so one sample taken mid-batch cannot decide
it; the slope over the last two thirds is printed too, for a human to judge trends.

At the end: the backlog of every sink is 0 (`status --json`), the file sink holds every terminal
Job exactly once, and the flapping sink holds every terminal Job at least once, its repeats
bounded by one batch per outage (a batch it stored but could not acknowledge before going down).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from exporter.simulator import Simulator, SimulatorOptions
from exporter.state.store import StateStore
from tests.conftest import ROOT, TERMINAL, cli, exported, terminal_ids
from tests.fakes.datadog import DatadogFake

SECONDS = float(os.environ.get("DUVO_SOAK_SECONDS", "900"))
SAMPLE_EVERY = 2.0
DD_BATCH = 100
DD_KEY = "dd-soak-key"
MIB = 1024 * 1024
FAULTS = {"error_rate": 0.03, "error_status": 503, "malformed_rate": 0.02, "reset_rate": 0.01}


def rss_bytes(pid: int) -> int:
    try:
        import psutil  # type: ignore[import-not-found]
    except ImportError:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {pid}") from None
    return int(psutil.Process(pid).memory_info().rss)


class Flapper(threading.Thread):
    """Takes the fake backend down and brings it back up, every ``period`` seconds."""

    def __init__(self, fake: DatadogFake, period: float) -> None:
        super().__init__(daemon=True, name="flapper")
        self.fake, self.period = fake, period
        self.halt = threading.Event()
        self.up = True
        self.outages = 0

    def run(self) -> None:
        while not self.halt.wait(self.period):
            if self.up:
                self.fake.stop()
                self.outages += 1
            else:
                self.fake.start()
            self.up = not self.up

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        if not self.up:
            self.fake.start()
            self.up = True


class Bursts(threading.Thread):
    """Now and then, a burst of 429s whatever the rate."""

    def __init__(self, sim: Simulator, period: float) -> None:
        super().__init__(daemon=True, name="bursts")
        self.sim, self.period = sim, period
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(self.period):
            self.sim.faults.update(burst_429=3, burst_retry_after=2)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def soak_config(tmp_path: Path, sim_url: str, dd_url: str) -> Path:
    # Written out in full (not write_config): the re-check schedule is the production default.
    text = f"""\
duvo:
  base_url: {sim_url}
  api_key: dv_sim_key
  team_id: team-sim
  start_from: beginning
  requests_per_minute: 240
  connect_timeout: 2
  read_timeout: 10
schedule:
  every: 5s
state:
  path: {tmp_path / "state.db"}
sinks:
  - type: file
    name: local
    path: {tmp_path / "runs.jsonl"}
  - type: datadog
    name: dd
    api_key: {DD_KEY}
    url: {dd_url}
    batch: {{max_events: {DD_BATCH}}}
    retry: {{initial_backoff: 0.5, max_backoff: 5}}
"""
    path = tmp_path / "soak.yaml"
    path.write_text(text)
    return path


def status(config: Path) -> dict:
    result = cli("status", "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def memory_verdict(samples: list[tuple[float, int]]) -> tuple[bool, str]:
    n = len(samples)
    second = [rss for _, rss in samples[n // 3 : 2 * n // 3]]
    last = [rss for _, rss in samples[2 * n // 3 :]]
    allowed = max(20 * MIB, 0.15 * max(second))
    rise = max(last) - max(second)
    tail = samples[n // 3 :]
    t0 = tail[0][0]
    xs = [t - t0 for t, _ in tail]
    ys = [rss / MIB for _, rss in tail]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    variance = sum((x - mean_x) ** 2 for x in xs) or 1.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / variance * 60
    text = (
        f"RSS MiB: first {samples[0][1] / MIB:.1f}, peak 2nd third {max(second) / MIB:.1f}, "
        f"peak last third {max(last) / MIB:.1f}, rise {rise / MIB:+.1f} (allowed {allowed / MIB:.1f}), "
        f"slope over last two thirds {slope:+.2f} MiB/min, {n} samples"
    )
    return rise <= allowed, text


@pytest.mark.soak
@pytest.mark.timeout(int(SECONDS) + 900)
def test_soak_steady_load_with_faults_and_a_flapping_sink(tmp_path):
    assert SECONDS >= 60, "DUVO_SOAK_SECONDS below 60 leaves too few samples to judge memory"
    options = SimulatorOptions(
        seed=29, jobs_per_second=20.0, late_fraction=0.3, time_scale=60.0, requests_per_minute=300, faults=FAULTS
    )
    fake = DatadogFake(api_key=DD_KEY).start()
    fake.port = int(fake.url.rsplit(":", 1)[1])  # restarts come back at the same address
    flap_period = min(60.0, SECONDS / 6)  # "every minute"; a short soak still sees several outages
    log = tmp_path / "daemon.log"
    with Simulator(options).start() as sim:
        config = soak_config(tmp_path, sim.url, fake.url)
        flapper, bursts = Flapper(fake, flap_period), Bursts(sim, period=45.0)
        with log.open("ab") as stderr:
            daemon = subprocess.Popen(
                [sys.executable, "-m", "exporter", "run", "--config", str(config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        samples: list[tuple[float, int]] = []
        try:
            flapper.start()
            bursts.start()
            started = time.monotonic()
            while time.monotonic() - started < SECONDS:
                assert daemon.poll() is None, "the daemon died:\n" + log.read_text()[-4000:]
                samples.append((time.monotonic() - started, rss_bytes(daemon.pid)))
                time.sleep(SAMPLE_EVERY)

            # The end: no more load or faults, the backend up, every open Job finished.
            bursts.stop()
            flapper.stop()
            sim.world.set_jobs_per_second(0)
            sim.faults.clear()
            load = sim.stats()
            for job in sim.world.jobs():
                if job["status"] not in TERMINAL:
                    sim.world.set_status(job["id"], "completed")
            expected = terminal_ids(sim)
            deadline = time.monotonic() + 300
            caught_up = False
            while time.monotonic() < deadline:
                # Open Jobs are re-checked on their own schedule (up to an hour for old ones); make
                # them due, again each round in case a pass in flight re-scheduled one meanwhile.
                with StateStore(str(tmp_path / "state.db")) as store:
                    store.make_all_open_due()
                current = status(config)
                backlogs = {sink["name"]: sink["backlog"] for sink in current["sinks"]}
                if (
                    set(exported(tmp_path / "runs.jsonl")) == expected
                    and set(fake.stored_run_ids) >= expected
                    and current["open_jobs"]["open"] == 0
                    and not any(backlogs.values())
                ):
                    caught_up = True
                    break
                time.sleep(3)
            assert daemon.poll() is None, "the daemon died:\n" + log.read_text()[-4000:]
        finally:
            bursts.stop()
            flapper.stop()
            if daemon.poll() is None:
                daemon.send_signal(signal.SIGTERM)
                try:
                    code = daemon.wait(20)
                except subprocess.TimeoutExpired:
                    daemon.kill()
                    code = daemon.wait(10)
            else:
                code = daemon.returncode
            fake.stop()

        text = log.read_text()
        file_counts = exported(tmp_path / "runs.jsonl")
        dd_counts = Counter(fake.stored_run_ids)
        dd_repeats = sum(n - 1 for n in dd_counts.values())
        memory_ok, memory_text = memory_verdict(samples)
        passes = text.count('"pass finished"')
        print(
            f"\nsoak {SECONDS:.0f} s: {len(expected)} terminal Jobs, {passes} passes, "
            f"API requests {load['requests_total']} ({load['by_status']}, {load['events']}), "
            f"{flapper.outages} Datadog outages every {flap_period:.0f} s, {dd_repeats} repeated in Datadog, "
            f"file sink {sum(file_counts.values())} lines for {len(file_counts)} Jobs\n{memory_text}"
        )
        assert caught_up, f"not caught up within 300 s: {status(config)}"
        assert code == 0, text[-4000:]
        assert "Traceback" not in text and "Exception in thread" not in text, text[-4000:]
        assert set(file_counts) == expected and max(file_counts.values()) == 1
        assert set(dd_counts) == expected
        assert dd_repeats <= flapper.outages * DD_BATCH
        final = status(config)
        assert all(sink["backlog"] == 0 and sink["dead_letters"] == 0 for sink in final["sinks"]), final
        assert memory_ok, memory_text
