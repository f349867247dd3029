"""The `run` daemon as a real subprocess: kill -9 at random moments loses nothing; SIGTERM is
graceful within 10 s."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import ROOT, exported, sim_faults, stable_port, terminal_ids, write_config
from tests.fakes.datadog import DatadogFake

KILLS = int(os.environ.get("DUVO_CRASH_KILLS", "5"))
BATCH = 50


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config), "--log-level", "info"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


class Activity(threading.Thread):
    """Creates Jobs and finishes open ones at random while the daemon runs."""

    def __init__(self, sim, seed: int) -> None:
        super().__init__(daemon=True)
        self.sim, self.rng, self.halt = sim, random.Random(seed), threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            for _ in range(self.rng.randint(1, 6)):
                status = self.rng.choice(["pending", "running", "waiting", "completed", "failed"])
                self.sim.world.create_job(team_id="team-sim", status=status)
            open_jobs = [j["id"] for j in self.sim.world.jobs() if j["status"] in ("pending", "running", "waiting")]
            for run_id in self.rng.sample(open_jobs, min(len(open_jobs), 3)):
                self.sim.world.set_status(run_id, self.rng.choice(["completed", "failed", "stopped"]))


class Flapper(threading.Thread):
    """Takes a backend down and up again at random intervals."""

    def __init__(self, fake: DatadogFake, seed: int) -> None:
        super().__init__(daemon=True)
        self.fake, self.rng, self.halt = fake, random.Random(seed), threading.Event()
        self.flaps = 0

    def run(self) -> None:
        while not self.halt.wait(self.rng.uniform(0.3, 1.5)):
            self.fake.stop()
            self.flaps += 1
            self.halt.wait(self.rng.uniform(0.3, 1.5))
            self.restart()  # always up again at the end

    def restart(self) -> None:
        for _ in range(50):  # the old socket may take a moment to be released
            try:
                self.fake.start()
                return
            except OSError:
                time.sleep(0.1)
        self.fake.start()


def wait_for(predicate, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def test_kill_9_at_random_moments_while_a_sink_flaps_loses_nothing(sim, tmp_path):
    rng = random.Random(int(os.environ.get("DUVO_CRASH_SEED", "20261128")))
    for _ in range(1500):
        sim.world.create_job(team_id="team-sim", status=rng.choice(["completed", "failed", "running", "pending"]))
    fake = DatadogFake(api_key="dd-key", port=stable_port()).start()  # comes back on the same port
    sinks = f"""\
- type: file
  name: local
  path: {tmp_path / "runs.jsonl"}
  batch: {{max_events: {BATCH}, flush_interval: 0}}
- type: datadog
  name: dd
  api_key: dd-key
  url: {fake.url}
  batch: {{max_events: {BATCH}, flush_interval: 0}}
  retry: {{initial_backoff: 0.1, max_backoff: 0.5}}
"""
    config = write_config(
        tmp_path, sim.url, sinks=sinks, page_size=10, requests_per_minute=12000, extra="schedule: {every: 1s}\n"
    )
    log = tmp_path / "daemon.log"
    activity = Activity(sim, seed=rng.randint(0, 10**6))
    flapper = Flapper(fake, seed=rng.randint(0, 10**6))
    activity.start()
    flapper.start()
    kills = 0
    try:
        for _ in range(KILLS):
            daemon = start_daemon(config, log)
            time.sleep(rng.uniform(0.8, 3.0))
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
            kills += 1
    finally:
        activity.halt.set()
        flapper.halt.set()
        activity.join()
        flapper.join()
    for job in sim.world.jobs():
        if job["status"] not in ("completed", "failed", "stopped", "interrupted"):
            sim.world.set_status(job["id"], "completed")
    expected = terminal_ids(sim)
    daemon = start_daemon(config, log)
    try:
        assert wait_for(
            lambda: set(exported(tmp_path / "runs.jsonl")) >= expected
            and {entry["run_id"] for entry in fake.stored} >= expected,
            timeout=90,
        ), f"missing after restart: file {len(expected - set(exported(tmp_path / 'runs.jsonl')))}, " + (
            f"datadog {len(expected - {entry['run_id'] for entry in fake.stored})}"
        )
    finally:
        time.sleep(0.5)  # let the daemon install its signal handlers if it just started
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(15)
        fake.stop()
    assert code == 0, log.read_text()[-2000:]
    in_file = exported(tmp_path / "runs.jsonl")
    in_datadog: dict[str, int] = {}
    for entry in fake.stored:
        in_datadog[entry["run_id"]] = in_datadog.get(entry["run_id"], 0) + 1
    file_repeats = sum(count - 1 for count in in_file.values())
    dd_repeats = sum(count - 1 for count in in_datadog.values())
    print(
        f"\n{kills} kills, {flapper.flaps} sink flaps, {len(expected)} terminal Jobs, "
        f"repeats: file {file_repeats}, datadog {dd_repeats}"
    )
    assert set(in_file) == expected and set(in_datadog) == expected
    # Repeats only from the batch in flight at each kill (and, for the flapping backend, a batch
    # whose answer a flap cut off) -- extraction itself never repeats.
    assert file_repeats <= kills * BATCH
    assert dd_repeats <= (kills + flapper.flaps) * BATCH


def test_sigterm_stops_gracefully_within_10_seconds(sim, tmp_path):
    for _ in range(300):
        sim.world.create_job(team_id="team-sim", status="completed")
    config = write_config(tmp_path, sim.url, page_size=5, extra="schedule: {every: 1s}\n")
    sim_faults(sim, slow_seconds=0.5)  # a pass is still paging when SIGTERM arrives
    daemon = start_daemon(config, tmp_path / "daemon.log")
    time.sleep(3.0)
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    code = daemon.wait(15)
    assert time.monotonic() - started < 10.0
    assert code == 0, (tmp_path / "daemon.log").read_text()
    assert '"stopped"' in (tmp_path / "daemon.log").read_text()
    sim_faults(sim, slow_seconds=0.0)
    # The state is consistent: a later run finishes the job, each Job once.
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "once", "--config", str(config)], cwd=ROOT, capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    counts = exported(tmp_path / "runs.jsonl")
    assert set(counts) == terminal_ids(sim) and max(counts.values()) == 1
