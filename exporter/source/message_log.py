"""Reading a finished Job's message log for its diagnosis, within a per-pass request budget.

One request reads the first page (up to 100 messages) and learns ``total``: for most Jobs that is
the whole log. A longer log's tail is read next, from the last page backwards, while the Job's
``diagnose.max_pages`` allow; what lies between the first page and the tail is skipped and the
diagnosis says ``partial``. Every request is counted against ``diagnose.max_requests_per_pass``,
which is separate from extraction's own budget and shared by the pass and the webhook thread.

A log that cannot be read (404, or 5xx/429/network errors after the client's retries) never
holds an export back: the Job is exported with ``diagnosis.state: unavailable``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from exporter.config import DiagnoseSettings
from exporter.logsetup import redact
from exporter.source.duvo_client import MAX_PAGE_SIZE, DuvoAuthError, DuvoError, DuvoUnavailable
from exporter.transform import diagnosis as diag

log = structlog.get_logger(__name__)


class MessageSource(Protocol):
    def list_messages(
        self, run_id: str, *, offset: int = 0, limit: int = 100, keep_malformed: bool = False
    ) -> tuple[list[Any], int | None]: ...


class Diagnoser:
    """Thread-safe: the pass and the webhook processor share one budget."""

    def __init__(
        self,
        source: MessageSource,
        settings: DiagnoseSettings,
        *,
        budget: int | None = None,
        seconds: float | None = None,
        page_size: int = MAX_PAGE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.settings = settings
        self.page_size = page_size
        # Requests per pass (Config.diagnosis_budget() works it out from the configuration).
        self.budget = budget if budget is not None else (settings.max_requests_per_pass or 0)
        # Time per pass, from the first log read on (None: unbounded): an API that is slow or
        # failing (retries, backoff) cannot stretch a pass by more than this; what is left waits.
        self.seconds = seconds
        self._clock = clock
        self._deadline: float | None = None
        self._lock = threading.Lock()
        self._left = self.budget
        self._down = False  # the API failed a messages request this pass: read no more logs until the next
        self.requests = 0  # messages requests sent since creation (the efficiency benchmark reads it)
        self.diagnosed = 0
        self.unavailable = 0

    # ---- selection and budget ----------------------------------------------------------------

    def selects(self, run: dict[str, Any]) -> bool:
        if not self.settings.enabled or self.budget <= 0:
            return False
        status = run.get("status")
        if status == "completed" and "completed" not in self.settings.statuses:
            return _sampled(str(run.get("id")), self.settings.completed_sample)
        return status in self.settings.statuses

    def new_pass(self) -> None:
        with self._lock:
            self._left = self.budget
            self._down = False
            self._deadline = None

    def budget_left(self) -> int:
        with self._lock:
            return self._left

    def _take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            if self.seconds is not None:
                now = self._clock()
                if self._deadline is None:
                    self._deadline = now + self.seconds
                elif now >= self._deadline:
                    return False
            self._left -= 1
            self.requests += 1
            return True

    # ---- reading -----------------------------------------------------------------------------

    def diagnose(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """The Job's diagnosis, or None when the budget has no request left for it (the caller
        holds the Job for the next pass). Never raises for an API failure."""
        with self._lock:
            down = self._down
        if down:
            # Never wait on an API that just failed: out now, saying why.
            return diag.unavailable("the messages endpoint failed earlier in this pass", run)
        if not self._take():
            return None
        run_id = str(run.get("id"))
        status = run.get("status")
        status = status if isinstance(status, str) else None
        chars = self.settings.error_chars
        try:
            head, total = self.source.list_messages(run_id, offset=0, limit=self.page_size, keep_malformed=True)
        except (DuvoError, ValueError) as exc:
            self.unavailable += 1
            if isinstance(exc, DuvoUnavailable | DuvoAuthError):
                # Retries are spent already; more logs now would only stretch the pass. The other
                # Jobs of this pass go out as unavailable too, without a request.
                with self._lock:
                    self._down = True
            log.warning("could not read the job's message log; exported without diagnosis", run_id=run_id,
                        error=redact(str(exc)))  # fmt: skip
            return diag.unavailable(redact(str(exc)), run)
        self.diagnosed += 1
        if total is None or total <= len(head):
            # Without a total, a short page is the whole log; a full one may not be.
            complete = total is not None or len(head) < self.page_size
            return diag.diagnose(head, status, total=total, complete=complete, run=run, error_chars=chars)
        # A longer log: its tail, from the last page backwards, as far as max_pages and the budget allow.
        tail: list[Any] = []
        start = total
        pages = 1
        while start > len(head) and pages < self.settings.max_pages and self._take():
            pages += 1
            offset = max(len(head), start - self.page_size)
            try:
                page, _ = self.source.list_messages(
                    run_id, offset=offset, limit=start - offset, keep_malformed=True
                )
            except (DuvoError, ValueError) as exc:
                log.info("could not read the rest of the job's message log", run_id=run_id, error=redact(str(exc)))
                break
            tail = page + tail
            start = offset
            if not page:
                break
        if start <= len(head) and tail:
            return diag.diagnose(head + tail, status, total=total, complete=True, run=run, error_chars=chars)
        if tail:
            return diag.diagnose(
                tail, status, first_step=start, total=total, complete=False, run=run, error_chars=chars
            )
        return diag.diagnose(head, status, total=total, complete=False, run=run, error_chars=chars)


def _sampled(run_id: str, share: float) -> bool:
    """The same Job is always in or out of a sample: a hash of its id, not a random draw."""
    if share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.blake2b(run_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share
