"""Times on the command line (`backfill --since`, `replay --since`, `reset-sink --to`): one parser.

A time is RFC 3339 (``2026-11-01T00:00:00Z``; a time without an offset is read as UTC) or a
duration back from now (``24h``, ``7d``, ``1h30m``: transport/durations.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from transport import timestamps
from transport.durations import parse_duration

HINT = "use RFC 3339 (2026-11-01T00:00:00Z) or a duration back from now (24h, 7d)"


def parse_moment(text: str, now: datetime) -> datetime:
    """The UTC moment ``text`` names. Raises ValueError with a one-line message."""
    value = (text or "").strip()
    if not value:
        raise ValueError(f"an empty time: {HINT}")
    # A bare number would be both a (strange) ISO year and seconds: only durations read it.
    if not value.isdigit():
        moment = timestamps.parse(value)
        if moment is not None:
            return moment
    try:
        return now - timedelta(seconds=parse_duration(value))
    except (ValueError, OverflowError):
        raise ValueError(f"{text!r} is not a time: {HINT}") from None
