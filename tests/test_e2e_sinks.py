"""All three backends through the real pipeline at once, each with its strict fake receiver:
every finished Job arrives in each, in the backend's own shape, and per-sink filters and field
shaping apply to that sink only."""

from __future__ import annotations

import json
import random

from tests.conftest import cli, exported, terminal_ids, write_config
from tests.fakes.datadog import DatadogFake
from tests.fakes.loki import FakeLoki
from tests.fakes.splunk_hec import FakeSplunkHec


def test_every_backend_receives_every_finished_job_in_its_own_shape(sim, tmp_path):
    rng = random.Random(9)
    for _ in range(120):
        sim.world.create_job(team_id="team-sim", status=rng.choice(["completed", "failed", "stopped", "running"]))
    with DatadogFake(api_key="dd-key") as dd, FakeSplunkHec(token="hec-token") as hec, FakeLoki() as loki:
        sinks = f"""\
- type: file
  name: local
  path: {tmp_path / "runs.jsonl"}
- type: datadog
  name: dd
  api_key: dd-key
  url: {dd.url}
  tags: [env:test]
- type: splunk_hec
  name: siem
  url: {hec.url}
  token: hec-token
  index: main
  filter: {{statuses: [failed]}}
  fields: {{exclude: [run]}}
- type: loki
  name: loki
  url: {loki.url}
  labels: {{service: duvo, env: test}}
"""
        config = write_config(tmp_path, sim.url, sinks=sinks)
        result = cli("once", "--config", str(config))
        assert result.returncode == 0, result.stderr
        finished = terminal_ids(sim)
        jobs = {job["id"]: job for job in sim.world.jobs()}
        assert set(exported(tmp_path / "runs.jsonl")) == finished

        # Datadog: the level from the Job status, the Job status under its own name and tag.
        logs = {log["run_id"]: log for log in dd.stored}
        assert set(logs) == finished and len(dd.stored) == len(finished)
        for run_id, log in logs.items():
            status = jobs[run_id]["status"]
            assert log["job_status"] == status
            assert log["status"] == {"failed": "error", "completed": "info"}.get(status, "warning")
            assert f"job_status:{status}" in log["ddtags"] and "env:test" in log["ddtags"]
            assert log["message"] == f"Job {run_id} {status}" and log["ddsource"] == "duvo"

        # Splunk: only failures (the SIEM's filter), without the raw record, with indexed fields.
        failed = {run_id for run_id in finished if jobs[run_id]["status"] == "failed"}
        assert {e["event"]["run_id"] for e in hec.stored} == failed
        for envelope in hec.stored:
            assert envelope["index"] == "main" and envelope["sourcetype"] == "duvo:run"
            assert envelope["fields"]["run_id"] == envelope["event"]["run_id"]
            assert "run" not in envelope["event"]
            assert isinstance(envelope["time"], int | float)

        # Loki: bounded labels, run_id in structured metadata, the line is the event.
        entries = loki.entries
        assert {entry.metadata["run_id"] for entry in entries} == finished
        for entry in entries:
            assert "run_id" not in entry.labels
            assert set(entry.labels) <= {"service", "env", "status", "service_name"}
            assert entry.event["run_id"] == entry.metadata["run_id"]
        assert {entry.labels["status"] for entry in entries} <= {"completed", "failed", "stopped", "interrupted"}

        status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
        by_name = {sink["name"]: sink for sink in status["sinks"]}
        assert by_name["siem"]["delivered"] == len(failed)
        assert by_name["siem"]["filtered"] == len(finished) - len(failed)
        assert all(sink["backlog"] == 0 for sink in status["sinks"])


def test_dead_letters_are_listed_and_replayed_once_fixed(sim, tmp_path):
    jobs = [sim.world.create_job(team_id="team-sim", status="completed")["id"] for _ in range(10)]
    with DatadogFake(api_key="dd-key") as dd:
        dd.reject_run_ids(jobs[3], reason="attribute too large")
        sinks = f"""\
- type: datadog
  name: dd
  api_key: dd-key
  url: {dd.url}
"""
        config = write_config(tmp_path, sim.url, sinks=sinks)
        once = cli("once", "--config", str(config))
        assert once.returncode == 7, once.stderr  # everything else delivered, one dead letter
        assert {log["run_id"] for log in dd.stored} == set(jobs) - {jobs[3]}
        # one summary line naming the count and the reason, not a warning per event
        [summary] = [json.loads(line) for line in once.stderr.splitlines() if "dead letters" in line]
        assert summary["events"] == 1 and "attribute too large" in summary["last_reason"]
        accepted = cli("once", "--dead-letter-exit-code", "0", "--config", str(config))
        assert accepted.returncode == 0, accepted.stderr  # nothing new was dead-lettered

        listing = cli("status", "--dead-letters", "--config", str(config))
        assert "dead letters: 1" in listing.stdout
        assert jobs[3] in listing.stdout and "attribute too large" in listing.stdout
        data = json.loads(cli("status", "--json", "--dead-letters", "--config", str(config)).stdout)
        [letter] = data["dead_letters"]
        assert letter["run_id"] == jobs[3] and letter["sink"] == "dd"

        [sink] = data["sinks"]
        assert sink["dead_letters"] == 1 and "attribute too large" in sink["last_dead_letter_reason"]
        assert sink["delivered"] == 9
        assert "last dead letter: " in listing.stdout

        again = cli("replay", "--config", str(config))  # still rejected; --dead-letters is the default
        assert again.returncode == 7 and "1 rejected again" in again.stdout
        dd.clear_rejections()  # the backend was fixed
        fixed = cli("replay", "--dead-letters", "--config", str(config))
        assert fixed.returncode == 0 and "1 delivered, 0 rejected again" in fixed.stdout
        assert sorted(log["run_id"] for log in dd.stored) == sorted(jobs)
        data = json.loads(cli("status", "--json", "--dead-letters", "--config", str(config)).stdout)
        assert data["dead_letters"] == [] and data["sinks"][0]["dead_letters"] == 0
        assert data["sinks"][0]["delivered"] == 10  # the replayed event counts as delivered


def test_summaries_and_alerts_reach_the_sinks_that_ask_for_them_intact(sim, tmp_path):
    """run.summary and alert.started through Datadog, Splunk HEC and Loki (strict fakes) and a
    file: each backend's shape, no run_id invented; a sink without an events filter gets none."""
    from datetime import UTC, datetime, timedelta

    completed = datetime.now(UTC) - timedelta(seconds=600)  # before the last 5-minute step boundary
    times = {"started_at": (completed - timedelta(seconds=40)).isoformat(), "completed_at": completed.isoformat()}
    for status in ["failed"] * 4 + ["completed"] * 6:
        sim.world.create_job(team_id="team-sim", status=status, agent_id="agent-x", **times)
    asks = "filter: {events: [run.finished, run.summary, alert.started, alert.cleared]}"
    with DatadogFake(api_key="dd-key") as dd, FakeSplunkHec(token="hec-token") as hec, FakeLoki() as loki:
        sinks = f"""\
- type: file
  name: plain
  path: {tmp_path / "plain.jsonl"}
- type: file
  name: asking
  path: {tmp_path / "asking.jsonl"}
  {asks}
- type: datadog
  name: dd
  api_key: dd-key
  url: {dd.url}
  {asks}
- type: splunk_hec
  name: siem
  url: {hec.url}
  token: hec-token
  index: main
  filter: {{events: [run.summary, alert.started]}}
- type: loki
  name: loki
  url: {loki.url}
  labels: {{service: duvo}}
  {asks}
"""
        config = write_config(
            tmp_path, sim.url, sinks=sinks, extra="insights: {min_jobs: 10, windows: [1h], steps: [5m]}\n"
        )
        result = cli("once", "--config", str(config))
        assert result.returncode == 0, result.stderr

        plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
        assert {e["event"] for e in plain} == {"run.finished"} and len(plain) == 10
        asking = [json.loads(line) for line in (tmp_path / "asking.jsonl").read_text().splitlines()]
        (summary,) = [e for e in asking if e["event"] == "run.summary"]
        (alert,) = [e for e in asking if e["event"] == "alert.started"]
        assert summary["agent_id"] == "agent-x" and summary["jobs"] == 10 and summary["failure_rate"] == 0.4
        assert summary["statuses"] == {"completed": 6, "failed": 4} and summary["duration_p95_seconds"] == 40.0
        assert alert["alert"] == "failure_rate" and alert["value"] == 0.4 and alert["threshold"] == 0.1
        assert alert["window"] == "1h" and len(alert["example_run_ids"]) == 4

        # Datadog: the event's fields as attributes, the level from the alert, a tag naming the event.
        dd_alert = next(log for log in dd.stored if log.get("event") == "alert.started")
        dd_summary = next(log for log in dd.stored if log.get("event") == "run.summary")
        assert dd_alert["status"] == "error" and dd_summary["status"] == "info"
        assert dd_alert["message"] == alert["message"] and "failure rate" in dd_alert["message"]
        assert "duvo_event:alert.started" in dd_alert["ddtags"] and "agent:agent-x" in dd_alert["ddtags"]
        assert dd_alert["example_run_ids"] == alert["example_run_ids"] and dd_alert["value"] == 0.4
        assert "run_id" not in dd_alert and "job_status" not in dd_alert
        assert dd_summary["jobs"] == 10 and dd_summary["duration_p95_seconds"] == 40.0

        # Splunk: the event as sent, indexed fields without a run_id.
        by_kind = {envelope["event"]["event"]: envelope for envelope in hec.stored}
        assert set(by_kind) == {"run.summary", "alert.started"}  # its filter has no run.finished
        assert by_kind["alert.started"]["event"] == alert
        assert by_kind["run.summary"]["event"] == summary
        assert by_kind["alert.started"]["fields"] == {"agent_id": "agent-x", "team_id": "team-sim"}

        # Loki: the event type as the bounded status label, the level in structured metadata.
        entries = {entry.event["event"]: entry for entry in loki.entries}
        assert entries["alert.started"].labels["status"] == "alert.started"
        assert entries["alert.started"].metadata["level"] == "error"
        assert "run_id" not in entries["run.summary"].metadata
        assert entries["run.summary"].event["failure_rate"] == 0.4
        assert entries["alert.started"].event["example_run_ids"] == alert["example_run_ids"]
