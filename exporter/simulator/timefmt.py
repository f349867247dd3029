"""Integer-microsecond time for the simulator, and the ISO-8601 spellings its API emits and accepts."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

US = 1_000_000
# A time that never comes: lets "has it happened yet?" be one integer comparison, no None checks.
NEVER = 1 << 62

# Public style names (SimulatorOptions.timestamp_style) and the per-Job codes stored in the columns.
STYLE_NAMES = ("z_millis", "offset", "seconds", "mixed")
Z_MILLIS, OFFSET, SECONDS, Z_MICROS = 0, 1, 2, 3
# "mixed" also draws Z_MICROS, a spelling no single style produces, to widen what clients meet.
MIXED_CODES = (Z_MILLIS, OFFSET, SECONDS, Z_MICROS)
_STYLE_CODE = {"z_millis": Z_MILLIS, "offset": OFFSET, "seconds": SECONDS}
_PRECISION_US = (1000, 1, US, 1)

_EPOCH = datetime(1970, 1, 1)
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)

_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})"
    r"(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?$"
)


def style_code(name: str) -> int | None:
    """The fixed code for a style name; None for "mixed" (drawn per Job)."""
    if name not in STYLE_NAMES:
        raise ValueError(f"timestamp_style must be one of {STYLE_NAMES}, not {name!r}")
    return _STYLE_CODE.get(name)


def to_us(moment: datetime) -> int:
    """Exact microseconds since the epoch; a naive datetime is read as UTC."""
    if moment.tzinfo is None:
        return (moment - _EPOCH) // _ONE_US
    return (moment - _EPOCH_UTC) // _ONE_US


def from_us(us: int) -> datetime:
    return _EPOCH_UTC + timedelta(microseconds=us)


def truncate(us: int, style: int) -> int:
    """Stored times carry only the precision their spelling shows, so sort order matches what clients read."""
    precision = _PRECISION_US[style]
    return us - us % precision


def render(us: int, style: int) -> str:
    moment = _EPOCH + timedelta(microseconds=us)
    if style == Z_MILLIS:
        return moment.isoformat(timespec="milliseconds") + "Z"
    if style == OFFSET:
        return moment.isoformat(timespec="microseconds") + "+00:00"
    if style == SECONDS:
        return moment.isoformat(timespec="seconds") + "Z"
    return moment.isoformat(timespec="microseconds") + "Z"


def parse_iso(text: str) -> int | None:
    """Microseconds for an ISO-8601 timestamp (Z, offsets, any fraction, naive = UTC); None if invalid."""
    match = _ISO.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        moment = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError:
        return None
    us = to_us(moment)
    if fraction:
        us += int(fraction[:6].ljust(6, "0"))
    if zone and zone not in ("Z", "z"):
        sign = -1 if zone[0] == "-" else 1
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
        if hours > 23 or minutes > 59:
            return None
        us -= sign * (hours * 3600 + minutes * 60) * US
    return us


def coerce(value: object) -> int | None:
    """A datetime, ISO string or None (as given to the manual-control methods) as microseconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return to_us(value)
    if isinstance(value, str):
        parsed = parse_iso(value)
        if parsed is not None:
            return parsed
    raise ValueError(f"not a timestamp: {value!r}")
