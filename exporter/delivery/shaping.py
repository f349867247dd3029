"""EventShaper: a sink's filter (which events it gets) and field include/exclude/rename."""

from __future__ import annotations

import copy
from typing import Any

from exporter.transform.events import INSIGHT_EVENTS
from sinks.settings import FieldSettings, FilterSettings


class EventShaper:
    def __init__(self, filters: FilterSettings, fields: FieldSettings) -> None:
        self._statuses = set(filters.statuses) if filters.statuses is not None else None
        self._agents = set(filters.agents) if filters.agents is not None else None
        self._teams = set(filters.teams) if filters.teams is not None else None
        self._events = set(filters.events) if filters.events is not None else None
        self._include = [p.split(".") for p in fields.include] if fields.include is not None else None
        self._exclude = [p.split(".") for p in fields.exclude]
        self._rename = [(p.split("."), new) for p, new in fields.rename.items()]
        self.identity = self._include is None and not self._exclude and not self._rename

    def accepts(self, event: dict[str, Any]) -> bool:
        kind = event.get("event")
        if kind in INSIGHT_EVENTS:
            # Summaries and alerts only to a sink that asks for them; they have no Job status.
            return (
                self._events is not None
                and kind in self._events
                and (self._agents is None or event.get("agent_id") in self._agents)
                and (self._teams is None or event.get("team_id") in self._teams)
            )
        return (
            (self._statuses is None or event.get("status") in self._statuses)
            and (self._agents is None or event.get("agent_id") in self._agents)
            and (self._teams is None or event.get("team_id") in self._teams)
            and (self._events is None or kind in self._events)
        )

    def shape(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.identity:
            return event
        if self._include is not None:
            shaped: dict[str, Any] = {}
            for path in self._include:
                found, value = _get(event, path)
                if found:
                    _set(shaped, path, copy.deepcopy(value))
            event = shaped
        elif self._exclude:
            event = copy.deepcopy(event)
        for path in self._exclude:
            _delete(event, path)
        for path, new_name in self._rename:
            found, value = _get(event, path)
            if found:
                _delete(event, path)
                _set(event, new_name.split("."), value)
        return event


def _get(data: Any, path: list[str]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return False, None
        data = data[key]
    return True, data


def _set(data: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        data = data.setdefault(key, {})
    data[path[-1]] = value


def _delete(data: Any, path: list[str]) -> None:
    for key in path[:-1]:
        if not isinstance(data, dict) or key not in data:
            return
        data = data[key]
    if isinstance(data, dict):
        data.pop(path[-1], None)
