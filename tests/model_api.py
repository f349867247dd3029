"""ModelApi: an in-memory Duvo list/get API for property tests of extraction (no HTTP).

It implements the same paging semantics as the simulator (asc/desc by created_at then id,
offset/limit/total, a configurable `since` mode, the `status` filter) and lets a test run code between
page reads
(inserts, deletions, status changes) to model concurrent activity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from transport import timestamps


@dataclass
class Page:
    data: list[dict[str, Any]]
    total: int | None


class ModelApi:
    def __init__(self, since_mode: str = "inclusive", base: datetime | None = None) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.since_mode = since_mode
        self.base = base or datetime(2026, 5, 17, tzinfo=UTC)
        self.on_request: Callable[[ModelApi], None] | None = None
        self.requests = 0
        self.status_lists = 0  # list requests filtered by status (the open-Job sweep)
        self.last_served: list[str] = []  # ids of the last list page, for "delete what was just read"
        self._counter = 0

    def add(self, status: str = "pending", at_seconds: float | None = None, run_id: str | None = None) -> str:
        self._counter += 1
        run_id = run_id or f"run-{self._counter:06d}"
        seconds = at_seconds if at_seconds is not None else float(self._counter)
        created = self.base + timedelta(seconds=seconds)
        self.runs[run_id] = {
            "id": run_id,
            "agent_id": "agent-1",
            "status": status,
            "created_at": timestamps.format_utc(created),
            "started_at": None,
            "completed_at": None,
        }
        return run_id

    def set_status(self, run_id: str, status: str) -> None:
        if run_id in self.runs:
            self.runs[run_id]["status"] = status

    def delete(self, run_id: str) -> None:
        self.runs.pop(run_id, None)

    def terminal_ids(self) -> set[str]:
        return {r["id"] for r in self.runs.values() if r["status"] in ("completed", "failed", "stopped", "interrupted")}

    def _matches(self, created_at: str, since: datetime | None) -> bool:
        if since is None:
            return True
        created = timestamps.parse(created_at)
        assert created is not None
        if self.since_mode == "inclusive":
            return created >= since
        if self.since_mode == "exclusive":
            return created > since
        if self.since_mode == "seconds":
            return created.replace(microsecond=0) >= since.replace(microsecond=0)
        return created.replace(microsecond=0) > since.replace(microsecond=0)  # exclusive_seconds

    def list_runs(
        self,
        team_id: str,
        *,
        since: str | None = None,
        offset: int = 0,
        limit: int = 100,
        sort_order: str = "asc",
        status: str | None = None,
    ) -> Page:
        self.requests += 1
        if status is not None:
            self.status_lists += 1
        if self.on_request is not None:
            self.on_request(self)
        since_dt = timestamps.parse(since) if since else None
        rows = sorted(
            (
                r
                for r in self.runs.values()
                if self._matches(r["created_at"], since_dt) and (status is None or r["status"] == status)
            ),
            key=lambda r: (r["created_at"], r["id"]),
            reverse=sort_order == "desc",
        )
        page = [dict(r) for r in rows[offset : offset + limit]]
        self.last_served = [r["id"] for r in page]
        return Page(page, len(rows))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        self.requests += 1
        if self.on_request is not None:
            self.on_request(self)
        run = self.runs.get(run_id)
        return dict(run) if run else None
