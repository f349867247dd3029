"""SimulatorOptions: every knob of the simulated Duvo API, with defaults that match the real one."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

SINCE_MODES = ("inclusive", "exclusive", "seconds", "exclusive_seconds")
RETRY_AFTER_FORMATS = ("seconds", "http-date")


def _default_outcomes() -> dict[str, float]:
    return {"completed": 0.85, "failed": 0.09, "stopped": 0.03, "interrupted": 0.03}


@dataclass
class SimulatorOptions:
    seed: int = 1
    teams: list[str] = field(default_factory=lambda: ["team-sim"])
    # API key -> team ids it may read; None = every team.
    api_keys: dict[str, list[str] | None] = field(default_factory=lambda: {"dv_sim_key": None})
    agents_per_team: int = 5
    # Generation, per team: Poisson arrivals from `start` (None = the clock at creation) up to now.
    jobs_per_second: float = 1.0
    start: datetime | None = None
    late_fraction: float = 0.1
    # Divides lifecycle durations only: created_at is always real clock time.
    time_scale: float = 1.0
    outcome_weights: dict[str, float] = field(default_factory=_default_outcomes)
    # Jobs per team created up front, spread over the window before `start`.
    backfill: int = 0
    backfill_window_seconds: float = 86_400.0
    timestamp_style: str = "z_millis"  # z_millis | offset | seconds | mixed
    # API behaviour the public docs leave open.
    since_mode: str = "inclusive"  # inclusive | exclusive | seconds | exclusive_seconds
    requests_per_minute: int | None = 300  # per key; None or 0 = unlimited
    retry_after_format: str = "seconds"  # seconds | http-date
    default_limit: int = 20
    max_limit: int = 100
    # Initial fault settings (see faults.FaultSettings); can be changed at any time.
    faults: dict[str, Any] = field(default_factory=dict)
    verbose: bool = False  # log every request to stderr

    def validate(self) -> None:
        if not self.teams:
            raise ValueError("at least one team is needed")
        if self.since_mode not in SINCE_MODES:
            raise ValueError(f"since_mode must be one of {SINCE_MODES}")
        if self.retry_after_format not in RETRY_AFTER_FORMATS:
            raise ValueError(f"retry_after_format must be one of {RETRY_AFTER_FORMATS}")
        if self.jobs_per_second < 0 or self.time_scale <= 0 or self.backfill < 0:
            raise ValueError("jobs_per_second and backfill must be >= 0, time_scale > 0")
        if not 0.0 <= self.late_fraction <= 1.0:
            raise ValueError("late_fraction must be within [0, 1]")
        if not 1 <= self.agents_per_team <= 1000:
            raise ValueError("agents_per_team must be within [1, 1000]")
        if not 1 <= self.default_limit <= self.max_limit:
            raise ValueError("default_limit must be within [1, max_limit]")
        unknown = set(self.outcome_weights) - {"completed", "failed", "stopped", "interrupted"}
        if unknown or sum(self.outcome_weights.values()) <= 0:
            raise ValueError("outcome_weights needs positive weights for terminal statuses only")
