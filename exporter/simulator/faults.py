"""Faults: switchable misbehaviour of the simulated API, deterministic from the seed.

Each switch models something a real client meets: outages, slowness, garbage bodies, dropped
connections, Jobs arriving mid-paging, short pages, inexact totals and bursts of 429s.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

MALFORMED_KINDS = ("not_json", "truncated", "missing_keys")


@dataclass
class FaultSettings:
    error_rate: float = 0.0  # fraction of API requests answered with error_status
    error_status: int = 503
    slow_seconds: float = 0.0  # delay before every API answer
    malformed_rate: float = 0.0  # fraction of 200 answers whose body is broken (see malformed_kinds)
    malformed_kinds: list[str] = field(default_factory=lambda: list(MALFORMED_KINDS))
    reset_rate: float = 0.0  # fraction of API requests whose connection is dropped without an answer
    insert_during_paging: int = 0  # Jobs created (created_at = now) before each list page with offset > 0
    short_pages: float = 0.0  # fraction of list pages cut short although more rows follow
    total_jitter: int = 0  # on about half the list pages, `total` is off by up to this much
    burst_429: int = 0  # answer the next N API requests with 429, whatever the rate
    burst_retry_after: int = 1  # Retry-After seconds sent with burst 429s
    messages_error_status: int = 0  # answer every GET /runs/{id}/messages with this status (0 = off)

    def validated(self) -> FaultSettings:
        for name in ("error_rate", "malformed_rate", "reset_rate", "short_pages"):
            value = float(getattr(self, name))  # True/False switch a rate fully on or off
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
            setattr(self, name, value)
        for name in ("insert_during_paging", "total_jitter", "burst_429", "burst_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer")
        self.slow_seconds = float(self.slow_seconds)
        if self.slow_seconds < 0:
            raise ValueError("slow_seconds must be >= 0")
        status = self.messages_error_status
        if isinstance(status, bool) or not isinstance(status, int) or not (status == 0 or 400 <= status <= 599):
            raise ValueError("messages_error_status must be 0 (off) or an HTTP error status (400-599)")
        if not isinstance(self.error_status, int) or not 400 <= self.error_status <= 599:
            raise ValueError("error_status must be an HTTP error status (400-599)")
        kinds = [self.malformed_kinds] if isinstance(self.malformed_kinds, str) else list(self.malformed_kinds)
        if not kinds or any(kind not in MALFORMED_KINDS for kind in kinds):
            raise ValueError(f"malformed_kinds must be a non-empty subset of {MALFORMED_KINDS}")
        self.malformed_kinds = kinds
        return self


_FIELD_NAMES = frozenset(f.name for f in fields(FaultSettings))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What happens to one API request before it is handled."""

    delay: float = 0.0
    reset: bool = False
    burst_429: int | None = None  # Retry-After seconds when a burst 429 is due
    error_status: int | None = None


@dataclass(frozen=True, slots=True)
class PagePlan:
    """How one list page is distorted: rows to keep (None = all) and the error added to total."""

    keep: int | None = None
    total_offset: int = 0


class Faults:
    """Thread-safe. Random decisions come from one seeded stream, so a run is reproducible."""

    def __init__(self, seed: int = 1, settings: FaultSettings | Mapping[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._rng = random.Random(f"{seed}:faults")
        self._settings = FaultSettings()
        if isinstance(settings, FaultSettings):
            self._settings = FaultSettings(**asdict(settings)).validated()
        elif settings:
            self.update(settings)

    def update(self, changes: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
        """Merge `changes` into the settings (all or nothing) and return the result."""
        merged = {**(changes or {}), **more}
        unknown = set(merged) - _FIELD_NAMES
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        with self._lock:
            candidate = FaultSettings(**{**asdict(self._settings), **merged}).validated()
            self._settings = candidate
            return asdict(candidate)

    def clear(self) -> dict[str, Any]:
        with self._lock:
            self._settings = FaultSettings()
            return asdict(self._settings)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self._settings)

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return FaultSettings(**asdict(self._settings))

    def before_request(self) -> Verdict:
        with self._lock:
            s = self._settings
            if not (s.slow_seconds or s.reset_rate or s.burst_429 or s.error_rate):
                return Verdict()
            rand = self._rng.random
            if s.reset_rate and rand() < s.reset_rate:
                return Verdict(delay=s.slow_seconds, reset=True)
            if s.burst_429:
                s.burst_429 -= 1
                return Verdict(delay=s.slow_seconds, burst_429=s.burst_retry_after)
            if s.error_rate and rand() < s.error_rate:
                return Verdict(delay=s.slow_seconds, error_status=s.error_status)
            return Verdict(delay=s.slow_seconds)

    def inserts_for_page(self, offset: int) -> int:
        with self._lock:
            return self._settings.insert_during_paging if offset > 0 else 0

    def plan_page(self, offset: int, rows: int, total: int) -> PagePlan:
        """Short pages only where more rows follow, so a client paging by len(data) stays correct."""
        with self._lock:
            s = self._settings
            keep = None
            if s.short_pages and rows > 1 and offset + rows < total and self._rng.random() < s.short_pages:
                keep = self._rng.randint(1, rows - 1)
            total_offset = 0
            if s.total_jitter and self._rng.random() < 0.5:
                total_offset = self._rng.choice((-1, 1)) * self._rng.randint(1, s.total_jitter)
            return PagePlan(keep, max(total_offset, -total))

    def coin(self) -> bool:
        """A fair, seeded coin, for choosing among variants of a fault."""
        with self._lock:
            return self._rng.random() < 0.5

    def malformed(self) -> str | None:
        """The kind of broken body to send instead of a 200 answer, if one is due."""
        with self._lock:
            s = self._settings
            if s.malformed_rate and self._rng.random() < s.malformed_rate:
                return self._rng.choice(s.malformed_kinds)
            return None
