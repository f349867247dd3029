"""DatadogSink against the strict fake intake over real HTTP: one test per outcome class."""

from __future__ import annotations

import json
import math
import textwrap
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pydantic
import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from exporter.config import ConfigError, parse_config
from sinks import datadog_encode as encode
from sinks.base import SinkError
from sinks.datadog import SITES, DatadogSink, DatadogSinkSettings
from sinks.registry import build_sink, settings_model
from tests.fakes.datadog import MAX_ENTRY_BYTES, MAX_PAYLOAD_BYTES, DatadogFake
from transport import timestamps

KEY = "0123456789abcdef-secret-key"


def event(run_id: str = "r1", status: str = "completed", **extra: Any) -> dict[str, Any]:
    run = {
        "id": run_id,
        "status": status,
        "agent_id": "ag1",
        "team_id": "tm1",
        "created_at": "2024-05-01T10:00:00Z",
        "started_at": "2024-05-01T10:00:01Z",
        "completed_at": "2024-05-01T10:02:01Z",
    }
    run.update(extra.pop("run", {}))
    return {
        "event_id": f"{run_id}:{status}",
        "event": "run.finished",
        "run_id": run_id,
        "team_id": "tm1",
        "agent_id": "ag1",
        "status": status,
        "created_at": "2024-05-01T10:00:00Z",
        "started_at": "2024-05-01T10:00:01Z",
        "completed_at": "2024-05-01T10:02:01Z",
        "duration_seconds": 120.0,
        "pending_human_request": None,
        "run": run,
        "exported_at": "2024-05-01T10:02:05Z",
        **extra,
    }


def events(count: int, **extra: Any) -> list[dict[str, Any]]:
    return [event(f"r{i}", **extra) for i in range(count)]


def settings(**overrides: Any) -> DatadogSinkSettings:
    values: dict[str, Any] = {"type": "datadog", "name": "dd", "api_key": KEY, "timeout": 2.0}
    values.update(overrides)
    return DatadogSinkSettings(**values)


@pytest.fixture
def fake() -> Iterator[DatadogFake]:
    with DatadogFake(api_key=KEY) as server:
        yield server


@pytest.fixture
def sink(fake: DatadogFake) -> Iterator[DatadogSink]:
    built = DatadogSink(settings(url=fake.url, hostname="exporter-1", tags=["env:test"]))
    yield built
    built.close()


def no_secret(*texts: str | None) -> None:
    for text in texts:
        assert KEY not in (text or "")


# -- settings -----------------------------------------------------------------------------------


def test_settings_defaults_follow_datadog_limits() -> None:
    config = settings()
    assert config.site == "datadoghq.com" and config.url is None
    assert config.service == "duvo-assignments" and config.compress is True and config.tags == []
    assert config.batch.max_events == 1000 and config.batch.max_bytes == 4_500_000
    assert KEY not in repr(config)
    assert settings_model("datadog") is DatadogSinkSettings


def test_settings_reject_unknown_site_bad_url_and_comma_tags() -> None:
    for bad in ({"site": "datadoghq.org"}, {"url": "ftp://x"}, {"tags": ["a,b"]}, {"api_key": " "}):
        with pytest.raises(pydantic.ValidationError):
            settings(**bad)
    assert settings(url="http://proxy:8080/").url == "http://proxy:8080"


# -- the log Datadog receives -------------------------------------------------------------------


def test_event_becomes_a_log_with_job_status_apart_from_the_log_level(fake: DatadogFake, sink: DatadogSink) -> None:
    result = sink.send([event("r1", "completed"), event("r2", "failed")])

    assert result.done == 2 and not result.rejected and result.error is None
    done, failed = fake.stored
    assert done["ddsource"] == "duvo" and done["service"] == "duvo-assignments"
    assert done["hostname"] == "exporter-1"
    assert done["message"] == "Job r1 completed"
    assert done["run_id"] == "r1" and done["job_status"] == "completed" and done["status"] == "info"
    assert failed["status"] == "error" and failed["job_status"] == "failed"
    tags = done["ddtags"].split(",")
    assert tags == ["team:tm1", "agent:ag1", "job_status:completed", "env:test"]
    assert not any(tag.startswith("status:") for tag in tags)
    # A Job from 2024 is far older than 18 h: nothing the date remapper reads, so the intake stamps
    # the log on receipt; the Job's times are kept as attributes.
    assert not {"date", "timestamp", "@timestamp", "_timestamp", "Timestamp", "eventTime", "published_date"} & set(done)
    assert done["created_at"] == "2024-05-01T10:00:00Z" and done["completed_at"] == "2024-05-01T10:02:01Z"
    assert done["run"]["status"] == "completed"  # the source record untouched


@pytest.mark.parametrize(
    ("job_status", "level"),
    [
        ("failed", "error"),
        ("stopped", "warning"),
        ("interrupted", "warning"),
        ("completed", "info"),
        ("waiting", "info"),
        ("running", "info"),
    ],
)
def test_log_level_from_job_status(job_status: str, level: str) -> None:
    log = encode.to_log(event(status=job_status), service="s", hostname="h")
    assert log["status"] == level and log["job_status"] == job_status
    assert f"job_status:{job_status}" in log["ddtags"]


def test_event_fields_on_reserved_names_are_renamed() -> None:
    log = encode.to_log(
        event(timestamp="2020-01-01T00:00:00Z", date="2020-01-02", host="x", level="debug", message="m", _private=1),
        service="s",
        hostname="h",
        date=1_700_000_000_000,
    )
    assert log["job_timestamp"] == "2020-01-01T00:00:00Z" and "timestamp" not in log
    assert log["job_date"] == "2020-01-02" and log["date"] == 1_700_000_000_000  # the event's `date` cannot win
    assert log["job_host"] == "x" and log["job_level"] == "debug" and log["job_message"] == "m"
    assert log["job_private"] == 1 and log["hostname"] == "h" and log["status"] == "info"


def test_request_is_gzip_json_with_the_key_header(fake: DatadogFake, sink: DatadogSink) -> None:
    sink.send(events(3))

    [request] = fake.log_requests()
    assert request.status == 202
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["dd-api-key"] == KEY
    assert request.body_bytes < request.decoded_bytes


def test_one_connection_is_reused_across_requests(fake: DatadogFake, sink: DatadogSink) -> None:
    sink.healthcheck()
    sink.send(events(2))
    sink.send(events(2))

    assert len({r.client_port for r in fake.requests}) == 1


def test_compress_off_sends_plain_json(fake: DatadogFake) -> None:
    plain = DatadogSink(settings(url=fake.url, compress=False))
    try:
        assert plain.send(events(2)).done == 2
    finally:
        plain.close()
    [request] = fake.log_requests()
    assert "content-encoding" not in request.headers and request.body_bytes == request.decoded_bytes


# -- the log's date: the Job's time while the intake accepts it ----------------------------------

NOW = datetime(2026, 5, 17, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


class Clock:
    """One time for the sink (a datetime) and the fake intake (epoch seconds), moved by tests."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def epoch(self) -> float:
        return self.now.timestamp()


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def finished(run_id: str, completed: datetime | None, exported: datetime | None = NOW, **extra: Any) -> dict[str, Any]:
    """An event whose Job completed at ``completed`` and was exported at ``exported``."""
    stamp = timestamps.format_utc
    times = {
        "completed_at": stamp(completed) if completed else None,
        "exported_at": stamp(exported) if exported else None,
    }
    return event(run_id, run={"completed_at": times["completed_at"]}, **{**times, **extra})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def timed_fake(clock: Clock) -> Iterator[DatadogFake]:
    with DatadogFake(api_key=KEY, clock=clock.epoch) as server:
        yield server


def timed_sink(fake: DatadogFake, clock: Clock, **overrides: Any) -> DatadogSink:
    return DatadogSink(settings(url=fake.url, hostname="exporter-1", **overrides), clock=clock)


def test_a_live_job_lands_at_its_real_time(timed_fake: DatadogFake, clock: Clock) -> None:
    completed = NOW - timedelta(minutes=4, milliseconds=250)
    sink = timed_sink(timed_fake, clock)
    try:
        result = sink.send([finished("live", completed)])
    finally:
        sink.close()

    assert result.done == 1 and not result.rejected
    [entry] = timed_fake.stored
    assert entry["date"] == ms(completed) and isinstance(entry["date"], int)  # epoch milliseconds
    assert timed_fake.stored_dates == {"live": ms(completed)}  # the intake's official time: the Job's
    assert entry["completed_at"] == timestamps.format_utc(completed)  # the attribute stays too
    assert timed_fake.dropped == []


def test_a_job_over_18_h_old_is_sent_without_date_and_stored(timed_fake: DatadogFake, clock: Clock) -> None:
    sink = timed_sink(timed_fake, clock)
    try:
        result = sink.send([finished("old", NOW - 20 * HOUR, exported=NOW - 19 * HOUR), finished("new", NOW - HOUR)])
    finally:
        sink.close()

    assert result.done == 2 and not result.rejected
    stored = {entry["run_id"]: entry for entry in timed_fake.stored}
    assert "date" not in stored["old"]
    assert timed_fake.stored_dates == {"old": ms(NOW), "new": ms(NOW - HOUR)}  # "old" at receipt
    assert timed_fake.dropped == []


def test_the_fake_intake_accepts_and_then_drops_a_log_dated_outside_its_window(
    timed_fake: DatadogFake,
) -> None:
    # What a sink sending a stale date would meet: 202, and the log is nowhere.
    logs = [
        {"message": "a", "run_id": "too-old", "date": ms(NOW - 18 * HOUR) - 1},
        {"message": "b", "run_id": "too-new", "date": ms(NOW + 2 * HOUR) + 1},
        {"message": "c", "run_id": "iso", "timestamp": "2026-05-17T00:00:00.000Z"},
        {"message": "d", "run_id": "at-receipt"},
    ]
    request = urllib.request.Request(
        timed_fake.url + "/api/v2/logs",
        data=json.dumps(logs).encode(),
        headers={"DD-API-KEY": KEY, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 202

    assert [d.entry["run_id"] for d in timed_fake.dropped] == ["too-old", "too-new"]
    assert timed_fake.stored_dates == {"iso": ms(datetime(2026, 5, 17, tzinfo=UTC)), "at-receipt": ms(NOW)}


@pytest.mark.parametrize(
    ("age", "max_age", "dated"),
    [
        (timedelta(0), None, True),
        (17 * HOUR - timedelta(milliseconds=1), None, True),
        (17 * HOUR, None, True),  # the default 17h is inclusive
        (17 * HOUR + timedelta(milliseconds=1), None, False),  # 1 h short of the intake's 18 h: the margin
        (HOUR, "30m", False),
        (timedelta(minutes=30), "30m", True),
        (timedelta(minutes=1), 0, False),  # 0: never a date
        (-timedelta(minutes=1), 0, False),  # not even one slightly in the future
        (-timedelta(minutes=5), None, True),  # Duvo's clock a little ahead of ours
        (-timedelta(minutes=5, milliseconds=1), None, False),  # further ahead: a wrong time, not skew
        (-3 * HOUR, None, False),
    ],
)
def test_the_date_boundary_and_margin(
    timed_fake: DatadogFake, clock: Clock, age: timedelta, max_age: Any, dated: bool
) -> None:
    overrides = {} if max_age is None else {"date_max_age": max_age}
    sink = timed_sink(timed_fake, clock, **overrides)
    try:
        assert sink.send([finished("j", NOW - age)]).done == 1
    finally:
        sink.close()

    [entry] = timed_fake.stored
    assert ("date" in entry) is dated
    assert timed_fake.stored_dates == {"j": ms(NOW - age) if dated else ms(NOW)}


def test_a_retry_decides_the_date_again_at_its_own_time(timed_fake: DatadogFake, clock: Clock) -> None:
    completed = NOW - timedelta(hours=16, minutes=54)  # 16.9 h old at the first attempt
    batch = [finished("late", completed), finished("fresh", NOW - timedelta(minutes=1))]
    sink = timed_sink(timed_fake, clock)
    try:
        timed_fake.script(503)
        assert sink.send(batch).done == 0  # refused; the pipeline retries later

        clock.now = NOW + timedelta(minutes=96)  # the retry: "late" is now 18.5 h old
        result = sink.send(batch)
    finally:
        sink.close()

    assert result.done == 2 and not result.rejected
    # A date decided at the first attempt would be 18.5 h old now, and dropped by the intake.
    assert timed_fake.dropped == []
    stored = {entry["run_id"]: entry for entry in timed_fake.stored}
    assert "date" not in stored["late"] and stored["fresh"]["date"] == ms(NOW - timedelta(minutes=1))
    assert timed_fake.stored_dates["late"] == ms(clock.now)


def test_a_retry_an_hour_later_inside_the_window_still_goes_without_date(clock: Clock) -> None:
    # Encoded at 16.9 h the Job gets a date; at 17.9 h (inside the intake's 18 h, outside the
    # margin) it does not: the margin is judged at every attempt.
    late = finished("late", NOW - timedelta(hours=16, minutes=54))
    assert encode.log_date(late, NOW, encode.DEFAULT_DATE_MAX_AGE) == ms(NOW - timedelta(hours=16, minutes=54))
    assert encode.log_date(late, NOW + HOUR, encode.DEFAULT_DATE_MAX_AGE) is None


def test_a_bad_or_missing_job_time_falls_back(timed_fake: DatadogFake, clock: Clock) -> None:
    exported = NOW - timedelta(minutes=2)
    batch = [
        # unreadable completion time, no export time either: no date, stamped on receipt
        event("garbled", completed_at="yesterday-ish", exported_at=None, run={"completed_at": "n/a"}),
        # nothing at all to go by
        event("none", completed_at=None, exported_at=None, run={"completed_at": None}),
        # a time with no moment in UTC
        event("overflow", completed_at="0001-01-01T00:00:00+01:00", exported_at=None, run={"completed_at": None}),
        # unreadable completion time, but the exporter saw it 2 minutes ago
        finished("seen", None, exported=exported, completed_at="not a time"),
        # a waiting Job has no completion time: when the exporter saw it wait
        finished("waiting", None, exported=exported, status="waiting", event="run.waiting"),
        # `fields` shaping removed the top-level completed_at: the source record's is used
        {key: value for key, value in finished("shaped", NOW - HOUR).items() if key != "completed_at"},
    ]
    sink = timed_sink(timed_fake, clock)
    try:
        result = sink.send(batch)
    finally:
        sink.close()

    assert result.done == len(batch) and not result.rejected
    assert timed_fake.stored_dates == {
        "garbled": ms(NOW),
        "none": ms(NOW),
        "overflow": ms(NOW),
        "seen": ms(exported),
        "waiting": ms(exported),
        "shaped": ms(NOW - HOUR),
    }
    assert timed_fake.dropped == []


def test_date_max_age_of_18_h_or_more_is_a_config_error_with_the_yaml_path() -> None:
    def problems(max_age: str) -> list[str]:
        text = textwrap.dedent(
            f"""
            duvo: {{api_key: dv_key, team_id: t1}}
            sinks:
              - {{type: file, name: local, path: out.jsonl}}
              - {{type: datadog, name: dd, api_key: k, date_max_age: {max_age}}}
            """
        )
        with pytest.raises(ConfigError) as caught:
            parse_config(text, {})
        return caught.value.problems

    for too_old in ("19h", "18h", "64800", "2d"):
        [problem] = problems(too_old)
        assert problem.startswith("sinks[1].date_max_age: must be less than 18h"), problem
    assert problems("soon")[0].startswith("sinks[1].date_max_age: 'soon' is not a duration")
    assert problems(".nan")[0].startswith("sinks[1].date_max_age: expected a duration")
    assert problems("[1h]")[0].startswith("sinks[1].date_max_age: expected a duration")


def test_date_max_age_accepts_durations_and_defaults_to_17_h() -> None:
    assert settings().date_max_age == 17 * 3600
    assert settings(date_max_age="17h59m").date_max_age == 17 * 3600 + 59 * 60
    assert settings(date_max_age=0).date_max_age == 0
    assert settings(date_max_age=3600).date_max_age == 3600


# -- delivered ----------------------------------------------------------------------------------


def test_more_than_1000_logs_go_in_requests_of_at_most_1000(fake: DatadogFake, sink: DatadogSink) -> None:
    result = sink.send(events(1500))

    assert result.done == 1500 and not result.rejected
    assert fake.stored_run_ids == [f"r{i}" for i in range(1500)]
    assert all(r.status == 202 and r.entries <= 1000 for r in fake.log_requests())


def test_requests_stay_under_5_mb_uncompressed(fake: DatadogFake, sink: DatadogSink) -> None:
    big = events(12, run={"output": "x" * 600_000})  # 7.2 MB in all, each log well under 1 MB

    result = sink.send(big)

    assert result.done == 12 and not result.rejected
    assert sorted(fake.stored_run_ids) == sorted(e["run_id"] for e in big)
    assert all(0 < r.decoded_bytes <= MAX_PAYLOAD_BYTES for r in fake.log_requests())


def test_a_log_over_1_mb_is_truncated_with_a_marker_not_dropped(fake: DatadogFake, sink: DatadogSink) -> None:
    huge = event("big", run={"output": "y" * 2_000_000, "steps": ["s"] * 10})

    result = sink.send([event("a"), huge])

    assert result.done == 2 and not result.rejected
    stored = {entry["run_id"]: entry for entry in fake.stored}
    entry = stored["big"]
    assert entry["truncated"] is True and "run.output" in entry["truncated_fields"]
    assert entry["original_size"] > 2_000_000
    assert entry["run"]["id"] == "big" and entry["run"]["steps"] == ["s"] * 10  # small members kept
    assert len(json.dumps(entry)) <= MAX_ENTRY_BYTES
    assert "truncated" not in stored["a"]


def test_fit_keeps_logs_with_many_small_members_under_the_limit() -> None:
    log = encode.to_log(event(run={f"k{i}": "v" * 500 for i in range(5000)}), service="s", hostname="h")
    fitted, size = encode.fit(log)
    assert size == encode.wire_size(fitted) <= encode.MAX_LOG_BYTES
    assert fitted["truncated"] is True and fitted["run_id"] == "r1" and fitted["job_status"] == "completed"


_members = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(
        st.text(max_size=40_000),
        st.lists(st.text(max_size=200), max_size=300),
        st.dictionaries(st.text(max_size=5), st.text(max_size=3_000), max_size=30),
        st.integers(),
    ),
    max_size=40,
)


@hypothesis_settings(max_examples=40, deadline=None)
@given(run=_members, pending=st.one_of(st.none(), st.text(max_size=30_000)))
def test_fit_always_lands_under_the_limit_and_marks_what_it_cut(run: dict[str, Any], pending: Any) -> None:
    log = encode.to_log(event(run=run, pending_human_request=pending), service="s", hostname="h")
    limit = 20_000
    fitted, size = encode.fit(log, limit)
    assert size == encode.wire_size(fitted) <= limit
    if encode.wire_size(log) > limit:
        assert fitted["truncated"] is True and fitted["original_size"] == encode.wire_size(log)
    else:
        assert fitted is log
    assert fitted["run_id"] == "r1" and fitted["message"] == "Job r1 completed"


# -- 413: split and resend ----------------------------------------------------------------------


def test_413_splits_the_batch_and_resends(fake: DatadogFake, sink: DatadogSink) -> None:
    fake.script(413)

    result = sink.send(events(6))

    assert result.done == 6 and not result.rejected and result.error is None
    assert [r.status for r in fake.log_requests()] == [413, 202, 202]
    assert sorted(fake.stored_run_ids) == [f"r{i}" for i in range(6)]


# -- 400: bisect, dead-letter the offenders, deliver the rest -----------------------------------


def test_400_bisects_to_the_bad_logs_and_delivers_the_rest(fake: DatadogFake, sink: DatadogSink) -> None:
    fake.reject_run_ids("r3", "r5", reason="Invalid attribute run.output")

    result = sink.send(events(8))

    assert result.done == 8 and result.error is None and not result.fatal
    assert [r.index for r in result.rejected] == [3, 5]
    assert all("Invalid attribute run.output" in r.reason for r in result.rejected)
    assert sorted(fake.stored_run_ids) == ["r0", "r1", "r2", "r4", "r6", "r7"]
    no_secret(*(r.reason for r in result.rejected))


def test_400_with_structured_errors_gives_title_and_detail(fake: DatadogFake, sink: DatadogSink) -> None:
    fake.script(400, body={"errors": [{"status": "400", "title": "Bad Request", "detail": "invalid JSON"}]})

    result = sink.send([event("only")])

    assert result.done == 1 and [r.index for r in result.rejected] == [0]
    assert "Bad Request: invalid JSON" in result.rejected[0].reason


def test_an_event_that_is_not_json_is_rejected_without_a_request(fake: DatadogFake, sink: DatadogSink) -> None:
    batch = [event("r0"), event("nan", duration_seconds=math.nan), event("r2")]

    result = sink.send(batch)

    assert result.done == 3 and [r.index for r in result.rejected] == [1]
    assert "cannot encode" in result.rejected[0].reason
    assert sorted(fake.stored_run_ids) == ["r0", "r2"]


# -- retry: 408 / 429 / 5xx / transport ----------------------------------------------------------


def test_429_is_retried_after_x_ratelimit_reset(fake: DatadogFake, sink: DatadogSink) -> None:
    fake.script(429, headers={"X-Ratelimit-Reset": "7", "X-Ratelimit-Limit": "100"})

    result = sink.send(events(3))

    assert result.done == 0 and not result.fatal and result.retry_after == 7.0
    assert "429" in (result.error or "")
    assert fake.stored == []
    assert sink.send(events(3)).done == 3  # the next attempt goes through


@pytest.mark.parametrize(
    ("status", "headers", "after"),
    [(503, {"Retry-After": "3"}, 3.0), (500, {}, None), (408, {}, None), (502, {}, None)],
)
def test_5xx_and_408_are_retried(
    fake: DatadogFake, sink: DatadogSink, status: int, headers: dict[str, str], after: float | None
) -> None:
    fake.script(status, headers=headers)

    result = sink.send(events(2))

    assert result.done == 0 and not result.fatal and not result.rejected
    assert result.retry_after == after and str(status) in (result.error or "")


def test_connection_refused_is_retried(fake: DatadogFake) -> None:
    url = fake.url
    fake.stop()
    closed = DatadogSink(settings(url=url))
    try:
        result = closed.send(events(2))
    finally:
        closed.close()
    assert result.done == 0 and not result.fatal
    assert result.error == f"Datadog at 127.0.0.1:{urlsplit(url).port}: connection refused"


def test_connection_dropped_after_the_request_is_retried(fake: DatadogFake, sink: DatadogSink) -> None:
    fake.script(drop=True)

    result = sink.send(events(2))

    assert result.done == 0 and not result.fatal and result.error
    assert [r.status for r in fake.log_requests()] == [None]
    assert sink.send(events(2)).done == 2  # a fresh connection next time


def test_a_slow_answer_times_out_and_is_retried(fake: DatadogFake) -> None:
    fake.script(delay=1.0)
    hasty = DatadogSink(settings(url=fake.url, timeout=0.2))
    try:
        result = hasty.send(events(1))
    finally:
        hasty.close()
    assert result.done == 0 and not result.fatal and "timed out" in (result.error or "").lower()


# -- fatal: the key --------------------------------------------------------------------------------


@pytest.mark.parametrize(("key", "status"), [("wrong-key", "403 Forbidden")])
def test_a_rejected_key_stops_the_sink(fake: DatadogFake, key: str, status: str) -> None:
    wrong = DatadogSink(settings(url=fake.url, api_key=key))
    try:
        result = wrong.send(events(2))
    finally:
        wrong.close()
    assert result.fatal and result.done == 0
    assert result.error == f"Datadog rejected the API key ({status}): check sinks[dd].api_key and site"
    assert fake.stored == []


def test_401_stops_the_sink_too(fake: DatadogFake, sink: DatadogSink) -> None:
    fake.script(401, body={"errors": ["Unauthorized"]})

    result = sink.send(events(1))

    assert result.fatal and result.error and result.error.startswith("Datadog rejected the API key (401")
    no_secret(result.error)


def test_a_url_that_is_not_an_intake_stops_the_sink(fake: DatadogFake) -> None:
    wrong = DatadogSink(settings(url=fake.url + "/nested"))
    try:
        result = wrong.send(events(1))
    finally:
        wrong.close()
    assert result.fatal and "check sinks[dd].url" in (result.error or "")


# -- healthcheck -----------------------------------------------------------------------------------


def test_healthcheck_validates_the_key_at_the_override_url(fake: DatadogFake, sink: DatadogSink) -> None:
    sink.healthcheck()

    [request] = fake.requests
    assert (request.method, request.path, request.status) == ("GET", "/api/v1/validate", 200)
    assert request.headers["dd-api-key"] == KEY


def test_healthcheck_reports_a_rejected_key(fake: DatadogFake) -> None:
    wrong = DatadogSink(settings(url=fake.url, api_key="not-" + KEY))
    try:
        with pytest.raises(SinkError) as caught:
            wrong.healthcheck()
    finally:
        wrong.close()
    message = str(caught.value)
    assert message == "Datadog rejected the API key (403 Forbidden): check sinks[dd].api_key and site"
    no_secret(message)


def test_healthcheck_reports_an_unreachable_intake(fake: DatadogFake) -> None:
    url = fake.url
    fake.stop()
    closed = DatadogSink(settings(url=url))
    try:
        with pytest.raises(SinkError, match=rf"^Datadog at 127\.0\.0\.1:{urlsplit(url).port}: connection refused$"):
            closed.healthcheck()
    finally:
        closed.close()


def test_healthcheck_reports_a_server_error(fake: DatadogFake, sink: DatadogSink) -> None:
    fake.script(503, path="/api/v1/validate")
    with pytest.raises(SinkError, match=r"key validation .* failed: 503 Service Unavailable"):
        sink.healthcheck()


# -- routing by site ---------------------------------------------------------------------------------


class _Captured(Exception):
    pass


def _urls(sink: DatadogSink) -> list[str]:
    """The URLs the client library builds, captured below it so no request leaves the machine."""
    seen: list[str] = []

    def request(method: str, url: str, **kwargs: Any) -> Any:
        seen.append(url)
        raise _Captured

    sink._client.rest_client.request = request  # type: ignore[method-assign]
    sink.send(events(1))
    with pytest.raises(SinkError):
        sink.healthcheck()
    return seen


def test_site_picks_the_intake_and_api_hosts_even_with_dd_site_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_SITE", "us5.datadoghq.com")  # read by the client library; must not win
    eu = DatadogSink(settings(site="datadoghq.eu"))
    try:
        assert _urls(eu) == [
            "https://http-intake.logs.datadoghq.eu/api/v2/logs",
            "https://api.datadoghq.eu/api/v1/validate",
        ]
    finally:
        eu.close()


def test_every_accepted_site_resolves_in_the_client_library() -> None:
    for site in SITES:
        sink = DatadogSink(settings(site=site))
        try:
            assert _urls(sink) == [
                f"https://http-intake.logs.{site}/api/v2/logs",
                f"https://api.{site}/api/v1/validate",
            ]
        finally:
            sink.close()


def test_registry_builds_the_sink(fake: DatadogFake) -> None:
    built = build_sink(settings(url=fake.url))
    try:
        assert isinstance(built, DatadogSink) and built.name == "dd"
    finally:
        built.close()
