"""The diagnosis of a message log, case by case (exporter/transform/diagnosis.py): pure, never raises."""

from __future__ import annotations

from typing import Any

import pytest

from exporter.transform.diagnosis import diagnose, skipped, unavailable

T0 = "2026-05-17T10:00:00.000Z"


def at(second: float) -> str:
    whole = int(second)
    return f"2026-05-17T10:{whole // 60:02d}:{whole % 60:02d}.{round((second - whole) * 1000):03d}Z"


def text(second: float, content: str, role: str = "assistant") -> dict[str, Any]:
    return {"type": "text", "role": role, "timestamp": at(second), "content": content}


def call(second: float, tool: str, error: Any = None, arguments: Any = None, result: Any = None) -> dict[str, Any]:
    if result is None:
        result = {"error": error} if error is not None else {"output": f"{tool} ok"}
    return {
        "type": "tool_call",
        "role": "assistant",
        "timestamp": at(second),
        "tool_call": {"name": tool, "arguments": arguments if arguments is not None else {"n": 1}},
        "tool_result": result,
    }


def human(second: float, question: str) -> dict[str, Any]:
    return {
        "type": "human_request",
        "role": "assistant",
        "timestamp": at(second),
        "content": question,
        "human_request": {"id": "hr_1", "question": question},
    }


TIMEOUT = {"code": "timeout", "message": "The tool did not answer within 30 s"}


def test_a_tool_error_last_is_the_failure():
    log = [
        text(0, "Planning", role="user"),
        call(2, "gmail.search"),
        call(5, "sheets.append_row", TIMEOUT),
    ]
    got = diagnose(log, "failed")
    assert got["state"] == "complete"
    assert got["failure"] == {
        "tool": "sheets.append_row",
        "error": "The tool did not answer within 30 s",
        "code": "timeout",
        "at": at(5),
        "step": 2,
    }
    assert got["recovered"] is False
    assert got["retries"] == {}
    assert got["steps"] == {
        "count": 3,
        "tool_calls": 2,
        "seconds": 5.0,
        "slowest": {"name": "sheets.append_row", "seconds": 3.0},
    }
    assert got["human"] is None


def test_retried_then_success_is_recovered_and_not_a_failure():
    log = [
        call(1, "http.request", TIMEOUT),
        call(2, "http.request", TIMEOUT),
        call(4, "http.request"),
        text(5, "All steps completed"),
    ]
    got = diagnose(log, "completed")
    assert got["retries"] == {"http.request": 2}
    assert got["recovered"] is True
    assert got["failure"] is None  # a completed Job has no failure
    # Even a stopped Job is not blamed on an error that was recovered: its reason is its last word.
    stopped = diagnose([*log[:3], text(9, "Job stopped by a user", role="system")], "stopped")
    assert stopped["failure"] == {"reason": "Job stopped by a user", "at": at(9), "step": 3}


def test_retries_exhausted_never_recovered():
    log = [
        call(1, "pdf.extract"),
        *(
            call(2 + k, "salesforce.query", {"code": "auth_failed", "message": "Connection Login expired"})
            for k in range(3)
        ),
    ]
    got = diagnose(log, "failed")
    assert got["recovered"] is False
    assert got["retries"] == {"salesforce.query": 2}  # errored calls that were repeated identically
    assert got["failure"]["tool"] == "salesforce.query"
    assert got["failure"]["code"] == "auth_failed"
    assert got["failure"]["step"] == 3


def test_different_arguments_are_not_a_retry():
    log = [call(1, "http.request", TIMEOUT, arguments={"url": "a"}), call(2, "http.request", arguments={"url": "b"})]
    got = diagnose(log, "completed")
    assert got["retries"] == {}
    assert got["recovered"] is False


def test_a_stop_reason_without_a_tool_error():
    log = [call(1, "gmail.search"), text(3, "I cannot continue: the mailbox is empty"), text(4, "ok", role="user")]
    got = diagnose(log, "interrupted")
    assert got["failure"] == {"reason": "I cannot continue: the mailbox is empty", "at": at(3), "step": 1}
    assert got["recovered"] is None  # nothing errored


def test_hitl_pending_at_the_end_of_the_log():
    log = [call(1, "gmail.search"), human(30, "Approve the refund?")]
    got = diagnose(log, "stopped")
    assert got["human"] == {"question": "Approve the refund?", "since": at(30), "step": 1}
    answered = diagnose([*log, text(40, "Approved", role="user")], "completed")
    assert answered["human"] is None


def test_a_waiting_job_says_what_it_waits_on_without_its_log():
    run = {
        "id": "r",
        "status": "waiting",
        "pending_human_request": {"question": "Which supplier?", "requested_at": "2026-05-17T10:00:00Z"},
    }
    assert skipped(run) == {"state": "skipped", "human": {"question": "Which supplier?", "since": T0, "step": None}}
    assert skipped({"id": "r", "status": "completed"}) == {"state": "skipped"}


def test_an_empty_log():
    got = diagnose([], "failed", total=0)
    assert got == {
        "state": "complete",
        "failure": None,
        "retries": {},
        "recovered": None,
        "steps": {"count": 0, "tool_calls": 0, "seconds": None, "slowest": None},
        "human": None,
    }


def test_the_tail_of_a_long_log_is_partial_with_steps_in_the_whole_log():
    tail = [call(1, "browser.open"), call(2, "browser.open", TIMEOUT)]
    got = diagnose(tail, "failed", first_step=148, total=150, complete=False)
    assert got["state"] == "partial"
    assert got["failure"]["step"] == 149
    assert got["steps"]["count"] == 150


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        None,
        42,
        {"type": "tool_call"},  # no tool_call object, no timestamp
        {"type": "mystery", "role": "robot", "timestamp": "yesterday"},  # unknown type, bad timestamp
        {"type": "tool_call", "tool_call": {"name": "x"}, "tool_result": "boom"},  # a result that is not an object
        {"type": "tool_call", "tool_call": "x", "tool_result": ["a"]},
        {"type": "tool_call", "tool_call": {"name": None, "arguments": {1, 2}}, "tool_result": {"error": ["x"]}},
        {"type": "human_request", "human_request": "?"},
        {"type": "text", "role": "assistant", "content": {"nested": True}},
    ],
)
def test_malformed_messages_never_raise(bad):
    log = [call(1, "gmail.search"), bad, call(3, "sheets.append_row", TIMEOUT)]
    got = diagnose(log, "failed")
    assert got["state"] == "complete"
    assert got["steps"]["count"] == 3
    assert got["failure"]["step"] == 2  # indices count every message, malformed ones too


def test_a_message_without_timestamp_is_skipped_for_timing_and_an_error_string_is_read():
    log = [call(1, "a"), {"type": "tool_call", "tool_call": {"name": "b"}, "tool_result": {"error": "x" * 900}}]
    got = diagnose(log, "failed", error_chars=50)
    assert got["failure"]["tool"] == "b"
    assert got["failure"]["at"] is None
    assert got["failure"]["code"] is None
    assert len(got["failure"]["error"]) == 50 and got["failure"]["error"].endswith("...")
    assert got["steps"]["slowest"] is None and got["steps"]["seconds"] == 0.0


def test_unavailable_carries_the_reason():
    assert unavailable("HTTP 503")["state"] == "unavailable"
    assert unavailable("HTTP 503")["reason"] == "HTTP 503"
