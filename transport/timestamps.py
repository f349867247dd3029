"""ISO-8601 parsing and formatting as the Duvo API needs it: `Z` or offsets, with or without fractions.

These run several times per Job on the extraction hot path, so the canonical form we write
(``2026-05-17T10:00:00.123Z``) takes a fast path."""

from __future__ import annotations

from datetime import UTC, datetime


def parse(value: object) -> datetime | None:
    """A timezone-aware UTC datetime, or None for null, empty or unparseable input."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)  # 3.11+: accepts "Z", offsets, fractions
    except ValueError:
        text = value.strip()
        if text.endswith("z"):
            text = text[:-1] + "Z"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
    if parsed.tzinfo is UTC:  # "Z" and "+00:00" both come back as the UTC singleton
        return parsed
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)  # the API speaks UTC; a naive stamp is read as UTC
    return parsed if parsed.utcoffset() == UTC.utcoffset(None) else parsed.astimezone(UTC)


def format_utc(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds and `Z`: sortable as text, accepted by every backend."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
        f"{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def _is_canonical(text: str) -> bool:
    return (
        len(text) == 24
        and text[23] == "Z"
        and text[19] == "."
        and text[10] == "T"
        and text[4] == "-"
        and text[7] == "-"
        and text[13] == ":"
        and text[16] == ":"
    )


def normalize(value: object) -> str | None:
    """The canonical text of a timestamp, or None when it is missing or unreadable."""
    return read(value)[1]


def read(value: object) -> tuple[datetime | None, str | None]:
    """The moment and its canonical text, parsing once: (None, None) when missing or unreadable."""
    parsed = parse(value)
    if parsed is None:
        return None, None
    if isinstance(value, str) and _is_canonical(value):
        return parsed, value
    return parsed, format_utc(parsed)


def now() -> datetime:
    return datetime.now(UTC)
