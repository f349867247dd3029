"""Shared delivery logic for HTTP backends: split batches the backend finds too large, and
bisect batches it refuses as bad down to the offending events, delivering all the others.

A backend module only has to classify one HTTP exchange into a `Verdict`; `send_splitting`
turns a sequence of verdicts into the `SendResult` the pipeline understands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from sinks.base import Rejection, SendResult

T = TypeVar("T")  # whatever a backend splits: events, or its own encoded entries


class Kind(Enum):
    OK = "ok"  # the request was stored, except any `rejected` entries
    TOO_LARGE = "too_large"  # 413 or the backend's equivalent: smaller requests may pass
    BAD = "bad"  # refused as invalid; somewhere in it is at least one event that can never pass
    RETRY = "retry"  # transient: nothing (beyond accepted_prefix) is known to be stored
    FATAL = "fatal"  # credentials or configuration: stop the sink


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reason: str = ""
    retry_after: float | None = None
    # Events [0, accepted_prefix) were stored even though the request as a whole was not
    # (Splunk HEC indexes the events before `invalid-event-number`).
    accepted_prefix: int = 0
    # For BAD: the index of the offending event when the backend names it; None = unknown.
    bad_index: int | None = None
    # For OK: entries the backend ignored inside a request it otherwise stored (Loki's 400
    # "total ignored: N out of M"); indexes into the posted slice.
    rejected: tuple[Rejection, ...] = ()


Post = Callable[[Sequence[T]], Verdict]


def send_splitting(events: Sequence[T], post: Post[T]) -> SendResult:
    """Deliver ``events`` with ``post``; on TOO_LARGE split in halves, on BAD bisect (or, when
    the backend names the bad event, reject it and go on after it)."""
    return _send(events, post, 0)


def _send(events: Sequence[T], post: Post[T], base: int) -> SendResult:
    if not events:
        return SendResult.ok(0)
    verdict = post(events)
    if verdict.kind is Kind.OK:
        return SendResult.ok(len(events), verdict.rejected)
    if verdict.kind is Kind.RETRY:
        return SendResult.retry(verdict.reason, done=verdict.accepted_prefix, after=verdict.retry_after)
    if verdict.kind is Kind.FATAL:
        return SendResult.stop(verdict.reason, done=verdict.accepted_prefix)
    if verdict.kind is Kind.BAD and verdict.bad_index is not None and verdict.bad_index < len(events):
        bad = verdict.bad_index
        head = SendResult.ok(bad) if verdict.accepted_prefix >= bad else _send(events[:bad], post, base)
        if head.done < bad:
            return head
        rejected = (*head.rejected, Rejection(bad, verdict.reason))
        return _chain(SendResult.ok(bad + 1, rejected), events[bad + 1 :], post, base, bad + 1)
    if len(events) == 1:
        return SendResult.ok(1, [Rejection(0, verdict.reason or verdict.kind.value)])
    middle = len(events) // 2
    first = _send(events[:middle], post, base)
    if first.done < middle:
        return first
    return _chain(first, events[middle:], post, base, middle)


def _chain(head: SendResult, rest: Sequence[T], post: Post[T], base: int, offset: int) -> SendResult:
    """``head`` finished events [0, offset); send ``rest`` and shift its indexes by offset."""
    tail = _send(rest, post, base + offset)
    rejected = head.rejected + tuple(Rejection(r.index + offset, r.reason) for r in tail.rejected)
    return SendResult(
        done=offset + tail.done,
        rejected=rejected,
        error=tail.error,
        retry_after=tail.retry_after,
        fatal=tail.fatal,
    )
