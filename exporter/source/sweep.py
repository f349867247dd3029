"""SweepPlan: which open Jobs one pass vouches for by listing the open statuses.

The list API cannot say "changed since", but it can filter by status. Listing
``status=running`` (and each other open status we hold) from the oldest Job we want to vouch
for returns every such Job that is still open; any covered Job missing from all of those lists
has changed (almost always: finished) and is fetched. That finds every outcome within one pass
for about one request per 100 open Jobs, where the age schedule needs a GET or a re-listed
window per check. The lists are capped at ``max_pages``: the newest open Jobs are covered first,
and older ones (and unknown statuses, which no status filter can list) stay on the age schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from exporter.state.store import KnownRun
from exporter.transform.events import KNOWN_OPEN_STATUSES


@dataclass(frozen=True)
class SweepPlan:
    since: str  # created_at of the oldest covered Job: each status list starts there
    statuses: tuple[str, ...]  # the status lists to read, in a stable order
    covered: dict[str, KnownRun]  # run_id -> the Job as we last saw it
    estimated_pages: int


def plan_sweep(open_runs: Sequence[KnownRun], page_size: int, max_pages: int) -> SweepPlan | None:
    """``open_runs`` oldest first. None when there is nothing to sweep or no page to spend."""
    if max_pages <= 0 or page_size <= 0:
        return None
    counts: dict[str, int] = {}
    first = len(open_runs)
    for index in range(len(open_runs) - 1, -1, -1):
        status = open_runs[index].status
        if status not in KNOWN_OPEN_STATUSES:
            continue
        counts[status] = counts.get(status, 0) + 1
        if _pages(counts, page_size) > max_pages:
            counts[status] -= 1
            if not counts[status]:
                del counts[status]
            break
        first = index
    if not counts:
        return None
    covered = {run.run_id: run for run in open_runs[first:] if run.status in KNOWN_OPEN_STATUSES}
    return SweepPlan(
        since=open_runs[first].created_at,
        statuses=tuple(sorted(counts)),
        covered=covered,
        estimated_pages=_pages(counts, page_size),
    )


def list_pages(rows: int, page_size: int) -> int:
    """Requests to read ``rows`` rows when each page after the first re-reads one (the anchor)."""
    if page_size <= 1:  # no room for an anchor: every row costs a request
        return max(1, rows)
    if rows <= page_size:
        return 1
    return 1 + math.ceil((rows - page_size) / (page_size - 1))


def page_allowance(plan: SweepPlan, open_counts: dict[str, int], page_size: int) -> int:
    """The most pages the sweep may read: what the open Jobs we now hold in its statuses need
    (counted after new Jobs were read, so those are in), plus a page per status for Jobs that
    entered a status or shifted a list while it was read."""
    return sum(list_pages(open_counts.get(status, 0), page_size) + 1 for status in plan.statuses)


def _pages(counts: dict[str, int], page_size: int) -> int:
    return sum(list_pages(n, page_size) for n in counts.values())
