"""Pacing against remote limits: TokenBucket (requests/minute to Duvo, bytes/second to Loki) and
the one parser of the Retry-After header every HTTP client here honours."""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``. ``acquire`` blocks until granted.

    A small burst keeps the spend smooth: a full minute's burst would let a restarted process
    spend a whole minute's budget at once and collide with other users of the same key.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()  # may lie in the future while paused
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def reserve(self, tokens: float = 1.0) -> float:
        """Take ``tokens`` now (possibly going into debt) and return how long to wait before use."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            self._tokens -= tokens
            wait = max(0.0, self._updated - now) + max(0.0, -self._tokens / self.rate)
        return wait

    def acquire(self, tokens: float = 1.0) -> float:
        """Block until ``tokens`` are available; returns the seconds waited."""
        wait = self.reserve(tokens)
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Grant nothing for ``seconds`` (a server's Retry-After) and drop the saved burst."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            self._updated = max(self._updated, now + seconds)
            self._tokens = min(self._tokens, 1.0)


def retry_after_seconds(value: str | None, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """Seconds a server asked us to wait: delta-seconds or an HTTP date (RFC 9110 10.2.3).
    None when absent, negative, not finite or unreadable, so the caller falls back to backoff."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # "-0000" parses naive; HTTP dates are GMT anyway
    return max(0.0, (when - now()).total_seconds())
