"""World: every simulated Duvo Job, its lazily evaluated lifecycle, queries, and manual control.

Jobs live in per-team columns (`array`s) sorted by (created_at, id): a million Jobs cost tens of
megabytes, `since` is a bisect, and an unfiltered page renders only its own rows. A Job's status is
never stored: it is derived from the lifecycle times drawn at creation, at the moment of the request,
so nothing runs in the background. Manual changes (tests) are kept beside the columns as overrides.
"""

from __future__ import annotations

import itertools
import math
import operator
import random
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .ids import IdCodec, format_uuid, parse_uuid, random_uuid
from .messages import Timeline, build_log, human_request_for
from .options import SINCE_MODES, SimulatorOptions
from .timefmt import MIXED_CODES, NEVER, US, coerce, render, style_code, to_us, truncate

STATUSES = ("pending", "starting", "running", "waiting", "completed", "failed", "stopped", "interrupted")
TERMINAL_STATUSES = frozenset(STATUSES[4:])
PENDING, STARTING, RUNNING, WAITING, COMPLETED, FAILED, STOPPED, INTERRUPTED = range(8)
_STATUS_CODE = {name: code for code, name in enumerate(STATUSES)}
SEVERITIES = ("low", "medium", "critical")
_SEVERITY_NAMES = (None, *SEVERITIES)
_SEVERITY_CODE = {name: code for code, name in enumerate(_SEVERITY_NAMES) if name}
TRIGGERS = ("schedule", "api", "webhook", "manual")

_OVERRIDDEN = 1  # status comes from World._overrides; the row's lifecycle columns are inert (NEVER)
_EXTRA = 2  # World._extras holds fields merged into the record
_LOW64 = (1 << 64) - 1
_CHUNK = 8192  # rows generated per bulk insert
_created_of = operator.itemgetter(0)

# Simulated seconds. Late Jobs run log-uniformly between these; the rest finish within seconds.
_LATE_MIN, _LATE_MAX = 120.0, 4 * 3600.0
_SEVERITY_ODDS = {  # outcome -> (P(has issues), P(low), P(low or medium)); the rest is critical
    COMPLETED: (0.06, 0.6, 0.95),
    FAILED: (0.7, 0.15, 0.5),
    STOPPED: (0.2, 0.5, 1.0),
    INTERRUPTED: (0.2, 0.5, 1.0),
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def status_code(status: str) -> int:
    try:
        return _STATUS_CODE[status]
    except KeyError:
        raise ValueError(f"unknown status {status!r}; expected one of {STATUSES}") from None


@dataclass(slots=True)
class _Override:
    status: int
    started: int | None
    completed: int | None
    phr: dict[str, Any] | None
    wait: int | None  # when the current `waiting` began, for the messages log
    has_issues: bool | None  # None: the lifecycle's own flags, shown once terminal
    severity: int


class _Team:
    """One team's Jobs as parallel columns in (created_at, id) order."""

    __slots__ = (
        "agent",
        "agent_index",
        "agents",
        "columns",
        "created",
        "end",
        "final",
        "flags",
        "hi",
        "index",
        "lo",
        "name",
        "next_arrival",
        "resume",
        "rng",
        "run",
        "sev",
        "start",
        "style",
        "wait",
    )

    def __init__(self, name: str, index: int, agents: list[str], rng: random.Random) -> None:
        self.name = name
        self.index = index
        self.agents = agents
        self.agent_index = {agent: n for n, agent in enumerate(agents)}
        self.rng = rng
        self.next_arrival: int | None = None
        self.created = array("q")
        self.hi = array("Q")  # the id as a 128-bit integer, split: hex order == integer order
        self.lo = array("Q")
        self.agent = array("H")
        self.style = array("B")
        self.flags = array("B")
        self.start = array("q")  # pending -> starting (started_at)
        self.run = array("q")  # starting -> running
        self.wait = array("q")  # running -> waiting
        self.resume = array("q")  # waiting -> running; NEVER = waits until the end
        self.end = array("q")  # -> final (completed_at)
        self.final = array("B")
        self.sev = array("B")
        # Row tuples list values in this order.
        self.columns = (
            self.created,
            self.hi,
            self.lo,
            self.agent,
            self.style,
            self.flags,
            self.start,
            self.run,
            self.wait,
            self.resume,
            self.end,
            self.final,
            self.sev,
        )

    def __len__(self) -> int:
        return len(self.created)

    def agent_for(self, agent_id: str) -> int:
        index = self.agent_index.get(agent_id)
        if index is None:
            if len(self.agents) >= 0xFFFF:
                raise ValueError("too many agents in one team")
            index = len(self.agents)
            self.agents.append(agent_id)
            self.agent_index[agent_id] = index
        return index

    def _group(self, created: int) -> tuple[int, int]:
        first = bisect_left(self.created, created)
        return first, bisect_right(self.created, created, first)

    def locate(self, created: int, hi: int, lo: int) -> int:
        """Insertion point keeping (created_at, id) order."""
        n = len(self.created)
        if n == 0 or self.created[n - 1] < created:
            return n
        first, last = self._group(created)
        pos = bisect_left(self.hi, hi, first, last)
        while pos < last and self.hi[pos] == hi and self.lo[pos] < lo:
            pos += 1
        return pos

    def find(self, created: int, hi: int, lo: int) -> int | None:
        first, last = self._group(created)
        pos = bisect_left(self.hi, hi, first, last)
        while pos < last and self.hi[pos] == hi:
            if self.lo[pos] == lo:
                return pos
            pos += 1
        return None

    def insert(self, row: tuple[int, ...]) -> int:
        pos = self.locate(row[0], row[1], row[2])
        if pos == len(self.created):
            for column, value in zip(self.columns, row, strict=True):
                column.append(value)
        else:
            for column, value in zip(self.columns, row, strict=True):
                column.insert(pos, value)
        return pos

    def add(self, rows: list[tuple[int, ...]]) -> None:
        """Insert many rows: those after the current last row go in with one extend per column."""
        rows.sort()
        split = 0
        if len(self.created):
            split = bisect_right(rows, self.created[-1], key=_created_of)
            for row in rows[:split]:
                self.insert(row)
        if split < len(rows):
            for column, values in zip(self.columns, zip(*rows[split:], strict=True), strict=True):
                column.extend(values)

    def remove(self, pos: int) -> None:
        for column in self.columns:
            del column[pos]

    def uid(self, pos: int) -> int:
        return self.hi[pos] << 64 | self.lo[pos]


class _Lifecycles:
    """Draws a Job's whole future at creation, from the caller's seeded RNG.

    Hot path (a million calls for a big backfill): plain `rng.random()` arithmetic, no helpers.
    """

    def __init__(self, options: SimulatorOptions) -> None:
        self.late_fraction = options.late_fraction
        self.us_per_second = US / options.time_scale  # time_scale shortens durations, nothing else
        self.fixed_style = style_code(options.timestamp_style)
        outcomes = [(_STATUS_CODE[name], w) for name, w in options.outcome_weights.items() if w > 0]
        total = sum(w for _, w in outcomes)
        self.outcomes = [code for code, _ in outcomes]
        self.outcome_edges = list(itertools.accumulate(w / total for _, w in outcomes))
        self.outcome_edges[-1] = 1.0
        self.log_late_min, self.log_late_span = math.log(_LATE_MIN), math.log(_LATE_MAX / _LATE_MIN)

    def style(self, rng: random.Random) -> int:
        return self.fixed_style if self.fixed_style is not None else MIXED_CODES[int(rng.random() * 4)]

    def draw(self, rng: random.Random, created: int) -> tuple[int, int, int, int, int, int, int]:
        """(start, run, wait, resume, end, final status, severity) in microseconds / codes."""
        scale = self.us_per_second
        rand = rng.random
        final = self.outcomes[bisect_right(self.outcome_edges, rand())]
        start = created + 1 + int((0.05 + 1.95 * rand()) * scale)
        run = start + 1 + int((0.1 + 2.9 * rand()) * scale)
        wait = resume = NEVER
        if rand() < self.late_fraction:
            duration = math.exp(self.log_late_min + self.log_late_span * rand())
            end = run + 1 + int(duration * scale)
            if rand() < 0.5:  # half of the late Jobs spend most of their time waiting on a human
                wait = run + 1 + int(duration * (0.05 + 0.25 * rand()) * scale)
                if rand() < 0.25:  # nobody answered: the Job ends straight from `waiting`
                    final = STOPPED if rand() < 0.5 else INTERRUPTED
                else:
                    resume = wait + 1 + int((end - wait) * (0.6 + 0.35 * rand()))
                    end = max(end, resume + 1)
        else:
            end = run + 1 + int((0.5 + 19.5 * rand()) * scale)
            if final == STOPPED and rand() < 0.3:  # cancelled before it ever started
                start = run = NEVER
                end = created + 1 + int((0.05 + 1.45 * rand()) * scale)
        odds, low, medium = _SEVERITY_ODDS[final]
        severity = 0
        if rand() < odds:
            pick = rand()
            severity = 1 if pick < low else 2 if pick < medium else 3
        return start, run, wait, resume, end, final, severity


class World:
    """Thread-safe. Times are read from `clock` (aware UTC datetimes) whenever a method is called."""

    def __init__(self, options: SimulatorOptions | None = None, clock: Callable[[], datetime] | None = None) -> None:
        self.options = options or SimulatorOptions()
        self.options.validate()
        self._clock = clock or _utc_now
        self._lock = threading.RLock()
        self._seed = self.options.seed
        self._codec = IdCodec(self._seed)
        self._life = _Lifecycles(self.options)
        self._teams: dict[str, _Team] = {}
        self._team_list: list[_Team] = []
        self._overrides: dict[int, _Override] = {}
        self._extras: dict[int, dict[str, Any]] = {}
        # Message logs set by hand (tests, /_sim/jobs/{id}/messages): served instead of the generated one.
        self._scripted: dict[int, list[Any]] = {}
        self._foreign: dict[int, tuple[int, int]] = {}  # caller-chosen ids -> (team index, created)
        # Jobs started with a webhook_url: id -> [url, status code last announced]. The sender
        # (simulator/webhooks.py) asks for changes; statuses are derived, so it polls.
        self._webhooks: dict[int, list[Any]] = {}
        # Manual, POSTed and fault-inserted Jobs draw from their own stream so the schedule stays put.
        self._manual_rng = random.Random(f"{self._seed}:manual")
        self._rate = self.options.jobs_per_second
        self._generating = frozenset(self.options.teams)  # teams made by create_job get no arrivals
        origin = to_us(self.options.start) if self.options.start is not None else self._now_us()
        for name in self.options.teams:
            team = self._add_team(name)
            self._backfill(team, origin)
            team.next_arrival = origin + self._gap(team.rng) if self._rate > 0 else None

    # -- time and generation ------------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    def _now_us(self) -> int:
        return to_us(self._clock())

    def _gap(self, rng: random.Random) -> int:
        return max(1, int(rng.expovariate(self._rate) * US))

    def _add_team(self, name: str) -> _Team:
        index = len(self._team_list)
        agent_rng = random.Random(f"{self._seed}:{name}:agents")
        agents = [format_uuid(random_uuid(agent_rng.getrandbits(128))) for _ in range(self.options.agents_per_team)]
        team = _Team(name, index, agents, random.Random(f"{self._seed}:{name}:jobs"))
        self._teams[name] = team
        self._team_list.append(team)
        return team

    def _new_row(
        self, team: _Team, rng: random.Random, created: int, agent: int | None = None, flags: int = 0
    ) -> tuple[int, ...]:
        style = self._life.style(rng)
        stored = truncate(created, style)
        drawn_agent = int(rng.random() * self.options.agents_per_team)  # never the ad-hoc agents
        life = self._life.draw(rng, created)
        hi, lo = self._codec.encode_halves(team.index, stored, rng.getrandbits(61))
        return (stored, hi, lo, drawn_agent if agent is None else agent, style, flags, *life)

    def _backfill(self, team: _Team, origin: int) -> None:
        count = self.options.backfill
        if count <= 0:
            return
        rng = random.Random(f"{self._seed}:{team.name}:backfill")
        window = max(1, int(self.options.backfill_window_seconds * US))
        # Uniform arrivals over the window, already in order: normalised exponential spacings.
        gaps = [rng.expovariate(1.0) for _ in range(count + 1)]
        step = window / sum(gaps)
        moments = itertools.accumulate((gap * step for gap in gaps[:count]), initial=float(origin - window))
        next(moments)  # the window's opening edge itself
        rows = []
        for moment in moments:
            rows.append(self._new_row(team, rng, min(int(moment), origin - 1)))
            if len(rows) == _CHUNK:  # a million-tuple list would make the GC crawl
                team.add(rows)
                rows = []
        team.add(rows)

    def _advance(self, now: int) -> None:
        for team in self._team_list:
            arrival = team.next_arrival
            if arrival is None or arrival > now:
                continue
            rng = team.rng
            rows = []
            while arrival <= now:
                rows.append(self._new_row(team, rng, arrival))
                arrival += self._gap(rng)
                if len(rows) == _CHUNK:
                    team.add(rows)
                    rows = []
            team.add(rows)
            team.next_arrival = arrival

    def set_jobs_per_second(self, rate: float) -> None:
        """Change the arrival rate from now on (0 pauses generation)."""
        if rate < 0:
            raise ValueError("jobs_per_second must be >= 0")
        with self._lock:
            now = self._now_us()
            self._advance(now)
            self._rate = rate
            for team in self._team_list:
                if team.name in self._generating:
                    team.next_arrival = now + self._gap(team.rng) if rate > 0 else None

    @property
    def jobs_per_second(self) -> float:
        return self._rate

    # -- reading rows -------------------------------------------------------------------------

    def _code_at(self, team: _Team, i: int, now: int) -> int:
        if team.flags[i] & _OVERRIDDEN:
            return self._overrides[team.uid(i)].status
        if now >= team.end[i]:
            return team.final[i]
        if now < team.start[i]:
            return PENDING
        if now < team.run[i]:
            return STARTING
        if team.wait[i] <= now < team.resume[i]:
            return WAITING
        return RUNNING

    def _issues_at(self, team: _Team, i: int, code: int) -> tuple[bool, int]:
        """(has_issues, severity code). Duvo's evaluation flags a Job only once it has finished."""
        if team.flags[i] & _OVERRIDDEN:
            override = self._overrides[team.uid(i)]
            if override.has_issues is not None:
                return override.has_issues, override.severity
        severity = team.sev[i] if code >= COMPLETED else 0
        return severity > 0, severity

    def _render(self, team: _Team, i: int, now: int) -> dict[str, Any]:
        u = team.uid(i)
        style = team.style[i]
        flags = team.flags[i]
        if flags & _OVERRIDDEN:
            override = self._overrides[u]
            code, started, completed = override.status, override.started, override.completed
            request = dict(override.phr) if override.phr is not None else None
        else:
            code = self._code_at(team, i, now)
            start, end = team.start[i], team.end[i]
            started = start if now >= start else None
            completed = end if now >= end else None
            request = human_request_for(u, team.wait[i], style) if code == WAITING else None
        has_issues, severity = self._issues_at(team, i, code)
        record: dict[str, Any] = {
            "id": format_uuid(u),
            "team_id": team.name,
            "agent_id": team.agents[team.agent[i]],
            "status": STATUSES[code],
            "created_at": render(team.created[i], style),
            "started_at": render(started, style) if started is not None else None,
            "completed_at": render(completed, style) if completed is not None else None,
            "pending_human_request": request,
            "has_issues": has_issues,
            "issue_severity": _SEVERITY_NAMES[severity],
            # Not in the documented schema: clients must pass unknown fields through untouched.
            "trigger": TRIGGERS[(u >> 8) % len(TRIGGERS)],
        }
        if flags & _EXTRA:
            record.update(self._extras[u])
        return record

    def _timeline(self, team: _Team, i: int) -> Timeline:
        style, created = team.style[i], team.created[i]
        if team.flags[i] & _OVERRIDDEN:
            override = self._overrides[team.uid(i)]
            return Timeline(
                created, override.started, override.wait, None, override.completed, STATUSES[override.status], style
            )

        def known(value: int) -> int | None:
            return None if value == NEVER else value

        return Timeline(
            created,
            known(team.start[i]),
            known(team.wait[i]),
            known(team.resume[i]),
            team.end[i],
            STATUSES[team.final[i]],
            style,
        )

    def _locate(self, run_id: str) -> tuple[_Team, int] | None:
        u = parse_uuid(run_id) if isinstance(run_id, str) else None
        if u is None:
            return None
        where = self._foreign.get(u) or self._codec.decode(u)
        if where is None or where[0] >= len(self._team_list):
            return None
        team = self._team_list[where[0]]
        pos = team.find(where[1], u >> 64, u & _LOW64)
        return None if pos is None else (team, pos)

    # -- the API's queries ----------------------------------------------------------------------

    def teams(self) -> list[str]:
        with self._lock:
            return [team.name for team in self._team_list]

    def has_team(self, team_id: str) -> bool:
        with self._lock:
            return team_id in self._teams

    def agents(self, team_id: str) -> list[str]:
        with self._lock:
            return list(self._teams[team_id].agents)

    def list_runs(
        self,
        team_id: str,
        *,
        limit: int = 20,
        offset: int = 0,
        since_us: int | None = None,
        since_mode: str = "inclusive",
        descending: bool = True,
        agent_id: str | None = None,
        status: str | None = None,
        has_issues: bool | None = None,
        issue_severity: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """(page of records, total matching). Raises KeyError for an unknown team."""
        if since_mode not in SINCE_MODES:
            raise ValueError(f"since_mode must be one of {SINCE_MODES}")
        wanted_status = status_code(status) if status is not None else None
        wanted_severity = _SEVERITY_CODE[issue_severity] if issue_severity is not None else None
        with self._lock:
            now = self._now_us()
            self._advance(now)
            team = self._teams[team_id]
            first, last = self._since_bound(team, since_us, since_mode), len(team)
            if agent_id is None and wanted_status is None and has_issues is None and wanted_severity is None:
                total = last - first
                if descending:
                    top = last - 1 - offset
                    positions: Iterable[int] = range(top, max(top - limit, first - 1), -1)
                else:
                    positions = range(first + offset, min(first + offset + limit, last))
            else:
                positions, total = self._scan(
                    team, first, last, now, descending, offset, limit,
                    agent_id, wanted_status, has_issues, wanted_severity,
                )  # fmt: skip
            return [self._render(team, i, now) for i in positions], total

    @staticmethod
    def _since_bound(team: _Team, since_us: int | None, mode: str) -> int:
        if since_us is None:
            return 0
        if mode == "inclusive":
            return bisect_left(team.created, since_us)
        if mode == "exclusive":
            return bisect_right(team.created, since_us)
        whole = since_us - since_us % US  # compared as whole seconds: created's own fraction is dropped too
        return bisect_left(team.created, whole if mode == "seconds" else whole + US)

    def _scan(
        self,
        team: _Team,
        first: int,
        last: int,
        now: int,
        descending: bool,
        offset: int,
        limit: int,
        agent_id: str | None,
        wanted_status: int | None,
        has_issues: bool | None,
        wanted_severity: int | None,
    ) -> tuple[list[int], int]:
        """Filtered listing: O(rows after since), which the filters are allowed to cost."""
        agent = None
        if agent_id is not None:
            agent = team.agent_index.get(agent_id)
            if agent is None:
                return [], 0
        needs_state = wanted_status is not None or has_issues is not None or wanted_severity is not None
        agents = team.agent
        page: list[int] = []
        total = 0
        stop = offset + limit
        for i in range(last - 1, first - 1, -1) if descending else range(first, last):
            if agent is not None and agents[i] != agent:
                continue
            if needs_state:
                code = self._code_at(team, i, now)
                if wanted_status is not None and code != wanted_status:
                    continue
                if has_issues is not None or wanted_severity is not None:
                    flagged, severity = self._issues_at(team, i, code)
                    if has_issues is not None and flagged != has_issues:
                        continue
                    if wanted_severity is not None and severity != wanted_severity:
                        continue
            if offset <= total < stop:
                page.append(i)
            total += 1
        return page, total

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            now = self._now_us()
            self._advance(now)
            found = self._locate(run_id)
            return None if found is None else self._render(found[0], found[1], now)

    def messages(self, run_id: str, *, limit: int = 20, offset: int = 0) -> tuple[list[dict[str, Any]], int] | None:
        with self._lock:
            now = self._now_us()
            self._advance(now)
            found = self._locate(run_id)
            if found is None:
                return None
            team, i = found
            timeline, u = self._timeline(team, i), team.uid(i)
            scripted = self._scripted.get(u)
        log = list(scripted) if scripted is not None else build_log(u, self._seed, timeline, now)
        return log[offset : offset + limit], len(log)

    def start_run(self, team_id: str, agent_id: str, webhook_url: str | None = None) -> dict[str, Any]:
        """POST /teams/{team}/runs: a new Job with a normal lifecycle from now. With ``webhook_url``
        each later status change is POSTed there (by the simulator's webhook sender, if started)."""
        with self._lock:
            now = self._now_us()
            self._advance(now)
            team = self._teams[team_id]
            row = self._new_row(team, self._manual_rng, now, agent=team.agent_for(agent_id), flags=_EXTRA)
            self._extras[row[1] << 64 | row[2]] = {"trigger": "api"}
            record = self._render(team, team.insert(row), now)
            if webhook_url is not None:
                self._webhooks[row[1] << 64 | row[2]] = [webhook_url, _STATUS_CODE[record["status"]]]
            return record

    def spawn(self, team_id: str, count: int) -> list[str]:
        """`count` Jobs created right now (Jobs arriving while a client pages); returns their ids."""
        with self._lock:
            now = self._now_us()
            self._advance(now)
            team = self._teams[team_id]
            ids = []
            for _ in range(count):
                row = self._new_row(team, self._manual_rng, now)
                team.insert(row)
                ids.append(format_uuid(row[1] << 64 | row[2]))
            return ids

    # -- manual control (tests, /_sim) -------------------------------------------------------------

    def create_job(
        self,
        team_id: str,
        status: str = "pending",
        created_at: datetime | str | None = None,
        agent_id: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """A Job whose status changes only through set_status. `fields` may set id, started_at,
        completed_at, pending_human_request, has_issues, issue_severity; anything else is passed
        through in the record. An unknown team is created (without generated Jobs)."""
        code = status_code(status)
        custom_id = fields.pop("id", None)
        webhook_url = fields.pop("webhook_url", None)
        messages = fields.pop("messages", None)
        if messages is not None and not isinstance(messages, list):
            raise ValueError("messages must be a list")
        severity_name = fields.pop("issue_severity", None)
        if severity_name is not None and severity_name not in _SEVERITY_CODE:
            raise ValueError(f"issue_severity must be one of {SEVERITIES}")
        with self._lock:
            now = self._now_us()
            self._advance(now)
            team = self._teams.get(team_id) or self._add_team(team_id)
            rng = self._manual_rng
            style = self._life.style(rng)
            created = truncate(coerce(created_at) if created_at is not None else now, style)
            agent = team.agent_for(agent_id) if agent_id is not None else rng.randrange(len(team.agents))
            if custom_id is not None:
                u = parse_uuid(str(custom_id))
                if u is None:
                    raise ValueError(f"id must be a lowercase canonical UUID, not {custom_id!r}")
                if self._locate(str(custom_id)) is not None:
                    raise ValueError(f"a Job with id {custom_id} exists")
                self._foreign[u] = (team.index, created)
            else:
                u = self._codec.encode(team.index, created, rng.getrandbits(61))
            default_start = None if code == PENDING else created
            started = coerce(fields.pop("started_at")) if "started_at" in fields else default_start
            default_end = max(created, now) if code >= COMPLETED else None
            completed = coerce(fields.pop("completed_at")) if "completed_at" in fields else default_end
            wait = max(created, now) if code == WAITING else None
            if "pending_human_request" in fields:
                request = fields.pop("pending_human_request")
            else:
                request = human_request_for(u, wait, style) if wait is not None else None
            severity = _SEVERITY_CODE.get(severity_name, 0) if severity_name else 0
            flagged = bool(fields.pop("has_issues", severity > 0))
            self._overrides[u] = _Override(code, started, completed, request, wait, flagged, severity)
            self._extras[u] = {"trigger": "manual", **fields}
            row = (created, u >> 64, u & _LOW64, agent, style, _OVERRIDDEN | _EXTRA, *(NEVER,) * 5, 0, 0)
            if webhook_url is not None:
                self._webhooks[u] = [webhook_url, code]
            if messages is not None:
                self._scripted[u] = list(messages)
            return self._render(team, team.insert(row), now)

    def set_status(
        self, run_id: str, status: str, pending_human_request: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Force a Job's status from now on; started_at/completed_at follow. KeyError if unknown."""
        code = status_code(status)
        with self._lock:
            now = self._now_us()
            self._advance(now)
            found = self._locate(run_id)
            if found is None:
                raise KeyError(run_id)
            team, i = found
            u = team.uid(i)
            override = self._overrides[u] if team.flags[i] & _OVERRIDDEN else self._freeze(team, i, u, now)
            was_terminal = override.status >= COMPLETED
            if code == PENDING:
                override.started = None
            elif override.started is None:
                override.started = now
            if code < COMPLETED:
                override.completed = None
            elif not was_terminal or override.completed is None:
                override.completed = now
            if code == WAITING:
                if override.status != WAITING or override.wait is None:
                    override.wait = now
                if pending_human_request is not None:
                    override.phr = pending_human_request
                elif override.status != WAITING or override.phr is None:
                    override.phr = human_request_for(u, override.wait, team.style[i])
            else:
                override.wait = None
                override.phr = None
            override.status = code
            return self._render(team, i, now)

    def set_messages(self, run_id: str, messages: list[Any]) -> int:
        """Serve ``messages`` (any JSON values, malformed ones included) as the Job's log from now
        on, paged like the generated one. KeyError if the Job is unknown. Returns their number."""
        if not isinstance(messages, list):
            raise ValueError("messages must be a list")
        with self._lock:
            found = self._locate(run_id)
            if found is None:
                raise KeyError(run_id)
            self._scripted[found[0].uid(found[1])] = list(messages)
            return len(messages)

    def _freeze(self, team: _Team, i: int, u: int, now: int) -> _Override:
        """Turn a generated Job into an overridden one, keeping what it has shown so far."""
        code = self._code_at(team, i, now)
        start, wait, end = team.start[i], team.wait[i], team.end[i]
        override = _Override(
            status=code,
            started=start if now >= start else None,
            completed=end if now >= end else None,
            phr=human_request_for(u, wait, team.style[i]) if code == WAITING else None,
            wait=wait if code == WAITING else None,
            has_issues=None,
            severity=0,
        )
        for column in (team.start, team.run, team.wait, team.resume, team.end):
            column[i] = NEVER  # so counting terminal rows over `end` skips it
        team.flags[i] |= _OVERRIDDEN
        self._overrides[u] = override
        return override

    def webhook_changes(self) -> list[tuple[str, str, str]]:
        """(url, run_id, new status) for every watched Job whose status changed since the last
        call; a Job that reached a terminal status is no longer watched."""
        changes: list[tuple[str, str, str]] = []
        with self._lock:
            if not self._webhooks:
                return changes
            now = self._now_us()
            self._advance(now)
            for u, watch in list(self._webhooks.items()):
                found = self._locate(format_uuid(u))
                if found is None:
                    del self._webhooks[u]
                    continue
                code = self._code_at(found[0], found[1], now)
                if code != watch[1]:
                    watch[1] = code
                    changes.append((watch[0], format_uuid(u), STATUSES[code]))
                if code >= COMPLETED:
                    del self._webhooks[u]
        return changes

    def delete(self, run_id: str) -> bool:
        with self._lock:
            found = self._locate(run_id)
            if found is None:
                return False
            team, i = found
            u = team.uid(i)
            team.remove(i)
            self._overrides.pop(u, None)
            self._extras.pop(u, None)
            self._scripted.pop(u, None)
            self._foreign.pop(u, None)
            return True

    def jobs(self, team_id: str | None = None) -> list[dict[str, Any]]:
        """Ground truth: every Job (of one team, or all) with its current status, oldest first."""
        with self._lock:
            now = self._now_us()
            self._advance(now)
            teams = self._selected(team_id)
            return [self._render(team, i, now) for team in teams for i in range(len(team))]

    def terminal_ids(self, team_id: str | None = None) -> set[str]:
        with self._lock:
            now = self._now_us()
            self._advance(now)
            return {
                format_uuid(team.uid(i))
                for team in self._selected(team_id)
                for i in range(len(team))
                if self._code_at(team, i, now) >= COMPLETED
            }

    def _selected(self, team_id: str | None) -> list[_Team]:
        if team_id is None:
            return list(self._team_list)
        team = self._teams.get(team_id)
        return [team] if team is not None else []

    def counts(self) -> dict[str, Any]:
        """Jobs and terminal Jobs, cheaply enough to poll with a million Jobs."""
        with self._lock:
            now = self._now_us()
            self._advance(now)
            total = sum(len(team) for team in self._team_list)
            # Overridden rows have end = NEVER, so the lifecycle count skips them.
            terminal = sum(sum(map(now.__ge__, team.end)) for team in self._team_list)
            terminal += sum(1 for override in self._overrides.values() if override.status >= COMPLETED)
            return {
                "jobs_total": total,
                "terminal": terminal,
                "open": total - terminal,
                "teams": {team.name: len(team) for team in self._team_list},
            }
