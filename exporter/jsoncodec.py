"""JSON on the hot paths (API pages in, events into the outbox, outbox out to sinks): orjson, with
the standard library as the fallback for the inputs orjson refuses (integers beyond 64 bits,
NaN/Infinity literals), so a surprising record is slower, never lost."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def loads(data: str | bytes) -> Any:
    """Raises ValueError (as json.loads does) when ``data`` is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
