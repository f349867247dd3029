"""WebhookProcessor: turns queued webhooks into exports through the normal outbox.

The server's handler only queues the run_id (webhook_queue, durable before the 202). This
processor, a thread of the daemon woken by the handler, fetches GET /runs/{id} and records the
record exactly as a pass records a re-checked Job (`Extractor.apply_fetched`): the same event_id,
de-duplication and outbox. The queue row is deleted in the same transaction, so a crash anywhere
leaves either the row (fetched again after a restart) or the event, never neither.

A run_id is exported only for a configured team: the record's team_id if it carries one, else the
team under which a pass listed it. A Job that is gone (404), or of another team, is dropped (logged).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from exporter.logsetup import redact
from exporter.observe import NULL_OBSERVER, Observer
from exporter.source.duvo_client import DuvoAuthError, DuvoError
from exporter.source.extraction import Extractor
from exporter.state.store import QueuedWebhook, StateError, StateStore

log = structlog.get_logger(__name__)

RETRY_INITIAL = 2.0
RETRY_MAX = 300.0
BATCH = 50


class WebhookProcessor:
    def __init__(
        self,
        extractor: Extractor,
        store: StateStore,
        teams: Sequence[str],
        *,
        observer: Observer = NULL_OBSERVER,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.extractor = extractor  # its own Extractor on `store`, sharing the pass's commit lock
        self.store = store
        self.teams = set(teams)
        self.observer = observer
        self.clock = clock
        self.rng = rng or random.Random()
        self.wake = threading.Event()
        self.on_exported: Callable[[], None] = lambda: None  # the daemon wakes its sink workers
        self.exported = 0
        self.dropped = 0

    def drain(self, stop: threading.Event | None = None) -> int:
        """Process every queued webhook that is due now; returns how many were handled."""
        handled = 0
        while stop is None or not stop.is_set():
            due = self.store.due_webhooks(self.clock(), BATCH)
            if not due:
                break
            for item in due:
                if stop is not None and stop.is_set():
                    break
                self.process(item)
                handled += 1
        return handled

    def run(self, stop: threading.Event) -> None:
        """The daemon thread: process what is due, then sleep until woken or the next retry."""
        while not stop.is_set():
            try:
                self.drain(stop)
                next_at = self.store.next_webhook_at()
            except StateError as exc:
                log.error("state store failed; webhook processing paused", error=str(exc))
                next_at = self.clock() + RETRY_INITIAL
            except Exception as exc:
                log.exception("webhook processing failed unexpectedly; retrying", error=str(exc))
                next_at = self.clock() + RETRY_INITIAL
            wait = 60.0 if next_at is None else min(60.0, max(0.0, next_at - self.clock()))
            if wait > 0:
                self.wake.wait(wait)
            self.wake.clear()

    def process(self, item: QueuedWebhook) -> None:
        run_id = item.run_id
        try:
            run = self.extractor.source.get_run(run_id)
            team = self._team_of(run_id, run) if run is not None else None
        except DuvoError as exc:
            delay = self._retry_delay(item.attempts, long=isinstance(exc, DuvoAuthError))
            log.warning(
                "webhook: could not fetch the job; will try again",
                run_id=run_id,
                error=redact(str(exc)),
                attempts=item.attempts + 1,
                retry_in=round(delay, 1),
            )
            self.store.retry_webhook(run_id, item.received_at, redact(str(exc)), self.clock() + delay)
            return
        if run is None:
            log.info("webhook: the job does not exist (404); dropped", run_id=run_id)
            self._drop(item)
            return
        if team is None:
            log.warning(
                "webhook: the job is not of a configured team; dropped",
                run_id=run_id,
                team_id=str(run.get("team_id")) if run.get("team_id") is not None else None,
            )
            self._drop(item)
            return
        events = self.extractor.apply_fetched(
            team, run, also=lambda conn: StateStore.delete_webhook_row(conn, run_id, item.received_at)
        )
        self.exported += events
        if events:
            self.observer.jobs_extracted(events)
            self.on_exported()
        log.debug("webhook processed", run_id=run_id, status=run.get("status"), events=events)

    def _team_of(self, run_id: str, run: dict[str, Any]) -> str | None:
        """The configured team the Job belongs to, or None. The API's record need not carry a
        team_id (the guide does not list one): then the team that listed it, else one whose list
        shows it (one request per team, from the Job's created_at)."""
        team = run.get("team_id")
        if isinstance(team, str) and team:
            return team if team in self.teams else None
        known = self.store.known_runs([run_id]).get(run_id)
        if known is not None:
            return known.team_id if known.team_id in self.teams else None
        since = self.extractor.since_for(run.get("created_at"))
        if since is None:
            return None
        for candidate in sorted(self.teams):
            page = self.extractor.source.list_runs(candidate, since=since, limit=100, sort_order="asc")
            if any(str(row.get("id")) == run_id for row in page.data):
                return candidate
        return None

    def _drop(self, item: QueuedWebhook) -> None:
        self.dropped += 1
        self.store.drop_webhook(item.run_id, item.received_at)

    def _retry_delay(self, attempts: int, *, long: bool = False) -> float:
        ceiling = RETRY_MAX if long else min(RETRY_MAX, RETRY_INITIAL * 2 ** min(attempts, 16))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)
