"""Every class of configuration error: one line each, naming the YAML path; exit code 2."""

import subprocess
import sys
import textwrap

import pytest

from exporter.config import ConfigError, parse_config

BASE = """
duvo:
  api_key: dv_key
  team_id: t1
sinks:
  - type: file
    name: local
    path: out.jsonl
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), env or {})
    return info.value.problems


def test_minimal_config_gets_documented_defaults():
    config = parse_config(BASE, {})
    assert config.duvo.base_url == "https://api.duvo.ai/v2"
    assert config.duvo.requests_per_minute == 240
    assert config.duvo.start_from == "24h"
    assert config.schedule.interval_seconds == 300
    assert config.state.path == "./var/state.db"
    assert config.extract.emit == "terminal"
    assert config.extract.recheck.sweep_pages == 20
    assert config.duvo.team_ids == ["t1"]
    assert config.insights.windows == ["1h", "24h"] and config.insights.steps == ["5m", "1h"]
    assert (config.insights.failure_threshold, config.insights.min_jobs, config.insights.hysteresis) == (0.1, 20, 0.2)
    assert (config.insights.latency_multiple, config.insights.baseline, config.insights.max_agents) == (1.5, "24h", 50)


def test_the_example_config_is_valid_and_states_the_defaults():
    from pathlib import Path

    from exporter.config import DiagnoseSettings, ExtractSettings, InsightSettings, ServerSettings, WebhookSettings

    text = (Path(__file__).resolve().parent.parent / "config" / "exporter.example.yaml").read_text()
    config = parse_config(text, {"DUVO_API_KEY": "dv_key"})
    assert config.extract == ExtractSettings()
    assert config.server == ServerSettings()
    assert config.insights == InsightSettings()
    assert config.diagnose == DiagnoseSettings()
    assert config.diagnosis_budget() == 240  # 0.2 of 240/min over the default 5m interval
    # the commented webhook block, uncommented, is valid too
    block = text[text.index("# webhooks:") : text.index("\nextract:")]
    uncommented = "\n".join(line.removeprefix("# ") if line.startswith("# ") else line for line in block.splitlines())
    uncommented = uncommented.replace("#   ", "  ")
    env = {"DUVO_API_KEY": "dv_key", "DUVO_WEBHOOK_TOKEN": "w" * 16}
    with_hooks = parse_config(text.replace("listen: null", "listen: 'localhost:1'") + uncommented + "\n", env)
    assert with_hooks.webhooks == WebhookSettings(token="w" * 16)


def test_diagnose_settings_are_checked():
    assert problems(BASE + "diagnose:\n  statuses: [failed, waiting]\n  max_pages: 0\n") == [
        "diagnose.statuses[1]: input should be 'completed', 'failed', 'stopped' or 'interrupted' (got 'waiting')",
        "diagnose.max_pages: input should be greater than or equal to 1 (got 0)",
    ]
    config = parse_config(BASE + "diagnose: {max_requests_per_pass: 7}\nschedule: {every: 1m}\n", {})
    assert config.diagnosis_budget() == 7


def test_a_negative_sweep_is_refused():
    assert problems(BASE + "extract:\n  recheck: {sweep_pages: -1}\n") == [
        "extract.recheck.sweep_pages: input should be greater than or equal to 0 (got -1)"
    ]


def test_interpolation_with_defaults_and_literal_dollar():
    config = parse_config(
        BASE.replace("dv_key", "${KEY}").replace("t1", "${TEAM:-fallback}").replace("out.jsonl", "a$$b"),
        {"KEY": "dv_from_env"},
    )
    assert config.duvo.api_key.get_secret_value() == "dv_from_env"
    assert config.duvo.team_ids == ["fallback"]
    assert config.sinks[0].path == "a$b"


def test_unset_variable_names_the_variable_and_the_path():
    assert problems(BASE.replace("dv_key", "${DUVO_API_KEY}")) == [
        "duvo.api_key: environment variable DUVO_API_KEY is not set"
    ]


def test_missing_required_field_in_a_sink():
    assert problems(BASE.replace("    path: out.jsonl\n", "")) == ["sinks[0].path: field required"]


def test_unknown_key_is_an_error_not_ignored():
    [problem] = problems(BASE + "    bogus: 1\n")
    assert problem.startswith("sinks[0].bogus: unknown key")


def test_unknown_sink_type_and_missing_type():
    found = problems(BASE + "  - type: kafka\n    name: k\n  - name: nameless\n")
    assert found[0].startswith("sinks[1].type: unknown sink type 'kafka'")
    assert found[1].startswith("sinks[2].type: field required")


def test_wrong_types_and_ranges():
    found = problems(BASE.replace("team_id: t1", "team_id: t1\n  requests_per_minute: fast\n  page_size: 500"))
    assert any(p.startswith("duvo.requests_per_minute: ") for p in found)
    assert any(p.startswith("duvo.page_size: input should be less than or equal to 100") for p in found)


def test_bad_durations_cron_and_start_from():
    found = problems(BASE + "schedule:\n  every: 5 minutes\n")
    assert found[0].startswith("schedule.every: '5 minutes' is not a duration")
    found = problems(BASE + "schedule:\n  cron: '61 * * * *'\n")
    assert found[0].startswith("schedule.cron: not a valid crontab expression")
    found = problems(BASE.replace("team_id: t1", "team_id: t1\n  start_from: yesterday"))
    assert found[0].startswith("duvo.start_from: 'yesterday' is not a duration")


def test_team_rules_and_duplicate_sink_names():
    assert problems(BASE.replace("  team_id: t1\n", "")) == ["duvo: team_id (or teams) is required"]
    assert problems(BASE.replace("team_id: t1", "team_id: t1\n  teams: [a]")) == [
        "duvo: set team_id or teams, not both"
    ]
    found = problems(BASE + "  - type: file\n    name: local\n    path: other.jsonl\n")
    assert found == ["sinks: name 'local' is used by more than one sink"]


def test_no_sinks_and_not_yaml_and_empty():
    assert problems("duvo:\n  api_key: k\n  team_id: t\n") == ["sinks: field required (at least one sink)"]
    assert problems("duvo: [\n")[0].startswith("<config>: not valid YAML at line")
    assert problems("") == ["<config>: the file is empty"]
    assert problems("- a\n- b\n")[0].startswith("<config>: the top level must be a mapping")


def test_secrets_never_appear_in_errors():
    found = problems(
        BASE.replace("team_id: t1", "team_id: t1\n  requests_per_minute: 0").replace("dv_key", "dv_SECRET_123")
    )
    assert found and all("dv_SECRET_123" not in p for p in found)


def test_rate_above_the_key_limit_warns():
    config = parse_config(BASE.replace("team_id: t1", "team_id: t1\n  requests_per_minute: 3000"), {})
    assert any("above Duvo's limit of 300/min" in w for w in config.warnings)


def test_yaml_is_never_evaluated_as_code(tmp_path):
    marker = tmp_path / "pwned"
    text = BASE + f"extra: !!python/object/apply:os.system ['touch {marker}']\n"
    found = problems(text)
    assert found[0].startswith("<config>: not valid YAML")
    assert not marker.exists()


def test_cli_exit_code_2_and_one_line_per_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("    path: out.jsonl\n", "").replace("dv_key", "${NOPE_UNSET_VAR}"))
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "duvo-exporter: error: duvo.api_key: environment variable NOPE_UNSET_VAR is not set",
        "duvo-exporter: error: sinks[0].path: field required",
    ]
    assert "Traceback" not in result.stderr


def test_cli_missing_config_file(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "status", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "config file not found" in result.stderr


def test_filter_values_are_checked_against_what_events_carry():
    """A typo in a filter would make the sink receive nothing, silently: it is a config error."""
    found = problems(BASE + "    filter:\n      statuses: [completed, faild]\n      events: [run.finished, run.done]\n")
    assert found == [
        "sinks[0].filter.statuses[1]: input should be 'completed', 'failed', 'stopped', 'interrupted' or 'waiting'"
        " (got 'faild')",
        "sinks[0].filter.events[1]: input should be 'run.finished', 'run.waiting', 'run.summary', 'alert.started'"
        " or 'alert.cleared' (got 'run.done')",
    ]


def test_filter_vocabulary_matches_what_the_pipeline_emits():
    from typing import get_args

    from exporter.transform import events
    from sinks.base import INSIGHT_EVENT_TYPES, EventStatus, EventType

    assert set(get_args(EventStatus)) == events.TERMINAL_STATUSES | {"waiting"}
    assert set(get_args(EventType)) == events.JOB_EVENTS | events.INSIGHT_EVENTS
    assert {events.EVENT_FINISHED, events.EVENT_WAITING} == events.JOB_EVENTS
    assert {events.EVENT_SUMMARY, events.EVENT_ALERT_STARTED, events.EVENT_ALERT_CLEARED} == events.INSIGHT_EVENTS
    assert events.INSIGHT_EVENTS == INSIGHT_EVENT_TYPES


def test_check_refuses_a_filter_typo(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(BASE) + "    filter: {statuses: [faild]}\n")
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.startswith("duvo-exporter: error: sinks[0].filter.statuses[0]: input should be 'completed'")


def test_server_and_webhook_settings():
    from exporter.config import parse_config

    config = parse_config(
        textwrap.dedent(BASE) + "server: {listen: '0.0.0.0:9464'}\nwebhooks: {token: '${TOKEN}'}\n",
        {"TOKEN": "t" * 32},
    )
    assert config.server.address == ("0.0.0.0", 9464)
    assert config.webhooks is not None and config.webhooks.token.get_secret_value() == "t" * 32
    assert parse_config(textwrap.dedent(BASE), {}).server.address is None  # off unless set
    assert problems(BASE + "server: {listen: '9464'}\n") == [
        "server.listen: '9464' is not host:port (e.g. 127.0.0.1:9464)"
    ]
    assert problems(BASE + "webhooks: {token: '" + "t" * 20 + "'}\n") == [
        "webhooks: needs server.listen (webhooks arrive at POST /webhooks/duvo on that server)"
    ]
    [short] = problems(BASE + "server: {listen: '127.0.0.1:1'}\nwebhooks: {token: short}\n")
    assert short.startswith("webhooks.token: ") and "short" not in short  # never echo a secret
