"""Settings every sink shares: batching, timeouts, retry pacing, TLS, filtering and field shaping.

Each backend module declares its own settings model deriving from `SinkSettings` with a
``type: Literal[...]`` discriminator; `sinks.registry` collects them for config validation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator, model_validator

from sinks.base import EventStatus, EventType


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in YAML must not silently become a default."""

    model_config = ConfigDict(extra="forbid")


class BatchSettings(StrictModel):
    max_events: int = Field(default=500, ge=1, le=100_000)
    # Measured on the event's JSON; a sink whose backend has a hard byte limit splits further.
    max_bytes: int = Field(default=4_000_000, ge=1_000, le=100_000_000)
    # How long a partial batch may wait for more events before it is sent.
    flush_interval: float = Field(default=1.0, ge=0, le=3600)


class RetrySettings(StrictModel):
    initial_backoff: float = Field(default=1.0, gt=0, le=600)
    max_backoff: float = Field(default=60.0, gt=0, le=3600)
    # Attempts per delivery round before the batch waits for the next round; never dropped.
    max_attempts: int = Field(default=5, ge=1, le=1000)


class TLSSettings(StrictModel):
    ca_file: str | None = None
    # Explicit and loud: logged as a warning at start-up.
    insecure_skip_verify: bool = False

    def requests_verify(self) -> bool | str:
        """The value for requests' ``verify=``."""
        if self.insecure_skip_verify:
            return False
        return self.ca_file or True


class FilterSettings(StrictModel):
    """Events failing a filter are skipped for this sink only (counted, not dead-lettered)."""

    statuses: list[EventStatus] | None = None
    agents: list[str] | None = None
    teams: list[str] | None = None
    events: list[EventType] | None = None


class FieldSettings(StrictModel):
    """Shapes the event before the sink encodes it: include, then exclude, then rename.

    Names are top-level fields or dotted paths into nested objects (``run.input``)."""

    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    rename: dict[str, str] = Field(default_factory=dict)


class SinkSettings(StrictModel):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    enabled: bool = True
    timeout: float = Field(default=30.0, gt=0, le=600)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    tls: TLSSettings = Field(default_factory=TLSSettings)
    filter: FilterSettings = Field(default_factory=FilterSettings)
    fields: FieldSettings = Field(default_factory=FieldSettings)
    # Where this sink sits in the YAML ("sinks[1]"), set by the config loader, so that a sink's
    # own messages ("check sinks[1].api_key") point where configuration errors point.
    _config_path: str | None = PrivateAttr(default=None)

    @property
    def config_path(self) -> str:
        return self._config_path or f"sinks[{self.name}]"

    @config_path.setter
    def config_path(self, value: str) -> None:
        self._config_path = value

    @model_validator(mode="after")
    def _backoff_order(self) -> SinkSettings:
        if self.retry.max_backoff < self.retry.initial_backoff:
            raise ValueError("retry.max_backoff must be >= retry.initial_backoff")
        return self


def secret_value(secret: SecretStr | None) -> str | None:
    """The plain value of an optional secret, for building an auth header and nothing else."""
    return secret.get_secret_value() if secret is not None else None


def strip_slash(url: str) -> str:
    return url.rstrip("/")


class HttpSinkSettings(SinkSettings):
    """A sink that talks HTTP to a base URL."""

    url: str

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return strip_slash(value)
