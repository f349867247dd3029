"""Health aggregates of one Assignment over a window: counts by status, failure rate, duration
statistics and retried successes, computed exactly from the facts in the window.

Exact at the volumes a Duvo key allows: at 300 requests a minute a key reads at most ~30,000 Jobs
an hour (100 a page), so a 24 h window plus its baseline is at most a few hundred thousand rows,
read once per pass by an indexed range query and sorted in memory per Assignment.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# (team, agent, run_id, status, completed_at, duration, recovered), as StateStore.fact_rows gives.
FactRow = tuple[str, str, str, str, float, float | None, int]

FAILED = "failed"  # the failure rate counts this status; stopped and interrupted are not failures


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile of ascending ``ordered``: the smallest value with at least
    ``q`` of the values at or below it (p50 of 1..10 is 5, p95 is 10). None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Aggregate:
    team_id: str
    agent_id: str
    statuses: Counter[str] = field(default_factory=Counter)
    durations: list[float] = field(default_factory=list)
    durations_by_run: list[tuple[float, str]] = field(default_factory=list)
    retried_success: int = 0
    failed_runs: list[tuple[float, str]] = field(default_factory=list)  # (completed_at, run_id)

    @property
    def jobs(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.statuses.get(FAILED, 0)

    @property
    def failure_rate(self) -> float | None:
        return self.failed / self.jobs if self.jobs else None

    def _ordered(self) -> list[float]:
        return sorted(self.durations)

    @property
    def duration_avg(self) -> float | None:
        return round(sum(self.durations) / len(self.durations), 3) if self.durations else None

    @property
    def duration_p50(self) -> float | None:
        return percentile(self._ordered(), 0.50)

    @property
    def duration_p95(self) -> float | None:
        return percentile(self._ordered(), 0.95)

    @property
    def duration_max(self) -> float | None:
        return max(self.durations) if self.durations else None

    def newest_failed(self, count: int) -> list[str]:
        return [run_id for _, run_id in sorted(self.failed_runs, reverse=True)[:count]]

    def slowest(self, count: int) -> list[str]:
        return [run_id for _, run_id in sorted(self.durations_by_run, key=lambda d: (-d[0], d[1]))[:count]]


def aggregate(rows: Iterable[FactRow], since: float, until: float = math.inf) -> dict[tuple[str, str], Aggregate]:
    """(team, agent) -> the Aggregate of the facts that completed in [since, until)."""
    found: dict[tuple[str, str], Aggregate] = {}
    for team, agent, run_id, status, completed_at, duration, recovered in rows:
        if not since <= completed_at < until:
            continue
        agg = found.get((team, agent))
        if agg is None:
            agg = found[(team, agent)] = Aggregate(team, agent)
        agg.statuses[status] += 1
        if duration is not None:
            agg.durations.append(duration)
            agg.durations_by_run.append((duration, run_id))
        if status == FAILED:
            agg.failed_runs.append((completed_at, run_id))
        if recovered and status == "completed":
            agg.retried_success += 1
    return found
