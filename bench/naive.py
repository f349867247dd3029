"""The forwarding script of Duvo's monitoring guide ("Send Job events to Datadog"), as users write it.

The guide's example, kept as it is where it matters:
- a persisted offset (`LAST_SEEN_OFFSET`), advanced by the number of rows read;
- `GET /teams/{team}/runs?limit=100&offset=N&sort_by=created_at&sort_order=asc`, no `since`;
- every row is forwarded whatever its status, in one Datadog request per page, with the guide's
  log shape; `raise_for_status()` on both sides, no retries, no pacing, no other state.

One generous change: the guide reads a single page per cron run, which cannot keep up with more
than 100 Jobs per run. Here one invocation reads pages until a short page (caught up) or an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

Forward = Callable[[Sequence[dict[str, Any]]], None]


@dataclass
class NaiveStats:
    invocations: int = 0
    requests: int = 0  # Duvo requests
    failures: int = 0  # invocations that ended in an exception (a 429, a 5xx, a sink error)
    rows: int = 0
    errors: list[str] = field(default_factory=list)


class NaivePipeline:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        team_id: str,
        forward: Forward,
        offset_file: Path,
    ) -> None:
        self.base_url = base_url
        self.team_id = team_id
        self.forward = forward
        self.offset_file = offset_file
        self.stats = NaiveStats()
        self._session = requests.Session()  # the guide uses requests.get; a session only saves sockets
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def _offset(self) -> int:
        return int(self.offset_file.read_text()) if self.offset_file.exists() else 0

    def fetch_new_runs(self, offset: int) -> dict[str, Any]:
        self.stats.requests += 1
        resp = self._session.get(
            f"{self.base_url}/teams/{self.team_id}/runs",
            headers=self._headers,
            params={"limit": 100, "offset": offset, "sort_by": "created_at", "sort_order": "asc"},
            timeout=30,
        )
        resp.raise_for_status()
        return resp.json()

    def invoke(self, stop: threading.Event | None = None) -> int:
        """One cron run (`stop`: the benchmark ends; checked between pages). Returns rows forwarded."""
        self.stats.invocations += 1
        forwarded = 0
        try:
            offset = self._offset()
            while True:
                data = self.fetch_new_runs(offset)
                runs = data["data"]
                if runs:
                    self.forward(runs)
                    offset += len(runs)
                    self.offset_file.write_text(str(offset))  # LAST_SEEN_OFFSET += len(runs), persisted
                    forwarded += len(runs)
                if len(runs) < 100 or (stop is not None and stop.is_set()):
                    break
        except Exception as exc:  # cron mails the traceback; the next run starts from the saved offset
            self.stats.failures += 1
            if len(self.stats.errors) < 5:
                self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:200])
        self.stats.rows += forwarded
        return forwarded

    def run_every(self, interval: float, stop: threading.Event) -> None:
        """Cron: an invocation every `interval` seconds (skipped while one still runs)."""
        next_run = time.monotonic()
        while not stop.is_set():
            self.invoke(stop)
            next_run += interval
            while next_run < time.monotonic():
                next_run += interval
            stop.wait(max(0.0, next_run - time.monotonic()))

    def close(self) -> None:
        self._session.close()


def datadog_forwarder(url: str, api_key: str) -> Forward:
    """The guide's send_to_datadog, pointed at `url` instead of the Datadog intake."""
    session = requests.Session()

    def send_to_datadog(runs: Sequence[dict[str, Any]]) -> None:
        logs = [
            {
                "ddsource": "duvo",
                "ddtags": f"agent:{r['agent_id']},status:{r['status']}",
                "service": "duvo-assignments",
                "message": f"Job {r['id']} {r['status']}",
                "run_id": r["id"],
                "agent_id": r["agent_id"],
                "status": r["status"],
                "started_at": r.get("started_at"),
                "completed_at": r.get("completed_at"),
            }
            for r in runs
        ]
        session.post(
            f"{url}/api/v2/logs",
            headers={"DD-API-KEY": api_key, "Content-Type": "application/json"},
            json=logs,
            timeout=30,
        ).raise_for_status()

    return send_to_datadog


class Collector:
    """An in-memory stand-in for the backend, where only what arrives matters (no HTTP)."""

    def __init__(self) -> None:
        self.finished: dict[str, int] = {}
        self.open_records = 0

    def __call__(self, runs: Sequence[dict[str, Any]]) -> None:
        for run in runs:
            if run.get("status") in ("completed", "failed", "stopped", "interrupted"):
                self.finished[run["id"]] = self.finished.get(run["id"], 0) + 1
            else:
                self.open_records += 1
