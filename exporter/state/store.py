"""StateStore: the durable state in one SQLite file (WAL).

It holds the extraction checkpoint per team, the Jobs seen (open ones are re-checked, finished
ones remembered for de-duplication), the outbox of events, one delivery cursor per sink and the
dead letters. Extraction writes a batch of rows' events, run updates and checkpoint in ONE transaction;
a sink's cursor moves (with its dead letters) in one transaction after the backend accepted.
So a crash at any point loses nothing: uncommitted work is simply redone.

Each thread opens its own `StateStore` on the same file (sqlite3 connections are not shared).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

APPLICATION_ID = 0x4455564F  # "DUVO": tells our files from any other SQLite database
SCHEMA_VERSION = 3

_TABLES_V1 = """
CREATE TABLE IF NOT EXISTS checkpoints (
    team_id     TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,   -- normalized UTC text (sortable): the newest created_at read in order
    updated_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id        TEXT PRIMARY KEY,
    team_id       TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    status        TEXT NOT NULL,
    terminal      INTEGER NOT NULL,
    first_seen_at REAL NOT NULL,
    checked_at    REAL NOT NULL,
    next_check_at REAL,            -- NULL once terminal
    checks        INTEGER NOT NULL DEFAULT 0,
    last_event_id TEXT
);
CREATE INDEX IF NOT EXISTS runs_due ON runs(terminal, next_check_at);
CREATE INDEX IF NOT EXISTS runs_team_created ON runs(team_id, created_at);
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    body        TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    sink        TEXT            -- NULL: for every sink, else only for this one (backfill, replay)
);
CREATE TABLE IF NOT EXISTS sink_cursors (
    sink            TEXT PRIMARY KEY,
    seq             INTEGER NOT NULL,
    delivered       INTEGER NOT NULL DEFAULT 0,
    rejected        INTEGER NOT NULL DEFAULT 0,
    filtered        INTEGER NOT NULL DEFAULT 0,
    last_success_at REAL,
    last_error      TEXT,
    last_error_at   REAL,
    stopped_reason  TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sink        TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    event_id    TEXT NOT NULL,
    body        TEXT NOT NULL,
    reason      TEXT NOT NULL,
    failed_at   REAL NOT NULL,
    replayed_at REAL
);
CREATE INDEX IF NOT EXISTS dead_letters_sink ON dead_letters(sink, replayed_at);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_TABLES_V2 = """
CREATE TABLE IF NOT EXISTS webhook_queue (
    run_id          TEXT PRIMARY KEY,  -- a repeat of a queued run_id is one row
    event           TEXT,
    status          TEXT,
    received_at     REAL NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error      TEXT
);
CREATE TABLE IF NOT EXISTS backfills (
    name        TEXT PRIMARY KEY,   -- one per window and target: resuming finds it again
    team_id     TEXT NOT NULL,
    since       TEXT NOT NULL,
    until       TEXT,
    sink        TEXT,               -- NULL: every sink
    position    TEXT,               -- the newest created_at read in order: where a resume goes on
    events      INTEGER NOT NULL DEFAULT 0,
    started_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    finished_at REAL
);
"""

_TABLES_V3 = """
CREATE TABLE IF NOT EXISTS run_facts (
    run_id       TEXT PRIMARY KEY,   -- one per finished Job: a repeat is ignored
    team_id      TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    status       TEXT NOT NULL,
    completed_at REAL NOT NULL,      -- epoch seconds: the Job's completed_at, else when it was read
    duration     REAL,               -- completed_at - started_at in seconds, NULL when unknown
    recovered    INTEGER NOT NULL DEFAULT 0  -- retried, then succeeded (diagnosis.recovered)
);
CREATE INDEX IF NOT EXISTS run_facts_agent ON run_facts(team_id, agent_id, completed_at);
CREATE INDEX IF NOT EXISTS run_facts_time ON run_facts(completed_at);
CREATE TABLE IF NOT EXISTS run_totals (
    team_id    TEXT NOT NULL,
    agent_id   TEXT NOT NULL,
    status     TEXT NOT NULL,
    count      INTEGER NOT NULL,
    first_seen REAL NOT NULL,        -- orders agents for the bounded metric labels
    PRIMARY KEY (team_id, agent_id, status)
);
CREATE TABLE IF NOT EXISTS duration_totals (
    team_id TEXT PRIMARY KEY,
    count   INTEGER NOT NULL,
    sum     REAL NOT NULL,
    buckets TEXT NOT NULL            -- JSON list: Jobs per histogram bucket (not cumulative)
);
CREATE TABLE IF NOT EXISTS insight_summaries (
    team_id  TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    win      TEXT NOT NULL,   -- the window as configured (1h)
    last_end REAL NOT NULL,          -- the window step end of the last run.summary emitted
    PRIMARY KEY (team_id, agent_id, win)
);
CREATE TABLE IF NOT EXISTS insight_alerts (
    kind      TEXT NOT NULL,         -- failure_rate, latency
    team_id   TEXT NOT NULL,
    agent_id  TEXT NOT NULL,
    win       TEXT NOT NULL,
    since     REAL NOT NULL,         -- the episode's start: names its event_ids
    value     REAL NOT NULL,         -- the last value evaluated
    threshold REAL NOT NULL,
    PRIMARY KEY (kind, team_id, agent_id, win)
);
CREATE TABLE IF NOT EXISTS diagnosis_held (
    run_id   TEXT PRIMARY KEY,   -- a finished Job whose event waits (at most one pass) for its diagnosis
    team_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    body     TEXT NOT NULL,      -- the event without its diagnosis
    held_at  REAL NOT NULL
);
"""

_SCHEMA = _TABLES_V1 + _TABLES_V2 + _TABLES_V3


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


# The statements that take a state file from version N-1 to N, run in one transaction.
_MIGRATIONS: dict[int, list[str]] = {
    2: ["ALTER TABLE outbox ADD COLUMN sink TEXT", *_statements(_TABLES_V2)],
    3: _statements(_TABLES_V3),
}


class StateError(Exception):
    """The state file cannot be used; the message says why and what to do. Never reset silently."""


@dataclass(frozen=True)
class KnownRun:
    run_id: str
    team_id: str
    created_at: str
    status: str
    terminal: bool
    first_seen_at: float
    checks: int
    last_event_id: str | None


@dataclass(frozen=True)
class RunUpdate:
    """What extraction learned about one Job."""

    run_id: str
    team_id: str
    created_at: str
    status: str
    terminal: bool
    next_check_at: float | None
    last_event_id: str | None


@dataclass(frozen=True)
class RunFact:
    """What the insights keep of one finished Job (exporter/insights)."""

    run_id: str
    team_id: str
    agent_id: str
    status: str
    completed_at: float  # epoch seconds
    duration: float | None
    recovered: bool


# Fixed buckets of the duvo_run_duration_seconds histogram (seconds; +Inf is implied).
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)


@dataclass(frozen=True)
class AlertEpisode:
    kind: str
    team_id: str
    agent_id: str
    window: str
    since: float
    value: float
    threshold: float


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    run_id: str
    event_id: str
    body: str
    sink: str | None = None  # None: for every sink; else only this one's (a backfill or replay)


@dataclass(frozen=True)
class DeadLetter:
    id: int
    sink: str
    seq: int
    run_id: str
    event_id: str
    body: str
    reason: str
    failed_at: float


@dataclass(frozen=True)
class SinkCursor:
    sink: str
    seq: int
    delivered: int
    rejected: int
    filtered: int
    last_success_at: float | None
    last_error: str | None
    last_error_at: float | None
    stopped_reason: str | None


@dataclass(frozen=True)
class Backfill:
    """A bounded historical export (or the re-export part of a replay) and where it stands."""

    name: str
    team_id: str
    since: str
    until: str | None
    sink: str | None
    position: str | None  # the newest created_at read in order; None before the first page
    events: int
    started_at: float
    updated_at: float
    finished_at: float | None


class StateStore:
    def __init__(self, path: str, *, synchronous: str = "full", create: bool = True) -> None:
        self.path = path
        self._conn = _open(path, synchronous=synchronous, create=create)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front so two writers never deadlock."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.rollback()
            if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
                exc, sqlite3.IntegrityError | sqlite3.ProgrammingError
            ):
                # Disk full, read-only file or directory, a lock held past the timeout: the state
                # cannot move, so nothing may pretend it did. One clear line, exit code 3.
                raise StateError(_write_failure(self.path, exc)) from None
            raise

    # ---- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, team_id: str) -> str | None:
        row = self._conn.execute("SELECT created_at FROM checkpoints WHERE team_id = ?", (team_id,)).fetchone()
        return row[0] if row else None

    def checkpoints(self) -> dict[str, str]:
        return dict(self._conn.execute("SELECT team_id, created_at FROM checkpoints ORDER BY team_id"))

    @staticmethod
    def _advance_checkpoint(conn: sqlite3.Connection, team_id: str, created_at: str) -> None:
        # Only forward: re-listing an older window must never move the checkpoint back.
        conn.execute(
            "INSERT INTO checkpoints(team_id, created_at, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(team_id) DO UPDATE SET created_at = max(created_at, excluded.created_at), "
            "updated_at = excluded.updated_at",
            (team_id, created_at, time.time()),
        )

    def set_initial_checkpoint(self, team_id: str, created_at: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO checkpoints(team_id, created_at, updated_at) VALUES (?, ?, ?)",
                (team_id, created_at, time.time()),
            )

    # ---- runs --------------------------------------------------------------------------------

    def known_runs(self, run_ids: Sequence[str]) -> dict[str, KnownRun]:
        found: dict[str, KnownRun] = {}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._conn.execute(
                "SELECT run_id, team_id, created_at, status, terminal, first_seen_at, checks, last_event_id "
                f"FROM runs WHERE run_id IN ({marks})",
                chunk,
            ):
                found[row[0]] = KnownRun(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], row[7])
        return found

    def due_open_runs(self, team_id: str, now: float, limit: int = 100_000) -> list[KnownRun]:
        return self._open_runs("AND next_check_at <= ? ORDER BY created_at LIMIT ?", (team_id, now, limit))

    def newest_open_runs(self, team_id: str, limit: int) -> list[KnownRun]:
        """The team's ``limit`` newest open Jobs, oldest first."""
        newest = self._open_runs("ORDER BY created_at DESC LIMIT ?", (team_id, limit))
        newest.reverse()
        return newest

    def open_status_counts(self, team_id: str, since: str) -> dict[str, int]:
        """Open Jobs of the team created at or after ``since``, by status."""
        return dict(
            self._conn.execute(
                "SELECT status, count(*) FROM runs WHERE terminal = 0 AND team_id = ? AND created_at >= ? "
                "GROUP BY status",
                (team_id, since),
            )
        )

    def _open_runs(self, tail: str, params: tuple[Any, ...]) -> list[KnownRun]:
        rows = self._conn.execute(
            "SELECT run_id, team_id, created_at, status, terminal, first_seen_at, checks, last_event_id "
            f"FROM runs WHERE terminal = 0 AND team_id = ? {tail}",
            params,
        )
        return [KnownRun(r[0], r[1], r[2], r[3], bool(r[4]), r[5], r[6], r[7]) for r in rows]

    def count_runs_between(self, team_id: str, start: str, end: str) -> int:
        return self._conn.execute(
            "SELECT count(*) FROM runs WHERE team_id = ? AND created_at >= ? AND created_at < ?",
            (team_id, start, end),
        ).fetchone()[0]

    def open_run_stats(self) -> dict[str, Any]:
        row = self._conn.execute(
            "SELECT count(*), min(created_at), min(next_check_at) FROM runs WHERE terminal = 0"
        ).fetchone()
        by_status = dict(self._conn.execute("SELECT status, count(*) FROM runs WHERE terminal = 0 GROUP BY status"))
        return {"open": row[0], "oldest_created_at": row[1], "next_check_at": row[2], "by_status": by_status}

    def oldest_open_created_at(self, team_id: str) -> str | None:
        return self._conn.execute(
            "SELECT min(created_at) FROM runs WHERE terminal = 0 AND team_id = ?", (team_id,)
        ).fetchone()[0]

    def commit_extraction(
        self,
        team_id: str,
        updates: Iterable[RunUpdate],
        events: Iterable[tuple[str, str, str]],
        checkpoint: str | None,
        gone: Iterable[str] = (),
        checked_at: float | None = None,
        also: Callable[[sqlite3.Connection], None] | None = None,
        facts: Iterable[RunFact] = (),
    ) -> int:
        """Write what one page (or one batch of re-checks) taught us, atomically.

        ``events`` are (run_id, event_id, body); ``facts`` the finished Jobs among them, for the
        insights. Returns the number of events enqueued."""
        now = checked_at if checked_at is not None else time.time()
        rows = [
            (
                u.run_id,
                u.team_id,
                u.created_at,
                u.status,
                int(u.terminal),
                now,
                now,
                u.next_check_at,
                u.last_event_id,
            )
            for u in updates
        ]
        outbox = [(run_id, event_id, body, now) for run_id, event_id, body in events]
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO runs(run_id, team_id, created_at, status, terminal, first_seen_at, "
                "checked_at, next_check_at, checks, last_event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?) "
                "ON CONFLICT(run_id) DO UPDATE SET status = excluded.status, "
                "terminal = excluded.terminal, checked_at = excluded.checked_at, "
                "next_check_at = excluded.next_check_at, checks = runs.checks + 1, "
                "last_event_id = coalesce(excluded.last_event_id, runs.last_event_id)",
                rows,
            )
            conn.executemany("INSERT INTO outbox(run_id, event_id, body, enqueued_at) VALUES (?, ?, ?, ?)", outbox)
            conn.executemany("DELETE FROM runs WHERE run_id = ? AND terminal = 0", [(run_id,) for run_id in gone])
            if checkpoint is not None:
                self._advance_checkpoint(conn, team_id, checkpoint)
            self._record_facts(conn, facts)
            if also is not None:
                also(conn)  # e.g. dropping the webhook queue row this commit answers
        return len(outbox)

    def postpone_checks(self, run_ids: Sequence[str], next_check_at: float) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "UPDATE runs SET next_check_at = ? WHERE run_id = ? AND terminal = 0",
                [(next_check_at, run_id) for run_id in run_ids],
            )

    def make_all_open_due(self) -> None:
        """Every open Job is re-checked on the next pass (the demo's final sweep)."""
        with self.transaction() as conn:
            conn.execute("UPDATE runs SET next_check_at = 0 WHERE terminal = 0")

    def prune_runs(self, team_id: str, before: str) -> int:
        """Forget finished Jobs created before ``before``: no listing can return them again."""
        with self.transaction() as conn:
            return conn.execute(
                "DELETE FROM runs WHERE team_id = ? AND terminal = 1 AND created_at < ?", (team_id, before)
            ).rowcount

    # ---- outbox and cursors ------------------------------------------------------------------

    def outbox_bounds(self) -> tuple[int, int]:
        """(lowest seq held, highest seq ever written); (0, 0) when never written."""
        low = self._conn.execute("SELECT min(seq) FROM outbox").fetchone()[0]
        high = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        high_seq = high[0] if high else 0
        return (low if low is not None else high_seq + 1), high_seq

    def outbox_size(self) -> int:
        return self._conn.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def read_outbox(self, after: int, max_events: int, max_bytes: int) -> list[OutboxEvent]:
        """Events after ``after`` in order, at most ``max_events`` and (but for the first) ``max_bytes``."""
        batch: list[OutboxEvent] = []
        size = 0
        for seq, run_id, event_id, body, sink in self._conn.execute(
            "SELECT seq, run_id, event_id, body, sink FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, max_events),
        ):
            size += len(body)
            if batch and size > max_bytes:
                break
            batch.append(OutboxEvent(seq, run_id, event_id, body, sink))
        return batch

    def oldest_enqueued_after(self, after: int) -> float | None:
        row = self._conn.execute(
            "SELECT enqueued_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (after,)
        ).fetchone()
        return row[0] if row else None

    def ensure_cursors(self, sinks: Sequence[str]) -> None:
        """A sink seen for the first time starts at the end of the outbox: it receives events
        produced from now on (on a new state file, that is everything)."""
        with self.transaction() as conn:
            high = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            start = high[0] if high else 0
            for sink in sinks:
                conn.execute("INSERT OR IGNORE INTO sink_cursors(sink, seq) VALUES (?, ?)", (sink, start))
            # A sink that was stopped for bad credentials gets a fresh chance on every start.
            conn.executemany("UPDATE sink_cursors SET stopped_reason = NULL WHERE sink = ?", [(s,) for s in sinks])

    def cursor(self, sink: str) -> SinkCursor:
        row = self._conn.execute(
            "SELECT sink, seq, delivered, rejected, filtered, last_success_at, last_error, last_error_at, "
            "stopped_reason FROM sink_cursors WHERE sink = ?",
            (sink,),
        ).fetchone()
        if row is None:
            raise StateError(f"no delivery cursor for sink {sink!r}")
        return SinkCursor(*row)

    def cursors(self) -> list[SinkCursor]:
        rows = self._conn.execute(
            "SELECT sink, seq, delivered, rejected, filtered, last_success_at, last_error, last_error_at, "
            "stopped_reason FROM sink_cursors ORDER BY sink"
        )
        return [SinkCursor(*row) for row in rows]

    def backlog(self, sink_seq: int) -> int:
        return self._conn.execute("SELECT count(*) FROM outbox WHERE seq > ?", (sink_seq,)).fetchone()[0]

    def advance_cursor(
        self,
        sink: str,
        to_seq: int,
        *,
        delivered: int,
        filtered: int,
        dead: Sequence[tuple[OutboxEvent, str]] = (),
        error: str | None = None,
    ) -> None:
        """Move ``sink``'s cursor to ``to_seq`` and store its dead letters, atomically."""
        now = time.time()
        with self.transaction() as conn:
            for event, reason in dead:
                conn.execute(
                    "INSERT INTO dead_letters(sink, seq, run_id, event_id, body, reason, failed_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (sink, event.seq, event.run_id, event.event_id, event.body, reason, now),
                )
            conn.execute(
                "UPDATE sink_cursors SET seq = max(seq, ?), delivered = delivered + ?, "
                "rejected = rejected + ?, filtered = filtered + ?, "
                "last_success_at = CASE WHEN ? > 0 THEN ? ELSE last_success_at END, "
                "last_error = coalesce(?, last_error), "
                "last_error_at = CASE WHEN ? IS NOT NULL THEN ? ELSE last_error_at END WHERE sink = ?",
                (to_seq, delivered, len(dead), filtered, delivered, now, error, error, now, sink),
            )

    def record_sink_error(self, sink: str, error: str, *, stopped: bool = False) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE sink_cursors SET last_error = ?, last_error_at = ?, "
                "stopped_reason = CASE WHEN ? THEN ? ELSE stopped_reason END WHERE sink = ?",
                (error, time.time(), int(stopped), error, sink),
            )

    def prune_outbox(self, active_sinks: Sequence[str]) -> int:
        """Delete events every active sink has finished with."""
        if not active_sinks:
            return 0
        marks = ",".join("?" * len(active_sinks))
        with self.transaction() as conn:
            low = conn.execute(
                f"SELECT min(seq), count(*) FROM sink_cursors WHERE sink IN ({marks})", list(active_sinks)
            ).fetchone()
            if low[0] is None or low[1] < len(active_sinks):
                return 0
            return conn.execute("DELETE FROM outbox WHERE seq <= ?", (low[0],)).rowcount

    # ---- dead letters ------------------------------------------------------------------------

    def dead_letters(self, sink: str | None = None, *, pending_only: bool = True) -> list[DeadLetter]:
        query = "SELECT id, sink, seq, run_id, event_id, body, reason, failed_at FROM dead_letters WHERE 1=1"
        args: list[Any] = []
        if sink is not None:
            query += " AND sink = ?"
            args.append(sink)
        if pending_only:
            query += " AND replayed_at IS NULL"
        return [DeadLetter(*row) for row in self._conn.execute(query + " ORDER BY id", args)]

    def dead_letter_counts(self) -> dict[str, int]:
        return dict(
            self._conn.execute("SELECT sink, count(*) FROM dead_letters WHERE replayed_at IS NULL GROUP BY sink")
        )

    def last_dead_letters(self) -> dict[str, tuple[str, float]]:
        """sink -> (reason, failed_at) of its newest pending dead letter."""
        rows = self._conn.execute(
            "SELECT sink, reason, failed_at FROM dead_letters WHERE id IN "
            "(SELECT max(id) FROM dead_letters WHERE replayed_at IS NULL GROUP BY sink)"
        )
        return {sink: (reason, failed_at) for sink, reason, failed_at in rows}

    def resolve_dead_letters(
        self, sink: str, resolved: Sequence[int], still_failing: Sequence[tuple[int, str]]
    ) -> None:
        """Mark replayed dead letters delivered (they count as delivered by ``sink`` from now on)."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany("UPDATE dead_letters SET replayed_at = ? WHERE id = ?", [(now, i) for i in resolved])
            if resolved:
                conn.execute(
                    "UPDATE sink_cursors SET delivered = delivered + ?, rejected = max(0, rejected - ?), "
                    "last_success_at = ? WHERE sink = ?",
                    (len(resolved), len(resolved), now, sink),
                )
            conn.executemany(
                "UPDATE dead_letters SET reason = ?, failed_at = ? WHERE id = ?",
                [(reason, now, i) for i, reason in still_failing],
            )

    # ---- backfills and cursor moves ----------------------------------------------------------

    _BACKFILL_COLUMNS = "name, team_id, since, until, sink, position, events, started_at, updated_at, finished_at"

    @staticmethod
    def _backfill_edge_key(name: str) -> str:
        return f"backfill_edge:{name}"

    def backfill(self, name: str) -> Backfill | None:
        row = self._conn.execute(f"SELECT {self._BACKFILL_COLUMNS} FROM backfills WHERE name = ?", (name,)).fetchone()
        return Backfill(*row) if row else None

    def backfills(self) -> list[Backfill]:
        rows = self._conn.execute(f"SELECT {self._BACKFILL_COLUMNS} FROM backfills ORDER BY started_at, name")
        return [Backfill(*row) for row in rows]

    def backfill_edge(self, name: str) -> set[str]:
        """The run_ids already exported whose created_at equals the backfill's position: a resume
        re-reads that instant (Jobs can share a created_at) and must skip exactly these."""
        raw = self.meta(self._backfill_edge_key(name))
        return set(json.loads(raw)) if raw else set()

    def start_backfill(self, name: str, team_id: str, since: str, until: str | None, sink: str | None) -> Backfill:
        """The backfill called ``name``: created with this window, or as it was left (resumed)."""
        now = time.time()
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO backfills(name, team_id, since, until, sink, position, events, started_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, NULL, 0, ?, ?)",
                (name, team_id, since, until, sink, now, now),
            )
        found = self.backfill(name)
        assert found is not None
        return found

    def commit_backfill(
        self,
        name: str,
        events: Sequence[tuple[str, str, str]],
        *,
        sink: str | None,
        position: str | None,
        edge: Iterable[str],
        finished: bool = False,
    ) -> int:
        """Enqueue a page's events for ``sink`` (None: every sink) and move the backfill's own
        position, atomically. Never touches the live checkpoint or the runs table."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO outbox(run_id, event_id, body, enqueued_at, sink) VALUES (?, ?, ?, ?, ?)",
                [(run_id, event_id, body, now, sink) for run_id, event_id, body in events],
            )
            conn.execute(
                "UPDATE backfills SET position = coalesce(?, position), events = events + ?, updated_at = ?, "
                "finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE name = ?",
                (position, len(events), now, int(finished), now, name),
            )
            if finished:  # a finished backfill is never resumed, only restarted
                conn.execute("DELETE FROM meta WHERE key = ?", (self._backfill_edge_key(name),))
            else:
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (self._backfill_edge_key(name), json.dumps(sorted(edge))),
                )
        return len(events)

    def forget_backfill(self, name: str) -> None:
        """Drop a backfill's record (`backfill --restart`); the events it enqueued stay."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM backfills WHERE name = ?", (name,))
            conn.execute("DELETE FROM meta WHERE key = ?", (self._backfill_edge_key(name),))

    def first_seq_enqueued_at_or_after(self, moment: float) -> int | None:
        """The lowest held seq enqueued at or after ``moment`` (seqs grow with time), or None."""
        row = self._conn.execute("SELECT min(seq) FROM outbox WHERE enqueued_at >= ?", (moment,)).fetchone()
        return row[0]

    def oldest_held_enqueued_at(self) -> float | None:
        row = self._conn.execute("SELECT enqueued_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
        return row[0] if row else None

    def count_for_sink(self, sink: str, after: int, upto: int) -> int:
        """Held events for ``sink`` (its own and every-sink ones) with ``after < seq <= upto``."""
        return self._conn.execute(
            "SELECT count(*) FROM outbox WHERE seq > ? AND seq <= ? AND (sink IS NULL OR sink = ?)",
            (after, upto, sink),
        ).fetchone()[0]

    def set_cursor(self, sink: str, seq: int) -> None:
        """Move ``sink``'s cursor to ``seq``, backward or forward (`reset-sink`); counters stay."""
        with self.transaction() as conn:
            changed = conn.execute("UPDATE sink_cursors SET seq = ? WHERE sink = ?", (seq, sink)).rowcount
        if not changed:
            raise StateError(f"no delivery cursor for sink {sink!r}")

    def copy_to_sink(self, sink: str, *, enqueued_since: float) -> int:
        """Enqueue again, for ``sink`` only, the held events it has had already (at or before its
        cursor) that were enqueued at or after ``enqueued_since``: one copy per event_id, in order,
        leaving out any event_id the sink is still to receive (a re-export just written, a copy
        not delivered yet). Other sinks skip the copies, so their cursors and backlogs mean what
        they did. Returns the number enqueued."""
        now = time.time()
        with self.transaction() as conn:
            cursor = conn.execute("SELECT seq FROM sink_cursors WHERE sink = ?", (sink,)).fetchone()
            if cursor is None:
                raise StateError(f"no delivery cursor for sink {sink!r}")
            return conn.execute(
                "INSERT INTO outbox(run_id, event_id, body, enqueued_at, sink) "
                "SELECT run_id, event_id, body, ?, ? FROM outbox WHERE seq IN ("
                "  SELECT min(seq) FROM outbox WHERE seq <= ? AND enqueued_at >= ? AND (sink IS NULL OR sink = ?) "
                "  AND event_id NOT IN (SELECT event_id FROM outbox WHERE seq > ? AND (sink IS NULL OR sink = ?)) "
                "  GROUP BY event_id"
                ") ORDER BY seq",
                (now, sink, cursor[0], enqueued_since, sink, cursor[0], sink),
            ).rowcount

    # ---- meta --------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value if isinstance(value, str) else json.dumps(value)),
            )

    # ---- webhook queue -----------------------------------------------------------------------

    def queue_webhook(self, run_id: str, event: str, status: str, received_at: float) -> None:
        """Remember a webhook's run_id durably (one row per run_id; a repeat makes it due now)."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO webhook_queue(run_id, event, status, received_at, attempts, next_attempt_at) "
                "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT(run_id) DO UPDATE SET event = excluded.event, "
                "status = excluded.status, received_at = excluded.received_at, "
                "next_attempt_at = excluded.next_attempt_at",
                (run_id, event, status, received_at, received_at),
            )

    def due_webhooks(self, now: float, limit: int = 100) -> list[QueuedWebhook]:
        rows = self._conn.execute(
            "SELECT run_id, event, status, received_at, attempts FROM webhook_queue "
            "WHERE next_attempt_at <= ? ORDER BY next_attempt_at, received_at LIMIT ?",
            (now, limit),
        )
        return [QueuedWebhook(*row) for row in rows]

    def next_webhook_at(self) -> float | None:
        return self._conn.execute("SELECT min(next_attempt_at) FROM webhook_queue").fetchone()[0]

    def webhooks_queued(self) -> int:
        return self._conn.execute("SELECT count(*) FROM webhook_queue").fetchone()[0]

    def retry_webhook(self, run_id: str, received_at: float, error: str, next_attempt_at: float) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE webhook_queue SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                "WHERE run_id = ? AND received_at = ?",
                (error, next_attempt_at, run_id, received_at),
            )

    def drop_webhook(self, run_id: str, received_at: float) -> None:
        with self.transaction() as conn:
            self.delete_webhook_row(conn, run_id, received_at)

    @staticmethod
    def delete_webhook_row(conn: sqlite3.Connection, run_id: str, received_at: float) -> None:
        """Inside a caller's transaction. A repeat that arrived meanwhile (newer received_at) stays
        queued: it may announce a later status than the one just recorded."""
        conn.execute("DELETE FROM webhook_queue WHERE run_id = ? AND received_at = ?", (run_id, received_at))

    def sink_backlog(self, sink: str, after: int) -> tuple[int, float | None]:
        """(events after ``after`` this sink has to deliver, enqueued_at of the oldest of them)."""
        row = self._conn.execute(
            "SELECT count(*), min(enqueued_at) FROM outbox WHERE seq > ? AND (sink IS NULL OR sink = ?)",
            (after, sink),
        ).fetchone()
        return row[0], row[1]

    # ---- insights ----------------------------------------------------------------------------

    @staticmethod
    def _record_facts(conn: sqlite3.Connection, facts: Iterable[RunFact]) -> None:
        """Inside commit_extraction's transaction: each finished Job once (by run_id) into the
        facts and the cumulative totals behind duvo_runs_total and duvo_run_duration_seconds."""
        hist: dict[str, tuple[int, float, list[int]]] = {}
        for fact in facts:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO run_facts(run_id, team_id, agent_id, status, completed_at, duration, "
                "recovered) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    fact.run_id,
                    fact.team_id,
                    fact.agent_id,
                    fact.status,
                    fact.completed_at,
                    fact.duration,
                    int(fact.recovered),
                ),
            ).rowcount
            if not inserted:
                continue
            conn.execute(
                "INSERT INTO run_totals(team_id, agent_id, status, count, first_seen) VALUES (?, ?, ?, 1, ?) "
                "ON CONFLICT(team_id, agent_id, status) DO UPDATE SET count = count + 1",
                (fact.team_id, fact.agent_id, fact.status, time.time()),
            )
            if fact.duration is None:
                continue
            if fact.team_id not in hist:
                row = conn.execute(
                    "SELECT count, sum, buckets FROM duration_totals WHERE team_id = ?", (fact.team_id,)
                ).fetchone()
                hist[fact.team_id] = (
                    (row[0], row[1], json.loads(row[2])) if row else (0, 0.0, [0] * (len(DURATION_BUCKETS) + 1))
                )
            count, total, buckets = hist[fact.team_id]
            index = next((i for i, le in enumerate(DURATION_BUCKETS) if fact.duration <= le), len(DURATION_BUCKETS))
            buckets[index] += 1
            hist[fact.team_id] = (count + 1, total + fact.duration, buckets)
        for team, (count, total, buckets) in hist.items():
            conn.execute(
                "INSERT INTO duration_totals(team_id, count, sum, buckets) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(team_id) DO UPDATE SET count = excluded.count, sum = excluded.sum, "
                "buckets = excluded.buckets",
                (team, count, total, json.dumps(buckets)),
            )

    def prune_facts(self, before: float) -> int:
        """Forget the facts of Jobs completed before ``before`` (with insights off, nothing else does)."""
        with self.transaction() as conn:
            return conn.execute("DELETE FROM run_facts WHERE completed_at < ?", (before,)).rowcount

    def fact_rows(self, since: float, until: float) -> list[tuple[str, str, str, str, float, float | None, int]]:
        """(team, agent, run_id, status, completed_at, duration, recovered) of the Jobs that
        completed in [since, until), by Assignment then time."""
        return list(
            self._conn.execute(
                "SELECT team_id, agent_id, run_id, status, completed_at, duration, recovered FROM run_facts "
                "WHERE completed_at >= ? AND completed_at < ? ORDER BY team_id, agent_id, completed_at, run_id",
                (since, until),
            )
        )

    def assignments_since(self, since: float) -> list[tuple[str, str]]:
        """Every (team, agent) with a Job completed at or after ``since``."""
        return list(
            self._conn.execute(
                "SELECT DISTINCT team_id, agent_id FROM run_facts WHERE completed_at >= ? ORDER BY 1, 2", (since,)
            )
        )

    def run_totals(self) -> list[tuple[str, str, str, int, float]]:
        """(team, agent, status, count, first_seen), agents in the order they were first seen."""
        return list(
            self._conn.execute(
                "SELECT team_id, agent_id, status, count, "
                "min(first_seen) OVER (PARTITION BY team_id, agent_id) AS agent_first "
                "FROM run_totals ORDER BY agent_first, team_id, agent_id, status"
            )
        )

    def duration_totals(self) -> dict[str, tuple[int, float, list[int]]]:
        return {
            team: (count, total, json.loads(buckets))
            for team, count, total, buckets in self._conn.execute(
                "SELECT team_id, count, sum, buckets FROM duration_totals ORDER BY team_id"
            )
        }

    def summary_ends(self) -> dict[tuple[str, str, str], float]:
        """(team, agent, window) -> the step end of the last run.summary emitted."""
        return {
            (team, agent, window): end
            for team, agent, window, end in self._conn.execute(
                "SELECT team_id, agent_id, win, last_end FROM insight_summaries"
            )
        }

    def alert_episodes(self) -> dict[tuple[str, str, str, str], AlertEpisode]:
        """(kind, team, agent, window) -> the active episode."""
        rows = self._conn.execute(
            "SELECT kind, team_id, agent_id, win, since, value, threshold FROM insight_alerts"
        )
        return {(r[0], r[1], r[2], r[3]): AlertEpisode(*r) for r in rows}

    def commit_insights(
        self,
        events: Sequence[tuple[str, str, str]],
        *,
        summaries: Sequence[tuple[str, str, str, float]],
        started: Sequence[AlertEpisode],
        updated: Sequence[AlertEpisode],
        cleared: Sequence[tuple[str, str, str, str]],
        prune_before: float,
    ) -> int:
        """Enqueue the summaries' and alerts' events ((event_id, body, sink): one row per sink that
        asked for them) with the state that says they were emitted, in one transaction: a crash
        emits them once or not yet."""
        now = time.time()
        with self.transaction() as conn:
            conn.executemany(
                "INSERT INTO outbox(run_id, event_id, body, enqueued_at, sink) VALUES ('', ?, ?, ?, ?)",
                [(event_id, body, now, sink) for event_id, body, sink in events],
            )
            conn.executemany(
                "INSERT INTO insight_summaries(team_id, agent_id, win, last_end) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(team_id, agent_id, win) DO UPDATE SET last_end = excluded.last_end",
                summaries,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO insight_alerts(kind, team_id, agent_id, win, since, value, threshold) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (e.kind, e.team_id, e.agent_id, e.window, e.since, e.value, e.threshold)
                    for e in (*started, *updated)
                ],
            )
            conn.executemany(
                "DELETE FROM insight_alerts WHERE kind = ? AND team_id = ? AND agent_id = ? AND win = ?", cleared
            )
            conn.execute("DELETE FROM run_facts WHERE completed_at < ?", (prune_before,))
            conn.execute("DELETE FROM insight_summaries WHERE last_end < ?", (prune_before,))
        return len(events)

    # ---- diagnosis ---------------------------------------------------------------------------

    @staticmethod
    def hold_for_diagnosis(
        conn: sqlite3.Connection, team_id: str, held: Sequence[tuple[str, str, str]], now: float
    ) -> None:
        """Inside the extraction transaction that records the Jobs as finished: their events
        (run_id, event_id, body) wait here for a diagnosis instead of entering the outbox.
        ``now`` is on the extractor's clock, which decides whether a pass held them."""
        conn.executemany(
            "INSERT OR IGNORE INTO diagnosis_held(run_id, team_id, event_id, body, held_at) VALUES (?, ?, ?, ?, ?)",
            [(run_id, team_id, event_id, body, now) for run_id, event_id, body in held],
        )

    def held_for_diagnosis(self, run_ids: Sequence[str] | None = None, limit: int = 100_000) -> list[HeldEvent]:
        """Held events, oldest first (only those of ``run_ids`` if given)."""
        if run_ids is not None:
            marks = ",".join("?" * len(run_ids)) or "NULL"
            rows = self._conn.execute(
                f"SELECT run_id, team_id, event_id, body, held_at FROM diagnosis_held WHERE run_id IN ({marks}) "
                "ORDER BY held_at, run_id",
                list(run_ids),
            )
        else:
            rows = self._conn.execute(
                "SELECT run_id, team_id, event_id, body, held_at FROM diagnosis_held ORDER BY held_at, run_id LIMIT ?",
                (limit,),
            )
        return [HeldEvent(*row) for row in rows]

    def release_held(self, events: Sequence[tuple[str, str, str]]) -> int:
        """Enqueue held events (run_id, event_id, body with its diagnosis) and forget them, atomically.
        An event already released (by another thread) is not enqueued twice."""
        now = time.time()
        released = 0
        with self.transaction() as conn:
            for run_id, event_id, body in events:
                if conn.execute("DELETE FROM diagnosis_held WHERE run_id = ?", (run_id,)).rowcount:
                    conn.execute(
                        "INSERT INTO outbox(run_id, event_id, body, enqueued_at) VALUES (?, ?, ?, ?)",
                        (run_id, event_id, body, now),
                    )
                    released += 1
                    # Its fact was recorded when it was held, before the log said it had recovered.
                    if (json.loads(body).get("diagnosis") or {}).get("recovered") is True:
                        conn.execute("UPDATE run_facts SET recovered = 1 WHERE run_id = ?", (run_id,))
        return released

    def held_count(self) -> int:
        return self._conn.execute("SELECT count(*) FROM diagnosis_held").fetchone()[0]


@dataclass(frozen=True)
class HeldEvent:
    run_id: str
    team_id: str
    event_id: str
    body: str  # the event without its diagnosis
    held_at: float


@dataclass(frozen=True)
class QueuedWebhook:
    run_id: str
    event: str | None
    status: str | None
    received_at: float
    attempts: int


def _open(path: str, *, synchronous: str, create: bool) -> sqlite3.Connection:
    exists = os.path.exists(path)
    if not exists and not create:
        raise StateError(f"state file {path} does not exist (no pass has run yet)")
    if not exists:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            # 0600 from the first byte: the file holds Job records, which may be sensitive.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StateError(f"cannot create state file {path}: {exc.strerror or exc}") from None
    elif os.path.isdir(path):
        raise StateError(f"state path {path} is a directory; state.path must name a file")
    try:
        conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StateError(f"cannot open state file {path}: {exc}") from None
    try:
        _check_and_migrate(conn, path, fresh=not exists or os.path.getsize(path) == 0)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {'FULL' if synchronous == 'full' else 'NORMAL'}")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        message = str(exc)
        if "readonly" in message or "unable to open" in message:
            raise StateError(f"state file {path} is not writable: {message}") from None
        if "disk is full" in message or "disk I/O" in message:
            raise StateError(f"state file {path}: {message}") from None
        raise StateError(
            f"state file {path} is corrupt or not an SQLite database ({message}); "
            "move it aside to start afresh (Jobs since duvo.start_from will be exported again)"
        ) from None
    except StateError:
        conn.close()
        raise
    return conn


def _check_and_migrate(conn: sqlite3.Connection, path: str, *, fresh: bool) -> None:
    app_id = conn.execute("PRAGMA application_id").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and tables == 0:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # executescript() would COMMIT first; statement by statement keeps it one transaction.
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('created_at', ?)", (str(time.time()),))
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise
        return
    if app_id != APPLICATION_ID:
        raise StateError(
            f"state file {path} is an SQLite database of another application "
            f"(application_id {app_id:#x}); refusing to touch it: point state.path elsewhere"
        )
    if version > SCHEMA_VERSION:
        raise StateError(
            f"state file {path} was written by a newer duvo-exporter (schema {version}, this one reads "
            f"up to {SCHEMA_VERSION}); upgrade duvo-exporter or restore a matching file"
        )
    if version < 1:
        raise StateError(f"state file {path} has unknown schema version {version}")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.rollback()
            raise


def _write_failure(path: str, exc: Exception) -> str:
    message = str(exc)
    if "readonly" in message or "read-only" in message:
        return f"state file {path} is not writable ({message}): check its permissions and its directory's"
    if "full" in message:
        return f"state file {path}: the disk is full ({message}); free space and run again, nothing was lost"
    if "locked" in message:
        return f"state file {path} is locked by another process ({message}): is a second exporter using it?"
    return f"state file {path}: cannot write ({message})"
