"""Configuration: YAML with ${VAR} / ${VAR:-default} interpolation, validated into typed settings.

Every problem becomes a `ConfigError` whose message is one line per problem, each naming the YAML
path (``sinks[0].path: field required``); the CLI prints them and exits with code 2.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator

from sinks import registry
from sinks.settings import SinkSettings, StrictModel, TLSSettings
from transport import timestamps
from transport.durations import parse_duration

DUVO_KEY_RATE_LIMIT = 300  # requests per minute per API key, Duvo's documented limit


class ConfigError(Exception):
    """Invalid configuration; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class DuvoSettings(StrictModel):
    base_url: str = "https://api.duvo.ai/v2"
    api_key: SecretStr
    team_id: str | None = None
    teams: list[str] | None = None
    # This process's share of the key's 300/min; other users of the key need the rest.
    requests_per_minute: float = Field(default=240, gt=0)
    start_from: str = "24h"
    page_size: int = Field(default=100, ge=1, le=100)
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    read_timeout: float = Field(default=30.0, gt=0, le=600)
    max_attempts: int = Field(default=6, ge=1, le=50)
    tls: TLSSettings = Field(default_factory=TLSSettings)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("start_from")
    @classmethod
    def _start_from(cls, value: str) -> str:
        start_moment(value, timestamps.now())  # raises ValueError with a readable message
        return value

    @model_validator(mode="after")
    def _one_team_source(self) -> DuvoSettings:
        if self.team_id and self.teams:
            raise ValueError("set team_id or teams, not both")
        if not self.team_id and not self.teams:
            raise ValueError("team_id (or teams) is required")
        if self.teams is not None and len(set(self.teams)) != len(self.teams):
            raise ValueError("teams has duplicates")
        return self

    @property
    def team_ids(self) -> list[str]:
        return list(self.teams) if self.teams else [self.team_id or ""]


class ScheduleSettings(StrictModel):
    every: str | None = None
    cron: str | None = None

    @field_validator("every")
    @classmethod
    def _every(cls, value: str | None) -> str | None:
        if value is not None and parse_duration(value) < 1:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(f"not a valid crontab expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleSettings:
        if self.every and self.cron:
            raise ValueError("set every or cron, not both")
        if not self.every and not self.cron:
            self.every = "5m"
        return self

    @property
    def interval_seconds(self) -> float | None:
        return parse_duration(self.every) if self.every else None


def _valid_duration(value: str) -> str:
    parse_duration(value)
    return value


# A duration as people write it in YAML (30s, 5m, 1h30m), kept as written for the docs' sake.
DurationText = Annotated[str, AfterValidator(_valid_duration)]


class StateSettings(StrictModel):
    path: str = "./var/state.db"
    # Past this many undelivered events extraction pauses (logged) until sinks catch up:
    # nothing is dropped, the checkpoint simply stops advancing.
    max_outbox_events: int = Field(default=1_000_000, ge=100)
    # full: every commit survives a power cut; normal: survives a process crash (kill -9).
    synchronous: Literal["full", "normal"] = "full"
    # How long already-exported Jobs are remembered past the re-listing horizon, so a Job
    # listed again (clock skew, a `since` that filters on another time) is not exported twice.
    seen_retention: DurationText = "24h"


class RecheckSettings(StrictModel):
    """How open Jobs are looked at again. Each pass lists the open statuses (the sweep) for the
    newest open Jobs, up to ``sweep_pages`` requests, and fetches any that left them; the rest
    are re-checked after age x factor, clamped to [min, max]."""

    sweep_pages: int = Field(default=20, ge=0, le=10_000)  # 0 = no sweep, age schedule only
    min_interval: DurationText = "0s"
    max_interval: DurationText = "1h"
    age_factor: float = Field(default=0.25, ge=0, le=10)


class ExtractSettings(StrictModel):
    emit: Literal["terminal", "transitions"] = "terminal"
    # Re-read this much before the checkpoint: `since` may be exclusive or second-precise.
    overlap: str = "1s"
    # Cap on Duvo requests per pass (None = only the rate limit bounds it). New Jobs are read
    # first; open-Job re-checks that do not fit wait for the next pass.
    max_requests_per_pass: int | None = Field(default=None, ge=1)
    recheck: RecheckSettings = Field(default_factory=RecheckSettings)

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, value: str) -> str:
        if parse_duration(value) < 1:
            raise ValueError("must be at least 1s (the API's `since` may have second precision)")
        return value


DIAGNOSABLE_STATUSES = ("completed", "failed", "stopped", "interrupted")


class DiagnoseSettings(StrictModel):
    """Which finished Jobs get their message log read into the event's ``diagnosis``, and the
    share of the request budget that may cost (README "Diagnosis")."""

    enabled: bool = True
    statuses: list[Literal["completed", "failed", "stopped", "interrupted"]] = Field(
        default_factory=lambda: ["failed", "interrupted", "stopped"]
    )
    # Share of completed Jobs diagnosed too (0..1), picked by run_id so a re-export picks the same.
    completed_sample: float = Field(default=0.0, ge=0.0, le=1.0)
    # GET /runs/{id}/messages requests per pass, beside extraction's own; Jobs beyond it wait one
    # pass. Unset: `share` of what duvo.requests_per_minute allows over one schedule interval.
    max_requests_per_pass: int | None = Field(default=None, ge=0, le=1_000_000)
    share: float = Field(default=0.2, gt=0, le=1)
    # Requests per Job: the first page gives `total`; a longer log's tail is read next (from the end).
    max_pages: int = Field(default=2, ge=1, le=100)
    error_chars: int = Field(default=500, ge=20, le=10_000)  # a tool error's message is cut to this


class ServerSettings(StrictModel):
    """The daemon's HTTP server: /healthz, /readyz, /metrics and /webhooks/duvo. Off unless set."""

    listen: str | None = None  # "host:port", e.g. 127.0.0.1:9464 (0.0.0.0:9464 in a container)
    max_body_bytes: int = Field(default=65_536, ge=1_024, le=10_000_000)  # webhook bodies; 413 above

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port (e.g. 127.0.0.1:9464)")
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        if self.listen is None:
            return None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


class WebhookSettings(StrictModel):
    """Duvo's POST on each Job state change, received at POST /webhooks/duvo on the server."""

    # Duvo's sender only knows the URL, so the secret travels as ?token=... (or a Bearer header).
    token: SecretStr = Field(min_length=16)
    # With webhooks flowing, polling is the safety net for lost ones: open Jobs are re-checked
    # by the age schedule at most this often (the sweep keeps its own cap).
    recheck_interval: DurationText = "30m"


class InsightSettings(StrictModel):
    """Health aggregates per Assignment (team, agent) over rolling windows, computed from the Jobs
    the exporter already read, and the alerts derived from them (README "Insights")."""

    enabled: bool = True
    # Rolling windows, by each Job's completed_at (the time read when it has none).
    windows: list[DurationText] = Field(default_factory=lambda: ["1h", "24h"], min_length=1, max_length=4)
    # A run.summary per Assignment and window is emitted once per step of that window (same order).
    steps: list[DurationText] = Field(default_factory=lambda: ["5m", "1h"], min_length=1, max_length=4)
    # Failure-rate alert: above this share of failed Jobs with at least min_jobs in the window.
    failure_threshold: float = Field(default=0.10, gt=0, lt=1)
    min_jobs: int = Field(default=20, ge=1, le=1_000_000)
    # An episode clears when the value falls below threshold x (1 - hysteresis).
    hysteresis: float = Field(default=0.2, ge=0, lt=1)
    # Latency regression: p95 over the window above this multiple of the baseline's p95.
    latency_multiple: float = Field(default=1.5, gt=1, le=100)
    # The baseline: the Jobs that completed in this span just before the window.
    baseline: DurationText = "24h"
    # Prometheus labels: at most this many agents by name (the first seen); the rest are "other".
    max_agents: int = Field(default=50, ge=1, le=10_000)
    # Example run_ids named by an alert.
    examples: int = Field(default=5, ge=0, le=50)

    @model_validator(mode="after")
    def _windows_and_steps(self) -> InsightSettings:
        if len(self.steps) != len(self.windows):
            raise ValueError("steps must have one entry per window")
        windows = [parse_duration(w) for w in self.windows]
        if len(set(windows)) != len(windows):
            raise ValueError("windows has duplicates")
        for window, step, text in zip(windows, (parse_duration(s) for s in self.steps), self.windows, strict=True):
            if window < 60:
                raise ValueError(f"window {text} is shorter than 1m")
            if not 60 <= step <= window:
                raise ValueError(f"the step of window {text} must be between 1m and the window")
        if parse_duration(self.baseline) < 60:
            raise ValueError("baseline must be at least 1m")
        return self

    @property
    def window_seconds(self) -> list[tuple[str, float, float]]:
        """(name as written, window seconds, step seconds) per window."""
        pairs = zip(self.windows, self.steps, strict=True)
        return [(text, parse_duration(text), parse_duration(step)) for text, step in pairs]

    @property
    def horizon_seconds(self) -> float:
        """How far back facts are needed: the longest window plus the baseline before it."""
        return max(parse_duration(w) for w in self.windows) + parse_duration(self.baseline)


class Config(BaseModel):
    model_config = {"extra": "forbid"}

    duvo: DuvoSettings
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    state: StateSettings = Field(default_factory=StateSettings)
    extract: ExtractSettings = Field(default_factory=ExtractSettings)
    diagnose: DiagnoseSettings = Field(default_factory=DiagnoseSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    webhooks: WebhookSettings | None = None
    insights: InsightSettings = Field(default_factory=InsightSettings)
    sinks: list[SinkSettings]
    warnings: list[str] = Field(default_factory=list, exclude=True)

    def diagnosis_budget(self) -> int:
        """Messages requests per pass: diagnose.max_requests_per_pass, else its share of the rate
        over one schedule interval (5 minutes for a cron schedule)."""
        if self.diagnose.max_requests_per_pass is not None:
            return self.diagnose.max_requests_per_pass
        interval = self.schedule.interval_seconds or 300.0
        return max(1, int(self.diagnose.share * self.duvo.requests_per_minute * interval / 60.0))

    def diagnosis_seconds(self) -> float:
        """Time per pass diagnosis may take once it starts: its share of one schedule interval."""
        return self.diagnose.share * (self.schedule.interval_seconds or 300.0)

    def secrets(self) -> Iterator[str]:
        """Every secret value in the configuration, for log redaction."""
        yield from _secrets(self)


def _secrets(model: BaseModel) -> Iterator[str]:
    for name in type(model).model_fields:
        value = getattr(model, name)
        yield from _secret_values(value)


def _secret_values(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        yield from _secrets(value)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secret_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_values(item)


def start_moment(start_from: str, now: datetime) -> datetime | None:
    """When a first run starts reading: None for "beginning", else a UTC moment."""
    text = start_from.strip()
    if text.lower() == "beginning":
        return None
    moment = timestamps.parse(text)
    if moment is not None:
        return moment
    try:
        return now - timedelta(seconds=parse_duration(text))
    except ValueError:
        raise ValueError(f"{start_from!r} is not a duration (30d, 6h), an ISO-8601 time or 'beginning'") from None


# ---- loading ---------------------------------------------------------------------------------

_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\})")


def interpolate(value: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; ``$$`` is a literal ``$``."""
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            if match.group(1) == "$":
                return "$"
            name, default = match.group(2), match.group(3)
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            problems.append(f"{path or '<root>'}: environment variable {name} is not set")
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, _join(path, str(k)), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = _join(text, str(part))
    return text or "<root>"


_MESSAGES = {
    "missing": "field required",
    "extra_forbidden": "unknown key (check the spelling; see config/exporter.example.yaml)",
}


def _format_errors(error: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    problems = []
    for item in error.errors(include_url=False):
        loc = prefix + tuple(p for p in item["loc"] if not str(p).startswith("function-"))
        message = _MESSAGES.get(item["type"]) or item["msg"]
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
        message = message[:1].lower() + message[1:]
        if item["type"] not in _MESSAGES and "input" in item and not _looks_secret(loc):
            shown = repr(item["input"])
            if len(shown) <= 60 and not isinstance(item["input"], dict | list) and shown not in message:
                message += f" (got {shown})"
        problems.append(f"{_format_location(loc)}: {message}")
    return problems


_SECRET_WORDS = ("key", "token", "password", "secret", "auth", "credential")


def _looks_secret(loc: tuple[Any, ...]) -> bool:
    return any(word in str(part).lower() for part in loc for word in _SECRET_WORDS)


def _validate_sinks(raw: Any, problems: list[str]) -> list[SinkSettings]:
    if raw is None:
        problems.append("sinks: field required (at least one sink)")
        return []
    if not isinstance(raw, list) or not raw:
        problems.append("sinks: must be a non-empty list of sinks")
        return []
    sinks: list[SinkSettings] = []
    known = ", ".join(registry.SINK_TYPES)
    for index, entry in enumerate(raw):
        where = f"sinks[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a mapping with a type")
            continue
        kind = entry.get("type")
        if kind is None:
            problems.append(f"{where}.type: field required (one of {known})")
            continue
        if kind not in registry.SINK_TYPES:
            problems.append(f"{where}.type: unknown sink type {kind!r} (one of {known})")
            continue
        try:
            model = registry.settings_model(kind)
        except ImportError as exc:
            problems.append(f"{where}.type: sink type {kind!r} is not available: {exc}")
            continue
        try:
            sink = model.model_validate(entry)
            sink.config_path = where
            sinks.append(sink)
        except ValidationError as exc:
            problems.extend(_format_errors(exc, ("sinks", index)))
    names = [s.name for s in sinks]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"sinks: name {name!r} is used by more than one sink")
    return sinks


def parse_config(text: str, env: Mapping[str, str] | None = None, source: str = "<config>") -> Config:
    env = os.environ if env is None else env
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"{source}: not valid YAML{where}: {problem}"]) from None
    if raw is None:
        raise ConfigError([f"{source}: the file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping (duvo:, sinks:, ...)"])
    problems: list[str] = []
    raw = interpolate(raw, env, "", problems)
    sinks = _validate_sinks(raw.get("sinks"), problems)
    try:
        config = Config.model_validate({**raw, "sinks": []})
    except ValidationError as exc:
        problems.extend(p for p in _format_errors(exc) if not p.startswith("sinks"))
        config = None
    if config is not None and config.webhooks is not None and config.server.listen is None:
        problems.append("webhooks: needs server.listen (webhooks arrive at POST /webhooks/duvo on that server)")
    if problems or config is None:
        # An unset variable explains any other complaint about the same key.
        unset = {p.split(": ", 1)[0] for p in problems if "environment variable" in p}
        raise ConfigError([p for p in problems if "environment variable" in p or p.split(": ", 1)[0] not in unset])
    config.sinks = sinks
    if config.duvo.requests_per_minute > DUVO_KEY_RATE_LIMIT:
        config.warnings.append(
            f"duvo.requests_per_minute is {config.duvo.requests_per_minute:g}, above Duvo's limit of "
            f"{DUVO_KEY_RATE_LIMIT}/min per key: expect 429s unless your plan or simulator allows more"
        )
    for sink in sinks:
        if sink.tls.insecure_skip_verify:
            config.warnings.append(f"{sink.config_path} ({sink.name}): TLS certificate verification is OFF")
    if config.duvo.tls.insecure_skip_verify:
        config.warnings.append("duvo: TLS certificate verification is OFF")
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{path}: config file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {getattr(exc, 'strerror', None) or exc}"]) from None
    return parse_config(text, env, str(path))
