"""SplunkHecSink against the strict fake HEC over real HTTP: one test per outcome class."""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from sinks import registry
from sinks.base import SinkError
from sinks.splunk_hec import SplunkHecSink, SplunkHecSinkSettings
from tests.fakes.splunk_hec import INTERNAL_ERROR, FakeSplunkHec, Fault

TOKEN = "11111111-2222-3333-4444-555555555555"


def make_event(i: int, **overrides: Any) -> dict[str, Any]:
    event = {
        "event_id": f"r{i}:completed",
        "event": "run.finished",
        "run_id": f"r{i}",
        "team_id": "team-1",
        "agent_id": None,
        "status": "completed",
        "created_at": "2024-05-01T10:00:00.000Z",
        "started_at": "2024-05-01T10:00:01.000Z",
        "completed_at": "2024-05-01T10:00:05.250Z",
        "duration_seconds": 4.25,
        "pending_human_request": None,
        "run": {"id": f"r{i}", "status": "completed", "output": "x" * 50},
        "exported_at": "2024-05-01T10:01:00.000Z",
    }
    event.update(overrides)
    return event


def make_events(n: int) -> list[dict[str, Any]]:
    return [make_event(i) for i in range(n)]


@pytest.fixture
def fake() -> Iterator[FakeSplunkHec]:
    with FakeSplunkHec(TOKEN) as server:
        yield server


def settings(url: str, **overrides: Any) -> SplunkHecSinkSettings:
    values: dict[str, Any] = {
        "type": "splunk_hec",
        "name": "splunk",
        "url": url,
        "token": TOKEN,
        "index": "main",
        "sourcetype": "duvo:run",
        "host": "exporter-1",
        "timeout": 2.0,
        "ack_poll_interval": 0.01,
    }
    values.update(overrides)
    return SplunkHecSinkSettings.model_validate(values)


@pytest.fixture
def make_sink() -> Iterator[Any]:
    sinks: list[SplunkHecSink] = []

    def build(url: str, **overrides: Any) -> SplunkHecSink:
        sink = SplunkHecSink(settings(url, **overrides))
        sinks.append(sink)
        return sink

    yield build
    for sink in sinks:
        sink.close()


def assert_secret_free(*texts: str | None) -> None:
    for text in texts:
        assert TOKEN not in (text or "")


# -- delivered ---------------------------------------------------------------------------------


def test_batch_is_delivered_as_gzipped_concatenated_envelopes(fake, make_sink):
    events = make_events(3)
    result = make_sink(fake.url).send(events)

    assert result.done == 3 and not result.rejected and result.error is None
    assert fake.events == events
    (request,) = fake.data_requests()
    assert request.method == "POST" and request.path == "/services/collector/event"
    assert request.headers["authorization"] == f"Splunk {TOKEN}"
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == "application/json"
    assert "x-splunk-request-channel" not in request.headers
    assert gzip.decompress(request.body) == request.decoded
    lines = request.decoded.decode().splitlines()
    assert len(lines) == 3 and not request.decoded.lstrip().startswith(b"[")
    envelope = fake.stored[0]
    assert envelope["time"] == 1714557605.25  # completed_at, epoch seconds with milliseconds
    assert (envelope["host"], envelope["source"], envelope["sourcetype"], envelope["index"]) == (
        "exporter-1",
        "duvo-exporter",
        "duvo:run",
        "main",
    )
    # agent_id is null: omitted, since HEC refuses null indexed field values.
    assert envelope["fields"] == {"run_id": "r0", "status": "completed", "team_id": "team-1"}


def test_time_falls_back_to_created_then_exported(fake, make_sink):
    events = [
        make_event(0, completed_at=None),
        make_event(1, completed_at=None, created_at=None),
        make_event(2, completed_at=None, created_at=None, exported_at=None),
    ]
    assert make_sink(fake.url).send(events).done == 3
    assert fake.stored[0]["time"] == 1714557600.0
    assert fake.stored[1]["time"] == 1714557660.0
    assert "time" not in fake.stored[2]  # HEC then stamps the receipt time


def test_uncompressed_mode_and_optional_index(fake, make_sink):
    sink = make_sink(fake.url, compress=False, index=None)
    assert sink.send([make_event(0, agent_id="a-1")]).done == 1
    (request,) = fake.data_requests()
    assert "content-encoding" not in request.headers
    assert "index" not in fake.stored[0]
    assert fake.stored[0]["fields"]["agent_id"] == "a-1"


# -- retry -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "after", "words"),
    [
        (Fault.busy(retry_after=7), 7.0, "503, code 9 Server is busy"),
        (Fault(429, {"text": "Too many requests"}, {"Retry-After": "3"}), 3.0, "429"),
        (Fault(500, dict(INTERNAL_ERROR)), None, "500, code 8 Internal server error"),
        (Fault(502, "<html>bad gateway</html>"), None, "502"),
    ],
)
def test_busy_and_server_errors_are_retried(fake, make_sink, fault, after, words):
    fake.script(fault)
    result = make_sink(fake.url).send(make_events(4))
    assert result.done == 0 and not result.fatal
    assert result.retry_after == after
    assert words in (result.error or "")
    assert fake.stored == []


def test_connection_dropped_after_request_is_retried(fake, make_sink):
    fake.script(Fault.dropped())
    result = make_sink(fake.url).send(make_events(2))
    assert result.done == 0 and not result.fatal
    assert result.error == f"Splunk HEC at 127.0.0.1:{urlsplit(fake.url).port}: connection closed without an answer"
    assert_secret_free(result.error)


def test_slow_answer_times_out_and_is_retried(fake, make_sink):
    fake.script(Fault.slow(1.0))
    result = make_sink(fake.url, timeout=0.2).send(make_events(1))
    assert result.done == 0 and not result.fatal
    assert result.error == f"Splunk HEC at 127.0.0.1:{urlsplit(fake.url).port}: timed out waiting for the answer"


def test_unreachable_server_is_retried(make_sink):
    server = FakeSplunkHec(TOKEN).start()
    url = server.url
    server.stop()
    result = make_sink(url).send(make_events(1))
    assert result.done == 0 and not result.fatal and result.error


# -- rejected ----------------------------------------------------------------------------------


def test_invalid_event_is_dead_lettered_and_the_rest_delivered_once(fake, make_sink):
    fake.reject(lambda envelope: envelope["event"]["run_id"] in {"r2", "r5"})
    events = make_events(8)
    result = make_sink(fake.url).send(events)

    assert result.done == 8 and not result.fatal
    assert [r.index for r in result.rejected] == [2, 5]
    assert "400, code 6 Invalid data format" in result.rejected[0].reason
    # HEC stored the events before each invalid one: nothing is sent twice.
    assert [e["run_id"] for e in fake.events] == ["r0", "r1", "r3", "r4", "r6", "r7"]
    assert len(fake.data_requests()) == 3


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (5, "No data"),
        (12, "Event field is required"),
        (13, "Event field cannot be blank"),
        (15, "Error in handling indexed fields"),
    ],
)
def test_every_per_event_code_rejects_the_named_event(fake, make_sink, code, text):
    fake.reject(lambda envelope: envelope["event"]["run_id"] == "r1", code=code, text=text)
    result = make_sink(fake.url).send(make_events(3))
    assert result.done == 3
    reason = f"Splunk HEC refused the event (400, code {code} {text})"
    assert [(r.index, r.reason) for r in result.rejected] == [(1, reason)]
    assert [e["run_id"] for e in fake.events] == ["r0", "r2"]


def test_unnamed_bad_event_is_bisected_out(fake, make_sink):
    fake.reject(lambda envelope: envelope["event"]["run_id"] == "r3", name_event=False)
    result = make_sink(fake.url).send(make_events(6))
    assert result.done == 6 and [r.index for r in result.rejected] == [3]
    assert sorted(e["run_id"] for e in fake.events) == ["r0", "r1", "r2", "r4", "r5"]


def test_unencodable_event_is_rejected_without_sending_it(fake, make_sink):
    events = [make_event(0), make_event(1, duration_seconds=float("nan")), make_event(2)]
    result = make_sink(fake.url).send(events)
    assert result.done == 3 and [r.index for r in result.rejected] == [1]
    assert "cannot be encoded as JSON" in result.rejected[0].reason
    assert [e["run_id"] for e in fake.events] == ["r0", "r2"]


# -- split -------------------------------------------------------------------------------------


def test_413_splits_the_batch_until_it_fits():
    with FakeSplunkHec(TOKEN, max_content_length=2_500) as fake:
        sink = SplunkHecSink(settings(fake.url, compress=False))
        try:
            result = sink.send(make_events(8))
        finally:
            sink.close()
    assert result.done == 8 and not result.rejected
    assert [e["run_id"] for e in fake.events] == [f"r{i}" for i in range(8)]
    assert any(r for r in fake.data_requests() if len(r.body) > 2_500)  # the 413s happened


def test_max_request_bytes_splits_before_sending(fake, make_sink):
    result = make_sink(fake.url, max_request_bytes=2_000).send(make_events(10))
    assert result.done == 10 and not result.rejected
    requests = fake.data_requests()
    assert len(requests) > 1 and all(len(r.decoded) <= 2_000 for r in requests)
    assert [e["run_id"] for e in fake.events] == [f"r{i}" for i in range(10)]


def test_single_event_over_the_server_limit_is_rejected():
    with FakeSplunkHec(TOKEN, max_content_length=1_000) as fake:
        sink = SplunkHecSink(settings(fake.url, compress=False, max_request_bytes=1_000))
        try:
            result = sink.send([make_event(0, run={"blob": "y" * 5_000})])
        finally:
            sink.close()
    assert result.done == 1 and [r.index for r in result.rejected] == [0]
    assert "413" in result.rejected[0].reason


# -- fatal -------------------------------------------------------------------------------------


def test_wrong_token_stops_the_sink_with_a_clear_secret_free_reason(make_sink):
    with FakeSplunkHec("another-token") as fake:
        result = make_sink(fake.url).send(make_events(2))
    assert result.fatal and result.done == 0
    assert result.error == "Splunk HEC rejected the token (403, code 4 Invalid token): check sinks[splunk].token"
    assert_secret_free(result.error)


def test_disabled_token_stops_the_sink(make_sink):
    with FakeSplunkHec(TOKEN, token_disabled=True) as fake:
        result = make_sink(fake.url).send(make_events(1))
    assert result.fatal and "403, code 1 Token disabled" in (result.error or "")


def test_token_requiring_ack_is_a_clear_fatal_error(make_sink):
    with FakeSplunkHec(TOKEN, use_ack=True) as fake:
        result = make_sink(fake.url).send(make_events(1))
    assert result.fatal
    assert result.error == (
        "Splunk HEC requires indexer acknowledgement for this token "
        "(400, code 10 Data channel is missing): set sinks[splunk].ack: true"
    )


def test_disallowed_index_stops_instead_of_dead_lettering_everything(make_sink):
    with FakeSplunkHec(TOKEN, allowed_indexes={"duvo"}) as fake:
        result = make_sink(fake.url).send(make_events(3))
    assert result.fatal and result.done == 0 and not result.rejected
    assert "refused index 'main' (400, code 7 Incorrect index)" in (result.error or "")


def test_redirect_is_not_followed_and_is_fatal(fake, make_sink):
    fake.script(Fault(301, "", {"Location": "https://splunk.example:8088/services/collector/event"}))
    result = make_sink(fake.url).send(make_events(1))
    assert result.fatal and "redirected (301 Moved Permanently) to https://splunk.example:8088" in (result.error or "")
    assert len(fake.requests) == 1


def test_wrong_path_is_fatal(fake, make_sink):
    fake.script(Fault(404, {"text": "The requested URL was not found on this server.", "code": 404}))
    result = make_sink(fake.url).send(make_events(1))
    assert result.fatal and "check sinks[splunk].url" in (result.error or "")


# -- indexer acknowledgement -------------------------------------------------------------------


@pytest.fixture
def ack_fake() -> Iterator[FakeSplunkHec]:
    with FakeSplunkHec(TOKEN, use_ack=True) as server:
        yield server


def test_ack_mode_delivers_once_acknowledged_on_one_channel(ack_fake, make_sink):
    ack_fake.ack_after_polls = 3  # acknowledged late
    sink = make_sink(ack_fake.url, ack=True, ack_timeout=5)
    assert sink.send(make_events(2)).done == 2
    assert sink.send(make_events(1)).done == 1
    assert ack_fake.ack_polls == 8
    channels = {r.headers.get("x-splunk-request-channel") for r in ack_fake.requests}
    assert len(channels) == 1 and uuid.UUID(channels.pop() or "")
    polls = [r for r in ack_fake.requests if r.path == "/services/collector/ack"]
    assert [json.loads(r.body) for r in polls[:1]] == [{"acks": [0]}]
    assert json.loads(polls[-1].body) == {"acks": [1]}


def test_batch_never_acknowledged_is_retried(ack_fake, make_sink):
    ack_fake.ack_after_polls = None
    result = make_sink(ack_fake.url, ack=True, ack_timeout=0.1, ack_poll_interval=0.02).send(make_events(2))
    assert result.done == 0 and not result.fatal
    assert "did not acknowledge the batch (ackId 0)" in (result.error or "")
    assert len(ack_fake.stored) == 2  # indexed but unconfirmed: sent again later, by design


def test_ack_poll_trouble_is_polled_through(ack_fake, make_sink):
    ack_fake.script(Fault(503, {"text": "Server is busy", "code": 9}, endpoint="ack"))
    ack_fake.script(Fault.dropped(endpoint="ack"))
    result = make_sink(ack_fake.url, ack=True, ack_timeout=5).send(make_events(1))
    assert result.done == 1


def test_invalid_event_prefix_is_resent_in_ack_mode(ack_fake, make_sink):
    ack_fake.reject(lambda envelope: envelope["event"]["run_id"] == "r2")
    result = make_sink(ack_fake.url, ack=True, ack_timeout=5).send(make_events(4))
    assert result.done == 4 and [r.index for r in result.rejected] == [2]
    # r0, r1 were indexed with the refused request but never acknowledged: sent again.
    assert [e["run_id"] for e in ack_fake.events] == ["r0", "r1", "r0", "r1", "r3"]


def test_ack_on_but_token_without_ack_delivers_and_warns(fake, make_sink):
    with capture_logs() as logs:
        sink = make_sink(fake.url, ack=True)
        assert sink.send(make_events(1)).done == 1
        assert sink.send(make_events(1)).done == 1
    assert [entry["event"] for entry in logs] == ["splunk_hec_ack_not_enabled_on_token"]
    assert fake.ack_polls == 0


# -- healthcheck -------------------------------------------------------------------------------


def test_healthcheck_passes_and_indexes_nothing(fake, make_sink):
    make_sink(fake.url).healthcheck()
    assert fake.stored == []
    assert [r.path for r in fake.requests] == ["/services/collector/health", "/services/collector/event"]


def test_healthcheck_reports_a_bad_token(make_sink):
    with FakeSplunkHec("another-token") as fake, pytest.raises(SinkError) as raised:
        make_sink(fake.url).healthcheck()
    assert str(raised.value) == "Splunk HEC rejected the token (403, code 4 Invalid token): check sinks[splunk].token"


def test_healthcheck_reports_a_token_needing_ack(make_sink):
    with FakeSplunkHec(TOKEN, use_ack=True) as fake:
        with pytest.raises(SinkError, match=r"set sinks\[splunk\]\.ack: true"):
            make_sink(fake.url).healthcheck()
        make_sink(fake.url, ack=True).healthcheck()


def test_healthcheck_reports_unhealthy_and_unreachable(fake, make_sink):
    fake.healthy = False
    url = fake.url
    with pytest.raises(SinkError, match=r"not healthy \(503, code 18 HEC is unhealthy, queues are full\)"):
        make_sink(fake.url).healthcheck()
    fake.stop()
    with pytest.raises(SinkError, match=rf"^Splunk HEC at 127\.0\.0\.1:{urlsplit(fake.url).port}: connection refused$"):
        make_sink(url).healthcheck()


# -- settings ----------------------------------------------------------------------------------


def test_settings_defaults_and_registry():
    model = registry.settings_model("splunk_hec")
    parsed = model.model_validate({"type": "splunk_hec", "name": "splunk", "url": "https://s:8088/", "token": TOKEN})
    assert isinstance(parsed, SplunkHecSinkSettings)
    assert parsed.url == "https://s:8088"
    assert (parsed.index, parsed.sourcetype, parsed.source) == (None, "duvo:run", "duvo-exporter")
    assert (parsed.ack, parsed.ack_timeout, parsed.compress, parsed.max_request_bytes) == (False, 60.0, True, 1_000_000)
    assert parsed.batch.max_bytes == 1_000_000 and parsed.host
    assert TOKEN not in repr(parsed) and TOKEN not in str(parsed.model_dump())


@pytest.mark.parametrize(
    "overrides",
    [
        {"url": "https://s:8088/services/collector/event"},
        {"token": "  "},
        {"ack_timeout": 1, "ack_poll_interval": 2},
        {"max_request_bytes": 10},
        {"unknown": 1},
    ],
)
def test_settings_refuse_mistakes(overrides):
    with pytest.raises(ValidationError):
        settings(**{"url": "https://s:8088", **overrides})


def test_insecure_skip_verify_is_warned_at_construction():
    with capture_logs() as logs:
        sink = SplunkHecSink(settings("https://s:8088", tls={"insecure_skip_verify": True}))
        sink.close()
    assert [(e["event"], e["log_level"]) for e in logs] == [("tls_verification_disabled", "warning")]


def test_ca_file_is_used_for_verification():
    sink = SplunkHecSink(settings("https://s:8088", tls={"ca_file": "/etc/ssl/splunk-ca.pem"}))
    try:
        assert sink._verify == "/etc/ssl/splunk-ca.pem"
    finally:
        sink.close()
