"""Backfills: a bounded historical export of one window, resumable, beside the live checkpoint.

`duvo-exporter backfill --since T [--until T] [--sink NAME]` lists each team's Jobs created in
``[since, until)`` with the same paging rules as extraction (oldest first, one overlapping row,
step back on a shifted list, ``since`` floored and moved forward as it reads: the listing code is
extraction's own, `Extractor._list`). Every page's terminal Jobs become events built by
extraction's code and are enqueued, for the target sink only (or every sink), in ONE transaction
with the backfill's own ``position``. The live checkpoint and the runs table are never touched,
so the daemon's de-duplication and re-checks are unaffected.

A resume (the same command again: same team, window and target give the same name) lists from
``position``. Jobs can share a created_at, so the run_ids already exported at exactly ``position``
are stored with it (the "edge") and skipped; everything before it was exported, everything after
it was not. So an interrupted backfill, SIGTERM or kill -9, resumes with no gap and no repeat
(kill -9 loses at most the page being read, which is read again).

Jobs still open in the window are not exported by a backfill (it has no way to watch them); the
count is logged. The daemon exports them when they finish if it tracks them.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from exporter import exitcodes
from exporter.config import Config
from exporter.delivery.worker import SinkWorker, drain_workers
from exporter.source.extraction import DuvoSource, Extractor, Halt, PassReport
from exporter.state.store import Backfill, StateStore
from exporter.transform import events as run_events
from transport import timestamps

log = structlog.get_logger(__name__)

MAX_IDLE_RELISTS = 3  # listings in a row that moved nothing before a window counts as read


def backfill_name(team: str, since: str, until: str | None, sink: str | None, *, kind: str = "backfill") -> str:
    """The same command (team, window as given, target) always gives the same name: that is how
    a rerun finds the backfill to resume. An open window (no --until) is named `now`."""
    return f"{kind} {team} {since}..{until or 'now'} -> {sink or '*'}"


@dataclass
class WindowResult:
    """How listing one team's window ended."""

    backfill: Backfill
    outcome: str  # done | stop | outbox_full | budget
    events: int = 0  # enqueued by this run
    open_skipped: int = 0  # Jobs in the window not finished yet: not exported
    pages: int = 0


class WindowLister(Extractor):
    """Extraction's listing, committing into a backfill instead of the live state."""

    def __init__(
        self,
        source: DuvoSource,
        store: StateStore,
        record: Backfill,
        until: str,
        config: Config,
        *,
        on_progress: Callable[[WindowLister], None] | None = None,
    ) -> None:
        super().__init__(
            source,
            store,
            [record.team_id],
            config.extract,
            page_size=config.duvo.page_size,
            max_outbox_events=config.state.max_outbox_events,
        )
        self.commit_rows = 1  # every page: a resume re-reads at most the page in flight
        self.record = record
        self.since = record.since
        self.until = until
        self.position = record.position
        self.edge = store.backfill_edge(record.name)
        self.on_progress = on_progress
        self.past_until = False
        self.events = 0
        self.open_skipped = 0
        self.unplaced = 0  # rows without a readable created_at: cannot be placed in the window
        self.report = PassReport()

    # ---- the listing ---------------------------------------------------------------------------

    def run(self, stop: threading.Event | None) -> str:
        """List the window from where the backfill stands: done, stop, outbox_full (or budget)."""
        self._stop = stop
        self._budget = None
        idle = 0
        while True:
            before = (self.position, len(self.edge))
            try:
                complete = self._list(self.record.team_id, self.position or self.since, self.report, {})
            except Halt as halt:
                if halt.reason != "window_end":
                    return halt.reason
                complete = True
            if complete:
                break
            # A list that kept shifting or a total that understated: go on from the position, as
            # the next pass would, unless that no longer moves anything.
            idle = idle + 1 if (self.position, len(self.edge)) == before else 0
            if idle >= MAX_IDLE_RELISTS:
                break
        self.store.commit_backfill(
            self.record.name, [], sink=self.record.sink, position=None, edge=self.edge, finished=True
        )
        return "done"

    def _spend(self, report: PassReport, held: int = 0) -> None:
        if self.past_until:
            raise Halt("window_end")  # the last page read reached `until`
        super()._spend(report, held)

    def _commit_rows(
        self,
        team: str,
        rows: Sequence[dict[str, Any]],
        report: PassReport,
        *,
        checkpoint: str | None,
        gone: Sequence[str] = (),
    ) -> None:
        """Enqueue the window's terminal Jobs among ``rows`` not exported yet and move the
        backfill's position, in one transaction (``checkpoint``, the live one, is ignored)."""
        now = self.clock()
        exported_at = timestamps.format_utc(datetime.fromtimestamp(now, tz=UTC))
        position, edge = self.position, set(self.edge)
        events: list[tuple[str, str, str]] = []
        for row in rows:
            run_id = str(row["id"])
            created = timestamps.normalize(row.get("created_at"))
            if created is None:
                self.unplaced += 1
                continue
            if created >= self.until:
                self.past_until = True
                continue
            if created < self.since:
                continue  # the overlap before the window
            if position is not None and (created < position or (created == position and run_id in edge)):
                continue  # exported before an interruption
            if position is None or created > position:
                position, edge = created, set()
            if created == position:
                edge.add(run_id)
            status = row.get("status")
            if status in run_events.TERMINAL_STATUSES:
                _, event, _fact = self._classify(team, row, None, now, exported_at)
                if event is not None:
                    events.append(event)
            else:
                self.open_skipped += 1
        report.runs_seen += len(rows)
        if position == self.position and edge == self.edge and not events:
            return
        self.events += self.store.commit_backfill(
            self.record.name, events, sink=self.record.sink, position=position, edge=edge
        )
        self.position, self.edge = position, edge
        if self.on_progress is not None:
            self.on_progress(self)

    def fraction(self) -> float:
        """How far through the window the listing is, by creation time (0..1)."""
        start, end, at = (timestamps.parse(t) for t in (self.since, self.until, self.position))
        if start is None or end is None or at is None or end <= start:
            return 0.0
        return min(1.0, max(0.0, (at - start) / (end - start)))


# ---- progress ------------------------------------------------------------------------------------


class Progress:
    """A rich progress bar on a terminal (stderr), else a log line every 10% or 30 s."""

    def __init__(self, *, tty: bool | None = None) -> None:
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._bar: Any = None
        self._task: Any = None
        self._restore: Any = None
        self._last_log = 0.0
        self._last_bucket = -1

    def __enter__(self) -> Progress:
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            from exporter import logsetup

            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                redirect_stderr=True,
                transient=False,
            )
            self._bar.start()
            handler = logsetup._handler
            if handler is not None:  # log lines go above the bar instead of through it
                self._restore = (handler, handler.setStream(sys.stderr))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            if self._restore is not None:
                handler, stream = self._restore
                handler.setStream(stream)

    def window(self, lister: WindowLister) -> None:
        label = f"{lister.record.team_id} {lister.since} .. {lister.until}"
        if self._bar is not None:
            self._task = self._bar.add_task(label, total=1000, detail="")
        else:
            self._last_bucket = -1
            log.info("backfill listing", backfill=lister.record.name, position=lister.position)

    def update(self, lister: WindowLister) -> None:
        fraction = lister.fraction()
        detail = f"{lister.events} event(s), up to {lister.position}"
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=int(fraction * 1000), detail=detail)
            return
        bucket = int(fraction * 10)
        now = time.monotonic()
        if bucket > self._last_bucket or now - self._last_log >= 30:
            self._last_bucket, self._last_log = bucket, now
            log.info(
                "backfill progress",
                backfill=lister.record.name,
                percent=round(fraction * 100, 1),
                position=lister.position,
                events=lister.events,
                pages=lister.report.pages,
            )

    def finish(self, lister: WindowLister) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=1000, detail=f"{lister.events} event(s)", refresh=True)


# ---- delivery ------------------------------------------------------------------------------------


def delivery_code(
    workers: Sequence[SinkWorker], outcomes: dict[str, str], code: int, error: Callable[[str], None]
) -> int:
    """The exit code after draining (as `once`): 6 for a backlog left, 7 for dead letters."""
    failed = {name: outcome for name, outcome in outcomes.items() if outcome not in ("drained", "interrupted")}
    if failed and code == exitcodes.OK:
        error("sinks left a backlog (kept for the next run): " + ", ".join(f"{n} ({o})" for n, o in failed.items()))
        code = exitcodes.SINK
    dead = {w.name: w.counters for w in workers if w.counters.rejected}
    for name, counters in dead.items():
        log.error(
            "backend rejected events permanently; they are dead letters",
            sink=name,
            events=counters.rejected,
            last_reason=counters.last_rejection,
            hint="duvo-exporter status --dead-letters; fix the cause, then duvo-exporter replay",
        )
    if dead and code == exitcodes.OK:
        code = exitcodes.DEAD_LETTERS
    return code


# ---- the command ---------------------------------------------------------------------------------


@dataclass
class BackfillPlan:
    since: str  # canonical UTC text
    until: str | None  # None: up to when the backfill first started
    sink: str | None
    restart: bool = False
    kind: str = "backfill"
    results: list[WindowResult] = field(default_factory=list)

    def resume_args(self) -> str:
        """The command line that finds this backfill again (times absolute: `24h` moves)."""
        return (
            f"{self.kind} --since {self.since}"
            + (f" --until {self.until}" if self.until else "")
            + (f" --sink {self.sink}" if self.sink else "")
        )


def list_windows(
    exporter: Any,
    plan: BackfillPlan,
    stop: threading.Event,
    progress: Progress,
) -> str:
    """List every team's window into the outbox (delivering when the outbox is full);
    returns done, stop or outbox_full. Raises the Duvo client's errors after committing."""
    store: StateStore = exporter.store
    for team in exporter.config.duvo.team_ids:
        name = backfill_name(team, plan.since, plan.until, plan.sink, kind=plan.kind)
        if plan.restart and store.backfill(name) is not None:
            store.forget_backfill(name)
        now_text = timestamps.format_utc(timestamps.now())
        record = store.start_backfill(name, team, plan.since, plan.until or now_text, plan.sink)
        result = WindowResult(record, "done")
        plan.results.append(result)
        if record.finished_at is not None:
            log.info(
                "backfill already finished; delivering what is left (--restart lists the window again)",
                backfill=name,
                events=record.events,
            )
            continue
        if record.position is not None:
            log.info("resuming backfill", backfill=name, position=record.position, events=record.events)
        lister = WindowLister(exporter.source, store, record, record.until or now_text, exporter.config)
        lister.on_progress = progress.update
        progress.window(lister)
        while True:
            outcome = lister.run(stop)
            if outcome != "outbox_full":
                break
            log.warning("outbox is full; delivering before the backfill goes on", backfill=name)
            held = store.outbox_size()
            # Only events every sink has finished with are pruned, so every sink delivers (the
            # others skip a --sink backfill's rows); one that cannot keeps the outbox full.
            outcomes = drain_workers(exporter.workers, stop)
            if any(o != "drained" for o in outcomes.values()) or store.outbox_size() >= held:
                break
        result.outcome = outcome
        result.events, result.open_skipped, result.pages = lister.events, lister.open_skipped, lister.report.pages
        if lister.open_skipped:
            log.warning(
                "jobs in the window were not finished yet and were not exported by the backfill",
                backfill=name,
                jobs=lister.open_skipped,
            )
        if lister.unplaced:
            log.warning("jobs without a readable created_at were left out", backfill=name, jobs=lister.unplaced)
        if outcome != "done":
            return outcome
        progress.finish(lister)
        log.info("backfill listed", backfill=name, events=lister.events, pages=lister.report.pages)
    return "done"


def run_backfill(config: Config, plan: BackfillPlan, error: Callable[[str], None]) -> int:
    """`duvo-exporter backfill`: list the window(s), then deliver to the target sink(s)."""
    from exporter.pipeline import Exporter
    from exporter.scheduler import install_stop_handlers
    from exporter.source.duvo_client import DuvoAuthError, DuvoError

    stop = threading.Event()
    install_stop_handlers(stop)
    exporter = Exporter(config, command="backfill")
    try:
        targets = [w for w in exporter.workers if plan.sink in (None, w.name)]
        code = exitcodes.OK
        outcome = "failed"
        with Progress() as progress:
            try:
                outcome = list_windows(exporter, plan, stop, progress)
            except DuvoAuthError as exc:
                error(str(exc))
                code = exitcodes.DUVO_AUTH
            except DuvoError as exc:
                error(
                    f"backfill incomplete, committed pages are kept: {exc}; "
                    f"to resume run: duvo-exporter {plan.resume_args()}"
                )
                code = exitcodes.DUVO_UNAVAILABLE
        outcomes = drain_workers(targets, stop)
        code = delivery_code(targets, outcomes, code, error)
        enqueued = sum(r.events for r in plan.results)
        if outcome == "stop" or stop.is_set():
            error(f"backfill interrupted; to resume where it stopped run: duvo-exporter {plan.resume_args()}")
            return exitcodes.INTERRUPTED if code == exitcodes.OK else code
        if outcome == "outbox_full":
            error(f"the outbox stayed full (a sink cannot keep up); to resume run: duvo-exporter {plan.resume_args()}")
            code = code or exitcodes.SINK
        if code == exitcodes.OK:
            print(
                f"backfill {plan.since} .. {plan.until or 'now'} to {plan.sink or 'every sink'}: "
                f"{enqueued} event(s) enqueued by this run; "
                + ", ".join(f"{r.backfill.team_id}: {r.backfill.events + r.events} in total" for r in plan.results)
            )
        return code
    finally:
        exporter.close()
