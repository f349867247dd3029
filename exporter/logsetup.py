"""Structured logging (JSON lines or console) with secret redaction applied to everything rendered.

Secrets are registered once (API keys, tokens) and masked by a processor that runs after exception
and stack rendering and right before the renderer, for structlog events and stdlib records alike, so
nothing a caller or a third-party library logs can carry a registered secret to the output.

Two levels apply: the exporter's own (every structlog event, and stdlib records of the `exporter`,
`sinks` and `transport` loggers) and the libraries' (urllib3, apscheduler, requests,
datadog_api_client and any other stdlib logger). Libraries stay at warning unless asked: 31 of a
daemon's 48 lines at info were APScheduler's, and 201 of 215 at debug were urllib3's.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import quote

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

MASK = "***"
_MIN_SECRET_LENGTH = 4
_MAX_DEPTH = 16  # deeper (or cyclic) structures are rendered as redacted repr instead of walked

# Top-level logger names of this project's packages; every other stdlib logger is a library's.
OWN_LOGGERS = frozenset({"exporter", "sinks", "transport"})
LOG_FORMATS = ("auto", "json", "console")
_LIBRARY_DEFAULT = logging.WARNING

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# Generic credential shapes, masked even when nobody registered the value. Each keeps its prefix so
# the line still says *what* was there. The Splunk pattern demands a token-like value (8+ chars with
# a digit, e.g. a HEC GUID) because "Splunk" is also an ordinary word in this project's log lines.
# Possessive quantifiers stop the Authorization pattern from backtracking into a shorter prefix.
_GENERIC_PATTERNS = (
    r"(?P<authz>\bAuthorization['\"]?+\s*+[:=]\s*+['\"]?+)[^'\"\r\n]+",
    r"(?P<bearer>\bBearer\s+)[^\s'\",;)\]}]+",
    r"(?P<splunk>\bSplunk\s+)(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{8,}",
    r"(?P<ddkey>\bDD[-_](?:API|APP|APPLICATION)[-_]KEY['\"]?+\s*+[:=]\s*+['\"]?+)[^\s'\",;}]+",
    r"(?P<userinfo>://[^:/@\s]+:)[^@/\s]+(?=@)",
)
_PREFIX_GROUPS = ("authz", "bearer", "splunk", "ddkey", "userinfo")
# Lower-case substrings without which no generic pattern can match: checking them with `in` is far
# cheaper than running the regex over every string of every event.
_GENERIC_TRIGGERS = ("authorization", "bearer", "splunk", "dd-", "dd_", "://")

_GENERIC = re.compile("|".join(_GENERIC_PATTERNS), re.IGNORECASE)


@dataclass(frozen=True)
class _Registry:
    secrets: frozenset[str] = frozenset()
    lowered: tuple[str, ...] = ()  # for the cheap containment pre-check
    pattern: re.Pattern[str] | None = None


_lock = threading.Lock()
# Replaced as a whole, never mutated, so readers need no lock and never see a half-updated state.
_registry = _Registry()


def register_secret(value: str | None) -> None:
    """Remember a secret so that ``redact`` (and thus every log line) masks it from now on."""
    global _registry
    if not value:
        return
    value = value.strip()
    if len(value) < _MIN_SECRET_LENGTH:
        return
    # A key can also show up percent-encoded inside a URL someone logs.
    fresh = {value, quote(value, safe="")}
    with _lock:
        if fresh <= _registry.secrets:
            return
        secrets = _registry.secrets | fresh
        # Longest first so a secret that contains another is masked whole, not leaving a tail behind.
        alternatives = "|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True))
        _registry = _Registry(
            secrets=secrets,
            lowered=tuple({s.lower() for s in secrets}),
            pattern=re.compile(alternatives, re.IGNORECASE),
        )


def _replace_generic(match: re.Match[str]) -> str:
    for group in _PREFIX_GROUPS:
        prefix = match.group(group)
        if prefix is not None:
            return prefix + MASK
    return MASK


def redact(text: str) -> str:
    """``text`` with every registered secret and generic credential pattern replaced by ``***``."""
    lowered = text.lower()
    registry = _registry
    # Matching is case-insensitive: a key echoed in upper case by some proxy is still that key.
    # Registered secrets go first and on their own, so no generic pattern can take part of one
    # and leave the rest of it behind.
    if registry.pattern is not None and any(s in lowered for s in registry.lowered):
        text = registry.pattern.sub(MASK, text)
        lowered = text.lower()
    if any(trigger in lowered for trigger in _GENERIC_TRIGGERS):
        text = _GENERIC.sub(_replace_generic, text)
    return text


# Field and header names whose value is a credential whatever it looks like (a logged headers dict,
# a config dump). Compared lower-case with "_" read as "-".
_SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "api-key",
        "apikey",
        "x-api-key",
        "dd-api-key",
        "dd-application-key",
        "dd-app-key",
        "token",
        "access-token",
        "hec-token",
        "password",
        "secret",
        "client-secret",
    }
)


def _is_sensitive(key: object) -> bool:
    return isinstance(key, str) and key.lower().replace("_", "-") in _SENSITIVE_KEYS


def _redact_value(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return _redact_mapping(value, depth + 1)
        if isinstance(value, list | tuple | set | frozenset):
            items = [_redact_value(v, depth + 1) for v in value]
            return tuple(items) if isinstance(value, tuple) else items
    # Renderers would repr() anything else (exceptions, requests objects, ...) after this point,
    # which is exactly where a secret could slip through; repr it here and redact the result.
    return redact(repr(value))


def _redact_mapping(mapping: dict[Any, Any], depth: int) -> dict[Any, Any]:
    return {
        (redact(k) if isinstance(k, str) else k): (
            MASK if v is not None and _is_sensitive(k) else _redact_value(v, depth)
        )
        for k, v in mapping.items()
    }


def redact_processor(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: redact every string in the event, recursively. Keep it right before rendering."""
    return _redact_mapping(event_dict, 0)


_FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _order_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    # Fixed leading keys make raw JSON lines scannable by eye; the rest keep call order.
    ordered = {k: event_dict.pop(k) for k in _FIRST_KEYS if k in event_dict}
    ordered.update(event_dict)
    return ordered


def _parse_level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use one of {', '.join(_LEVELS)}") from None


def _parse_format(log_format: str) -> bool | None:
    """True for JSON, False for console, None for "by terminal"."""
    value = log_format.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}: use one of {', '.join(LOG_FORMATS)}")
    return {"json": True, "console": False}.get(value)


# structlog method names (BoundLogger.exception proxies as "exception") -> stdlib levels.
_METHOD_LEVELS = {**_LEVELS, "exception": logging.ERROR, "fatal": logging.CRITICAL}


def _drop_below(level: int) -> Processor:
    """structlog processor: drop events under ``level`` before anything is spent rendering them.

    It replaces structlog's filter_by_level, which would apply the stdlib logger's effective level,
    and that is the (lower) library level whenever libraries are turned up."""

    def drop(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        if _METHOD_LEVELS.get(method_name, logging.CRITICAL) < level:
            raise structlog.DropEvent
        return event_dict

    return drop


class _LevelByOrigin(logging.Filter):
    """The exporter's records at its level, every library's at the library level.

    The root logger is set to the lower of the two, so a record that no one wants is not even
    created; this filter sorts out the rest."""

    def __init__(self, own: int, library: int) -> None:
        super().__init__()
        self.own = own
        self.library = library

    def filter(self, record: logging.LogRecord) -> bool:
        # wrap_for_formatter marks structlog's records with _logger: those are ours whatever
        # their logger name.
        ours = hasattr(record, "_logger") or record.name.partition(".")[0] in OWN_LOGGERS
        return record.levelno >= (self.own if ours else self.library)


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


_handler: logging.Handler | None = None  # ours on the root logger; replaced on reconfiguration


def configure_logging(
    level: str | int = "info",
    *,
    json: bool | None = None,
    stream: TextIO | None = None,
    library_level: str | int | None = None,
    log_format: str | None = None,
) -> None:
    """Send structlog and stdlib logging to ``stream`` (stderr) as JSON lines or, on a TTY, console text.

    ``level`` is the exporter's own; ``library_level`` that of third-party loggers (default: warning,
    or ``level`` if stricter). ``log_format`` is "json", "console" or "auto"; with "auto" (or None)
    ``json`` decides, and ``json=None`` picks JSON unless the stream is a terminal. Raises
    ValueError for an unknown level or format. Calling it again reconfigures in place.
    """
    global _handler
    numeric_level = _parse_level(level)
    libraries = max(_LIBRARY_DEFAULT, numeric_level) if library_level is None else _parse_level(library_level)
    chosen = _parse_format(log_format) if log_format is not None else None
    json = chosen if chosen is not None else json
    target = stream if stream is not None else sys.stderr
    use_json = not _is_tty(target) if json is None else json

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    # Applied to stdlib records (urllib3, apscheduler, ...) before the shared formatter chain.
    foreign_pre_chain: list[Processor] = [
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=_is_tty(target),
            # Tracebacks are rendered to text (and redacted) before this renderer sees them.
            exception_formatter=structlog.dev.plain_traceback,
        )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=foreign_pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_processor,
            _order_keys,
            renderer,
        ],
    )
    handler = logging.StreamHandler(target)
    handler.setFormatter(formatter)
    handler.addFilter(_LevelByOrigin(numeric_level, libraries))

    root = logging.getLogger()
    with _lock:
        if _handler is not None:
            root.removeHandler(_handler)
        root.addHandler(handler)
        _handler = handler
    root.setLevel(min(numeric_level, libraries))

    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _drop_below(numeric_level),  # drop early: filtered events cost no rendering
            structlog.stdlib.add_logger_name,
            structlog.stdlib.add_log_level,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
            # exc_info=True means "the exception being handled": resolve it while still in scope.
            structlog.processors.format_exc_info,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: module-level loggers must follow a later reconfiguration (and
        # structlog.testing.capture_logs in tests), at a cost of microseconds per call.
        cache_logger_on_first_use=False,
    )
