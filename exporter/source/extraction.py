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
- The events, run updates and checkpoint of a listing's rows are committed together, in one
  transaction every few pages and at every end of a listing (also an error). The checkpoint only
  ever names a created_at up to which everything has been consumed.
- Open (non-terminal) Jobs are remembered. Each pass lists the open statuses from the oldest
  of them (the sweep, exporter/source/sweep.py): a Job missing from every list has changed and is
  fetched. Open Jobs beyond the sweep's cap are re-checked when due, older ones less often. Per
  fetch we choose the cheaper mix of re-listing the window that holds them and GET /runs/{id}.
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

from exporter import jsoncodec
from exporter.config import ExtractSettings, start_moment
from exporter.insights.facts import fact_from_event
from exporter.source.duvo_client import DuvoError
from exporter.source.message_log import Diagnoser
from exporter.source.sweep import SweepPlan, page_allowance, plan_sweep
from exporter.state.store import KnownRun, RunFact, RunUpdate, StateStore
from exporter.transform import diagnosis as run_diagnosis
from exporter.transform import events as run_events
from transport import timestamps
from transport.durations import parse_duration

log = structlog.get_logger(__name__)

MAX_STEP_BACKS = 3  # consecutive re-reads of a shifting list before leaving the rest to the next pass
COMMIT_ROWS = 500  # rows read per commit during a listing


class RunPageLike(Protocol):
    data: list[dict[str, Any]]
    total: int | None


class DuvoSource(Protocol):
    def list_runs(
        self,
        team_id: str,
        *,
        since: str | None = None,
        offset: int = 0,
        limit: int = 100,
        sort_order: str = "asc",
        status: str | None = None,
    ) -> RunPageLike: ...

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...


@dataclass
class PassReport:
    pages: int = 0  # list requests, sweep pages included
    sweep_pages: int = 0  # status-filtered list requests that vouch for open Jobs
    sweeps_incomplete: int = 0  # sweeps that proved nothing (a list not read to its end)
    gets: int = 0
    runs_seen: int = 0
    events: int = 0
    rechecked: int = 0
    gone: int = 0
    step_backs: int = 0
    diagnosis_requests: int = 0  # GET /runs/{id}/messages, from diagnose.max_requests_per_pass
    diagnosed: int = 0  # held events released with a diagnosis read this pass
    held: int = 0  # finished Jobs whose event waits for the next pass's diagnosis budget
    halted: str | None = None  # why the pass stopped early: stop, budget, outbox_full
    teams: dict[str, str | None] = field(default_factory=dict)  # team -> checkpoint after the pass

    @property
    def requests(self) -> int:
        return self.pages + self.gets


class Halt(Exception):
    """Ends a listing early (stop, budget, a full outbox, a backfill's window end); committed rows stay."""

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
        commit_lock: threading.Lock | None = None,
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
        self._sweep_refused = False  # the API rejected a status filter: age schedule only from then on
        self._stop: threading.Event | None = None
        self._budget: int | None = None
        # Held from reading what the state knows of some Jobs to committing what was learned of
        # them: the webhook processor writes Jobs from another thread (with its own Extractor on
        # the same lock), and a Job both see finishing must be exported once.
        self.commit_lock = commit_lock or threading.Lock()
        # With webhooks flowing, the age schedule waits at least this long (seconds; 0 = no floor).
        self.recheck_floor: Callable[[], float] = lambda: 0.0
        self.commit_rows = COMMIT_ROWS  # rows read per commit during a listing (a backfill commits per page)
        # Reads the message logs of the finished Jobs it selects (shared with the webhook thread's
        # Extractor); None: no diagnosis (backfills), every event says "skipped".
        self.diagnoser: Diagnoser | None = None

    # ---- a pass ------------------------------------------------------------------------------

    def run_pass(self, stop: threading.Event | None = None) -> PassReport:
        """Read every team once. Raises the client's errors (auth, unavailable) after committing
        everything learned so far."""
        report = PassReport()
        self._stop = stop
        self._budget = self.settings.max_requests_per_pass
        started = self.clock()
        if self.diagnoser is not None:
            self.diagnoser.new_pass()
        try:
            try:
                for team in self.teams:
                    self._pass_team(team, report)
            finally:
                # Extraction first, then the logs of the Jobs it held, from diagnosis' own budget:
                # also after an error or a halt, so that a held Job never waits more than a pass.
                if self.diagnoser is not None and not (stop is not None and stop.is_set()):
                    self.release_held(report, held_before=started)
        except Halt as halt:
            report.halted = halt.reason
            if halt.reason == "outbox_full":
                log.warning(
                    "outbox is full; extraction paused until sinks catch up (nothing is dropped)",
                    max_outbox_events=self.max_outbox_events,
                )
        for team in self.teams:
            report.teams[team] = self.store.checkpoint(team)
        return report

    def _spend(self, report: PassReport, held: int = 0) -> None:
        """Called before every request: honours stop, the per-pass budget and the outbox bound
        (counting ``held`` rows read but not committed yet as events)."""
        if self._stop is not None and self._stop.is_set():
            raise Halt("stop")
        if self._budget is not None:
            if self._budget <= 0:
                raise Halt("budget")
            self._budget -= 1
        low, high = self.store.outbox_bounds()
        if high - low + 1 + held >= self.max_outbox_events:
            raise Halt("outbox_full")

    def _pass_team(self, team: str, report: PassReport) -> None:
        checkpoint = self._checkpoint(team)
        sweep = self._plan_sweep(team) if checkpoint is not None else None
        covered = sweep.covered if sweep is not None else {}
        # Jobs the sweep vouches for skip the age schedule: the sweep looks at them anyway.
        due = [run for run in self.store.due_open_runs(team, self.clock()) if run.run_id not in covered]
        try:
            # New Jobs first (with the due re-checks this listing can carry), then the sweep, then
            # whatever the sweep found changed: a per-pass budget is spent on new Jobs first.
            self._catch_up(team, due, checkpoint, report, list_new=True)
            if sweep is not None:
                changed = self._sweep(team, sweep, report)
                if changed:
                    self._catch_up(team, changed, self.store.checkpoint(team), report, list_new=False)
        finally:
            self._prune(team)

    def _catch_up(
        self, team: str, due: Sequence[KnownRun], checkpoint: str | None, report: PassReport, *, list_new: bool
    ) -> None:
        """Look at ``due`` (oldest first) by GET or by extending a listing back to them, whichever
        costs fewer requests; with ``list_new`` the listing from the checkpoint happens regardless."""
        split = self._plan(team, due, checkpoint, listing_cost=0 if list_new else 1)
        by_get = list(due[:split])
        listed_due = {run.run_id: run for run in due[split:]}
        if by_get or listed_due:
            log.debug("re-checking open jobs", team_id=team, by_listing=len(listed_due), by_get=len(by_get))
        if list_new or listed_due:
            window_start = checkpoint
            if listed_due and (checkpoint is None or due[split].created_at < checkpoint):
                window_start = due[split].created_at
            complete = self._list(team, window_start, report, listed_due, until_found=not list_new)
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

    def _plan(self, team: str, due: Sequence[KnownRun], checkpoint: str | None, listing_cost: int = 0) -> int:
        """How many of the due Jobs (oldest first) to fetch one by one; the rest are covered by
        extending the listing back to the oldest of them. Minimises requests. ``listing_cost`` is
        what a listing costs beyond its rows before the checkpoint (0 when it is read anyway)."""
        if not due or checkpoint is None:
            return 0
        candidates = sorted({*range(0, len(due), max(1, len(due) // 32)), len(due)})
        best, best_cost = len(due), float(len(due))
        for k in candidates:
            if k == len(due):
                continue
            start = self._since(due[k].created_at)
            extra_rows = self.store.count_runs_between(team, start or "", checkpoint)
            cost = k + listing_cost + math.ceil(extra_rows / self.page_size)
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

    def _list(
        self,
        team: str,
        start: str | None,
        report: PassReport,
        listed_due: dict[str, KnownRun],
        status: str | None = None,
        until_found: bool = False,
        max_pages: int | None = None,
    ) -> bool:
        """Read the team's Jobs created since ``start`` (only those in ``status``, if given); True
        when the listing reached its end, or with ``until_found`` once it has shown every Job in
        ``listed_due`` (the rest was read moments ago). Every Job shown is removed from
        ``listed_due``. Only an unfiltered listing moves the checkpoint: a filtered one skips the
        Jobs it leaves out. After ``max_pages`` pages it stops, incomplete."""
        since = self._since(start)
        offset = 0
        # Rows consumed in the current `since` window, in server order: id -> created_at.
        window: OrderedDict[str, str] = OrderedDict()
        newest: str | None = None
        step_backs = 0
        trust_since_offsets = True
        after_since_move = False
        pages = 0
        # Rows are committed a few pages at a time (with the checkpoint up to them): a commit per
        # page cost more than reading the page. Nothing is held across passes or errors: the
        # `finally` commits what was read before any return or exception.
        held: list[dict[str, Any]] = []
        held_ids: set[str] = set()  # the store cannot tell these apart from new ones until committed
        committed_newest = newest
        try:
            while True:
                if max_pages is not None and pages >= max_pages:
                    return False
                pages += 1
                self._spend(report, held=len(held))
                page = self.source.list_runs(
                    team, since=since, offset=offset, limit=self.page_size, sort_order="asc", status=status
                )
                report.pages += 1
                if status is not None:
                    report.sweep_pages += 1
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
                    if run_id in window or run_id in held_ids:
                        continue
                    created = timestamps.normalize(row.get("created_at")) or newest or ""
                    window[run_id] = created
                    if created and (newest is None or created > newest):
                        newest = created
                    fresh.append(row)
                    held_ids.add(run_id)
                    listed_due.pop(run_id, None)
                held.extend(fresh)
                if len(held) >= self.commit_rows:
                    self._commit_rows(team, held, report, checkpoint=newest if status is None else None)
                    held, committed_newest = [], newest
                    held_ids.clear()
                if until_found and not listed_due:
                    return True
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
        finally:
            if held or newest != committed_newest:
                self._commit_rows(team, held, report, checkpoint=newest if status is None else None)

    # ---- the sweep: listing the open statuses --------------------------------------------------

    def _plan_sweep(self, team: str) -> SweepPlan | None:
        if self._sweep_refused:
            return None
        pages = self.settings.recheck.sweep_pages
        # No sweep can cover more Jobs than its pages hold, so only that many are loaded.
        return plan_sweep(self.store.newest_open_runs(team, pages * self.page_size), self.page_size, pages)

    def _sweep(self, team: str, sweep: SweepPlan, report: PassReport) -> list[KnownRun]:
        """List each open status from the oldest covered Job on; return the covered Jobs that are
        in none of the lists (oldest first), which are the ones that changed. Jobs the lists show
        are refreshed. If a list could not be read to its end, nothing is concluded from absence:
        the covered Jobs that are due then by the age schedule are returned instead."""
        unseen = dict(sweep.covered)
        complete = True
        # A list that grows faster than it is read (a flood of new Jobs) ends the sweep.
        allowance = page_allowance(sweep, self.store.open_status_counts(team, sweep.since), self.page_size)
        spent = report.sweep_pages
        try:
            for status in sweep.statuses:
                left = allowance - (report.sweep_pages - spent)
                complete = self._list(team, sweep.since, report, unseen, status=status, max_pages=left) and complete
                if not complete:
                    break
        except DuvoError as exc:
            if exc.status not in (400, 422):
                raise
            # An API that will not filter by status cannot be swept; say so once and carry on
            # with the age schedule, which needs no filter.
            self._sweep_refused = True
            log.warning("the Duvo API refused a status filter; open jobs are re-checked by age only", error=str(exc))
            complete = False
        log.debug("swept open jobs", team_id=team, covered=len(sweep.covered), changed=len(unseen), complete=complete)
        if complete:
            return sorted(unseen.values(), key=lambda run: run.created_at)
        report.sweeps_incomplete += 1
        return [run for run in self.store.due_open_runs(team, self.clock()) if run.run_id in unseen]

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

    def since_for(self, created_at: Any) -> str | None:
        """The `since` a listing that must show a Job created at ``created_at`` starts from."""
        return self._since(timestamps.normalize(created_at)) if created_at else None

    def apply_fetched(self, team: str, run: dict[str, Any], also: Callable[[Any], None] | None = None) -> int:
        """Record one Job fetched outside a pass (a webhook's GET /runs/{id}) exactly as a re-check
        records it: same event_id, same de-duplication, same outbox. ``also(conn)`` runs inside the
        same transaction. Returns the events enqueued (0 or 1)."""
        report = PassReport()
        known = self.store.known_runs([str(run["id"])]).get(str(run["id"]))
        if known is not None:
            run.setdefault("created_at", known.created_at)
        self._commit_rows(team, [run], report, checkpoint=None, also=also)
        if self.diagnoser is not None:
            self.release_held(report, only=[str(run["id"])])  # stays held if the budget is spent
        return report.events

    # ---- diagnosis: events held for their message log --------------------------------------

    def _holds(self, run: dict[str, Any], terminal: bool) -> bool:
        return terminal and self.diagnoser is not None and self.diagnoser.selects(run)

    def release_held(
        self, report: PassReport, *, held_before: float | None = None, only: Sequence[str] | None = None
    ) -> int:
        """Diagnose held events (oldest first) and enqueue them. One the budget has no request left
        for stays held, unless it was held before ``held_before`` (an earlier pass): that one goes
        out now with ``diagnosis.state: unavailable``, so no event waits more than one pass."""
        diagnoser = self.diagnoser
        if diagnoser is None:
            return 0
        released = 0
        batch: list[tuple[str, str, str]] = []
        before = diagnoser.requests
        for item in self.store.held_for_diagnosis(only):
            try:
                event = jsoncodec.loads(item.body)
            except ValueError:
                event = None
            if not isinstance(event, dict):  # cannot happen for a body we wrote; never lose the Job
                batch.append((item.run_id, item.event_id, item.body))
                continue
            run = event.get("run") if isinstance(event.get("run"), dict) else {"id": item.run_id}
            found = diagnoser.diagnose(run)
            if found is None:
                if held_before is None or item.held_at >= held_before:
                    report.held += 1
                    continue
                found = run_diagnosis.unavailable("the diagnosis budget of two passes was spent", run)
            else:
                report.diagnosed += 1
            event["diagnosis"] = found
            batch.append((item.run_id, item.event_id, jsoncodec.dumps(event)))
            if len(batch) >= 50:
                released += self.store.release_held(batch)
                batch = []
        if batch:
            released += self.store.release_held(batch)
        report.diagnosis_requests += diagnoser.requests - before
        report.events += released
        return released

    # ---- turning rows into state and events --------------------------------------------------

    def _commit_rows(
        self,
        team: str,
        rows: Sequence[dict[str, Any]],
        report: PassReport,
        *,
        checkpoint: str | None,
        gone: Sequence[str] = (),
        also: Callable[[Any], None] | None = None,
    ) -> None:
        if not rows and not gone and checkpoint is None:
            return
        with self.commit_lock:
            self._commit_rows_locked(team, rows, report, checkpoint=checkpoint, gone=gone, also=also)

    def _commit_rows_locked(
        self,
        team: str,
        rows: Sequence[dict[str, Any]],
        report: PassReport,
        *,
        checkpoint: str | None,
        gone: Sequence[str],
        also: Callable[[Any], None] | None,
    ) -> None:
        now = self.clock()
        exported_at = timestamps.format_utc(datetime.fromtimestamp(now, tz=UTC))  # once per page
        known = self.store.known_runs([str(row["id"]) for row in rows])
        updates: list[RunUpdate] = []
        events: list[tuple[str, str, str]] = []
        facts: list[RunFact] = []
        held: list[tuple[str, str, str]] = []
        for row in rows:
            update, event, fact = self._classify(team, row, known.get(str(row["id"])), now, exported_at)
            if update is not None:
                updates.append(update)
            if event is not None:
                (held if update is not None and self._holds(row, update.terminal) else events).append(event)
            if fact is not None:
                facts.append(fact)
        report.runs_seen += len(rows)
        if held:

            def also_hold(conn: Any) -> None:
                # The Jobs are recorded as finished in this same transaction: held, never lost or doubled.
                StateStore.hold_for_diagnosis(conn, team, held, now)
                if also is not None:
                    also(conn)

        # Every terminal event of a pass or a webhook passes here: its fact for the insights goes
        # into the same transaction as the event (a held Job's `recovered` is set on its release).
        report.events += self.store.commit_extraction(
            team,
            updates,
            events,
            checkpoint,
            gone=gone,
            checked_at=now,
            also=also_hold if held else also,
            facts=facts,
        )

    def _classify(
        self, team: str, run: dict[str, Any], known: KnownRun | None, now: float, exported_at: str
    ) -> tuple[RunUpdate | None, tuple[str, str, str] | None, RunFact | None]:
        if known is not None and known.terminal:
            return None, None, None  # exported already; a terminal outcome is final
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
        fact: RunFact | None = None
        if event_name is not None and event_id is not None:
            # A Job held for its log gets its diagnosis when released (release_held); the others
            # say why there is none, and a waiting one what it waits on (from the record).
            diagnosis = None if self._holds(run, terminal) else run_diagnosis.skipped(run)
            event = run_events.build(
                run, team, event_name, exported_at, event_id=event_id, created_at=source_created, diagnosis=diagnosis
            )
            fields = event.to_dict()
            body = (run_id, event_id, jsoncodec.dumps(fields))
            if terminal:
                fact = fact_from_event(fields, now)
        update = RunUpdate(
            run_id=run_id,
            team_id=team,
            created_at=created,
            status=status,
            terminal=terminal,
            next_check_at=None if terminal else now + self._recheck_after(created, now),
            last_event_id=event_id if body is not None else None,
        )
        return update, body, fact

    def _recheck_after(self, created_at: str, now: float) -> float:
        moment = timestamps.parse(created_at)
        age = max(0.0, now - moment.timestamp()) if moment is not None else 0.0
        after = min(self.recheck_max, max(self.recheck_min, age * self.settings.recheck.age_factor))
        return max(after, self.recheck_floor())

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
