"""Loopback receivers for the benchmarks: the strict fakes from tests/fakes, counting instead of storing.

The test fakes keep every request and every stored event, which is right for assertions and wrong
for a million events. These subclasses run all of the fakes' checks (auth, decoding, parsing,
validation) but keep only, per run_id, the first arrival time of a finished outcome and how often a
finished outcome arrived, plus totals. Each runs in its own process (`start_receiver`), so its CPU
is not charged to the exporter.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

from bench.procs import Remote
from tests.fakes.datadog import DatadogFake
from tests.fakes.datadog import Request as DatadogRequest
from tests.fakes.loki import FakeLoki, StoredEntry
from tests.fakes.loki import Request as LokiRequest
from tests.fakes.splunk_hec import FakeSplunkHec

TERMINAL = frozenset({"completed", "failed", "stopped", "interrupted"})
DATADOG_KEY = "bench-dd-key"
SPLUNK_TOKEN = "bench-hec-token"


class Tally:
    """What arrived: per run_id the first time a finished outcome came and how many times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.first: dict[str, float] = {}
            self.finished: dict[str, int] = {}
            self.events = 0
            self.open_events = 0  # records of Jobs that had not finished (the naive pipeline sends them)
            self.requests = 0
            self.failed_requests = 0
            self.bytes = 0

    def request(self, size: int, ok: bool) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += size
            if not ok:
                self.failed_requests += 1

    def saw(self, items: Iterable[tuple[Any, Any]]) -> None:
        now = time.time()
        with self.lock:
            for run_id, status in items:
                self.events += 1
                if status not in TERMINAL:
                    self.open_events += 1
                    continue
                run = str(run_id)
                self.finished[run] = self.finished.get(run, 0) + 1
                self.first.setdefault(run, now)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "events": self.events,
                "open_events": self.open_events,
                "distinct_finished": len(self.finished),
                "duplicates": sum(count - 1 for count in self.finished.values()),
                "requests": self.requests,
                "failed_requests": self.failed_requests,
                "bytes": self.bytes,
            }


class CountingDatadog(DatadogFake):
    def __init__(self, tally: Tally) -> None:
        super().__init__(api_key=DATADOG_KEY)
        self.tally = tally

    def _record(
        self, request: DatadogRequest, stored: Iterable[tuple[dict[str, Any], int, str | None]] = ()
    ) -> None:
        if request.path != "/api/v2/logs":
            return
        self.tally.request(request.body_bytes, request.status == 202)
        # The fake hands over (log, date, reason to drop it); a dropped log never arrived.
        kept = [log for log, _date, reason in stored if not reason]
        # The exporter's logs carry the Job status as job_status; the guide's script sends status.
        self.tally.saw((log.get("run_id"), log.get("job_status", log.get("status"))) for log in kept)


class _Discard(list):  # type: ignore[type-arg]
    """A list that forgets what is appended (the Splunk fake appends every request to one)."""

    def append(self, item: Any) -> None:
        pass


class CountingSplunk(FakeSplunkHec):
    def __init__(self, tally: Tally) -> None:
        super().__init__(token=SPLUNK_TOKEN, max_content_length=100_000_000)
        self.tally = tally
        self.requests = _Discard()

    def handle_event(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        ok = False
        try:
            answer = super().handle_event(headers, body)
            ok = answer[0] == 200
            return answer
        finally:
            with self._lock:
                stored, self.stored = self.stored, []
            self.tally.request(len(body), ok)
            self.tally.saw(_run_and_status(envelope.get("event")) for envelope in stored)


def _run_and_status(event: Any) -> tuple[Any, Any]:
    if isinstance(event, str):
        event = json.loads(event)
    return event.get("run_id"), event.get("status")


class CountingLoki(FakeLoki):
    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    def _record(self, request: LokiRequest) -> None:
        if request.path == "/loki/api/v1/push":
            self.tally.request(request.body_bytes, request.status == 204)

    def _append(self, tenant: str, stream: Any) -> str | None:
        before = len(self._entries)
        answer = super()._append(tenant, stream)
        added: list[StoredEntry] = self._entries[before:]
        del self._entries[before:]
        self.tally.saw(
            (entry.metadata.get("run_id") or entry.event.get("run_id"), entry.labels.get("status")) for entry in added
        )
        return answer


KINDS = {"datadog": CountingDatadog, "splunk_hec": CountingSplunk, "loki": CountingLoki}


class ReceiverHost:
    """One counting fake, to be hosted by `Remote` in its own process."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.tally = Tally()
        self.fake = KINDS[kind](self.tally)
        self.fake.start()

    def url(self) -> str:
        return self.fake.url

    def summary(self) -> dict[str, Any]:
        return self.tally.summary()

    def finished_count(self) -> int:
        with self.tally.lock:
            return len(self.tally.finished)

    def arrivals(self) -> dict[str, tuple[float, int]]:
        """run_id -> (first arrival of a finished outcome, epoch seconds; how many arrived)."""
        with self.tally.lock:
            return {run: (self.tally.first[run], count) for run, count in self.tally.finished.items()}

    def reset(self) -> None:
        self.tally.reset()

    def close(self) -> None:
        self.fake.stop()


def start_receiver(kind: str) -> Remote:
    return Remote("bench.receivers:ReceiverHost", kind=kind)


def sink_yaml(kind: str, url: str, name: str | None = None, **extra: Any) -> str:
    """One `sinks:` entry pointing at a receiver (the backend's defaults otherwise)."""
    name = name or kind
    lines = [f"- type: {kind}", f"  name: {name}"]
    if kind == "datadog":
        lines += [f"  api_key: {DATADOG_KEY}", f"  url: {url}", "  hostname: bench"]
    elif kind == "splunk_hec":
        lines += [f"  token: {SPLUNK_TOKEN}", f"  url: {url}", "  host: bench"]
    elif kind == "loki":
        lines += [f"  url: {url}", "  labels: {service: duvo}"]
    elif kind == "file":
        lines += [f"  path: {url}"]
    for key, value in extra.items():
        lines.append(f"  {key}: {json.dumps(value)}")
    return "\n".join(lines) + "\n"
