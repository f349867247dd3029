"""Reading Loki's 400 bodies: which entries of a push were ignored, and why.

A 400 from ``/loki/api/v1/push`` does not mean nothing was stored: Loki keeps every entry that
passed and names the ones it ignored, in one of two plain-text shapes (Loki 3 sources):

* the ingester (pkg/ingester/stream.go ``errorForFailedEntries``), for one stream, at most
  ``max_returned_errors`` (10) entries listed, then a summary::

      entry with timestamp 2024-05-01 10:00:00.123456789 +0000 UTC ignored, reason: 'entry too far
      behind, entry timestamp is: 2024-05-01T10:00:00Z, oldest acceptable timestamp is: 2024-05-01T11:00:00Z',
      user 'fake', total ignored: 2 out of 5 for stream: {service="duvo", status="completed"}

* the distributor (pkg/distributor/validator.go), one message per refused entry, grouped by
  identical text (pkg/util ``GroupedErrors``: ``"; "``-joined, ``"N errors like: "`` prefix;
  Loki 2 returned only the last one)::

      2 errors like: entry for stream '{service="duvo", status="failed"}' has timestamp too old:
      2024-04-20T10:00:00Z, oldest acceptable timestamp is: 2024-04-24T10:00:00Z

The ingester reports only the *last* stream of a request (pkg/ingester/instance.go ``Push``:
"the returned error only reflects what happened to the last stream in the request"), and its
answer replaces the distributor's, so the sink pushes one stream per request and maps a body
back to entries only when the body accounts for every ignored entry; otherwise it says so and
the caller bisects.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from sinks.loki_encode import Entry

_NS = 1_000_000_000

# Go's time.Time.String(): "2006-01-02 15:04:05.999999999 -0700 MST" (fraction trimmed).
_GO_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))? ([+-])(\d{2})(\d{2}) \S+(?: m=[+-][\d.]+)?"
)
_INGESTER_LINE = re.compile(r"^entry with timestamp (?P<ts>.+?) ignored, reason: '(?P<reason>.*)',$")
_SUMMARY = re.compile(
    r"^user '(?P<user>.*)', total ignored: (?P<ignored>\d+) out of (?P<total>\d+) for stream: (?P<labels>\{.*\})$"
)
_COUNT = r"(?:(?P<count>\d+) errors like: )?"
_TOO_OLD = re.compile(
    _COUNT + r"(?P<msg>entry for stream '(?P<labels>\{.*?\})' has timestamp too old: (?P<ts>[^\s;,]+), "
    r"oldest acceptable timestamp is: (?P<cutoff>[^\s;,]+))"
)
_TOO_NEW = re.compile(
    _COUNT + r"(?P<msg>entry for stream '(?P<labels>\{.*?\})' has timestamp too new: (?P<ts>[^\s;,]+))"
)
_LINE_TOO_LONG = re.compile(
    _COUNT + r"(?P<msg>Max entry size '(?P<max>\d+)' bytes exceeded for stream '(?P<labels>\{.*?\})' "
    r"while adding an entry with length '(?P<length>\d+)' bytes)"
)
_BEHIND = "entry too far behind"
_OUT_OF_ORDER = "entry out of order"  # the same, when unordered_writes is off
_CUTOFF = re.compile(r"oldest acceptable timestamp is: (\S+?)'?$")

# Labels Loki adds to a pushed stream on its own.
_LOKI_LABELS = frozenset({"service_name", "__stream_shard__", "__time_shard__"})
_SHARD_LABELS = frozenset({"__stream_shard__", "__time_shard__"})


@dataclass(frozen=True)
class Ignored:
    """One ignored entry (or ``count`` identical distributor messages) named by a 400 body."""

    kind: str  # behind | old | new | line_too_long | other
    reason: str
    labels: dict[str, str] | None
    ts_ns: int | None = None  # exact, from the ingester's list
    second: int | None = None  # unix seconds, from the distributor's RFC 3339 stamp
    length: int | None = None  # line length in bytes, for "Max entry size"
    count: int = 1


@dataclass(frozen=True)
class Summary:
    ignored: int
    total: int  # entries of the stream that reached the ingester
    labels: dict[str, str] | None


@dataclass(frozen=True)
class Reply:
    ignored: tuple[Ignored, ...] = ()
    summary: Summary | None = None
    leftover: str = ""  # text no known shape explained


def go_unquote(text: str) -> str:
    """The value of a Go ``strconv.Quote``-d string body (without the surrounding quotes)."""
    out: list[str] = []
    i = 0
    simple = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
    while i < len(text):
        char = text[i]
        if char != "\\" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        code = text[i + 1]
        if code in simple:
            out.append(simple[code])
            i += 2
        elif code in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[code]
            digits = text[i + 2 : i + 2 + width]
            try:
                out.append(chr(int(digits, 16)))
            except ValueError:
                out.append(text[i : i + 2 + width])
            i += 2 + width
        elif code in "01234567":
            out.append(chr(int(text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(code)
            i += 2
    return "".join(out)


_LABEL_PAIR = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|\})')


def parse_labels(text: str) -> dict[str, str] | None:
    """``{a="b", c="d"}`` (Prometheus ``labels.String()``) as a dict; None if it is not that."""
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    if text == "{}":
        return {}
    labels: dict[str, str] = {}
    position = 1
    while position < len(text):
        match = _LABEL_PAIR.match(text, position)
        if match is None:
            return None
        labels[match.group(1)] = go_unquote(match.group(2))
        position = match.end()
        if match.group(3) == "}":
            return labels if position == len(text) else None
    return None


def parse_go_time(text: str) -> int | None:
    """Nanoseconds since the epoch from Go's ``time.Time.String()``."""
    match = _GO_TIME.fullmatch(text.strip())
    if match is None:
        return None
    day, clock, fraction, sign, hours, minutes = match.groups()
    offset = timedelta(hours=int(hours), minutes=int(minutes))
    zone = timezone(-offset if sign == "-" else offset)
    moment = datetime.fromisoformat(f"{day}T{clock}").replace(tzinfo=zone)
    seconds = int(moment.timestamp())
    return seconds * _NS + int((fraction or "0").ljust(9, "0"))


def parse_rfc3339_seconds(text: str) -> int | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return int(moment.timestamp())


def _kind_of(reason: str) -> str:
    if reason.startswith((_BEHIND, _OUT_OF_ORDER)):
        return "behind"
    return "other"


def parse_reply(body: str) -> Reply:
    """Every ignored entry a 400 body names, plus whatever text it could not explain."""
    ignored: list[Ignored] = []
    summary: Summary | None = None
    rest: list[str] = []
    for line in body.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        entry = _INGESTER_LINE.match(stripped)
        if entry is not None:
            ts_ns = parse_go_time(entry.group("ts"))
            if ts_ns is None:
                rest.append(stripped)
                continue
            reason = entry.group("reason")
            ignored.append(Ignored(_kind_of(reason), reason, None, ts_ns=ts_ns))
            continue
        total = _SUMMARY.match(stripped)
        if total is not None:
            labels = parse_labels(total.group("labels"))
            summary = Summary(int(total.group("ignored")), int(total.group("total")), labels)
            continue
        rest.append(stripped)
    leftover = "\n".join(rest)
    for pattern, kind in ((_TOO_OLD, "old"), (_TOO_NEW, "new"), (_LINE_TOO_LONG, "line_too_long")):
        for match in pattern.finditer(leftover):
            ignored.append(_distributor_record(match, kind))
        leftover = pattern.sub("", leftover)
    leftover = re.sub(r"(\s|;)+", " ", leftover).strip()
    return Reply(tuple(ignored), summary, leftover)


def _distributor_record(match: re.Match[str], kind: str) -> Ignored:
    labels = parse_labels(match.group("labels"))
    count = int(match.group("count") or 1)
    reason = match.group("msg")
    if kind == "line_too_long":
        return Ignored(kind, reason, labels, length=int(match.group("length")), count=count)
    return Ignored(kind, reason, labels, second=parse_rfc3339_seconds(match.group("ts")), count=count)


def same_stream(reported: Mapping[str, str] | None, ours: Mapping[str, str]) -> bool:
    """Loki names the stream with the labels it stored, which may include ones it added."""
    if reported is None:
        return False
    if any(reported.get(name) != value for name, value in ours.items()):
        return False
    return all(name in ours or name in _LOKI_LABELS for name in reported)


def map_rejections(reply: Reply, labels: Mapping[str, str], entries: Sequence[Entry]) -> dict[int, str] | None:
    """Positions in ``entries`` (one stream, sorted by time) that Loki ignored, with its reason.

    None when the body does not account for every ignored entry (unknown text, another stream,
    entries it counted but did not name in a way that can be completed with certainty)."""
    if reply.leftover or (not reply.ignored and reply.summary is None):
        return None
    records = list(reply.ignored)
    if any(r.labels is not None and not same_stream(r.labels, labels) for r in records):
        return None
    summary = reply.summary
    if summary is not None and (not same_stream(summary.labels, labels) or _SHARD_LABELS & set(summary.labels or ())):
        return None

    taken: dict[int, str] = {}
    by_ts: dict[int, list[int]] = {}
    for position, entry in enumerate(entries):
        by_ts.setdefault(entry.ts_ns, []).append(position)

    listed: list[int] = []
    for record in records:
        if record.ts_ns is None:
            continue
        position = next((p for p in by_ts.get(record.ts_ns, ()) if p not in taken), None)
        if position is None:
            return None
        taken[position] = record.reason
        listed.append(position)

    for record in records:
        if record.ts_ns is not None:
            continue
        if not _take_distributor(record, entries, taken):
            return None

    if summary is None:
        _take_certainly_too_old(records, entries, taken)
        return taken
    return _complete_from_summary(summary, records, listed, entries, taken)


def _take_distributor(record: Ignored, entries: Sequence[Entry], taken: dict[int, str]) -> bool:
    if record.kind == "line_too_long":
        candidates = [p for p, e in enumerate(entries) if e.line_bytes() == record.length and p not in taken]
    elif record.second is not None:
        low, high = record.second * _NS, (record.second + 1) * _NS
        candidates = [p for p, e in enumerate(entries) if low <= e.ts_ns < high and p not in taken]
        # Loki refuses the oldest entries as too old and the newest as too new.
        if record.kind == "new":
            candidates.reverse()
    else:
        return False
    if len(candidates) < record.count:
        return False
    for position in candidates[: record.count]:
        taken[position] = record.reason
    return True


def _take_certainly_too_old(records: Sequence[Ignored], entries: Sequence[Entry], taken: dict[int, str]) -> None:
    """Loki 2 names only the last refused entry; every entry older than the cutoff it states
    (truncated to the second, so strictly before that second) was refused for the same reason."""
    for record in records:
        if record.kind != "old":
            continue
        match = _CUTOFF.search(record.reason)
        cutoff = parse_rfc3339_seconds(match.group(1)) if match else None
        if match is None or cutoff is None:
            continue
        stream = record.reason.split(" has timestamp too old:")[0]
        for position, entry in enumerate(entries):
            if entry.ts_ns < cutoff * _NS and position not in taken:
                taken[position] = (
                    f"{stream} has timestamp too old: {rfc3339(entry.ts_ns)}, "
                    f"oldest acceptable timestamp is: {match.group(1)}"
                )


def rfc3339(ts_ns: int) -> str:
    """Go's ``Format(time.RFC3339)`` of a UTC time: whole seconds and ``Z``."""
    return datetime.fromtimestamp(ts_ns // _NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _complete_from_summary(
    summary: Summary,
    records: Sequence[Ignored],
    listed: Sequence[int],
    entries: Sequence[Entry],
    taken: dict[int, str],
) -> dict[int, str] | None:
    dropped = len(entries) - summary.total  # refused by the distributor; its reasons are not in the body
    unnamed = summary.ignored - len(listed)
    if dropped != 0 or unnamed < 0:
        return None
    if unnamed == 0:
        return taken
    # Loki names only the first max_returned_errors entries. Entries of a time-sorted stream that
    # are too far behind the stream's newest are always its oldest ones, so the ignored entries are
    # exactly the first `summary.ignored` of the request, provided every named one says so.
    if any(r.kind != "behind" for r in records) or sorted(listed) != list(range(len(listed))):
        return None
    cutoff = _CUTOFF.search(records[-1].reason) if records else None
    for position in range(summary.ignored):
        if position in taken:
            continue
        reason = f"{_BEHIND}, entry timestamp is: {rfc3339(entries[position].ts_ns)}"
        if cutoff is not None:
            reason += f", oldest acceptable timestamp is: {cutoff.group(1)}"
        taken[position] = (
            f"{reason} (Loki ignored {summary.ignored} of {summary.total} entries of the stream "
            f"and named the first {len(listed)})"
        )
    return taken
