"""LokiSink against the strict fake Loki over real HTTP: one test per outcome class."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest

from exporter.transform import events as run_events
from sinks.base import SendResult, SinkError
from sinks.loki import LokiSink, LokiSinkSettings, retry_after_seconds
from sinks.loki_encode import Encoder, Entry
from sinks.loki_response import map_rejections, parse_go_time, parse_labels, parse_reply
from sinks.registry import build_sink, settings_model
from tests.fakes.loki import FakeLoki, go_time_string, labels_string
from transport import timestamps

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
SECRET = "s3cret-password-value"


def event(
    run_id: str = "r1",
    status: str = "completed",
    *,
    completed: datetime | None = None,
    exported: datetime = NOW,
    agent: str | None = "ag1",
    **run_extra: Any,
) -> dict[str, Any]:
    completed = completed or exported - timedelta(seconds=5)
    run = {
        "id": run_id,
        "status": status,
        "agent_id": agent,
        "team_id": "tm1",
        "created_at": timestamps.format_utc(completed - timedelta(minutes=2)),
        "started_at": timestamps.format_utc(completed - timedelta(minutes=1)),
        "completed_at": timestamps.format_utc(completed),
        "error": None,
        **run_extra,
    }
    return run_events.build(run, "tm1", run_events.EVENT_FINISHED, exported).to_dict()


def settings(fake: FakeLoki, **overrides: Any) -> LokiSinkSettings:
    values: dict[str, Any] = {
        "type": "loki",
        "name": "loki",
        "url": fake.url,
        "labels": {"service": "duvo"},
        "timeout": 2.0,
    }
    values.update(overrides)
    return LokiSinkSettings.model_validate(values)


@pytest.fixture
def loki() -> Iterator[FakeLoki]:
    with FakeLoki(now=NOW.timestamp) as fake:
        yield fake


def sink_for(fake: FakeLoki, **overrides: Any) -> LokiSink:
    return LokiSink(settings(fake, **overrides))


def reasons(result: SendResult) -> dict[int, str]:
    return {r.index: r.reason for r in result.rejected}


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000


# -- delivered --------------------------------------------------------------------------------


def test_delivers_one_request_per_stream_with_bounded_labels_and_metadata() -> None:
    with FakeLoki(auth_enabled=True, basic_auth=("123456", SECRET), now=NOW.timestamp) as fake:
        sink = sink_for(fake, tenant_id="team-a", basic_auth={"username": "123456", "password": SECRET})
        batch = [event("r1"), event("r2", "failed"), event("r3", "stopped"), event("r4")]
        result = sink.send(batch)
        assert result == SendResult.ok(4)

        pushes = fake.push_requests()
        assert [r.status for r in pushes] == [204, 204, 204]  # completed, failed, stopped
        for request in pushes:
            assert request.headers["content-encoding"] == "gzip"
            assert request.headers["content-type"] == "application/json"
            assert request.headers["x-scope-orgid"] == "team-a"
            assert len(request.payload["streams"]) == 1
        assert {e.tenant for e in fake.entries} == {"team-a"}
        # Labels: static + status (+ service_name, which Loki adds); never a per-Job value.
        assert sorted(sorted(lbls.items()) for lbls in fake.stream_labels()) == sorted(
            sorted({"service": "duvo", "service_name": "duvo", "status": s}.items())
            for s in ("completed", "failed", "stopped")
        )
        by_run = {e.metadata["run_id"]: e for e in fake.entries}
        assert by_run["r2"].metadata == {"run_id": "r2", "team_id": "tm1", "agent_id": "ag1", "level": "error"}
        assert by_run["r3"].metadata["level"] == "warn"
        assert by_run["r1"].metadata["level"] == "info"
        # The line is the event, compact with sorted keys, without null-valued keys.
        line = by_run["r1"].line
        assert line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"))
        assert "null" not in line and '"error"' not in line
        assert by_run["r1"].event["run"]["completed_at"] == batch[0]["completed_at"]
        values = pushes[0].payload["streams"][0]["values"]
        assert [int(v[0]) for v in values] == sorted(int(v[0]) for v in values)
        assert all(len(v) == 3 and isinstance(v[0], str) for v in values)


def test_timestamps_are_deterministic_and_follow_the_configured_field(loki: FakeLoki) -> None:
    batch = [event("r1", completed=NOW - timedelta(minutes=30)), event("r2")]
    first = [e.value() for s in Encoder({"service": "duvo"}).streams(batch) for e in s.entries]
    again = [e.value() for s in Encoder({"service": "duvo"}).streams(batch) for e in s.entries]
    assert first == again  # a resend is byte-identical
    assert first[0][0] != first[1][0]  # same exported_at millisecond, distinct timestamps
    stamp = int(first[0][0])
    assert ns(NOW) <= stamp < ns(NOW) + 1_000_000  # exported_at, sub-millisecond tie-break

    sink = sink_for(loki, timestamp="completed_at")
    assert sink.send(batch) == SendResult.ok(2)
    by_run = {e.metadata["run_id"]: e.ts_ns for e in loki.entries}
    assert ns(NOW - timedelta(minutes=30)) <= by_run["r1"] < ns(NOW - timedelta(minutes=30)) + 1_000_000


def test_agent_label_and_plain_values_when_configured(loki: FakeLoki) -> None:
    sink = sink_for(loki, label_agent_id=True, structured_metadata=False, compress=False, omit_null_fields=False)
    assert sink.send([event("r1", agent="ag7"), event("r2", agent=None)]) == SendResult.ok(2)
    labels = loki.stream_labels()
    assert {"service": "duvo", "service_name": "duvo", "status": "completed", "agent_id": "ag7"} in labels
    assert all("run_id" not in lbls for lbls in labels)
    request = loki.push_requests()[0]
    assert "content-encoding" not in request.headers
    assert all(len(v) == 2 for v in request.payload["streams"][0]["values"])
    assert '"error":null' in loki.entries[0].line


# -- retried ----------------------------------------------------------------------------------


def test_server_error_is_retried_with_retry_after(loki: FakeLoki) -> None:
    loki.script(503, headers={"Retry-After": "7"})
    sink = sink_for(loki)
    result = sink.send([event("r1"), event("r2")])
    assert result.done == 0 and not result.fatal
    assert result.retry_after == 7.0 and "503" in (result.error or "")
    assert loki.entries == []
    assert sink.send([event("r1"), event("r2")]) == SendResult.ok(2)


def test_rate_limit_429_is_retried(loki: FakeLoki) -> None:
    loki.script(429)  # Loki's own "Ingestion rate limit exceeded ..." body, no Retry-After
    result = sink_for(loki).send([event("r1")])
    assert result.done == 0 and result.retry_after is None
    assert "Ingestion rate limit exceeded" in (result.error or "")


def test_tenant_rate_limit_of_the_fake_answers_429() -> None:
    with FakeLoki(now=NOW.timestamp, ingestion_rate_bytes=100) as fake:
        result = sink_for(fake).send([event("r1")])
        assert result.done == 0 and "429" in (result.error or "")


def test_connection_dropped_after_sending_is_retried(loki: FakeLoki) -> None:
    loki.script(drop=True)
    result = sink_for(loki).send([event("r1")])
    assert result.done == 0 and not result.fatal
    assert result.error == f"Loki at 127.0.0.1:{urlsplit(loki.url).port}: connection closed without an answer"


def test_slow_answer_times_out_and_is_retried(loki: FakeLoki) -> None:
    loki.script(delay=1.0)
    result = sink_for(loki, timeout=0.2).send([event("r1")])
    assert result.done == 0
    assert result.error == f"Loki at 127.0.0.1:{urlsplit(loki.url).port}: timed out waiting for the answer"


def test_failure_of_a_later_stream_keeps_the_earlier_events_finished(loki: FakeLoki) -> None:
    loki.script(0)  # completed stream: handled normally
    loki.script(500)  # failed stream
    result = sink_for(loki).send([event("r1"), event("r2", "failed"), event("r3")])
    assert result.done == 1 and "500" in (result.error or "")
    assert sorted(e.metadata["run_id"] for e in loki.entries) == ["r1", "r3"]  # r3 is resent later


# -- partially stored: Loki's 400 mapped back to events ---------------------------------------


def test_entries_too_far_behind_are_rejected_and_the_rest_stored(loki: FakeLoki) -> None:
    loki.seed({"service": "duvo", "status": "completed"}, ns(NOW))
    batch = [
        event("r0", completed=NOW - timedelta(minutes=10)),
        event("r1", completed=NOW - timedelta(hours=3)),
        event("r2", completed=NOW - timedelta(hours=2)),
        event("r3", "failed", completed=NOW - timedelta(hours=5)),  # another stream: nothing newer there
    ]
    result = sink_for(loki, timestamp="completed_at").send(batch)
    assert result.done == 4 and result.error is None
    assert set(reasons(result)) == {1, 2}
    assert all(r.startswith("entry too far behind, entry timestamp is: ") for r in reasons(result).values())
    assert sorted(e.metadata["run_id"] for e in loki.entries) == ["r0", "r3"]


def test_a_truncated_list_of_ignored_entries_is_completed_from_the_summary() -> None:
    with FakeLoki(now=NOW.timestamp, max_returned_errors=2) as fake:
        fake.seed({"service": "duvo", "status": "completed"}, ns(NOW))
        behind = [event(f"b{i}", completed=NOW - timedelta(hours=2, minutes=i)) for i in range(5)]
        fresh = [event(f"f{i}", completed=NOW - timedelta(minutes=i)) for i in range(2)]
        result = sink_for(fake, timestamp="completed_at").send(fresh + behind)
        assert result.done == 7 and set(reasons(result)) == {2, 3, 4, 5, 6}
        # The oldest two (b4, b3) are named by Loki; the other three are inferred from its summary.
        assert reasons(result)[6].endswith("oldest acceptable timestamp is: 2024-05-01T11:00:00Z")
        assert "Loki ignored 5 of 7 entries of the stream and named the first 2" in reasons(result)[2]
        assert sorted(e.metadata["run_id"] for e in fake.entries) == ["f0", "f1"]
        assert len(fake.push_requests()) == 1


def test_entries_too_old_are_rejected_with_lokis_grouped_reason(loki: FakeLoki) -> None:
    old = NOW - timedelta(days=8)
    batch = [event("r0", completed=old), event("r1", completed=old), event("r2"), event("r3", completed=old)]
    result = sink_for(loki, timestamp="completed_at").send(batch)
    assert result.done == 4 and set(reasons(result)) == {0, 1, 3}
    assert "has timestamp too old" in reasons(result)[0]
    assert [e.metadata["run_id"] for e in loki.entries] == ["r2"]
    assert "3 errors like: " in loki.push_requests()[0].answer


def test_too_old_and_too_far_behind_together_are_bisected_to_the_exact_entries(loki: FakeLoki) -> None:
    loki.seed({"service": "duvo", "status": "completed"}, ns(NOW))
    batch = [
        event("old", completed=NOW - timedelta(days=8)),
        event("behind", completed=NOW - timedelta(hours=3)),
        event("fine", completed=NOW - timedelta(minutes=1)),
    ]
    result = sink_for(loki, timestamp="completed_at").send(batch)
    assert result.done == 3 and set(reasons(result)) == {0, 1}
    assert "too old" in reasons(result)[0] and "too far behind" in reasons(result)[1]
    assert [e.metadata["run_id"] for e in loki.entries] == ["fine"]


def test_an_unmappable_400_is_bisected_down_to_the_bad_event(loki: FakeLoki) -> None:
    loki.reject(lambda entry: entry.metadata.get("run_id") == "r3", body="something Loki-ish went wrong")
    result = sink_for(loki).send([event(f"r{i}") for i in range(6)])
    assert result.done == 6
    assert reasons(result) == {3: "HTTP 400 from Loki: something Loki-ish went wrong"}
    assert sorted(e.metadata["run_id"] for e in loki.entries) == ["r0", "r1", "r2", "r4", "r5"]


def test_lines_over_max_line_bytes_are_rejected_without_sending(loki: FakeLoki) -> None:
    result = sink_for(loki, max_line_bytes=2000).send([event("r1"), event("big", output="x" * 5000)])
    assert result.done == 2 and set(reasons(result)) == {1}
    assert "max_line_bytes" in reasons(result)[1]
    assert [e.metadata["run_id"] for e in loki.entries] == ["r1"]


# -- too large: split ----------------------------------------------------------------------------


def test_413_splits_the_request() -> None:
    with FakeLoki(now=NOW.timestamp, max_body_bytes=3000) as fake:
        batch = [event(f"r{i}", note="y" * 300) for i in range(8)]
        result = sink_for(fake).send(batch)
        assert result == SendResult.ok(8)
        assert 413 in [r.status for r in fake.push_requests()]
        assert sorted(e.metadata["run_id"] for e in fake.entries) == sorted(f"r{i}" for i in range(8))


def test_requests_over_max_request_bytes_are_split_before_sending(loki: FakeLoki) -> None:
    result = sink_for(loki, max_request_bytes=2500).send([event(f"r{i}") for i in range(6)])
    assert result == SendResult.ok(6)
    assert all(r.decoded_bytes <= 2500 for r in loki.push_requests())
    assert len(loki.push_requests()) > 1


# -- fatal ----------------------------------------------------------------------------------------


def test_wrong_credentials_are_fatal_and_never_echo_the_secret() -> None:
    with FakeLoki(basic_auth=("123456", "the-right-one"), now=NOW.timestamp) as fake:
        sink = sink_for(fake, basic_auth={"username": "123456", "password": SECRET})
        result = sink.send([event("r1")])
        assert result.fatal and result.done == 0
        assert (result.error or "").startswith("Loki: ") and "401" in (result.error or "")
        assert SECRET not in (result.error or "")
    with FakeLoki(bearer_token="right-token", now=NOW.timestamp) as fake:
        result = sink_for(fake, bearer_token=SECRET).send([event("r1")])
        assert result.fatal and SECRET not in (result.error or "")


def test_missing_tenant_is_fatal() -> None:
    with FakeLoki(auth_enabled=True, now=NOW.timestamp) as fake:
        result = sink_for(fake).send([event("r1")])
        assert result.fatal and "no org id" in (result.error or "") and "tenant_id" in (result.error or "")


def test_structured_metadata_disallowed_is_fatal_with_a_hint() -> None:
    with FakeLoki(allow_structured_metadata=False, now=NOW.timestamp) as fake:
        result = sink_for(fake).send([event("r1")])
        assert result.fatal and "structured_metadata: false" in (result.error or "")
        assert sink_for(fake, structured_metadata=False).send([event("r1")]) == SendResult.ok(1)


def test_wrong_path_is_fatal(loki: FakeLoki) -> None:
    result = sink_for(loki, url=loki.url + "/nope").send([event("r1")])
    assert result.fatal and "check sinks[loki].url" in (result.error or "")


# -- pacing ---------------------------------------------------------------------------------------


def test_pushes_are_paced_by_bytes_per_second(loki: FakeLoki) -> None:
    waits: list[float] = []
    clock = [0.0]

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    sink = LokiSink(settings(loki, max_bytes_per_second=1000), clock=lambda: clock[0], sleep=sleep)
    batch = [event("r1"), event("r2", "failed"), event("r3", "stopped")]
    assert sink.send(batch) == SendResult.ok(3)
    sent = sum(r.decoded_bytes for r in loki.push_requests())
    assert waits and sum(waits) == pytest.approx((sent - 1000) / 1000, rel=0.01)


# -- healthcheck ----------------------------------------------------------------------------------


def test_healthcheck() -> None:
    with FakeLoki(basic_auth=("u", "right"), now=NOW.timestamp) as fake:
        sink_for(fake, basic_auth={"username": "u", "password": "right"}).healthcheck()
        with pytest.raises(SinkError, match="credentials refused") as refused:
            sink_for(fake, basic_auth={"username": "u", "password": SECRET}).healthcheck()
        assert SECRET not in str(refused.value)
        fake.ready = False
        with pytest.raises(SinkError, match="503"):
            sink_for(fake, basic_auth={"username": "u", "password": "right"}).healthcheck()
        url = fake.url
    with pytest.raises(SinkError, match=r"^Loki at 127\.0\.0\.1:\d+: connection refused$"):
        LokiSink(
            LokiSinkSettings.model_validate({"type": "loki", "name": "l", "url": url, "timeout": 0.5})
        ).healthcheck()


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"labels": {"bad-name": "x"}},
        {"labels": {"__reserved": "x"}},
        {"labels": {"1st": "x"}},
        {"labels": {"status": "x"}},
        {"labels": {"env": ""}},
        {"labels": {f"l{i}": "x" for i in range(15)}},
        {"basic_auth": {"username": "u", "password": "p"}, "bearer_token": "t"},
        {"tenant_id": "a|b"},
        {"tenant_id": ".."},
        {"url": "http://user:pw@loki:3100"},
        {"max_bytes_per_second": -1},
        {"timestamp": "started_at"},
        {"unknown_key": 1},
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, Any]) -> None:
    values = {"type": "loki", "name": "loki", "url": "http://loki:3100", **overrides}
    with pytest.raises(pydantic.ValidationError):
        LokiSinkSettings.model_validate(values)


def test_settings_defaults_and_registry() -> None:
    model = settings_model("loki")
    parsed = model.model_validate(
        {"type": "loki", "name": "loki", "url": "https://logs.example.net/loki/api/v1/push", "labels": {"env": "p"}}
    )
    assert isinstance(parsed, LokiSinkSettings)
    assert parsed.url == "https://logs.example.net"
    assert (parsed.batch.max_events, parsed.batch.max_bytes) == (1000, 1_000_000)
    assert (parsed.timestamp, parsed.compress, parsed.structured_metadata) == ("exported_at", True, True)
    assert parsed.max_bytes_per_second == 2_000_000 and not parsed.label_agent_id
    sink = build_sink(parsed)
    assert isinstance(sink, LokiSink)
    sink.close()


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("12") == 12.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    later = retry_after_seconds("Wed, 01 May 2024 12:00:30 GMT", now=lambda: NOW)
    assert later == 30.0


# -- Loki's reply formats -------------------------------------------------------------------------


def test_parse_real_ingester_body() -> None:
    # The body a production Loki 3.7 returned for a late entry (quoted in a public test suite).
    body = (
        "entry with timestamp 2026-10-07 01:35:32.405 +0000 UTC ignored, reason: 'entry too far behind, entry "
        "timestamp is: 2026-10-07T01:35:32Z, oldest acceptable timestamp is: 2026-10-07T03:23:59Z',\n"
        "user 'usual-suspects', total ignored: 1 out of 1 for stream: "
        '{kind="invocation", scriptName="usual-suspects"}\n'
    )
    reply = parse_reply(body)
    assert reply.leftover == ""
    assert reply.summary is not None and (reply.summary.ignored, reply.summary.total) == (1, 1)
    assert reply.summary.labels == {"kind": "invocation", "scriptName": "usual-suspects"}
    stamp = int(datetime(2026, 10, 7, 1, 35, 32, tzinfo=UTC).timestamp()) * 1_000_000_000 + 405_000_000
    assert reply.ignored[0].ts_ns == stamp and reply.ignored[0].kind == "behind"
    entry = Entry(0, stamp, "{}", {})
    mapped = map_rejections(reply, {"kind": "invocation", "scriptName": "usual-suspects"}, [entry])
    assert mapped is not None and mapped[0].startswith("entry too far behind")
    assert map_rejections(reply, {"kind": "other"}, [entry]) is None


def test_go_formats_round_trip() -> None:
    for stamp in (0, 1_714_564_800_000_000_000, 1_714_564_800_123_000_000, 1_714_564_800_000_000_001):
        assert parse_go_time(go_time_string(stamp)) == stamp
    assert parse_go_time("2024-05-01 14:00:00.5 +0200 CEST") == 1_714_564_800_500_000_000
    labels = {"a": 'quote " and \\ and\nnewline', "b": "ünïcode", "service_name": "x"}
    assert parse_labels(labels_string(labels)) == labels
    assert parse_labels("not labels") is None


def test_unknown_text_in_a_body_is_not_mapped() -> None:
    body = "entry for stream '{a=\"b\"}' has timestamp too new: 2030-01-01T00:00:00Z; something else entirely"
    reply = parse_reply(body)
    assert reply.leftover == "something else entirely"
    assert map_rejections(reply, {"a": "b"}, [Entry(0, 1_893_456_000 * 1_000_000_000, "{}", {})]) is None


def test_blocked_ingestion_is_retried_even_under_a_2xx_status(loki: FakeLoki) -> None:
    loki.script(260, body="ingestion blocked for user fake until '2024-05-01T13:00:00Z' with status code '260'")
    result = sink_for(loki).send([event("r1")])
    assert result.done == 0 and not result.fatal and "ingestion blocked" in (result.error or "")


def test_a_too_long_agent_label_rejects_that_streams_events_only() -> None:
    with FakeLoki(now=NOW.timestamp, max_label_value_length=20) as fake:
        sink = sink_for(fake, label_agent_id=True)
        result = sink.send([event("r1", agent="a" * 30), event("r2", agent="short")])
        assert result.done == 2 and set(reasons(result)) == {0}
        assert "has label value too long" in reasons(result)[0]
        assert [e.metadata["run_id"] for e in fake.entries] == ["r2"]
