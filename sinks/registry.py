"""Which sink types exist: type name -> (settings model, sink class). Adding a backend = one entry.

Backend modules are imported lazily so that a config using only the file sink does not pay for
importing (or even having) a backend's client library.
"""

from __future__ import annotations

import importlib
from typing import Any

from sinks.base import Sink
from sinks.settings import SinkSettings

# type -> (module, settings class, sink class)
SINK_TYPES: dict[str, tuple[str, str, str]] = {
    "file": ("sinks.file", "FileSinkSettings", "FileSink"),
    "datadog": ("sinks.datadog", "DatadogSinkSettings", "DatadogSink"),
    "splunk_hec": ("sinks.splunk_hec", "SplunkHecSinkSettings", "SplunkHecSink"),
    "loki": ("sinks.loki", "LokiSinkSettings", "LokiSink"),
}


def available_types() -> list[str]:
    return [name for name in SINK_TYPES if _module_exists(name)]


def _module_exists(type_name: str) -> bool:
    try:
        importlib.import_module(SINK_TYPES[type_name][0])
    except ModuleNotFoundError:
        return False
    return True


def settings_model(type_name: str) -> type[SinkSettings]:
    module, settings_cls, _ = SINK_TYPES[type_name]
    return getattr(importlib.import_module(module), settings_cls)


def build_sink(settings: SinkSettings) -> Sink:
    module, _, sink_cls = SINK_TYPES[settings.type]  # type: ignore[attr-defined]
    cls: Any = getattr(importlib.import_module(module), sink_cls)
    return cls(settings)
