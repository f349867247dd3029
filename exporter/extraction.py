"""Extractor: one pass over the Duvo API that turns new and changed Jobs into outbox events.

Correctness rules (see README "How extraction stays correct"):
- Lists are read oldest-first (``sort_order=asc``) from ``checkpoint - overlap``, so Jobs created
  while we page land after us instead of shifting what we have not read yet.
- A page at a non-zero offset is trusted only if its first row is one we already consumed in this
  listing (we deliberately overlap by one row). Otherwise rows may have shifted under us (a
  deletion): we step back and re-read. Duplicates from overlaps are dropped by run_id.
- The ``since`` we send is moved forward as we read (keyset-style), so offsets stay small, and it
  is always floored to whole seconds minus the overlap, so whether the API treats it as inclusive,
  exclusive or second-precise cannot make us skip a Job.
- Each page's events, run updates and checkpoint are committed in one transaction. The
  checkpoint only ever names a created_at up to which everything has been consumed.
- Open (non-terminal) Jobs are remembered and re-checked when due, older ones less often; per
  pass we choose the cheaper mix of re-listing the window that holds them and GET /runs/{id}.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog

from exporter import events as run_events
from exporter import jsoncodec, timestamps
from exporter.config import ExtractSettings, start_moment
from exporter.durations import parse_duration
from exporter.state import KnownRun, RunUpdate, StateStore

log = structlog.get_logger(__name__)

MAX_STEP_BACKS = 3  # consecutive re-reads of a shifting list before leaving the rest to the next pass


class RunPageLike(Protocol):
    data: list[dict[str, Any]]
    total: int | None


class DuvoSource(Protocol):
    def list_runs(
        self, team_id: str, *, since: str | None = None, offset: int = 0, limit: int = 100, sort_order: str = "asc"
    ) -> RunPageLike: ...

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...


@dataclass
class PassReport:
    pages: int = 0
    gets: int = 0
    runs_seen: int = 0
    events: int = 0
    rechecked: int = 0
    gone: int = 0
    step_backs: int = 0
    halted: str | None = None  # why the pass stopped early: stop, budget, outbox_full
    teams: dict[str, str | None] = field(default_factory=dict)  # team -> checkpoint after the pass

    @property
    def requests(self) -> int:
        return self.pages + self.gets


class _Halt(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class Extractor:
    def __init__(
        self,
        source: DuvoSource,
        store: StateStore,
        teams: Sequence[str],
        settings: ExtractSettings,
        *,
        page_size: int = 100,
        start_from: str = "24h",
        max_outbox_events: int = 1_000_000,
        seen_retention: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.store = store
        self.teams = list(teams)
        self.settings = settings
        self.page_size = page_size
        self.start_from = start_from
        self.max_outbox_events = max_outbox_events
        self.seen_retention = seen_retention
        self.clock = clock
        self.overlap = parse_duration(settings.overlap)
        self.recheck_min = parse_duration(settings.recheck.min_interval)
        self.recheck_max = parse_duration(settings.recheck.max_interval)
        self._warned_statuses: set[str] = set()
        self._stop: threading.Event | None = None
        self._budget: int | None = None

    # ---- a pass ------------------------------------------------------------------------------

    def run_pass(self, stop: threading.Event | None = None) -> PassReport:
        """Read every team once. Raises the client's errors (auth, unavailable) after committing
        everything learned so far."""
        report = PassReport()
        self._stop = stop
        self._budget = self.settings.max_requests_per_pass
        try:
            for team in self.teams:
                self._pass_team(team, report)
        except _Halt as halt:
            report.halted = halt.reason
            if halt.reason == "outbox_full":
                log.warning(
                    "outbox is full; extraction paused until sinks catch up (nothing is dropped)",
                    max_outbox_events=self.max_outbox_events,
                )
        for team in self.teams:
            report.teams[team] = self.store.checkpoint(team)
        return report

    def _spend(self, report: PassReport) -> None:
        """Called before every request: honours stop, the per-pass budget and the outbox bound."""
        if self._stop is not None and self._stop.is_set():
            raise _Halt("stop")
        if self._budget is not None:
            if self._budget <= 0:
                raise _Halt("budget")
            self._budget -= 1
        low, high = self.store.outbox_bounds()
        if high - low + 1 >= self.max_outbox_events:
            raise _Halt("outbox_full")

    def _pass_team(self, team: str, report: PassReport) -> None:
        checkpoint = self._checkpoint(team)
        due = self.store.due_open_runs(team, self.clock())
        split = self._plan(team, due, checkpoint)
        window_start = checkpoint
        if split < len(due) and (checkpoint is None or due[split].created_at < checkpoint):
            window_start = due[split].created_at
        by_get = list(due[:split])
        listed_due = {run.run_id: run for run in due[split:]}
        if by_get or listed_due:
            log.debug(
                "re-checking open jobs",
                team_id=team,
                by_listing=len(listed_due),
                by_get=len(by_get),
                window_start=window_start,
            )
        try:
            complete = self._list(team, window_start, report, listed_due)
        finally:
            self._prune(team)
        # Due Jobs the listing did not show (deleted, or `since` means something else than we
        # think) are asked for one by one, so an outcome can never hide.
        if complete:
            by_get.extend(listed_due.values())
        if by_get:
            self._recheck(team, by_get, report)

    def _checkpoint(self, team: str) -> str | None:
        checkpoint = self.store.checkpoint(team)
        if checkpoint is None:
            moment = start_moment(self.start_from, timestamps.now())
            if moment is not None:
                checkpoint = timestamps.format_utc(moment)
                self.store.set_initial_checkpoint(team, checkpoint)
                log.info("first pass for team; starting from", team_id=team, start_from=checkpoint)
        return checkpoint

    def _plan(self, team: str, due: Sequence[KnownRun], checkpoint: str | None) -> int:
        """How many of the due Jobs (oldest first) to fetch one by one; the rest are covered by
        extending the listing back to the oldest of them. Minimises requests."""
        if not due or checkpoint is None:
            return 0
        candidates = sorted({*range(0, len(due), max(1, len(due) // 32)), len(due)})
        best, best_cost = len(due), float(len(due))
        for k in candidates:
            if k == len(due):
                continue
            start = self._since(due[k].created_at)
            extra_rows = self.store.count_runs_between(team, start or "", checkpoint)
            cost = k + math.ceil(extra_rows / self.page_size)
            if cost <= best_cost:
                best, best_cost = k, cost
        return best

    def _since(self, created_at: str | None) -> str | None:
        moment = timestamps.parse(created_at)
        if moment is None:
            return None
        floored = moment.replace(microsecond=0) - timedelta(seconds=self.overlap)
        return timestamps.format_utc(floored)

    # ---- listing -----------------------------------------------------------------------------

    def _list(self, team: str, start: str | None, report: PassReport, listed_due: dict[str, KnownRun]) -> bool:
        """Read the team's Jobs created since ``start``; True when the listing reached its end."""
        since = self._since(start)
        offset = 0
        # Rows consumed in the current `since` window, in server order: id -> created_at.
        window: OrderedDict[str, str] = OrderedDict()
        newest: str | None = None
        step_backs = 0
        trust_since_offsets = True
        after_since_move = False
        while True:
            self._spend(report)
            page = self.source.list_runs(team, since=since, offset=offset, limit=self.page_size, sort_order="asc")
            report.pages += 1
            rows = page.data
            # Rows the server sent, counting any the client dropped as invalid: offsets move by this.
            size: int = getattr(page, "size", len(rows))
            if offset > 0 and (not rows or str(rows[0].get("id")) not in window):
                if after_since_move:  # an empty page here proves nothing either
                    # Our guess of where the moved window starts assumed an inclusive, exact
                    # `since`; this server reads it otherwise. Re-read the window from its start,
                    # and do so directly after every later move in this listing.
                    trust_since_offsets = after_since_move = False
                    report.step_backs += 1
                    offset = 0
                    continue
                if not rows or step_backs >= MAX_STEP_BACKS:
                    # The end, or a list that keeps shifting: stop here. What we have not read is
                    # read from the checkpoint next pass, so this costs latency, never a Job.
                    return not rows
                step_backs += 1
                report.step_backs += 1
                offset = max(0, offset - (self.page_size - 1))
                log.debug("rows shifted while paging; stepping back", team_id=team, offset=offset)
                continue
            step_backs = 0
            after_since_move = False
            fresh: list[dict[str, Any]] = []
            for row in rows:
                run_id = str(row["id"])
                if run_id in window:
                    continue
                created = timestamps.normalize(row.get("created_at")) or newest or ""
                window[run_id] = created
                if created and (newest is None or created > newest):
                    newest = created
                fresh.append(row)
                listed_due.pop(run_id, None)
            self._commit_rows(team, fresh, report, checkpoint=newest)
            if not fresh and size <= 1:
                # Only the anchor came back, so the offset cannot move (a `total` that overstates):
                # stop rather than spin. A page of re-read rows still moves the offset forward.
                return True
            if page.total is not None and offset + size >= page.total:
                # `total` says this was the last page. A full page leaves room for doubt (a total
                # that understates): then the listing does not count as complete, so due Jobs it
                # did not show wait for the next pass instead of being fetched one by one.
                return size < self.page_size
            if page.total is None and size < self.page_size:
                return True
            # Overlap by one row: the next page must start with a row we have consumed.
            offset += size - 1
            next_since = self._since(newest)
            if next_since is not None and (since is None or next_since > since):
                while window and next(iter(window.values())) < next_since:
                    window.popitem(last=False)
                since = next_since
                offset = max(0, len(window) - 1) if trust_since_offsets else 0
                after_since_move = offset > 0

    # ---- re-checking open Jobs one by one ----------------------------------------------------

    def _recheck(self, team: str, runs: Sequence[KnownRun], report: PassReport) -> None:
        for start in range(0, len(runs), 50):
            chunk = runs[start : start + 50]
            fetched: list[dict[str, Any]] = []
            gone: list[str] = []
            try:
                for known in chunk:
                    self._spend(report)
                    run = self.source.get_run(known.run_id)
                    report.gets += 1
                    report.rechecked += 1
                    if run is None:
                        gone.append(known.run_id)
                        log.info(
                            "job disappeared before finishing; no longer tracked",
                            run_id=known.run_id,
                            last_status=known.status,
                        )
                    else:
                        run.setdefault("created_at", known.created_at)
                        fetched.append(run)
            finally:
                report.gone += len(gone)
                self._commit_rows(team, fetched, report, checkpoint=None, gone=gone)

    # ---- turning rows into state and events --------------------------------------------------

    def _commit_rows(
        self,
        team: str,
        rows: Sequence[dict[str, Any]],
        report: PassReport,
        *,
        checkpoint: str | None,
        gone: Sequence[str] = (),
    ) -> None:
        if not rows and not gone and checkpoint is None:
            return
        now = self.clock()
        exported_at = timestamps.format_utc(datetime.fromtimestamp(now, tz=UTC))  # once per page
        known = self.store.known_runs([str(row["id"]) for row in rows])
        updates: list[RunUpdate] = []
        events: list[tuple[str, str, str]] = []
        for row in rows:
            update, event = self._classify(team, row, known.get(str(row["id"])), now, exported_at)
            if update is not None:
                updates.append(update)
            if event is not None:
                events.append(event)
        report.runs_seen += len(rows)
        report.events += self.store.commit_extraction(team, updates, events, checkpoint, gone=gone, checked_at=now)

    def _classify(
        self, team: str, run: dict[str, Any], known: KnownRun | None, now: float, exported_at: str
    ) -> tuple[RunUpdate | None, tuple[str, str, str] | None]:
        if known is not None and known.terminal:
            return None, None  # exported already; a terminal outcome is final
        run_id = str(run["id"])
        status = run.get("status")
        if not isinstance(status, str) or not status:
            status = "unknown"
        source_created = timestamps.normalize(run.get("created_at"))
        created = source_created or (known.created_at if known else None) or exported_at
        event_id: str | None = None
        event_name: str | None = None
        terminal = status in run_events.TERMINAL_STATUSES
        if terminal:
            event_name = run_events.EVENT_FINISHED
            event_id = f"{run_id}:{status}"
        else:
            if status not in run_events.KNOWN_OPEN_STATUSES and status not in self._warned_statuses:
                self._warned_statuses.add(status)
                log.warning("unknown job status; treating it as not finished", status=status, run_id=run_id)
            if self.settings.emit == "transitions" and status == "waiting":
                event_id = _waiting_event_id(run_id, run.get("pending_human_request"))
                if known is not None and known.last_event_id == event_id:
                    event_id = None  # this wait was announced already
                else:
                    event_name = run_events.EVENT_WAITING
        body: tuple[str, str, str] | None = None
        if event_name is not None and event_id is not None:
            event = run_events.build(run, team, event_name, exported_at, event_id=event_id, created_at=source_created)
            body = (run_id, event_id, jsoncodec.dumps(event.to_dict()))
        update = RunUpdate(
            run_id=run_id,
            team_id=team,
            created_at=created,
            status=status,
            terminal=terminal,
            next_check_at=None if terminal else now + self._recheck_after(created, now),
            last_event_id=event_id if body is not None else None,
        )
        return update, body

    def _recheck_after(self, created_at: str, now: float) -> float:
        moment = timestamps.parse(created_at)
        age = max(0.0, now - moment.timestamp()) if moment is not None else 0.0
        return min(self.recheck_max, max(self.recheck_min, age * self.settings.recheck.age_factor))

    def _prune(self, team: str) -> None:
        checkpoint = self.store.checkpoint(team)
        if checkpoint is None:
            return
        horizon = checkpoint
        oldest_open = self.store.oldest_open_created_at(team)
        if oldest_open is not None and oldest_open < horizon:
            horizon = oldest_open
        moment = timestamps.parse(horizon)
        if moment is None:
            return
        before = moment - timedelta(seconds=self.overlap + 1 + self.seen_retention)
        self.store.prune_runs(team, timestamps.format_utc(before))


def _waiting_event_id(run_id: str, pending: Any) -> str:
    request_id = pending.get("id") if isinstance(pending, dict) else None
    return f"{run_id}:waiting:{request_id}" if request_id else f"{run_id}:waiting"
