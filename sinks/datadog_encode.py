"""RunEvent -> Datadog log entry, and the size rules of the Datadog Logs intake.

Datadog reads some top-level attributes of a JSON log as its own ("reserved" / preprocessing
attributes, docs.datadoghq.com/logs/log_configuration/pipelines/#preprocessing):

- status: ``status``, ``severity``, ``level``, ``syslog.severity``, mapped by the status remapper on
  the first letter (docs .../processors/log_status_remapper): a Job status sent there would file
  every ``completed`` Job as critical ("c") and every ``failed`` one as emergency ("f").
- date: ``@timestamp``, ``timestamp``, ``_timestamp``, ``Timestamp``, ``eventTime``, ``date``,
  ``published_date``, ``syslog.timestamp``. The intake accepts dates "up to 18 hours in the past
  and two hours in the future" (docs .../processors/log_date_remapper) and answers 202 for the
  others all the same, then drops them (docs .../logs/troubleshooting: "Logs with a timestamp
  further than 18 hours in the past are dropped at intake"). So the Job's time is sent as ``date``
  (epoch milliseconds, a format the date remapper reads) only while it is safely inside that
  window (see `log_date`); an older event, such as one exported after an outage, goes without a
  date and the intake stamps it on receipt. The Job's own times always stay in the ``*_at``
  attributes.
- host (``host``, ``hostname``, ``syslog.hostname``), service (``service``, ``syslog.appname``),
  message, trace id (``dd.trace_id``, ``contextMap.dd.trace_id``), source, tags.

So the Job status goes to ``job_status`` (attribute and tag), the log level to ``status``, and any
other event field that would land on a reserved name is renamed ``job_<name>``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sinks.base import insight_level, insight_message
from transport import timestamps

SOURCE = "duvo"

# Limits of POST /api/v2/logs (docs.datadoghq.com/api/latest/logs/#send-logs): 1,000 entries,
# 5 MB uncompressed per request, 1 MB per log. Measured as decimal megabytes on the bytes the
# client library actually sends (see wire_size), which errs on the small side.
MAX_ENTRIES = 1000
MAX_PAYLOAD_BYTES = 5_000_000
MAX_LOG_BYTES = 1_000_000

# A trimmed member keeps this many characters of its JSON as a preview. Only members over
# _TRIM_ABOVE bytes are trimmed: with ASCII escapes a preview can take up to 6 bytes a character,
# so trimming anything smaller might not save a byte.
PREVIEW_CHARS = 1024
_TRIM_ABOVE = 8 * PREVIEW_CHARS

# The intake's accepted dates (see the module docstring), in seconds from the time it receives the
# log. A date is sent only up to DEFAULT_DATE_MAX_AGE old: the margin below 18 h covers the time
# between encoding and the intake reading the log, and clock skew between this host and Datadog.
INTAKE_MAX_AGE = 18 * 3600
DEFAULT_DATE_MAX_AGE = 17 * 3600
# A Job time ahead of this host's clock by more than this is not a clock difference between Duvo
# and us but a wrong time (the intake would take up to 2 h): it is not sent as the log's date.
MAX_FUTURE_SKEW = 5 * 60

# Where the log's date comes from, first readable wins: the Job's completion, the source record's
# (when `fields` shaping removed or renamed the top-level one), else when the exporter saw the Job
# in this state (a run.waiting event has no completion time).
_DATE_SOURCES = ("completed_at", "run.completed_at", "exported_at")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Names Datadog interprets at the top level of a log (see the module docstring). Event fields with
# these names are renamed; the ones this module sets itself are written after the renaming.
RESERVED = frozenset(
    {
        "message", "msg", "log",
        "status", "severity", "level", "syslog",
        "date", "timestamp", "@timestamp", "_timestamp", "Timestamp", "eventTime", "published_date",
        "host", "hostname",
        "service", "source", "ddsource", "ddtags", "tags",
        "trace_id", "span_id", "dd", "contextMap",
        "truncated", "truncated_fields", "original_size",
    }
)  # fmt: skip

# Attributes that identify the log; never trimmed to make an oversized log fit.
_CORE = frozenset(
    {
        "ddsource", "service", "hostname", "ddtags", "message", "status", "job_status", "date",
        "run_id", "event_id", "event", "team_id", "agent_id",
    }
)  # fmt: skip

_LEVELS = {"failed": "error", "stopped": "warning", "interrupted": "warning", "completed": "info"}


def log_level(job_status: str | None) -> str:
    """The Datadog log status (level) for a Job status; anything not listed is plain info."""
    return _LEVELS.get((job_status or "").lower(), "info")


def _tag_value(value: Any) -> str:
    # A comma would split the tag in two; Datadog normalises the rest itself.
    return str(value).replace(",", "_").strip()


def tags_for(event: Mapping[str, Any], job_status: str | None, extra: Iterable[str] = ()) -> str:
    tags = []
    for key, value in (("team", event.get("team_id")), ("agent", event.get("agent_id")), ("job_status", job_status)):
        if value not in (None, ""):
            tags.append(f"{key}:{_tag_value(value)}")
    tags.extend(extra)
    return ",".join(tags)


def _job_status(event: Mapping[str, Any]) -> str | None:
    status = event.get("status")
    if status is None and isinstance(event.get("run"), Mapping):
        status = event["run"].get("status")  # the field may have been excluded or renamed away
    return None if status is None else str(status)


def _attribute_name(key: str) -> str:
    if key in RESERVED or key.startswith("_"):
        # A leading underscore is also kept off the top level: the client library's models treat
        # _-names as their own keyword arguments.
        return "job_" + key.lstrip("_")
    return key


def _source_time(event: Mapping[str, Any], path: str) -> datetime | None:
    holder: Any = event
    for part in path.split("."):
        if not isinstance(holder, Mapping):
            return None
        holder = holder.get(part)
    try:
        return timestamps.parse(holder)
    except OverflowError:  # a year-1 or year-9999 time with an offset: no moment in UTC, so no date
        return None


def log_date(event: Mapping[str, Any], now: datetime, max_age: float) -> int | None:
    """The log's ``date`` in epoch milliseconds, or None to let the intake stamp it on receipt.

    The event's time (see _DATE_SOURCES) is used only when it is at most ``max_age`` seconds
    before ``now`` and at most MAX_FUTURE_SKEW after it; ``max_age`` 0 never sends a date.
    ``now`` must be the time of this send attempt: an event that waited for a retry is judged
    again and, grown too old meanwhile, goes without a date instead of being dropped by the intake.
    """
    if max_age <= 0:
        return None
    for path in _DATE_SOURCES:
        moment = _source_time(event, path)
        if moment is not None:
            break
    else:
        return None
    age = (now - moment).total_seconds()
    if age > max_age or age < -MAX_FUTURE_SKEW:
        return None
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def to_log(
    event: Mapping[str, Any],
    *,
    service: str,
    hostname: str,
    tags: Iterable[str] = (),
    date: int | None = None,
) -> dict[str, Any]:
    """The Datadog log entry for one event: Datadog's own fields plus the event's fields as
    attributes, and ``date`` (epoch milliseconds, from `log_date`) when given."""
    level = insight_level(event)
    if level is not None:
        return _insight_log(event, level, service=service, hostname=hostname, tags=tags, date=date)
    job_status = _job_status(event)
    log: dict[str, Any] = {}
    for key, value in event.items():
        if key == "status":
            continue  # becomes job_status below
        log[_attribute_name(str(key))] = value
    run_id = event.get("run_id")
    if run_id is None and isinstance(event.get("run"), Mapping):
        run_id = event["run"].get("id")
    log.update(
        {
            "ddsource": SOURCE,
            "service": service,
            "hostname": hostname,
            "ddtags": tags_for(event, job_status, tags),
            "message": f"Job {run_id} {job_status}",
            "status": log_level(job_status),
            "job_status": job_status,
            "run_id": run_id,
        }
    )
    if date is not None:
        log["date"] = date
    return log


def _insight_log(
    event: Mapping[str, Any],
    level: str,
    *,
    service: str,
    hostname: str,
    tags: Iterable[str],
    date: int | None,
) -> dict[str, Any]:
    """A run.summary or alert.* event: no run_id and no Job status; the level says how bad it is
    (an alert that starts: error for a failure rate, warning for latency) and a tag names the event."""
    log = {_attribute_name(str(key)): value for key, value in event.items()}
    log.update(
        {
            "ddsource": SOURCE,
            "service": service,
            "hostname": hostname,
            "ddtags": tags_for(event, None, [f"duvo_event:{event.get('event')}", *tags]),
            "message": insight_message(event),
            "status": level,
        }
    )
    if date is not None:
        log["date"] = date
    return log


def wire_size(value: Any) -> int:
    """Bytes ``value`` takes in the request body. datadog-api-client serialises with plain
    ``json.dumps`` (ASCII escapes, ", " separators), so this is what the intake measures.
    Raises ValueError for NaN/Infinity, which are not JSON and which the intake would refuse."""
    return len(json.dumps(value, allow_nan=False))


def payload_size(sizes: Iterable[int]) -> int:
    """Bytes of the JSON array holding logs of these sizes: brackets and ", " between entries."""
    total, count = 2, 0
    for size in sizes:
        total += size
        count += 1
    return total + 2 * max(count - 1, 0)


def _preview(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def fit(log: dict[str, Any], limit: int = MAX_LOG_BYTES) -> tuple[dict[str, Any], int]:
    """``log`` and its wire size, trimmed to at most ``limit`` bytes if it is bigger.

    A log is never dropped for its size: its biggest members (``run.output``, ``run.steps``, ...)
    are replaced, largest first, by a preview of their JSON until it fits, and the log says so with
    ``truncated: true``, ``truncated_fields`` (the trimmed paths) and ``original_size``.
    """
    size = wire_size(log)
    if size <= limit:
        return log, size
    out = dict(log)
    # Every member encodes independently, so replacing one changes the total by exactly the
    # difference in the member's own size.
    slots: list[tuple[int, str, str | None]] = []
    for key, value in out.items():
        if key in _CORE:
            continue
        if isinstance(value, dict):
            out[key] = dict(value)
            slots.extend((wire_size(sub), key, subkey) for subkey, sub in value.items())
        else:
            slots.append((wire_size(value), key, None))
    slots.sort(key=lambda slot: slot[0], reverse=True)
    trimmed: list[str] = []
    marker_room = 200  # the three marker attributes, before their paths
    current = size

    def too_big() -> bool:
        return current + marker_room + sum(len(json.dumps(path)) + 2 for path in trimmed) > limit

    for old, key, subkey in slots:
        if not too_big() or old <= _TRIM_ABOVE:
            break
        holder = out[key] if subkey is not None else out
        name = subkey if subkey is not None else key
        holder[name] = _preview(holder[name])
        current += wire_size(holder[name]) - old
        trimmed.append(key if subkey is None else f"{key}.{subkey}")
    if too_big():
        # Many small members: preview whole attributes, then drop them, biggest first.
        for key in sorted((k for k in out if k not in _CORE), key=lambda k: wire_size(out[k]), reverse=True):
            if not too_big():
                break
            old = wire_size(out[key])
            if old <= _TRIM_ABOVE:
                continue
            out[key] = _preview(out[key])
            current += wire_size(out[key]) - old
            trimmed.append(key)
        for key in sorted((k for k in out if k not in _CORE), key=lambda k: wire_size(out[k]), reverse=True):
            if not too_big():
                break
            current -= wire_size(out.pop(key)) + len(json.dumps(key)) + 4
            trimmed.append(key)
    out["truncated"] = True
    out["truncated_fields"] = list(dict.fromkeys(trimmed))
    out["original_size"] = size
    return out, wire_size(out)
