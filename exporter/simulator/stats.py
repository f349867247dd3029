"""Request counters of the simulated API, for tests and benchmarks to assert on."""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from typing import Any


class Stats:
    """Thread-safe counts of API requests by endpoint and outcome (control requests are not counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._by_endpoint: defaultdict[str, Counter[str]] = defaultdict(Counter)
            self._events: Counter[str] = Counter()

    def record(self, endpoint: str, outcome: int | str) -> None:
        """`outcome`: the status code sent, or "reset" for a dropped connection."""
        with self._lock:
            self._by_endpoint[endpoint][str(outcome)] += 1

    def count(self, event: str) -> None:
        with self._lock:
            self._events[event] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            by_status: Counter[str] = Counter()
            for outcomes in self._by_endpoint.values():
                by_status.update(outcomes)
            return {
                "requests_total": sum(by_status.values()),
                "requests": {endpoint: dict(outcomes) for endpoint, outcomes in self._by_endpoint.items()},
                "by_status": dict(by_status),
                "rate_limited": by_status.get("429", 0),
                "resets": by_status.get("reset", 0),
                "events": dict(self._events),
            }
