"""ISO-8601 parsing and formatting as the Duvo API needs it: `Z` or offsets, with or without fractions."""

from __future__ import annotations

from datetime import UTC, datetime


def parse(value: object) -> datetime | None:
    """A timezone-aware UTC datetime, or None for null, empty or unparseable input."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # the API speaks UTC; a naive stamp is read as UTC
    return parsed.astimezone(UTC)


def format_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`: sortable as text, accepted by every backend."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def normalize(value: object) -> str | None:
    parsed = parse(value)
    return format_utc(parsed) if parsed is not None else None


def now() -> datetime:
    return datetime.now(UTC)
