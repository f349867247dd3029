"""Turning RunEvents into Loki push entries: stream labels, timestamp, line and structured metadata.

Labels stay few and bounded (static labels, ``status`` and optionally ``agent_id``): Loki indexes
every distinct label set as a stream, so a per-Job value such as ``run_id`` would create one
stream per Job. Per-Job identifiers travel as structured metadata instead (Loki >= 2.9 / 3.x: the
optional third element of a value, ``["<ns>", "<line>", {"run_id": "..."}]``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sinks.base import INSIGHT_EVENT_TYPES, Event, insight_level
from transport import timestamps

# Prometheus/Loki label names; names starting with "__" are reserved for Loki's own use.
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Loki's stock limits (limits_config): max_label_names_per_series 15 (service_name, which Loki
# adds itself, is not counted), max_label_name_length 1024, max_label_value_length 2048.
MAX_LABEL_NAMES = 15
MAX_LABEL_NAME_LENGTH = 1024
MAX_LABEL_VALUE_LENGTH = 2048
# Labels the sink sets itself; a static label of the same name would be silently overwritten.
SINK_LABELS = frozenset({"status", "agent_id"})

# Loki 3 guesses `detected_level` from the line unless the entry carries a level: a structured
# metadata `level` is honoured by every Loki 3 release that detects levels (distributor
# field_detection.go / level_detection.go consult structured metadata before the line).
LEVELS = {"failed": "error", "stopped": "warn", "interrupted": "warn"}

TimestampField = Literal["exported_at", "completed_at"]
_TIME_FIELDS: dict[str, tuple[str, ...]] = {
    "exported_at": ("exported_at", "completed_at", "created_at"),
    "completed_at": ("completed_at", "created_at", "exported_at"),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS_PER_MS = 1_000_000


def check_label_name(name: str) -> None:
    if not LABEL_NAME.match(name):
        raise ValueError(f"label name {name!r} is not a valid Loki label name ([a-zA-Z_][a-zA-Z0-9_]*)")
    if name.startswith("__"):
        raise ValueError(f"label name {name!r} is reserved: names starting with '__' belong to Loki")
    if len(name) > MAX_LABEL_NAME_LENGTH:
        raise ValueError(f"label name {name[:40]!r}... is longer than {MAX_LABEL_NAME_LENGTH} characters")


def check_static_labels(labels: Mapping[str, str], label_agent_id: bool) -> None:
    for name, value in labels.items():
        check_label_name(name)
        if name in SINK_LABELS:
            raise ValueError(f"label {name!r} is set by the sink from each event; remove it from labels")
        if not value:
            raise ValueError(f"label {name!r} has an empty value (Loki treats it as an absent label)")
        if len(value) > MAX_LABEL_VALUE_LENGTH:
            raise ValueError(f"label {name!r} has a value longer than {MAX_LABEL_VALUE_LENGTH} characters")
    count = len([name for name in labels if name != "service_name"]) + 1 + int(label_agent_id)
    if count > MAX_LABEL_NAMES:
        raise ValueError(f"{count} label names per stream exceed Loki's default limit of {MAX_LABEL_NAMES}")


def level_for(status: str) -> str:
    return LEVELS.get(status, "info")


@dataclass(frozen=True)
class Entry:
    """One log entry of a push, remembering which event of the batch it came from."""

    index: int  # position in the batch given to Sink.send
    ts_ns: int
    line: str
    metadata: Mapping[str, str]

    def value(self) -> list[Any]:
        if self.metadata:
            return [str(self.ts_ns), self.line, dict(self.metadata)]
        return [str(self.ts_ns), self.line]

    def line_bytes(self) -> int:
        return len(self.line.encode())


@dataclass(frozen=True)
class Stream:
    labels: Mapping[str, str]
    entries: tuple[Entry, ...]  # sorted by timestamp, as Loki wants them per stream


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _tiebreak_ns(line: str) -> int:
    """A stable sub-millisecond offset so that events sharing a millisecond (a whole export run
    shares one ``exported_at``) get distinct timestamps: Loki's 400 bodies name ignored entries by
    stream and timestamp only, and ``increment_duplicate_timestamp`` would otherwise rewrite them."""
    digest = hashlib.blake2b(line.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _NS_PER_MS


class Encoder:
    def __init__(
        self,
        static_labels: Mapping[str, str],
        *,
        label_agent_id: bool = False,
        timestamp: TimestampField = "exported_at",
        structured_metadata: bool = True,
        omit_null_fields: bool = True,
    ) -> None:
        self._static = dict(static_labels)
        self._label_agent_id = label_agent_id
        self._time_fields = _TIME_FIELDS[timestamp]
        self._structured_metadata = structured_metadata
        self._omit_nulls = omit_null_fields

    def labels(self, event: Event) -> dict[str, str]:
        labels = dict(self._static)
        # A summary or alert has no Job status: its event type takes the (bounded) label instead.
        kind = event.get("event")
        status = kind if kind in INSIGHT_EVENT_TYPES else event.get("status")
        labels["status"] = str(status or "unknown")
        agent_id = event.get("agent_id")
        if self._label_agent_id and agent_id not in (None, ""):
            labels["agent_id"] = str(agent_id)
        return labels

    def line(self, event: Event) -> str:
        body = _without_nulls(event) if self._omit_nulls else event
        # Sorted keys: the same event always yields the same line, whatever built the mapping.
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)

    def metadata(self, event: Event) -> dict[str, str]:
        if not self._structured_metadata:
            return {}
        metadata: dict[str, str] = {}
        for key in ("run_id", "team_id"):
            value = event.get(key)
            if value not in (None, ""):
                metadata[key] = str(value)
        agent_id = event.get("agent_id")
        if not self._label_agent_id and agent_id not in (None, ""):
            metadata["agent_id"] = str(agent_id)
        insight = insight_level(event)
        if insight is not None:
            metadata["level"] = "warn" if insight == "warning" else insight
        else:
            metadata["level"] = level_for(str(event.get("status") or ""))
        return metadata

    def timestamp_ns(self, event: Event, line: str) -> int:
        for field in self._time_fields:
            moment = timestamps.parse(event.get(field))
            if moment is not None:
                millis = (moment - _EPOCH) // timedelta(milliseconds=1)
                return millis * _NS_PER_MS + _tiebreak_ns(line)
        # No usable time field (all excluded by `fields`): the only case where a resend differs.
        return time.time_ns() // _NS_PER_MS * _NS_PER_MS + _tiebreak_ns(line)

    def entry(self, index: int, event: Event) -> Entry:
        line = self.line(event)
        return Entry(index, self.timestamp_ns(event, line), line, self.metadata(event))

    def streams(self, events: Sequence[Event]) -> list[Stream]:
        """Group events by label set, streams ordered by their first event, entries by time."""
        grouped: dict[tuple[tuple[str, str], ...], tuple[dict[str, str], list[Entry]]] = {}
        for index, event in enumerate(events):
            labels = self.labels(event)
            key = tuple(sorted(labels.items()))
            grouped.setdefault(key, (labels, []))[1].append(self.entry(index, event))
        return [
            Stream(labels, tuple(sorted(entries, key=lambda e: (e.ts_ns, e.index))))
            for labels, entries in grouped.values()
        ]


def push_body(labels: Mapping[str, str], entries: Sequence[Entry]) -> bytes:
    """The JSON body of ``POST /loki/api/v1/push`` for one stream (timestamps as strings of ns)."""
    payload = {"streams": [{"stream": dict(labels), "values": [entry.value() for entry in entries]}]}
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
