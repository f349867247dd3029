"""Deterministic step logs for GET /runs/{id}/messages, consistent with each Job's lifecycle."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any

from .ids import format_uuid, random_uuid
from .timefmt import render

QUESTIONS = (
    "Approve the refund of 240 EUR to the customer?",
    "Which supplier should receive the purchase order?",
    "The invoice total differs from the PO by 3%. Continue?",
    "Please log in to the vendor portal again (MFA required).",
    "Should the contract renewal be sent to legal first?",
)
_TOOLS = (
    "browser.open",
    "gmail.search",
    "sheets.append_row",
    "salesforce.query",
    "slack.post_message",
    "http.request",
    "pdf.extract",
)
_ERRORS = (
    ("timeout", "The tool did not answer within 30 s"),
    ("rate_limited", "Upstream API returned 429"),
    ("connection_error", "Connection reset by upstream"),
    ("auth_failed", "Connection Login expired"),
)
_LONG_LOG_FRACTION = 0.05  # some Jobs log more than one 100-message page, so paging gets exercised
_RETRY_FRACTION = 0.12


@dataclass(frozen=True, slots=True)
class Timeline:
    """When a Job did (or will) do what; None = never. `outcome` is its status at `end` or right now."""

    created: int
    started: int | None
    wait: int | None
    resume: int | None
    end: int | None
    outcome: str
    style: int


def _derived_uuid(u: int, salt: bytes) -> int:
    digest = hashlib.blake2b(u.to_bytes(16, "big") + salt, digest_size=16).digest()
    return random_uuid(int.from_bytes(digest, "big"))


def human_request_for(u: int, requested_us: int, style: int) -> dict[str, Any]:
    """The pending_human_request of a generated Job; the messages log repeats the same request."""
    return {
        "id": format_uuid(_derived_uuid(u, b"hitl")),
        "question": QUESTIONS[u % len(QUESTIONS)],
        "requested_at": render(requested_us, style),
    }


def _spread(start: int, end: int, count: int) -> list[int]:
    span = max(end - start, count + 1)
    return [start + span * (k + 1) // (count + 1) for k in range(count)]


def _tool_steps(rng: random.Random, count: int, *, fail_last: bool) -> list[tuple[str, dict, dict | None]]:
    """(tool, arguments, error) per tool message; retried attempts repeat the same call, as Duvo's do."""
    steps: list[tuple[str, dict, dict | None]] = []
    for index in range(count):
        tool = rng.choice(_TOOLS)
        arguments = {"step": index + 1, "target": f"record-{rng.randrange(10_000)}"}
        code, message = rng.choice(_ERRORS)
        error = {"code": code, "message": message}
        last = index == count - 1
        if last and fail_last:
            steps.extend((tool, arguments, error) for _ in range(3))
            continue
        if rng.random() < _RETRY_FRACTION:
            steps.extend((tool, arguments, error) for _ in range(rng.randint(1, 2)))
        steps.append((tool, arguments, None))
    return steps


def build_log(u: int, seed: int, timeline: Timeline, now_us: int) -> list[dict[str, Any]]:
    """The Job's messages up to now, chronological; the same Job always gets the same log."""
    rng = random.Random(f"{seed}:messages:{u}")
    run_id = format_uuid(u)
    planned: list[tuple[int, dict[str, Any]]] = []
    started, wait, resume, end, outcome = (
        timeline.started,
        timeline.wait,
        timeline.resume,
        timeline.end,
        timeline.outcome,
    )
    if started is None:
        if end is not None:
            planned.append((end, {"type": "text", "role": "system", "content": f"Job {outcome} before it started"}))
    else:
        long_log = rng.random() < _LONG_LOG_FRACTION
        count = rng.randint(60, 130) if long_log else rng.randint(1, 6)
        fail_last = outcome == "failed"
        steps = _tool_steps(rng, count, fail_last=fail_last)
        planned.append((started, {"type": "text", "role": "user", "content": "Run the assignment's SOP"}))
        # Without a known end the log is spread over the first minute, and grows as time passes.
        horizon = end if end is not None else started + 60_000_000
        first_phase_end = wait if wait is not None else horizon
        # A resumed Job works on after the human answered; otherwise every step precedes the request.
        split = max(1, len(steps) // 2) if wait is not None and resume is not None else len(steps)
        first, second = steps[:split], steps[split:]
        slots = _spread(started, first_phase_end, len(first) + 1)
        planned.append((slots[0], {"type": "text", "role": "assistant", "content": "Planning the steps"}))
        planned.extend((at, _tool_message(step)) for at, step in zip(slots[1:], first, strict=True))
        if wait is not None:
            request = human_request_for(u, wait, timeline.style)
            planned.append(
                (
                    wait,
                    {
                        "type": "human_request",
                        "role": "assistant",
                        "content": request["question"],
                        "human_request": {"id": request["id"], "question": request["question"]},
                    },
                )
            )
            if resume is not None:
                planned.append((resume, {"type": "text", "role": "user", "content": "Approved, go ahead"}))
                slots = _spread(resume, horizon, len(second))
                planned.extend((at, _tool_message(step)) for at, step in zip(slots, second, strict=True))
        if end is not None and outcome != "failed":
            closing = {
                "completed": ("assistant", "All steps completed"),
                "stopped": ("system", "Job stopped by a user"),
                "interrupted": ("system", "Job interrupted"),
            }.get(outcome, ("system", f"Job {outcome}"))
            planned.append((end, {"type": "text", "role": closing[0], "content": closing[1]}))
    if end is not None:  # a Job that ended within microseconds of starting still logs everything by its end
        planned = [(min(at, end), message) for at, message in planned]
    planned.sort(key=lambda item: item[0])  # stable: equal times keep their logical order
    log: list[dict[str, Any]] = []
    for at, message in planned:
        if at > now_us:
            break
        entry: dict[str, Any] = {
            "id": f"{run_id}-{len(log):04d}",
            "type": message.pop("type"),
            "role": message.pop("role"),
            "timestamp": render(at, timeline.style),
        }
        entry.update(message)
        log.append(entry)
    return log


def _tool_message(step: tuple[str, dict, dict | None]) -> dict[str, Any]:
    tool, arguments, error = step
    result: dict[str, Any] = {"error": error} if error is not None else {"output": f"{tool} ok"}
    return {
        "type": "tool_call",
        "role": "assistant",
        "content": None,
        "tool_call": {"name": tool, "arguments": dict(arguments)},
        "tool_result": result,
    }
