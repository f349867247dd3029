"""cProfile on CPU time, summarised as "where the time goes": by area, and the top functions."""

from __future__ import annotations

import cProfile
import pstats
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# (area, test on "filename:function"), first match wins.
_AREAS: list[tuple[str, Callable[[str], bool]]] = [
    ("SQLite (state, outbox)", lambda s: "sqlite3" in s or "exporter/state/store.py" in s),
    ("timestamps parse/format", lambda s: "transport/timestamps.py" in s or "strftime" in s or "fromisoformat" in s),
    ("datadog-api-client (models, serialisation)", lambda s: "datadog_api_client" in s),
    ("JSON encode/decode", lambda s: "/json/" in s or "_json" in s or "orjson" in s),
    ("gzip", lambda s: "gzip" in s or "zlib" in s),
    (
        "HTTP client (requests, urllib3, sockets)",
        lambda s: any(k in s for k in ("requests/", "urllib3/", "http/client", "socket", "ssl", "email/", "idna")),
    ),
    ("exporter code", lambda s: "/exporter/" in s),
    ("sink code", lambda s: "/sinks/" in s),
]


def _where(key: tuple[str, int, str]) -> str:
    filename, _, function = key
    return f"{filename}:{function}"


def _short(key: tuple[str, int, str]) -> str:
    filename, line, function = key
    if filename == "~":
        return function
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
    return f"{filename}:{line}({function})"


def profiled(fn: Callable[[], T]) -> tuple[T, dict[str, Any]]:
    """Run fn under cProfile. Its default wall clock is used (a CPU clock costs a system call per
    function call and distorts call-heavy code); time blocked on sockets is set apart instead."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        value = fn()
    finally:
        profile.disable()
    return value, summarise(profile)


def _is_wait(key: tuple[str, int, str]) -> bool:
    filename, _, function = key
    return filename == "~" and any(
        f"'{name}' of '_socket.socket'" in function or f"'{name}' of 'select." in function
        for name in ("recv_into", "recv", "sendall", "send", "connect", "poll", "select")
    )


def summarise(profile: cProfile.Profile, top: int = 8) -> dict[str, Any]:
    stats = pstats.Stats(profile)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]

    def explicit(key: tuple[str, int, str]) -> str | None:
        where = _where(key)
        return next((name for name, test in _AREAS if test(where)), None)

    def area_of(key: tuple[str, int, str], depth: int = 0) -> dict[str, float]:
        """Shares of `key`'s own time by area: its own area, or (builtins and unmatched stdlib)
        its callers' areas in proportion to the time spent on behalf of each."""
        found = explicit(key)
        if found is not None:
            return {found: 1.0}
        callers = entries.get(key, (0, 0, 0, 0, {}))[4]
        total = sum(edge[2] for edge in callers.values())
        if depth >= 4 or not callers or total <= 0:
            return {"other (stdlib, builtins)": 1.0}
        shares: dict[str, float] = {}
        for caller, edge in callers.items():
            for name, share in area_of(caller, depth + 1).items():
                shares[name] = shares.get(name, 0.0) + share * edge[2] / total
        return shares

    waited = sum(tt for key, (_, _, tt, _, _) in entries.items() if _is_wait(key))
    busy = sum(tt for key, (_, _, tt, _, _) in entries.items() if not _is_wait(key)) or 1e-9
    areas: dict[str, float] = {}
    for key, (_, _, tt, _, _) in entries.items():
        if _is_wait(key):
            continue
        for name, share in area_of(key).items():
            areas[name] = areas.get(name, 0.0) + tt * share
    functions = sorted(
        ((key, value) for key, value in entries.items() if not _is_wait(key)), key=lambda item: -item[1][2]
    )[:top]
    return {
        "busy_seconds": busy,
        "waiting_seconds": waited,
        "areas": sorted(((name, tt / busy) for name, tt in areas.items()), key=lambda a: -a[1]),
        "top": [
            {"function": _short(key), "calls": nc, "self_share": tt / busy, "cumulative_share": ct / busy}
            for key, (_, nc, tt, ct, _) in functions
        ],
    }
