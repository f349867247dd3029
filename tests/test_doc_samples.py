"""The sample searches in README.md and docs/sinks/*.md name only fields the sinks really produce.

Real events go through the real Datadog, Splunk HEC and Loki sinks into the fake backends (over
127.0.0.1), and every field, label, tag or attribute a documented query names is looked up in what
the backends stored. A query written against a field nothing produces (the LogQL sample's
``run_error`` once did this) fails here. The checkers understand the query syntax the docs use.
Syntax they do not know is reported as a problem rather than skipped, so a new sample cannot
pass unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from exporter.transform import events as runevents
from sinks.datadog import DatadogSink, DatadogSinkSettings
from sinks.loki import LokiSink, LokiSinkSettings
from sinks.splunk_hec import SplunkHecSink, SplunkHecSinkSettings
from tests.fakes.datadog import DatadogFake
from tests.fakes.loki import FakeLoki
from tests.fakes.splunk_hec import FakeSplunkHec
from transport import timestamps

ROOT = Path(__file__).resolve().parent.parent
DOCS = ["README.md", "docs/sinks/datadog.md", "docs/sinks/splunk_hec.md", "docs/sinks/loki.md"]
# The sink settings the docs' own examples use.
LOKI_LABELS = {"service": "duvo"}
DATADOG_SERVICE = "duvo-assignments"


# -- the samples --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    doc: str
    kind: str  # datadog | spl | logql
    query: str


_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
_COMMENT = re.compile(r"\s+#\s.*$")


def _kind(query: str) -> str | None:
    if query.startswith("source:duvo"):
        return "datadog"
    if query.startswith("index="):
        return "spl"
    if re.search(r'\{service="duvo"', query):
        return "logql"
    return None


def samples(doc: str) -> list[Sample]:
    text = (ROOT / doc).read_text()
    found: list[Sample] = []
    for match in _FENCE.finditer(text):
        language, body = match.group(1), match.group(2)
        if language == "spl":  # one search over several lines
            found.append(Sample(doc, "spl", " ".join(line.strip() for line in body.splitlines() if line.strip())))
        elif language in ("logql", ""):  # one query per line, `# comments` after it
            for line in body.splitlines():
                query = _COMMENT.sub("", line).strip()
                kind = _kind(query)
                if kind is not None and (language == "" or kind == "logql"):
                    found.append(Sample(doc, kind, query))
    prose = _FENCE.sub("", text)
    for span in re.findall(r"`([^`]+)`", prose):
        query = " ".join(span.split())
        kind = _kind(query)
        if kind is not None:
            found.append(Sample(doc, kind, query))
    return found


ALL_SAMPLES = [sample for doc in DOCS for sample in samples(doc)]


# -- what the sinks produce ---------------------------------------------------------------------


# Recent times: Loki refuses entries older than a week, Datadog dates older than 18 h.
_NOW = timestamps.now()


def _ago(minutes: float) -> str:
    return timestamps.format_utc(_NOW - timedelta(minutes=minutes))


def _run(status: str, **extra: Any) -> dict[str, Any]:
    # Only the fields Duvo's guide documents (shared/duvo-api.md), so a sample cannot lean on a
    # field only the simulator adds.
    record: dict[str, Any] = {
        "id": f"run_{status}",
        "agent_id": "agent_7",
        "team_id": "team_42",
        "status": status,
        "created_at": _ago(10),
        "started_at": _ago(9),
        "completed_at": _ago(2),
        "pending_human_request": None,
    }
    record.update(extra)
    return record


def _events() -> list[dict[str, Any]]:
    exported = _ago(1)
    from exporter.transform.diagnosis import diagnose

    # A failed Job as the exporter diagnoses it (README "Diagnosis"): its log ends on a tool error.
    failing = {
        "type": "tool_call",
        "timestamp": _ago(2),
        "tool_call": {"name": "sheets.append_row", "arguments": {}},
        "tool_result": {"error": {"code": "rate_limited", "message": "Upstream API returned 429"}},
    }
    built = [
        runevents.build(
            _run(status, **({"has_issues": True, "issue_severity": "critical"} if status == "failed" else {})),
            "team_42",
            runevents.EVENT_FINISHED,
            exported,
            diagnosis=diagnose([failing], status) if status == "failed" else None,
        )
        for status in sorted(runevents.TERMINAL_STATUSES)
    ]
    waiting = _run("waiting", completed_at=None, pending_human_request={"id": "hr_1", "type": "approval"})
    built.append(
        runevents.build(waiting, "team_42", runevents.EVENT_WAITING, exported, event_id="run_waiting:waiting:hr_1")
    )
    # A completed Job that succeeded after a retried tool error (README "The guide's questions").
    retried = {**failing, "timestamp": _ago(3)}
    succeeded = {**failing, "timestamp": _ago(2), "tool_result": {"ok": True}}
    built.append(
        runevents.build(
            _run("completed", id="run_recovered"),
            "team_42",
            runevents.EVENT_FINISHED,
            exported,
            diagnosis=diagnose([retried, succeeded], "completed"),
        )
    )
    return [event.to_dict() for event in built] + _insight_events()


def _insight_events() -> list[dict[str, Any]]:
    """A run.summary and an alert.started as the insights build them (README "Insights")."""
    from collections import Counter

    from exporter.insights.aggregates import Aggregate
    from exporter.insights.alerts import FAILURE_RATE, Transition
    from exporter.insights.summary import alert_event, summary_event
    from exporter.state.store import AlertEpisode

    now = _NOW.timestamp()
    agg = Aggregate("team_42", "agent_7", statuses=Counter(completed=18, failed=4), durations=[60.0] * 22)
    episode = AlertEpisode(FAILURE_RATE, "team_42", "agent_7", "1h", now - 60, 4 / 22, 0.1)
    return [
        summary_event(agg, "1h", now - 3600, now, now),
        alert_event(Transition(episode, started=True, examples=("run_failed",)), now),
    ]


def _paths(value: Any, separator: str, prefix: str = "") -> Iterator[str]:
    """Every key path of a JSON object, nested keys joined with ``separator`` (arrays not entered)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{prefix}{separator}{key}" if prefix else str(key)
            yield path
            yield from _paths(item, separator, path)


@dataclass(frozen=True)
class Produced:
    datadog_attributes: frozenset[str]  # @name, dotted for nested attributes
    datadog_tags: frozenset[str]  # tag keys in ddtags
    splunk_indexed: frozenset[str]  # HEC indexed `fields` (name::value)
    splunk_fields: frozenset[str]  # search-time fields: envelope metadata + the event's keys, dotted
    loki_labels: frozenset[str]
    loki_metadata: frozenset[str]
    loki_json: frozenset[str]  # what `| json` extracts from the line: nested keys joined with _


@pytest.fixture(scope="module")
def produced() -> Iterator[Produced]:
    batch = _events()
    with DatadogFake(api_key="dd-key") as dd, FakeSplunkHec(token="hec-token") as hec, FakeLoki() as loki:
        sinks = [
            DatadogSink(
                DatadogSinkSettings(
                    type="datadog", name="dd", api_key="dd-key", url=dd.url, service=DATADOG_SERVICE, tags=["env:prod"]
                )
            ),
            SplunkHecSink(
                SplunkHecSinkSettings(type="splunk_hec", name="splunk", url=hec.url, token="hec-token", index="main")
            ),
            LokiSink(LokiSinkSettings(type="loki", name="loki", url=loki.url, labels=LOKI_LABELS)),
        ]
        try:
            for sink in sinks:
                result = sink.send(batch)
                assert result.done == len(batch) and not result.rejected and result.error is None, sink.name
        finally:
            for sink in sinks:
                sink.close()
        assert len(dd.stored) == len(hec.stored) == len(loki.entries) == len(batch)
        yield Produced(
            datadog_attributes=frozenset(path for log in dd.stored for path in _paths(log, ".")),
            datadog_tags=frozenset(tag.split(":", 1)[0] for log in dd.stored for tag in log["ddtags"].split(",")),
            splunk_indexed=frozenset(name for envelope in hec.stored for name in envelope.get("fields", {})),
            splunk_fields=frozenset(
                {"index", "sourcetype", "source", "host", "_time", "_raw"}
                | {path for envelope in hec.stored for path in _paths(envelope["event"], ".")}
            ),
            loki_labels=frozenset(name for entry in loki.entries for name in entry.labels),
            loki_metadata=frozenset(name for entry in loki.entries for name in entry.metadata),
            loki_json=frozenset(path for entry in loki.entries for path in _paths(entry.event, "_")),
        )


# -- checkers: each returns the problems it finds in one query ----------------------------------

# Datadog's reserved attributes, searched without @ (docs.datadoghq.com/logs/explorer/search_syntax).
_DATADOG_RESERVED = {"source": "ddsource", "service": "service", "status": "status", "host": "hostname"}


def check_datadog(query: str, produced: Produced) -> list[str]:
    problems = []
    for at, name in re.findall(r"(@?)([A-Za-z_][\w.\-]*):", query):
        if at:
            if name not in produced.datadog_attributes:
                problems.append(f"@{name}: no such attribute in the logs the sink sends")
        elif name in _DATADOG_RESERVED:
            if _DATADOG_RESERVED[name] not in produced.datadog_attributes:
                problems.append(f"{name}: the sink does not set {_DATADOG_RESERVED[name]}")
        elif name not in produced.datadog_tags:
            problems.append(f"{name}: no such tag in the logs the sink sends")
    return problems


def _split_pipes(text: str) -> list[str]:
    """Split on | outside quotes and brackets."""
    parts, depth, quote, current = [], 0, "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += char
    parts.append(current.strip())
    return parts


_EVAL_WORDS = {"AND", "OR", "NOT", "true", "false", "null", "as", "by"}


def _identifiers(expression: str) -> list[str]:
    """Field names an SPL eval expression reads: not strings, numbers, functions or keywords."""
    expression = re.sub(r'"[^"]*"', " ", expression)
    return [
        name
        for name, call in re.findall(r"([A-Za-z_][\w.]*)\s*(\()?", expression)
        if not call and name not in _EVAL_WORDS
    ]


def check_spl(query: str, produced: Produced) -> list[str]:
    problems: list[str] = []
    search, *commands = _split_pipes(query)
    available = set(produced.splunk_fields | produced.splunk_indexed)

    def need(names: list[str], where: str) -> None:
        problems.extend(f"{where}: {name} is not a field here" for name in names if name not in available)

    for name, operator in re.findall(r"([A-Za-z_][\w.]*)(::|=)", search):
        if operator == "::" and name not in produced.splunk_indexed:
            problems.append(f"{name}::  is not an indexed field the sink sends")
        elif operator == "=" and name not in available:
            problems.append(f"{name}= is not a field of the events the sink sends")
    for command in commands:
        verb, _, rest = command.partition(" ")
        if verb in ("dedup", "table", "fields"):
            need(rest.replace(",", " ").split(), verb)
        elif verb == "eval":
            name, _, expression = rest.partition("=")
            need(_identifiers(expression), "eval")
            available.add(name.strip())
        elif verb == "sort":  # sort [limit] [+|-]field, ...
            names = [word.lstrip("+-") for word in rest.replace(",", " ").split() if not word.isdigit()]
            need([name for name in names if name], "sort")
        elif verb == "where":
            need(_identifiers(rest), "where")
        elif verb == "stats":
            aggregations, _, by = rest.partition(" by ")
            need(by.replace(",", " ").split(), "stats by")
            outputs = set(by.replace(",", " ").split())
            for call, argument, alias in re.findall(
                r"(\w+)(?:\(((?:[^()]|\([^()]*\))*)\))?(?:\s+as\s+(\w+))?", aggregations
            ):
                if call == "as":
                    continue
                if argument.startswith("eval(") and argument.endswith(")"):
                    need(_identifiers(argument[5:-1]), "stats eval")
                elif argument:
                    need([argument.strip()], f"stats {call}")
                outputs.add(alias or (f"{call}({argument})" if argument else call))
            available = outputs  # stats keeps only its results and by-fields
        else:
            problems.append(f"| {verb}: this test does not know the command; teach check_spl")
    return problems


def check_logql(query: str, produced: Produced) -> list[str]:
    problems: list[str] = []
    selector = re.search(r"\{([^}]*)\}", query)
    if selector is None:
        return ["no stream selector"]
    for name in re.findall(r'([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)\s*"', selector.group(1)):
        if name not in produced.loki_labels:
            problems.append(f"{{{name}=...}}: {name} is not a stream label (labels: {sorted(produced.loki_labels)})")
    available = set(produced.loki_labels | produced.loki_metadata)
    grouping = re.match(r"\s*\w+\s+by\s*\(([^)]*)\)", query)
    if grouping:
        for name in grouping.group(1).replace(",", " ").split():
            if name not in available:
                problems.append(f"by ({name}): not a label or structured metadata")
    # The pipeline: what follows the selector inside the innermost range/log query.
    pipeline = query[selector.end() :]
    pipeline = re.split(r"\[\d+[smhd]\]", pipeline)[0]
    for stage in _split_pipes(pipeline)[1:]:
        if stage == "json":
            available |= produced.loki_json
        elif stage.startswith(("=", "~", "!=", "!~")):
            continue  # a line filter: no field
        elif stage.startswith("line_format"):
            for name in re.findall(r"\{\{\s*\.(\w+)\s*\}\}", stage):
                if name not in available:
                    problems.append(f"line_format: .{name} is not a label, metadata or extracted field here")
        elif match := re.fullmatch(r"([A-Za-z_]\w*)\s*(=~|!~|!=|==|=|>=|<=|>|<)\s*.+", stage):
            if match.group(1) not in available:
                problems.append(f"| {match.group(1)}{match.group(2)}: not a label, metadata or extracted field here")
        else:
            problems.append(f"| {stage}: this test does not know the stage; teach check_logql")
    return problems


CHECKERS = {"datadog": check_datadog, "spl": check_spl, "logql": check_logql}


# -- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "kind", "at_least"),
    [
        ("README.md", "datadog", 3),
        ("README.md", "spl", 1),
        ("README.md", "logql", 3),
        ("docs/sinks/datadog.md", "datadog", 5),
        ("docs/sinks/splunk_hec.md", "spl", 2),
        ("docs/sinks/loki.md", "logql", 6),
    ],
)
def test_the_samples_are_found(doc: str, kind: str, at_least: int) -> None:
    # Guards the extraction itself: a change of markup must not leave the samples unchecked.
    assert len([s for s in ALL_SAMPLES if s.doc == doc and s.kind == kind]) >= at_least


@pytest.mark.parametrize("sample", ALL_SAMPLES, ids=lambda s: f"{s.doc}:{s.kind}:{s.query[:60]}")
def test_a_documented_query_names_only_fields_the_sinks_produce(sample: Sample, produced: Produced) -> None:
    assert CHECKERS[sample.kind](sample.query, produced) == []


@pytest.mark.parametrize(
    ("kind", "query", "complaint"),
    [
        # What issue 14 found in docs/sinks/loki.md: nothing produces run.error.
        ("logql", '{service="duvo", status="failed"} | json | line_format "{{.run_id}} {{.run_error}}"', "run_error"),
        ("logql", '{service="duvo"} | json | run_state="failed"', "run_state"),
        ("logql", '{service="duvo", run_id="run_1"}', "run_id"),  # metadata, not a stream label
        ("logql", '{service="duvo"} | duration_seconds > 600', "duration_seconds"),  # needs | json first
        ("logql", '{service="duvo"} | logfmt', "logfmt"),
        ("spl", 'index=main sourcetype="duvo:run" job_status=failed', "job_status"),
        ("spl", 'index=main sourcetype="duvo:run" duration_seconds::1', "duration_seconds"),
        ("spl", 'index=main sourcetype="duvo:run" | stats count by agent_id | table agent_id status', "status"),
        ("spl", 'index=main sourcetype="duvo:run" | eval rate=broken/total', "broken"),
        ("spl", 'index=main sourcetype="duvo:run" | stats count as total by agent_id | sort - rate', "rate"),
        ("spl", 'index=main sourcetype="duvo:run" | timechart count', "timechart"),
        ("datadog", "source:duvo @job_state:failed", "job_state"),
        ("datadog", "source:duvo status:error assignment:agent_7", "assignment"),
    ],
)
def test_the_checkers_catch_a_field_nothing_produces(kind: str, query: str, complaint: str, produced: Produced) -> None:
    problems = CHECKERS[kind](query, produced)
    assert any(complaint in problem for problem in problems), problems


def test_the_loki_json_fields_are_what_loki_extracts(produced: Produced) -> None:
    # The vocabulary itself: nested keys joined with _, nulls left out of the line by the sink.
    assert {"run_status", "run_id", "duration_seconds", "pending_human_request_type"} <= produced.loki_json
    assert "run_error" not in produced.loki_json
    assert produced.loki_labels >= {"service", "status"} and "run_id" not in produced.loki_labels
    assert produced.loki_metadata >= {"run_id", "team_id", "agent_id", "level"}
