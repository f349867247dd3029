"""Schedules: an interval or a crontab line; the first pass always runs at start."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from exporter.config import ScheduleSettings
from exporter.scheduler import trigger_for
from tests.conftest import ROOT, exported, terminal_ids, write_config


def test_interval_and_cron_triggers():
    interval = trigger_for(ScheduleSettings(every="90s"))
    assert isinstance(interval, IntervalTrigger) and interval.interval.total_seconds() == 90
    cron = trigger_for(ScheduleSettings(cron="*/5 * * * *"))
    assert isinstance(cron, CronTrigger)
    start = datetime(2026, 11, 28, 12, 1, 30, tzinfo=UTC)
    assert cron.get_next_fire_time(None, start) == datetime(2026, 11, 28, 12, 5, tzinfo=UTC)
    assert ScheduleSettings().interval_seconds == 300  # the documented default


def test_a_cron_daemon_runs_a_pass_at_start_then_stops_on_sigterm(sim, tmp_path):
    for _ in range(20):
        sim.world.create_job(team_id="team-sim", status="completed")
    config = write_config(tmp_path, sim.url, extra='schedule: {cron: "0 0 1 1 *"}\n')  # next: New Year
    daemon = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(exported(tmp_path / "runs.jsonl")) != terminal_ids(sim):
            time.sleep(0.2)
        assert set(exported(tmp_path / "runs.jsonl")) == terminal_ids(sim)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=15)
    assert daemon.returncode == 0, stderr.decode()[-2000:]
