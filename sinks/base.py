"""The one interface every backend implements: send a batch of events, say what became of it.

A sink never sees the pipeline's state (outbox sequence numbers, cursors, checkpoints): it is
handed a batch of events as plain JSON-ready mappings and answers with a `SendResult`. Retrying
later, dead-lettering and advancing the delivery cursor are the pipeline's job, driven by that
answer. Encoding stays inside the sink because only the sink knows its backend's wire format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# A RunEvent as a JSON-ready mapping (field list: README "Event fields"). Per-sink field
# include/exclude/rename is applied before a sink sees it, so sinks read fields with .get().
Event = Mapping[str, Any]

# The values an event's `event` and `status` fields take, so that a sink filter naming anything
# else (a typo such as `faild`) is a configuration error instead of a sink that receives nothing.
# run.summary and alert.* are per Assignment (no run_id); a sink receives them only when its
# filter.events lists them.
EventType = Literal["run.finished", "run.waiting", "run.summary", "alert.started", "alert.cleared"]
EventStatus = Literal["completed", "failed", "stopped", "interrupted", "waiting"]
INSIGHT_EVENT_TYPES = frozenset({"run.summary", "alert.started", "alert.cleared"})


def insight_level(event: Mapping[str, Any]) -> str | None:
    """The level of a summary or alert event (None for a Job's event): a failure-rate alert that
    starts is an error, a latency one a warning; summaries and cleared alerts are info."""
    kind = event.get("event")
    if kind not in INSIGHT_EVENT_TYPES:
        return None
    if kind == "alert.started":
        return "error" if event.get("alert") == "failure_rate" else "warning"
    return "info"


def insight_message(event: Mapping[str, Any]) -> str:
    """One line that says what a summary or alert event is about."""
    if isinstance(event.get("message"), str):
        return event["message"]
    rate = event.get("failure_rate")
    shown = "n/a" if rate is None else f"{rate:.1%}"
    return (
        f"Assignment {event.get('agent_id')} over {event.get('window')}: {event.get('jobs')} Jobs, "
        f"failure rate {shown}, p95 {event.get('duration_p95_seconds')} s"
    )


def one_line(value: object, limit: int = 300) -> str:
    """A backend's words as one line of at most ``limit`` characters, for errors and reasons."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class SinkError(Exception):
    """A one-line, secret-free reason a sink cannot be built or is unhealthy."""


@dataclass(frozen=True)
class Rejection:
    """An event the backend refused permanently; resending it unchanged cannot succeed."""

    index: int  # position in the batch given to Sink.send
    reason: str  # the backend's own words, one line, no secrets


@dataclass(frozen=True)
class SendResult:
    """What became of a batch.

    Events ``[0, done)`` are finished: delivered, except those listed in ``rejected`` (which
    the pipeline dead-letters). Events ``[done, len(batch))`` were not stored by the backend
    as far as the sink can tell and must be sent again; ``error`` says why, ``retry_after`` is
    the backend's hint in seconds. ``fatal`` means the sink cannot go on (bad credentials,
    forbidden index): the pipeline stops that sink and keeps its backlog.
    """

    done: int
    rejected: tuple[Rejection, ...] = ()
    error: str | None = None
    retry_after: float | None = None
    fatal: bool = False

    @classmethod
    def ok(cls, count: int, rejected: Sequence[Rejection] = ()) -> SendResult:
        return cls(done=count, rejected=tuple(rejected))

    @classmethod
    def retry(
        cls,
        error: str,
        *,
        done: int = 0,
        rejected: Sequence[Rejection] = (),
        after: float | None = None,
    ) -> SendResult:
        return cls(done=done, rejected=tuple(rejected), error=error, retry_after=after)

    @classmethod
    def stop(cls, error: str, *, done: int = 0, rejected: Sequence[Rejection] = ()) -> SendResult:
        return cls(done=done, rejected=tuple(rejected), error=error, fatal=True)


class Sink(Protocol):
    """A backend. Built from its validated settings; used from one thread at a time."""

    name: str

    def send(self, events: Sequence[Event]) -> SendResult:
        """Encode and deliver ``events`` (already sized by the pipeline to the sink's batch
        limits). Never raises for backend or network trouble: classify it in the result."""
        ...

    def healthcheck(self) -> None:
        """Check the backend is reachable and the credentials work; raise SinkError if not."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...
