"""configure_logging output shape and routing; redaction of secrets wherever they appear."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from exporter.logsetup import configure_logging, redact, register_secret

SECRET = "dv_logsetup_secret_98765"
register_secret(SECRET)


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def json_logging(level: str = "info") -> io.StringIO:
    out = io.StringIO()
    configure_logging(level, stream=out)  # not a TTY: JSON chosen automatically
    return out


# -- output shape -----------------------------------------------------------------------------------


def test_json_lines_shape() -> None:
    out = json_logging()
    log = structlog.get_logger("exporter.poller")
    log.info("poll.done", team_id="t1", runs=3, ratio=0.5, ok=True, none=None)
    log.warning("second")
    first, second = lines(out)
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert first == {
        "timestamp": first["timestamp"],
        "level": "info",
        "logger": "exporter.poller",
        "event": "poll.done",
        "team_id": "t1",
        "runs": 3,
        "ratio": 0.5,
        "ok": True,
        "none": None,
    }
    stamp = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert first["timestamp"].endswith("Z") and stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1)
    assert second["level"] == "warning" and second["event"] == "second"


def test_console_on_a_tty_and_json_on_request() -> None:
    tty = TTY()
    configure_logging("info", stream=tty)
    structlog.get_logger("x").info("hello", n=1)
    text = tty.getvalue()
    assert "hello" in text and "\x1b[" in text  # coloured for a human
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])

    forced = TTY()
    configure_logging("info", json=True, stream=forced)
    structlog.get_logger("x").info("hello")
    assert lines(forced)[0]["event"] == "hello"

    plain = io.StringIO()
    configure_logging("info", json=False, stream=plain)
    structlog.get_logger("x").info("hello", secret=SECRET)
    assert "hello" in plain.getvalue() and "\x1b[" not in plain.getvalue()  # no colours off a TTY
    assert SECRET not in plain.getvalue()


def test_stderr_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", json=True)
    structlog.get_logger("x").info("to.stderr")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err.splitlines()[-1])["event"] == "to.stderr"


def test_level_filtering_applies_to_structlog_and_stdlib() -> None:
    out = json_logging("warning")
    log = structlog.get_logger("exporter.x")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    logging.getLogger("apscheduler.scheduler").info("Added job")
    logging.getLogger("apscheduler.scheduler").warning("Run time of job was missed")
    assert [(r["logger"], r["event"]) for r in lines(out)] == [
        ("exporter.x", "w"),
        ("exporter.x", "e"),
        ("apscheduler.scheduler", "Run time of job was missed"),
    ]


def test_debug_level_and_level_names() -> None:
    out = json_logging("DEBUG")
    structlog.get_logger("x").debug("visible")
    assert lines(out)[0]["level"] == "debug"
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("verbose")


def test_reconfiguring_replaces_the_handler() -> None:
    first = json_logging()
    second = json_logging()
    structlog.get_logger("x").info("once")
    assert first.getvalue() == ""
    assert [r["event"] for r in lines(second)] == ["once"]


def test_stdlib_loggers_are_routed_formatted_and_redacted() -> None:
    out = json_logging()
    logging.getLogger("urllib3.connectionpool").warning("Retrying %s with key %s", "GET /x", SECRET)
    (record,) = lines(out)
    assert record["logger"] == "urllib3.connectionpool"
    assert record["level"] == "warning"
    assert record["event"] == "Retrying GET /x with key ***"
    assert "timestamp" in record


def test_positional_args_in_structlog_calls() -> None:
    out = json_logging()
    structlog.get_logger("x").info("count %d of %s", 3, SECRET)
    assert lines(out)[0]["event"] == "count 3 of ***"


# -- the exporter's level and the libraries' -------------------------------------------------------


def log_everything() -> None:
    """What the daemon's libraries and the exporter say, at every level that matters."""
    logging.getLogger("apscheduler.scheduler").info('Added job "extract" to job store "default"')
    logging.getLogger("apscheduler.executors.default").info('Running job "extract" (trigger: interval)')
    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTP connection (1): 127.0.0.1:80")
    logging.getLogger("datadog_api_client.rest").debug("response body: b''")
    logging.getLogger("urllib3.connectionpool").warning("Connection pool is full, discarding connection")
    logging.getLogger("apscheduler.scheduler").error("Error adding job")
    structlog.get_logger("exporter.source.extraction").debug("swept open jobs")
    structlog.get_logger("exporter.pipeline").info("pass finished")
    logging.getLogger("sinks.loki").debug("own stdlib line")
    logging.getLogger("transport.errors").info("own stdlib info")


def shown(out: io.StringIO) -> list[tuple[str, str]]:
    return [(r["logger"], r["level"]) for r in lines(out)]


LIBRARY_WARNINGS = [("urllib3.connectionpool", "warning"), ("apscheduler.scheduler", "error")]


def test_libraries_stay_at_warning_whatever_the_exporters_level() -> None:
    out = json_logging("debug")
    log_everything()
    assert shown(out) == [
        *LIBRARY_WARNINGS,
        ("exporter.source.extraction", "debug"),
        ("exporter.pipeline", "info"),
        ("sinks.loki", "debug"),
        ("transport.errors", "info"),
    ]

    out = json_logging("info")
    log_everything()
    assert shown(out) == [*LIBRARY_WARNINGS, ("exporter.pipeline", "info"), ("transport.errors", "info")]
    # Not even created: a disabled library record costs one level check.
    assert not logging.getLogger("urllib3.connectionpool").isEnabledFor(logging.DEBUG)


def test_library_level_turns_libraries_up_and_not_the_exporter() -> None:
    out = io.StringIO()
    configure_logging("info", library_level="debug", stream=out)
    log_everything()
    assert shown(out) == [
        ("apscheduler.scheduler", "info"),
        ("apscheduler.executors.default", "info"),
        ("urllib3.connectionpool", "debug"),
        ("datadog_api_client.rest", "debug"),
        *LIBRARY_WARNINGS,
        ("exporter.pipeline", "info"),
        ("transport.errors", "info"),
    ]


def test_library_lines_turned_up_are_still_redacted() -> None:
    out = io.StringIO()
    configure_logging("warning", library_level="debug", stream=out)
    logging.getLogger("urllib3.connectionpool").debug("http://h:80 GET /x?key=%s", SECRET)
    logging.getLogger("datadog_api_client.rest").debug("headers: {'DD-API-KEY': 'abcdef123456'}")
    assert SECRET not in out.getvalue() and "abcdef123456" not in out.getvalue()
    assert [r["event"] for r in lines(out)] == ["http://h:80 GET /x?key=***", "headers: {'DD-API-KEY': '***'}"]


def test_a_stricter_exporter_level_applies_to_libraries_too() -> None:
    out = json_logging("error")
    log_everything()
    assert shown(out) == [("apscheduler.scheduler", "error")]


def test_ours_by_package_name_or_by_being_structlog() -> None:
    out = json_logging("debug")
    logging.getLogger("exporterish").debug("a library whose name only starts like ours")
    logging.getLogger("sinks_contrib.x").info("and another")
    structlog.get_logger("tests.helper").debug("structlog events are the exporter's whatever the name")
    assert shown(out) == [("tests.helper", "debug")]


def test_log_format_and_library_level_values() -> None:
    plain = io.StringIO()
    configure_logging("info", log_format="console", stream=plain)
    structlog.get_logger("x").info("hello")
    assert "hello" in plain.getvalue() and not plain.getvalue().startswith("{")

    tty = TTY()
    configure_logging("info", log_format="JSON", stream=tty)  # a container run with -t
    structlog.get_logger("x").info("hello")
    assert lines(tty)[0]["event"] == "hello"

    auto = TTY()
    configure_logging("info", log_format="auto", json=True, stream=auto)  # auto leaves it to `json`
    structlog.get_logger("x").info("hello")
    assert lines(auto)[0]["event"] == "hello"

    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        configure_logging("info", log_format="xml")
    with pytest.raises(ValueError, match="unknown log level 'loud'"):
        configure_logging("info", library_level="loud")


# -- redaction in log output ------------------------------------------------------------------------


class Holder:
    def __repr__(self) -> str:
        return f"Holder(token={SECRET})"


def test_secrets_redacted_in_event_fields_and_nested_values() -> None:
    out = json_logging()
    structlog.get_logger("x").warning(
        f"event with {SECRET}",
        field=SECRET,
        upper=SECRET.upper(),
        nested={"a": [1, {"b": f"x{SECRET}y"}], SECRET: "key position", "t": (SECRET, 2)},
        obj=Holder(),
        error=ValueError(f"bad key {SECRET}"),
        headers={"Authorization": "Bearer unregistered-token-123", "DD-API-KEY": "abcdef123456"},
    )
    raw = out.getvalue()
    assert SECRET not in raw and SECRET.upper() not in raw
    assert "unregistered-token-123" not in raw and "abcdef123456" not in raw
    (record,) = lines(out)
    assert record["event"] == "event with ***"
    assert record["field"] == "***" and record["upper"] == "***"
    assert record["nested"] == {"a": [1, {"b": "x***y"}], "***": "key position", "t": ["***", 2]}
    assert record["obj"] == "Holder(token=***)"
    assert record["error"] == "ValueError('bad key ***')"
    assert record["headers"] == {"Authorization": "***", "DD-API-KEY": "***"}


def test_credential_named_fields_are_masked_whatever_their_value() -> None:
    out = json_logging()
    structlog.get_logger("x").info(
        "config",
        api_key="short1",
        password=12345,
        sink={"hec_token": "guid-ish", "X-Api-Key": ["a", "b"], "url": "https://hec.example"},
        token=None,  # absence is worth seeing
    )
    (record,) = lines(out)
    assert record["api_key"] == "***" and record["password"] == "***" and record["token"] is None
    assert record["sink"] == {"hec_token": "***", "X-Api-Key": "***", "url": "https://hec.example"}


def test_secrets_redacted_in_exception_tracebacks() -> None:
    out = json_logging()
    log = structlog.get_logger("x")
    try:
        raise RuntimeError(f"connect failed for {SECRET}")
    except RuntimeError:
        log.exception("structlog.failure")
        logging.getLogger("thirdparty").exception("stdlib failure")
    try:
        raise KeyError(SECRET)
    except KeyError as exc:
        log.error("explicit", exc_info=exc)
    raw = out.getvalue()
    assert SECRET not in raw
    records = lines(out)
    assert [r["event"] for r in records] == ["structlog.failure", "stdlib failure", "explicit"]
    for record in records:
        assert record["exception"].startswith("Traceback (most recent call last):")
        assert "***" in record["exception"]
    assert "RuntimeError: connect failed for ***" in records[0]["exception"]


def test_secret_in_console_traceback_redacted() -> None:
    out = io.StringIO()
    configure_logging("info", json=False, stream=out)
    try:
        raise RuntimeError(SECRET)
    except RuntimeError:
        structlog.get_logger("x").exception("boom")
    assert "RuntimeError: ***" in out.getvalue() and SECRET not in out.getvalue()


def test_secret_bound_in_context_redacted() -> None:
    out = json_logging()
    structlog.contextvars.bind_contextvars(token=SECRET)
    try:
        structlog.get_logger("x").bind(key=SECRET).info("bound")
    finally:
        structlog.contextvars.clear_contextvars()
    assert lines(out)[0]["token"] == "***" and lines(out)[0]["key"] == "***"


# -- redact() ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def-ghi", "Authorization: ***"),
        ("{'Authorization': 'Bearer xyz123'}", "{'Authorization': '***'}"),
        ('{"authorization": "Splunk abcdefgh"}', '{"authorization": "***"}'),
        ("sent with Bearer eyJhbGciOi.x.y, retrying", "sent with Bearer ***, retrying"),
        ("token Splunk 12345678-abcd-ef01-2345-6789abcdef01 rejected", "token Splunk *** rejected"),
        (
            "{'DD-API-KEY': 'abc123def456', 'Content-Type': 'json'}",
            "{'DD-API-KEY': '***', 'Content-Type': 'json'}",
        ),
        ("DD_API_KEY=abc123 next", "DD_API_KEY=*** next"),
        ("dd-application-key: q1w2e3", "dd-application-key: ***"),
        ("https://user:p4ss@loki.example/push", "https://user:***@loki.example/push"),
        # Ordinary prose and URLs stay readable.
        ("sending 12 events to Splunk HEC at https://splunk:8088", None),
        ("http://127.0.0.1:3100/loki/api/v1/push", None),
        ("missing Authorization header", None),
        ("Splunk sink delivered batch", None),
    ],
)
def test_generic_patterns(text: str, expected: str | None) -> None:
    assert redact(text) == (text if expected is None else expected)


def test_registered_secret_forms() -> None:
    register_secret("dv_with/slash+plus")
    assert redact("k=dv_with%2Fslash%2Bplus&x=1") == "k=***&x=1"
    register_secret("  dv_padded_secret \n")
    assert redact("[dv_padded_secret]") == "[***]"
    register_secret("dv_short")
    register_secret("dv_short_but_longer")
    assert redact("dv_short_but_longer") == "***"  # the longer one whole, no tail left


@pytest.mark.parametrize("value", [None, "", "abc", " ab "])
def test_too_short_or_empty_values_are_ignored(value: str | None) -> None:
    register_secret(value)
    assert redact("abc ab the cat sat") == "abc ab the cat sat"


def test_nothing_to_do_returns_the_same_string() -> None:
    text = "poll.done team=t1 runs=3"
    assert redact(text) is text


_SECRET_CHARS = st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="*")


@given(
    secret=st.text(_SECRET_CHARS, min_size=4, max_size=40),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
)
def test_a_registered_secret_never_survives(secret: str, before: str, after: str) -> None:
    register_secret(secret)
    assert secret not in redact(before + secret + after)
    assert secret not in redact(f"{before}{secret}{secret}{after}")
