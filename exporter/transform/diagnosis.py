"""A Job's diagnosis from its message log (GET /runs/{id}/messages): pure, and never raises.

``diagnose`` turns the messages read (the whole log, or only its tail) into the ``diagnosis``
mapping of the event (README "Diagnosis"):

- ``failure``: for a failed, interrupted or stopped Job, the last tool call whose result carries
  an error and that no identical later call recovered: ``{tool, error, code, at, step}``; else
  the Assignment's own last message (role ``assistant`` or ``system``) saying why it stopped:
  ``{reason, at, step}``; else null.
- ``retries``: per tool, how many errored calls were repeated identically (Duvo retries a
  transient error with the same call); ``recovered``: true when every errored call was followed
  by a success of the identical call ("retried success"), false when one never was ("never
  recovered"), null when no call errored.
- ``steps``: ``{count, tool_calls, seconds, slowest: {name, seconds}}``. The API has no per-step
  timing: ``slowest`` is the longest gap between consecutive message timestamps, named after the
  message that ended it (its tool, else its type).
- ``human``: the question a log ends on (a ``human_request`` with nothing after it), or a waiting
  Job's ``pending_human_request``: ``{question, since, step}``.

Malformed messages (not an object, no timestamp, an unknown type, a ``tool_result`` that is not an
object) are read as far as they make sense and never raise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from transport import timestamps

FAILURE_STATUSES = frozenset({"failed", "interrupted", "stopped"})
DEFAULT_ERROR_CHARS = 500

STATE_COMPLETE = "complete"  # the whole log was read
STATE_PARTIAL = "partial"  # only part of it (the tail, for a log longer than diagnose.max_pages)
STATE_UNAVAILABLE = "unavailable"  # the log could not be read; the event went out without it
STATE_SKIPPED = "skipped"  # the Job was not selected for diagnosis


def skipped(run: dict[str, Any] | None = None) -> dict[str, Any]:
    """The diagnosis of a Job whose log is not read; a waiting Job still says what it waits on."""
    result: dict[str, Any] = {"state": STATE_SKIPPED}
    human = _pending_human(run) if run is not None else None
    if human is not None:
        result["human"] = human
    return result


def unavailable(reason: str, run: dict[str, Any] | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"state": STATE_UNAVAILABLE, "reason": _truncate(reason, DEFAULT_ERROR_CHARS)}
    human = _pending_human(run) if run is not None else None
    if human is not None:
        result["human"] = human
    return result


def diagnose(
    messages: Sequence[Any],
    status: str | None,
    *,
    first_step: int = 0,
    total: int | None = None,
    complete: bool = True,
    run: dict[str, Any] | None = None,
    error_chars: int = DEFAULT_ERROR_CHARS,
) -> dict[str, Any]:
    """``messages`` are consecutive messages of the log, the first being step ``first_step``;
    ``complete`` says whether they are the whole log. Never raises."""
    try:
        return _diagnose(messages, status, first_step, total, complete, run, error_chars)
    except Exception as exc:  # a log shaped like nothing we expect must not cost the export
        return unavailable(f"could not read the message log: {type(exc).__name__}", run)


def _diagnose(
    messages: Sequence[Any],
    status: str | None,
    first_step: int,
    total: int | None,
    complete: bool,
    run: dict[str, Any] | None,
    error_chars: int,
) -> dict[str, Any]:
    calls: list[tuple[int, dict[str, Any], Any]] = []  # (step, message, identity) of each tool call
    errors: dict[int, dict[str, Any]] = {}  # step -> the error of that call
    reason: dict[str, Any] | None = None
    human: dict[str, Any] | None = None
    tool_calls = 0
    previous: tuple[Any, Any] | None = None  # (moment, step) of the last message with a timestamp
    slowest: dict[str, Any] | None = None
    first_moment = last_moment = None
    for index, message in enumerate(messages):
        step = first_step + index
        if not isinstance(message, dict):
            continue
        kind = message.get("type")
        moment = timestamps.parse(message.get("timestamp"))
        at = timestamps.format_utc(moment) if moment is not None else None
        call = message.get("tool_call")
        if isinstance(call, dict) or kind == "tool_call":
            tool_calls += 1
            call = call if isinstance(call, dict) else {}
            calls.append((step, message, _identity(call)))
            error = _error_of(message.get("tool_result"))
            if error is not None:
                errors[step] = error
        if kind == "human_request":
            human = {"question": _question(message), "since": at, "step": step}
        elif human is not None:
            human = None  # something followed the request: it was answered (or the Job moved on)
        if kind in ("text", "message", None) and message.get("role") in ("assistant", "system"):
            content = message.get("content")
            if isinstance(content, str) and content.strip():
                reason = {"reason": _truncate(content, error_chars), "at": at, "step": step}
        if moment is not None:
            if first_moment is None:
                first_moment = moment
            if previous is not None:
                gap = round(max(0.0, (moment - previous).total_seconds()), 3)
                if slowest is None or gap > slowest["seconds"]:
                    slowest = {"name": _step_name(message), "seconds": gap}
            previous = last_moment = moment

    retries: dict[str, int] = {}
    recovered: bool | None = None
    unrecovered_steps: list[int] = []
    for position, (step, _message, identity) in enumerate(calls):
        if step not in errors:
            continue
        # The identical calls that follow this one without another call in between: Duvo's retries.
        later = position + 1
        fixed = False
        while later < len(calls) and calls[later][2] == identity:
            if calls[later][0] not in errors:
                fixed = True
                break
            later += 1
        name = _tool_name(calls[position][1])
        retried = position + 1 < len(calls) and calls[position + 1][2] == identity
        if retried:
            retries[name] = retries.get(name, 0) + 1
        if not fixed:
            unrecovered_steps.append(step)
        recovered = (recovered is not False) and fixed
    failure: dict[str, Any] | None = None
    if status in FAILURE_STATUSES:
        if unrecovered_steps:
            step = unrecovered_steps[-1]
            message = next(m for s, m, _ in calls if s == step)
            error = errors[step]
            moment = timestamps.parse(message.get("timestamp"))
            failure = {
                "tool": _tool_name(message),
                "error": _truncate(error.get("message") or "", error_chars),
                "code": error.get("code"),
                "at": timestamps.format_utc(moment) if moment is not None else None,
                "step": step,
            }
        elif reason is not None:
            failure = reason
    if human is None and run is not None:
        human = _pending_human(run)
    count = total if total is not None else first_step + len(messages)
    seconds = None
    if first_moment is not None and last_moment is not None:
        seconds = round(max(0.0, (last_moment - first_moment).total_seconds()), 3)
    return {
        "state": STATE_COMPLETE if complete else STATE_PARTIAL,
        "failure": failure,
        "retries": retries,
        "recovered": recovered,
        "steps": {"count": count, "tool_calls": tool_calls, "seconds": seconds, "slowest": slowest},
        "human": human,
    }


def _identity(call: dict[str, Any]) -> Any:
    try:
        arguments = json.dumps(call.get("arguments"), sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        arguments = repr(call.get("arguments"))
    return (call.get("name"), arguments)


def _tool_name(message: dict[str, Any]) -> str:
    call = message.get("tool_call")
    name = call.get("name") if isinstance(call, dict) else None
    return name if isinstance(name, str) and name else "unknown"


def _step_name(message: dict[str, Any]) -> str:
    if isinstance(message.get("tool_call"), dict):
        return _tool_name(message)
    kind = message.get("type")
    return kind if isinstance(kind, str) and kind else "unknown"


def _error_of(result: Any) -> dict[str, Any] | None:
    """{message, code} when a tool result carries an error; None for a success. A result that is
    not an object carries no readable error and counts as a success."""
    if not isinstance(result, dict):
        return None
    error = result.get("error")
    if error is None or error is False or error == "" or error == {}:
        if result.get("is_error") is True or result.get("status") == "error":
            return {"message": _text(result.get("content") or result.get("output") or "error"), "code": None}
        return None
    if isinstance(error, dict):
        code = error.get("code")
        text = error.get("message") or error.get("detail") or error.get("error") or code or error
        return {"message": _text(text), "code": code if isinstance(code, str | int) else None}
    return {"message": _text(error), "code": None}


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError, RecursionError):
        return repr(value)


def _truncate(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    if limit > 0 and len(text) > limit:
        return text[: max(0, limit - 3)] + "..."
    return text


def _question(message: dict[str, Any]) -> str | None:
    request = message.get("human_request")
    if isinstance(request, dict) and isinstance(request.get("question"), str):
        return request["question"]
    content = message.get("content")
    return content if isinstance(content, str) else None


def _pending_human(run: dict[str, Any]) -> dict[str, Any] | None:
    request = run.get("pending_human_request")
    if not isinstance(request, dict) and run.get("status") != "waiting":
        return None
    request = request if isinstance(request, dict) else {}
    question = request.get("question")
    moment = timestamps.parse(request.get("requested_at"))
    return {
        "question": question if isinstance(question, str) else None,
        "since": timestamps.format_utc(moment) if moment is not None else None,
        "step": None,
    }
