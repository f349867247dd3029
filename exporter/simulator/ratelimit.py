"""Per-key sliding-window rate limit, as the real API applies its 300 requests per minute."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class SlidingWindow:
    """At most `per_minute` granted requests per key in any 60 s window; refused ones do not count."""

    def __init__(self, per_minute: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._grants: dict[str, deque[float]] = {}
        self.per_minute = per_minute

    @property
    def per_minute(self) -> int | None:
        return self._limit

    @per_minute.setter
    def per_minute(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError("requests_per_minute must be a non-negative integer or None")
        self._limit = value or None  # 0 means unlimited, like None

    def acquire(self, key: str) -> int | None:
        """None if granted; else whole seconds until a slot frees up (at least 1)."""
        limit = self._limit
        if limit is None:
            return None
        with self._lock:
            now = self._clock()
            grants = self._grants.setdefault(key, deque())
            while grants and grants[0] <= now - WINDOW_SECONDS:
                grants.popleft()
            if len(grants) < limit:
                grants.append(now)
                return None
            return max(1, math.ceil(grants[len(grants) - limit] + WINDOW_SECONDS - now))

    def reset(self) -> None:
        with self._lock:
            self._grants.clear()
