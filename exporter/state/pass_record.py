"""PassRecord: how the last extraction pass went, kept in the state for `status` and readiness."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from exporter.logsetup import redact
from exporter.source.extraction import PassReport
from sinks.base import one_line

LAST_PASS_KEY = "last_pass"


@dataclass(frozen=True)
class PassRecord:
    started_at: float
    finished_at: float
    # ok: read to the end; incomplete: stopped early (shutdown, budget, a full outbox) and goes on
    # next pass; failed: an error ended it (the API down, a bug), named in `error`.
    outcome: str
    events: int = 0
    requests: int = 0
    error: str | None = None

    @classmethod
    def finished(cls, started_at: float, report: PassReport) -> PassRecord:
        return cls(
            started_at,
            time.time(),
            "incomplete" if report.halted else "ok",
            report.events,
            report.requests,
            f"stopped early: {report.halted}" if report.halted else None,
        )

    @classmethod
    def failed(cls, started_at: float, exc: BaseException) -> PassRecord:
        return cls(started_at, time.time(), "failed", error=one_line(redact(str(exc))))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PassRecord:
        return cls(**{key: data.get(key) for key in cls.__dataclass_fields__})  # type: ignore[arg-type]
