"""The daemon's HTTP server over real HTTP: /healthz, /readyz, /metrics, POST /webhooks/duvo.

The daemon runs as a real subprocess (as in production); the simulator sends real webhooks.
Nothing here is timed: conditions are polled with a deadline.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, cli_in_process, exported, sim_faults, stable_port, write_config
from tests.fakes.datadog import DatadogFake

TOKEN = "webhook-token-0123456789"


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class Daemon:
    """`duvo-exporter run` with its server on 127.0.0.1:<port>."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.config, self.log, self.port = config, log, port
        self.base = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config", str(self.config), "--log-level", "debug"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        assert wait_for(self._up), self.log.read_text()
        return self

    def _up(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"daemon exited {self.process.returncode}: {self.log.read_text()}")
        try:
            return requests.get(f"{self.base}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    def get(self, path: str) -> requests.Response:
        return requests.get(self.base + path, timeout=5)

    def webhook(self, body: object = None, *, token: str | None = TOKEN, data: bytes | None = None, **kw):
        url = f"{self.base}/webhooks/duvo" + (f"?token={token}" if token is not None else "")
        if data is not None:
            return requests.post(url, data=data, timeout=5, **kw)
        return requests.post(url, json=body, timeout=5, **kw)

    def url(self) -> str:
        return f"{self.base}/webhooks/duvo?token={TOKEN}"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(15)

    def log_text(self) -> str:
        return self.log.read_text()


def configure(tmp_path: Path, sim, port: int, *, every: str = "1h", webhooks: bool = True, sinks: str | None = None):
    extra = f"schedule: {{every: {every}}}\nserver: {{listen: 127.0.0.1:{port}}}\n"
    if webhooks:
        extra += f"webhooks: {{token: {TOKEN}, recheck_interval: 30m}}\n"
    return write_config(tmp_path, sim.url, extra=extra, sinks=sinks)


@pytest.fixture
def daemon(sim, tmp_path) -> Iterator[Daemon]:
    port = stable_port()
    running = Daemon(configure(tmp_path, sim, port), tmp_path / "daemon.log", port).start()
    yield running
    running.stop(signal.SIGKILL)


def metric(text: str, name: str, **labels: str) -> float | None:
    wanted = "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series == name + wanted or (not labels and series == name):
            return float(value)
        if labels and series.startswith(name + "{"):
            got = dict(part.split("=", 1) for part in series[len(name) + 1 : -1].split(","))
            if got == {k: f'"{v}"' for k, v in labels.items()}:
                return float(value)
    return None


def queued(tmp_path: Path) -> list[str]:
    with sqlite3.connect(tmp_path / "state.db") as conn:
        return [row[0] for row in conn.execute("SELECT run_id FROM webhook_queue")]


def ready(d: Daemon) -> bool:
    return d.get("/readyz").status_code == 200


# ---- endpoints -------------------------------------------------------------------------------


def test_endpoints_answer_with_the_right_codes(daemon):
    assert daemon.get("/healthz").status_code == 200
    assert wait_for(lambda: ready(daemon)), daemon.get("/readyz").text
    assert daemon.get("/readyz").json() == {"ready": True}
    assert daemon.get("/nope").status_code == 404
    assert requests.post(f"{daemon.base}/metrics", timeout=5).status_code == 405
    assert daemon.get("/webhooks/duvo").status_code == 405
    metrics = daemon.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["Content-Type"].startswith("text/plain")


FAMILIES = [
    "duvo_exporter_passes_total",
    "duvo_exporter_pass_duration_seconds_count",
    "duvo_exporter_duvo_requests_total",
    "duvo_exporter_duvo_rate_limited_total",
    "duvo_exporter_rate_limit_wait_seconds_total",
    "duvo_exporter_jobs_extracted_total",
    "duvo_exporter_open_jobs",
    "duvo_exporter_checkpoint_lag_seconds",
    "duvo_exporter_sink_events_sent_total",
    "duvo_exporter_sink_events_retried_total",
    "duvo_exporter_sink_events_dead_lettered_total",
    "duvo_exporter_sink_backlog_events",
    "duvo_exporter_sink_oldest_undelivered_age_seconds",
    "duvo_exporter_sink_stopped",
    "duvo_exporter_webhooks_received_total",
    "duvo_exporter_webhooks_queued",
]


def test_metric_families_are_present_and_move_during_passes(sim, tmp_path):
    for _ in range(30):
        sim.world.create_job(team_id="team-sim", status="completed")
    for _ in range(5):
        sim.world.create_job(team_id="team-sim", status="running")
    port = stable_port()
    d = Daemon(configure(tmp_path, sim, port, every="1s"), tmp_path / "daemon.log", port).start()
    try:
        assert wait_for(
            lambda: metric(d.get("/metrics").text, "duvo_exporter_sink_events_sent_total", sink="local") == 30
        )
        text = d.get("/metrics").text
        for family in FAMILIES:
            assert family in text, family
        passes = metric(text, "duvo_exporter_passes_total", outcome="ok")
        assert passes and passes >= 1
        assert metric(text, "duvo_exporter_jobs_extracted_total") == 30
        assert metric(text, "duvo_exporter_open_jobs") == 5
        assert metric(text, "duvo_exporter_sink_backlog_events", sink="local") == 0
        assert metric(text, "duvo_exporter_sink_stopped", sink="local") == 0
        lists = metric(text, "duvo_exporter_duvo_requests_total", endpoint="/teams/{team_id}/runs", code="200")
        assert lists and lists >= 1
        assert "team_id=" not in text.replace('endpoint="/teams/{team_id}/runs"', "")  # no raw ids
        # A later pass moves the counters; new Jobs move the extraction and delivery counters.
        for _ in range(7):
            sim.world.create_job(team_id="team-sim", status="failed")
        assert wait_for(
            lambda: metric(d.get("/metrics").text, "duvo_exporter_sink_events_sent_total", sink="local") == 37
        )
        later = d.get("/metrics").text
        assert metric(later, "duvo_exporter_passes_total", outcome="ok") > passes
        assert metric(later, "duvo_exporter_jobs_extracted_total") == 37
        assert metric(later, "duvo_exporter_pass_duration_seconds_count") > 1
    finally:
        assert d.stop() == 0


def test_readyz_flips_to_503_when_the_api_is_down_and_back(sim, tmp_path):
    port = stable_port()
    config = configure(tmp_path, sim, port, every="1s")
    config.write_text(config.read_text().replace("  connect_timeout: 2\n", "  connect_timeout: 2\n  max_attempts: 1\n"))
    d = Daemon(config, tmp_path / "daemon.log", port).start()
    try:
        assert wait_for(lambda: ready(d))
        sim_faults(sim, error_rate=1.0)
        assert wait_for(lambda: d.get("/readyz").status_code == 503)
        answer = d.get("/readyz").json()
        assert answer["ready"] is False and answer["reason"].startswith("the last pass failed")
        assert "\n" not in answer["reason"]
        assert metric(d.get("/metrics").text, "duvo_exporter_passes_total", outcome="failed") >= 1
        assert (
            metric(
                d.get("/metrics").text,
                "duvo_exporter_duvo_requests_total",
                endpoint="/teams/{team_id}/runs",
                code="503",
            )
            >= 1
        )
        sim_faults(sim, error_rate=0.0)
        assert wait_for(lambda: ready(d))
    finally:
        sim_faults(sim, error_rate=0.0)
        assert d.stop() == 0


def test_readyz_is_503_while_a_sink_is_stopped_and_200_once_fixed(sim, tmp_path):
    sim.world.create_job(team_id="team-sim", status="completed")
    fake = DatadogFake(api_key="dd-good-key-123").start()
    port = stable_port()

    def sinks(key: str) -> str:
        return f"- type: datadog\n  name: dd\n  api_key: {key}\n  url: {fake.url}\n  batch: {{flush_interval: 0}}\n"

    try:
        config = configure(tmp_path, sim, port, every="1s", sinks=sinks("dd-wrong-key-456"))
        d = Daemon(config, tmp_path / "daemon.log", port).start()
        assert wait_for(lambda: d.get("/readyz").status_code == 503 and "sink dd" in d.get("/readyz").text)
        assert d.get("/readyz").json()["reason"].startswith("sink dd is stopped")
        assert metric(d.get("/metrics").text, "duvo_exporter_sink_stopped", sink="dd") == 1
        assert metric(d.get("/metrics").text, "duvo_exporter_sink_backlog_events", sink="dd") == 1
        assert d.stop() == 0
        configure(tmp_path, sim, port, every="1s", sinks=sinks("dd-good-key-123"))
        d = Daemon(config, tmp_path / "daemon.log", port).start()
        assert wait_for(lambda: ready(d))
        assert wait_for(lambda: metric(d.get("/metrics").text, "duvo_exporter_sink_backlog_events", sink="dd") == 0)
        assert metric(d.get("/metrics").text, "duvo_exporter_sink_stopped", sink="dd") == 0
        assert d.stop() == 0
    finally:
        fake.stop()


def test_a_busy_port_is_one_line_and_exit_2(sim, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = configure(tmp_path, sim, port)
        result = cli_in_process("run", "--config", str(config))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "server.listen" in line]
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.stderr


# ---- webhooks --------------------------------------------------------------------------------


def test_missing_or_wrong_token_is_401_nothing_queued_and_the_token_never_logged(sim, daemon, tmp_path):
    job = sim.world.create_job(team_id="team-sim", status="completed")
    body = {"event": "run_completed", "run_id": job["id"], "status": "completed"}
    assert daemon.webhook(body, token=None).status_code == 401
    assert daemon.webhook(body, token="wrong-token-guess-0000").status_code == 401
    assert daemon.webhook(body, token=TOKEN[:-1]).status_code == 401
    assert daemon.webhook(body, token=None, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert queued(tmp_path) == []
    text = daemon.get("/metrics").text
    assert metric(text, "duvo_exporter_webhooks_received_total", outcome="unauthorized") == 4
    assert "wrong-token-guess-0000" not in daemon.log_text()
    # The right token, in the URL or as a Bearer header.
    assert daemon.webhook(body).status_code == 202
    assert daemon.webhook(body, token=None, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 202
    assert TOKEN not in daemon.log_text()
    assert TOKEN not in daemon.get("/metrics").text


def test_oversized_and_malformed_bodies(sim, daemon, tmp_path):
    assert daemon.webhook(data=b"{" + b" " * 70_000 + b"}").status_code == 413
    for bad in (b"not json", b"[1, 2]", b'{"event": "run_completed", "status": "completed"}',
                b'{"event": "run_completed", "run_id": 7, "status": "completed"}',
                b'{"event": "", "run_id": "x", "status": "completed"}'):  # fmt: skip
        answer = daemon.webhook(data=bad, headers={"Content-Type": "application/json"})
        assert answer.status_code == 400, bad
        assert "error" in answer.json()
    text = daemon.get("/metrics").text
    assert metric(text, "duvo_exporter_webhooks_received_total", outcome="too_large") == 1
    assert metric(text, "duvo_exporter_webhooks_received_total", outcome="malformed") == 5
    assert queued(tmp_path) == []


def test_a_webhook_exports_the_job_without_a_pass_and_repeats_export_once(sim, daemon, tmp_path):
    assert wait_for(lambda: ready(daemon))  # the one pass of the hour has run
    job = sim.world.create_job(team_id="team-sim", status="running", webhook_url=daemon.url())
    sim.world.set_status(job["id"], "completed")
    runs = tmp_path / "runs.jsonl"
    assert wait_for(lambda: exported(runs)[job["id"]] == 1)  # only the webhook could have found it
    # Repeats, and an older status arriving late (out of order): still one export.
    for body in (
        {"event": "run_completed", "run_id": job["id"], "status": "completed"},
        {"event": "run_running", "run_id": job["id"], "status": "running"},
        {"event": "run_completed", "run_id": job["id"], "status": "completed"},
    ):
        assert daemon.webhook(body).status_code == 202
    assert wait_for(lambda: queued(tmp_path) == [])
    assert wait_for(
        lambda: metric(daemon.get("/metrics").text, "duvo_exporter_webhooks_received_total", outcome="accepted") == 4
    )
    assert exported(runs)[job["id"]] == 1
    # The pass that later lists the Job does not export it again.
    daemon.stop()
    result = cli_in_process("once", "--config", str(daemon.config))
    assert result.returncode == 0, result.stderr
    assert exported(runs)[job["id"]] == 1


def test_a_webhook_that_arrives_before_the_job_finished_exports_nothing_until_it_does(sim, daemon, tmp_path):
    assert wait_for(lambda: ready(daemon))
    job = sim.world.create_job(team_id="team-sim", status="running")
    # Out of order: the completion webhook arrives while the API still says running.
    assert daemon.webhook({"event": "run_completed", "run_id": job["id"], "status": "completed"}).status_code == 202
    assert wait_for(lambda: queued(tmp_path) == [])
    runs = tmp_path / "runs.jsonl"
    assert exported(runs)[job["id"]] == 0
    sim.world.set_status(job["id"], "failed")
    assert daemon.webhook({"event": "run_failed", "run_id": job["id"], "status": "failed"}).status_code == 202
    assert wait_for(lambda: exported(runs)[job["id"]] == 1)


def test_a_webhook_for_another_team_or_an_unknown_job_is_not_exported(sim, daemon, tmp_path):
    assert wait_for(lambda: ready(daemon))
    other = sim.world.create_job(team_id="team-other", status="completed")
    forged = "00000000-0000-4000-8000-000000000000"
    for run_id in (other["id"], forged):
        assert daemon.webhook({"event": "run_completed", "run_id": run_id, "status": "completed"}).status_code == 202
    assert wait_for(lambda: queued(tmp_path) == [])
    assert wait_for(lambda: "not of a configured team" in daemon.log_text())
    assert "does not exist (404)" in daemon.log_text()
    assert not (tmp_path / "runs.jsonl").exists() or other["id"] not in (tmp_path / "runs.jsonl").read_text()


def test_webhooks_during_passes_export_each_job_once(sim, tmp_path):
    port = stable_port()
    d = Daemon(configure(tmp_path, sim, port, every="1s"), tmp_path / "daemon.log", port).start()
    try:
        jobs = [sim.world.create_job(team_id="team-sim", status="running", webhook_url=d.url()) for _ in range(60)]
        sim_faults(sim, slow_seconds=0.05)  # passes take a while, webhooks land in the middle
        for job in jobs:
            sim.world.set_status(job["id"], "completed")
            assert d.webhook({"event": "run_completed", "run_id": job["id"], "status": "completed"}).status_code == 202
        runs = tmp_path / "runs.jsonl"
        assert wait_for(lambda: set(exported(runs)) >= {job["id"] for job in jobs}, timeout=60)
        sim_faults(sim, slow_seconds=0.0)
        assert wait_for(lambda: queued(tmp_path) == [])
        passes = metric(d.get("/metrics").text, "duvo_exporter_passes_total", outcome="ok")
        # Two more passes list every one of them again: none may be exported twice.
        assert wait_for(
            lambda: metric(d.get("/metrics").text, "duvo_exporter_passes_total", outcome="ok") >= passes + 2
        )
        assert max(exported(runs).values()) == 1
    finally:
        sim_faults(sim, slow_seconds=0.0)
        assert d.stop() == 0


def test_sigterm_with_webhooks_in_flight_keeps_the_queue_for_the_restart(sim, tmp_path):
    port = stable_port()
    config = configure(tmp_path, sim, port)
    config.write_text(config.read_text().replace("  connect_timeout: 2\n", "  connect_timeout: 2\n  max_attempts: 1\n"))
    d = Daemon(config, tmp_path / "daemon.log", port).start()
    assert wait_for(lambda: ready(d))
    sim_faults(sim, error_rate=1.0)  # webhooks are accepted, but nothing can be fetched
    jobs = [sim.world.create_job(team_id="team-sim", status="completed") for _ in range(20)]
    for job in jobs:
        assert d.webhook({"event": "run_completed", "run_id": job["id"], "status": "completed"}).status_code == 202
    assert d.stop(signal.SIGTERM) == 0
    assert set(queued(tmp_path)) == {job["id"] for job in jobs}
    sim_faults(sim, error_rate=0.0)
    d.start()
    try:
        runs = tmp_path / "runs.jsonl"
        assert wait_for(lambda: set(exported(runs)) == {job["id"] for job in jobs})
        assert wait_for(lambda: queued(tmp_path) == [])
        assert max(exported(runs).values()) == 1
    finally:
        assert d.stop() == 0


def test_kill_9_right_after_the_202_still_exports_the_job(sim, tmp_path):
    port = stable_port()
    d = Daemon(configure(tmp_path, sim, port), tmp_path / "daemon.log", port).start()
    assert wait_for(lambda: ready(d))
    sim_faults(sim, slow_seconds=3.0)  # the fetch is still in the air when the daemon dies
    job = sim.world.create_job(team_id="team-sim", status="completed")
    assert d.webhook({"event": "run_completed", "run_id": job["id"], "status": "completed"}).status_code == 202
    d.stop(signal.SIGKILL)
    assert queued(tmp_path) == [job["id"]]
    sim_faults(sim, slow_seconds=0.0)
    # Even without a server: `once` drains the queue before its pass.
    result = cli_in_process("once", "--config", str(d.config))
    assert result.returncode == 0, result.stderr
    assert exported(tmp_path / "runs.jsonl")[job["id"]] == 1
    assert queued(tmp_path) == []


def test_job_metrics_and_insight_events_come_from_the_state_and_survive_a_restart(sim, tmp_path):
    """duvo_runs_total, duvo_run_duration_seconds and duvo_agent_failure_ratio over real HTTP, with
    agents beyond insights.max_agents as "other"; a sink asking for summaries and alerts gets
    them once, and a restart repeats none and keeps the metrics."""
    from datetime import UTC, datetime, timedelta

    # Completed 10 minutes ago: before the last 5-minute step boundary, so in this step's summary.
    completed = datetime.now(UTC) - timedelta(seconds=600)
    times = {"started_at": (completed - timedelta(seconds=30)).isoformat(), "completed_at": completed.isoformat()}
    for status, count in (("completed", 12), ("failed", 3)):
        for _ in range(count):
            sim.world.create_job(team_id="team-sim", status=status, agent_id="agent-a", **times)
    for _ in range(5):
        sim.world.create_job(team_id="team-sim", status="failed", agent_id="agent-b", **times)
    port = stable_port()
    sinks = f"""\
- type: file
  name: local
  path: {tmp_path / "runs.jsonl"}
  batch: {{flush_interval: 0}}
  filter: {{events: [run.finished, run.summary, alert.started, alert.cleared]}}
"""
    config = configure(tmp_path, sim, port, every="1h", webhooks=False, sinks=sinks)
    insights = "insights: {min_jobs: 5, max_agents: 1, steps: [5m, 5m]}\n"
    config.write_text(config.read_text().replace("sinks:\n", insights + "sinks:\n", 1))

    def lines() -> list[dict]:
        import json

        path = tmp_path / "runs.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def insight_events() -> list[dict]:
        return [e for e in lines() if e["event"] != "run.finished"]

    d = Daemon(config, tmp_path / "daemon.log", port).start()
    try:
        assert wait_for(lambda: len(lines()) == 28), lines()  # 20 Jobs, 4 summaries, 4 alerts
        text = d.get("/metrics").text
    finally:
        assert d.stop() == 0
    assert metric(text, "duvo_runs_total", team="team-sim", agent="agent-a", status="completed") == 12
    assert metric(text, "duvo_runs_total", team="team-sim", agent="agent-a", status="failed") == 3
    assert metric(text, "duvo_runs_total", team="team-sim", agent="other", status="failed") == 5
    assert "agent-b" not in text
    assert metric(text, "duvo_run_duration_seconds_count", team="team-sim") == 20
    assert metric(text, "duvo_run_duration_seconds_sum", team="team-sim") == 600
    assert metric(text, "duvo_run_duration_seconds_bucket", team="team-sim", le="15.0") == 0
    assert metric(text, "duvo_run_duration_seconds_bucket", team="team-sim", le="30.0") == 20
    assert metric(text, "duvo_agent_failure_ratio", team="team-sim", agent="agent-a", window="1h") == 0.2
    assert metric(text, "duvo_agent_failure_ratio", team="team-sim", agent="other", window="24h") == 1.0
    events = insight_events()
    summaries = {(e["agent_id"], e["window"]): e for e in events if e["event"] == "run.summary"}
    assert set(summaries) == {("agent-a", "1h"), ("agent-a", "24h"), ("agent-b", "1h"), ("agent-b", "24h")}
    assert summaries[("agent-a", "1h")]["jobs"] == 15 and summaries[("agent-a", "1h")]["failure_rate"] == 0.2
    assert summaries[("agent-a", "1h")]["duration_p95_seconds"] == 30.0
    started = {(e["agent_id"], e["window"]) for e in events if e["event"] == "alert.started"}
    assert started == set(summaries)
    # A restart: the next pass repeats no summary (same step) and no alert; the metrics stay.
    d = Daemon(config, tmp_path / "daemon.log", port).start()
    try:
        assert wait_for(lambda: metric(d.get("/metrics").text, "duvo_exporter_passes_total", outcome="ok") == 1)
        again = d.get("/metrics").text
    finally:
        assert d.stop() == 0
    assert metric(again, "duvo_runs_total", team="team-sim", agent="agent-a", status="completed") == 12
    assert metric(again, "duvo_exporter_jobs_extracted_total") == 0
    # Summaries of a new step may appear if the pass crossed a 5-minute boundary; alerts never.
    assert [e for e in insight_events() if e["event"].startswith("alert.")] == [
        e for e in events if e["event"].startswith("alert.")
    ]
