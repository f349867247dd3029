"""SinkWorker: moves one sink's events from the outbox to its backend, in order, and never loses one.

The cursor advances only past events the backend accepted or permanently rejected (those become
dead letters, in the same transaction). Anything else is retried with bounded exponential backoff
and jitter, honouring the backend's Retry-After; a sink that is down never blocks extraction or
the other sinks (each worker has its own thread and its own database connection).
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from exporter import jsoncodec
from exporter.delivery.shaping import EventShaper
from exporter.logsetup import redact
from exporter.observe import NULL_OBSERVER, Observer
from exporter.state.store import OutboxEvent, StateError, StateStore
from sinks.base import Rejection, SendResult, Sink
from sinks.settings import SinkSettings

log = structlog.get_logger(__name__)

PRUNE_EVERY_BATCHES = 20


@dataclass
class SinkCounters:
    """In-memory counters for `status` and metrics; the durable totals live in sink_cursors."""

    batches: int = 0
    delivered: int = 0
    rejected: int = 0
    filtered: int = 0
    retries: int = 0
    last_error: str | None = None
    last_rejection: str | None = None  # the backend's reason for the newest dead letter


class SinkStopped(Exception):
    """The sink reported a fatal problem (credentials, configuration); its backlog is kept."""


@dataclass(frozen=True)
class CursorAdvance:
    """What a finished batch does to the sink's cursor. Held until the state store records it:
    the backend already has those events, so a failed state write must be retried on its own,
    never by sending the batch again."""

    to_seq: int
    delivered: int
    filtered: int
    dead: tuple[tuple[OutboxEvent, str], ...] = ()
    error: str | None = None


class SinkWorker:
    def __init__(
        self,
        sink: Sink,
        settings: SinkSettings,
        store: StateStore,
        active_sinks: Sequence[str],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        self.sink = sink
        self.observer = observer
        self.name = settings.name
        self.settings = settings
        self.store = store
        self.active_sinks = list(active_sinks)
        self.shaper = EventShaper(settings.filter, settings.fields)
        self.counters = SinkCounters()
        self.rng = rng or random.Random()
        self.clock = clock
        self.stopped_reason: str | None = None
        self._batches_since_prune = 0
        self._unrecorded: CursorAdvance | None = None

    # ---- one batch ---------------------------------------------------------------------------

    def deliver_batch(self) -> tuple[int, SendResult | None]:
        """Send the next batch. Returns (events finished, the sink's result or None when the
        outbox had nothing for this sink or everything was filtered out).

        Raises StateError when the state store cannot be written; a batch the backend accepted
        is then recorded by the next call instead of being sent again."""
        if self._unrecorded is not None:
            self._record(self._unrecorded)
        cursor = self.store.cursor(self.name).seq
        batch = self.store.read_outbox(cursor, self.settings.batch.max_events, self.settings.batch.max_bytes)
        if not batch:
            return 0, None
        kept: list[tuple[OutboxEvent, dict[str, Any]]] = []
        for item in batch:
            if item.sink is not None and item.sink != self.name:
                continue  # another sink's backfill or replay: counted as filtered here
            event = jsoncodec.loads(item.body)
            if self.shaper.accepts(event):
                kept.append((item, self.shaper.shape(event)))
        if not kept:
            self._record(CursorAdvance(batch[-1].seq, delivered=0, filtered=len(batch)))
            return len(batch), None
        result = _redacted(self.sink.send([event for _, event in kept]))
        done = max(0, min(result.done, len(kept)))
        # Everything up to (not including) the first unfinished kept event is finished,
        # filtered events in between included.
        limit_seq = kept[done][0].seq if done < len(kept) else None
        finished = [item for item in batch if limit_seq is None or item.seq < limit_seq]
        dead = [(kept[r.index][0], r.reason) for r in result.rejected if r.index < done]
        if finished:
            kept_done = {item.seq for item, _ in kept[:done]}
            filtered = sum(1 for item in finished if item.seq not in kept_done)
            self._record(
                CursorAdvance(
                    finished[-1].seq,
                    delivered=done - len(dead),
                    filtered=filtered,
                    dead=tuple(dead),
                    error=result.error,
                )
            )
        if result.error:
            self.counters.last_error = result.error
            if not result.fatal and done < len(kept):
                self.observer.sink_retried(self.name, len(kept) - done)
            if not finished:
                self.store.record_sink_error(self.name, result.error, stopped=result.fatal)
            elif result.fatal:
                self.store.record_sink_error(self.name, result.error, stopped=True)
        return len(finished), result

    def _record(self, advance: CursorAdvance) -> None:
        self._unrecorded = advance
        self.store.advance_cursor(
            self.name,
            advance.to_seq,
            delivered=advance.delivered,
            filtered=advance.filtered,
            dead=advance.dead,
            error=advance.error,
        )
        self._unrecorded = None
        self.counters.batches += 1
        self.counters.delivered += advance.delivered
        self.counters.filtered += advance.filtered
        self.counters.rejected += len(advance.dead)
        if advance.delivered:
            self.observer.sink_sent(self.name, advance.delivered)
        if advance.dead:
            self.observer.sink_dead_lettered(self.name, len(advance.dead))
        if advance.dead:
            self.counters.last_rejection = advance.dead[-1][1]
        self._batches_since_prune += 1
        if self._batches_since_prune >= PRUNE_EVERY_BATCHES:
            self.prune()

    def prune(self) -> None:
        self._batches_since_prune = 0
        self.store.prune_outbox(self.active_sinks)

    def backoff(self, attempt: int, hint: float | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: the backend's hint if it gave one
        (bounded), else exponential with jitter so many exporters do not retry in step."""
        retry = self.settings.retry
        if hint is not None and hint > 0:
            return min(hint, max(retry.max_backoff, 300.0))
        ceiling = min(retry.max_backoff, retry.initial_backoff * (2 ** max(0, attempt - 1)))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    # ---- loops -------------------------------------------------------------------------------

    def drain(self, stop: threading.Event) -> str:
        """Deliver until the backlog is empty (``drained``), a batch failed ``max_attempts`` times
        in a row (``backlog``: kept for the next run), or the sink stopped (``stopped``)."""
        attempt = 0
        while not stop.is_set():
            finished, result = self.deliver_batch()
            if result is None and finished == 0:
                self.prune()
                return "drained"
            if result is None or result.error is None:
                attempt = 0
                continue
            if result.fatal:
                return self._stop(result.error)
            attempt = 0 if finished else attempt + 1
            self.counters.retries += 1
            if attempt >= self.settings.retry.max_attempts:
                log.error(
                    "sink still failing; its backlog is kept for the next run",
                    sink=self.name,
                    error=result.error,
                    attempts=attempt,
                )
                return "backlog"
            delay = self.backoff(attempt, result.retry_after)
            log.warning("sink delivery failed; retrying", sink=self.name, error=result.error, retry_in=round(delay, 2))
            stop.wait(delay)
        return "interrupted"

    def run(self, stop: threading.Event, wake: threading.Event) -> None:
        """The daemon loop: deliver whenever there is something, back off (never give up)
        while the backend fails, stop only on `stop` or a fatal sink error."""
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    attempt, delay, fatal = self._run_once(stop, wake, attempt)
                except StateError as exc:
                    attempt += 1
                    log.error("state store failed; delivery paused", sink=self.name, error=str(exc))
                    delay, fatal = self.backoff(attempt, None), False
                except Exception as exc:
                    # A state error (disk full, a lock held too long) or a bug must not end the
                    # thread while the daemon runs on: back off and try again, like a failed send.
                    attempt += 1
                    log.exception("delivery failed unexpectedly; retrying", sink=self.name, error=str(exc))
                    delay, fatal = self.backoff(attempt, None), False
                if fatal:
                    return
                if delay:
                    stop.wait(delay)
        finally:
            self.sink.close()

    def _run_once(self, stop: threading.Event, wake: threading.Event, attempt: int) -> tuple[int, float, bool]:
        """One step of the daemon loop: (next attempt number, seconds to wait, sink stopped)."""
        rejected_before = self.counters.rejected
        finished, result = self.deliver_batch()
        if self.counters.rejected > rejected_before:
            # One line per batch, not per event: a bad field can reject thousands in a row.
            log.warning(
                "backend rejected events permanently; dead-lettered",
                sink=self.name,
                events=self.counters.rejected - rejected_before,
                reason=self.counters.last_rejection,
                hint="duvo-exporter status --dead-letters",
            )
        if result is None and finished == 0:
            self.prune()
            wake.wait(self.settings.batch.flush_interval or 1.0)
            wake.clear()
            return 0, 0.0, False
        if result is None or result.error is None:
            if attempt:
                log.info("sink recovered", sink=self.name)
            self._pace_partial_batch(stop)
            return 0, 0.0, False
        if result.fatal:
            self._stop(result.error)
            return attempt, 0.0, True
        attempt = 0 if finished else attempt + 1
        self.counters.retries += 1
        delay = self.backoff(max(attempt, 1), result.retry_after)
        log.warning("sink delivery failed; retrying", sink=self.name, error=result.error, retry_in=round(delay, 2))
        return attempt, delay, False

    def _pace_partial_batch(self, stop: threading.Event) -> None:
        """After sending, let a partial batch fill for up to flush_interval before the next send."""
        flush = self.settings.batch.flush_interval
        if flush <= 0:
            return
        cursor = self.store.cursor(self.name).seq
        _, high = self.store.outbox_bounds()
        if high - cursor >= self.settings.batch.max_events:
            return
        oldest = self.store.oldest_enqueued_after(cursor)
        if oldest is not None:
            stop.wait(max(0.0, min(flush, oldest + flush - time.time())))

    def _stop(self, error: str) -> str:
        self.stopped_reason = error
        log.error("sink stopped; its backlog is kept until it is fixed and restarted", sink=self.name, error=error)
        return "stopped"


def replay_dead_letters(sink: Sink, settings: SinkSettings, store: StateStore) -> tuple[int, int, str | None]:
    """Send a sink's dead letters again. Returns (delivered, still rejected, error that stopped it)."""
    shaper = EventShaper(settings.filter, settings.fields)
    letters = store.dead_letters(settings.name)
    delivered = still = 0
    for start in range(0, len(letters), settings.batch.max_events):
        chunk = letters[start : start + settings.batch.max_events]
        result = _redacted(sink.send([shaper.shape(jsoncodec.loads(letter.body)) for letter in chunk]))
        done = min(result.done, len(chunk))
        rejected = {r.index: r.reason for r in result.rejected if r.index < done}
        resolved = [letter.id for i, letter in enumerate(chunk[:done]) if i not in rejected]
        store.resolve_dead_letters(settings.name, resolved, [(chunk[i].id, reason) for i, reason in rejected.items()])
        delivered += len(resolved)
        still += len(rejected)
        if result.error and done < len(chunk):
            return delivered, still, result.error
    return delivered, still, None


def _redacted(result: SendResult) -> SendResult:
    """A backend may quote a credential in its error body; reasons are stored in the state file."""
    if result.error is None and not result.rejected:
        return result
    return dataclasses.replace(
        result,
        error=redact(result.error) if result.error else None,
        rejected=tuple(Rejection(r.index, redact(r.reason)) for r in result.rejected),
    )


def drain_workers(workers: Sequence[SinkWorker], stop: threading.Event) -> dict[str, str]:
    """Deliver these sinks' backlogs in parallel, as `once` does; sink name -> outcome."""
    outcomes: dict[str, str] = {}

    def drain_one(worker: SinkWorker) -> None:
        try:
            outcomes[worker.name] = worker.drain(stop)
        except Exception as exc:
            log.exception("delivery failed unexpectedly", sink=worker.name, error=str(exc))
            outcomes[worker.name] = "backlog"

    threads = [threading.Thread(target=drain_one, args=(w,), name=f"sink-{w.name}") for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
