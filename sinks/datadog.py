"""DatadogSink: each event becomes one log in Datadog Logs, sent through datadog-api-client.

``LogsApi.submit_log`` (POST /api/v2/logs on ``http-intake.logs.<site>``), gzip-compressed, over one
``ApiClient`` (one urllib3 pool, so connections are reused) per sink. The client's own retries are off:
the pipeline paces retries, and a retry hidden inside the client would stall the sink's thread and
blur what the pipeline sees. How an event maps to a log lives in `sinks.datadog_encode`.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from http import HTTPStatus
from typing import Any, Literal

import structlog
import urllib3
from datadog_api_client import ApiClient, Configuration
from datadog_api_client.exceptions import ApiException
from datadog_api_client.v1.api.authentication_api import AuthenticationApi
from datadog_api_client.v2.api.logs_api import LogsApi
from datadog_api_client.v2.model.content_encoding import ContentEncoding
from pydantic import Field, SecretStr, field_validator

from sinks import datadog_encode as encode
from sinks.base import Event, SendResult, SinkError, one_line
from sinks.settings import BatchSettings, SinkSettings, strip_slash
from sinks.splitting import Kind, Verdict, send_splitting
from transport import timestamps
from transport.durations import parse_duration
from transport.errors import describe_transport_error
from transport.ratelimit import retry_after_seconds

log = structlog.get_logger(__name__)

# The sites datadog-api-client knows (its server variable ``site`` is an enum); anything else,
# such as a proxy, goes in ``url``.
SITES = (
    "datadoghq.com",
    "us3.datadoghq.com",
    "us5.datadoghq.com",
    "datadoghq.eu",
    "ap1.datadoghq.com",
    "ap2.datadoghq.com",
    "uk1.datadoghq.com",
    "ddog-gov.com",
    "us2.ddog-gov.com",
)

# The intake's answers (docs.datadoghq.com/api/latest/logs/#send-logs): 408, 429 and 5xx "should be
# retried after some time"; 413 is "batch is above 5MB uncompressed"; 400 refuses the whole request.
_BAD_STATUSES = frozenset({400, 422})
_KEY_STATUSES = frozenset({401, 403})
_ENDPOINT_STATUSES = frozenset({404, 405})  # url points at something that is not a Datadog intake


class DatadogSinkSettings(SinkSettings):
    type: Literal["datadog"]
    api_key: SecretStr
    site: str = "datadoghq.com"
    # Base URL replacing https://http-intake.logs.<site> (and https://api.<site> for the key check):
    # a proxy or a test receiver. Paths /api/v2/logs and /api/v1/validate are appended.
    url: str | None = None
    service: str = Field(default="duvo-assignments", min_length=1)
    hostname: str | None = None  # None: this machine's name
    tags: list[str] = Field(default_factory=list)
    compress: bool = True
    # An HTTP(S) proxy for the outgoing connections (urllib3 ProxyManager), e.g. http://proxy:3128.
    proxy: str | None = None
    batch: BatchSettings = Field(
        default_factory=lambda: BatchSettings(max_events=encode.MAX_ENTRIES, max_bytes=4_500_000)
    )
    # Seconds (YAML: 17h, 90m, ...): a Job time at most this old is sent as the log's `date`; an
    # older one is left for the intake to stamp on receipt. 0 never sends a date.
    date_max_age: float = encode.DEFAULT_DATE_MAX_AGE

    @field_validator("date_max_age", mode="before")
    @classmethod
    def _date_max_age(cls, value: object) -> float:
        if not isinstance(value, str | int | float):  # a list or mapping: parse_duration would not say ValueError
            raise ValueError("expected a duration like 17h or 90m")
        seconds = parse_duration(value)
        if not seconds >= 0:  # NaN (YAML .nan) would compare false with every age and always send a date
            raise ValueError("expected a duration like 17h or 90m")
        if seconds >= encode.INTAKE_MAX_AGE:
            # At 18 h or more the log would be dropped by the intake (202, stored nowhere).
            raise ValueError(
                "must be less than 18h: Datadog's intake drops logs dated 18 h or more in the past "
                "(17h, the default, leaves 1 h for clock skew and delivery)"
            )
        return seconds

    @field_validator("api_key")
    @classmethod
    def _key_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("site")
    @classmethod
    def _known_site(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in SITES:
            raise ValueError(f"unknown Datadog site {value!r}: one of {', '.join(SITES)} (or set url)")
        return value

    @field_validator("url", "proxy")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return strip_slash(value)

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not tag.strip() or "," in tag:
                raise ValueError(f"tag {tag!r}: must be non-empty and hold no comma")
        return [tag.strip() for tag in value]


class DatadogSink:
    def __init__(self, settings: DatadogSinkSettings, *, clock: Callable[[], datetime] = timestamps.now) -> None:
        self.name = settings.name
        self._where = settings.config_path
        self._clock = clock
        self._date_max_age = settings.date_max_age
        self._now = clock()  # the current send attempt's time, for the `date` decision
        self._service = settings.service
        self._hostname = settings.hostname or socket.gethostname()
        self._tags = tuple(settings.tags)
        self._encoding: dict[str, Any] = {"content_encoding": ContentEncoding.GZIP} if settings.compress else {}
        self.intake_url = settings.url or f"https://http-intake.logs.{settings.site}"
        self.api_url = settings.url or f"https://api.{settings.site}"

        # Configuration() sets the "urllib3" and "datadog_api_client" loggers to WARNING for the
        # whole process, which would hide --library-log-level debug; put them back afterwards.
        saved_levels = {name: logging.getLogger(name).level for name in ("urllib3", "datadog_api_client")}
        config = Configuration(
            host=settings.url,  # None: the per-operation Datadog servers, chosen by `site`
            api_key={"apiKeyAuth": settings.api_key.get_secret_value()},
            request_timeout=settings.timeout,  # total per request: connect + send + wait for the answer
            retry_policy=False,  # urllib3 retries=False: no retries at all, errors raised as they happen
            check_return_type=False,  # a 2xx is delivered whatever its body looks like
            # Logs go in as plain dicts: building HTTPLogItem models and serialising them back
            # cost ~80% of this sink's CPU (measured: 3,180 -> 6,781 Jobs/s/core without them).
            check_input_type=False,
        )
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        # Set after construction: Configuration() lets a DD_SITE environment variable override it.
        config.server_variables["site"] = settings.site
        tls = settings.tls
        if tls.insecure_skip_verify:
            config.verify_ssl = False
            log.warning("tls verification disabled", sink=self.name, url=self.intake_url)
        elif tls.ca_file:
            config.ssl_ca_cert = tls.ca_file
        if settings.proxy:
            config.proxy = settings.proxy
        self._client = ApiClient(config)
        self._client.user_agent = f"duvo-exporter {self._client.user_agent}"
        self._logs = LogsApi(self._client)
        self._auth = AuthenticationApi(self._client)
        # id(event) -> encoded log (or why it cannot be encoded), for the duration of one send():
        # bisecting re-posts the same events and should not re-encode them.
        self._encoded: dict[int, tuple[dict[str, Any], int] | str] = {}

    # -- Sink ---------------------------------------------------------------------------------

    def send(self, events: Sequence[Event]) -> SendResult:
        self._encoded.clear()
        # Whether a log carries its Job's time is decided once per attempt, at send time: the
        # pipeline's retry is a new send(), so an event that waited past date_max_age for it is
        # re-encoded without a date rather than sent with one the intake would drop.
        self._now = self._clock()
        try:
            return send_splitting(events, self._post)
        finally:
            self._encoded.clear()

    def healthcheck(self) -> None:
        try:
            answer = self._auth.validate()
        except ApiException as exc:
            if exc.status in _KEY_STATUSES:
                raise SinkError(self._key_message(exc)) from None
            if not exc.status:
                raise SinkError(_no_answer(exc, self.api_url)) from None
            raise SinkError(f"Datadog key validation at {self.api_url} failed: {_describe(exc)}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise SinkError(describe_transport_error(exc, self.api_url, service="Datadog")) from None
        except Exception as exc:  # the client library's own errors; never let one escape raw
            raise SinkError(f"Datadog key validation failed: {type(exc).__name__}: {one_line(exc)}") from None
        valid = answer.get("valid") if hasattr(answer, "get") else None
        if valid is not True:
            raise SinkError(f"Datadog did not confirm the API key of {self._where} (answer: {valid!r})")

    def close(self) -> None:
        self._client.close()

    # -- one request --------------------------------------------------------------------------

    def _encode(self, event: Event) -> tuple[dict[str, Any], int] | str:
        cached = self._encoded.get(id(event))
        if cached is not None:
            return cached
        try:
            entry = encode.to_log(
                event,
                service=self._service,
                hostname=self._hostname,
                tags=self._tags,
                date=encode.log_date(event, self._now, self._date_max_age),
            )
            entry, size = encode.fit(entry)
            result: tuple[dict[str, Any], int] | str = (entry, size)
        except (TypeError, ValueError, AttributeError, RecursionError) as exc:  # not JSON: NaN, sets, ...
            result = f"cannot encode event as a Datadog log: {one_line(exc)}"
        self._encoded[id(event)] = result
        return result

    def _post(self, events: Sequence[Event]) -> Verdict:
        if len(events) > encode.MAX_ENTRIES:
            return Verdict(Kind.TOO_LARGE, f"{len(events)} logs, over Datadog's {encode.MAX_ENTRIES} per request")
        items: list[dict[str, Any]] = []
        sizes: list[int] = []
        for index, event in enumerate(events):
            encoded = self._encode(event)
            if isinstance(encoded, str):
                return Verdict(Kind.BAD, encoded, bad_index=index)
            items.append(encoded[0])
            sizes.append(encoded[1])
        total = encode.payload_size(sizes)
        if total > encode.MAX_PAYLOAD_BYTES and len(items) > 1:
            return Verdict(Kind.TOO_LARGE, f"{total} bytes, over Datadog's 5 MB per request")
        try:
            self._logs.submit_log(body=items, **self._encoding)  # type: ignore[arg-type]
        except ApiException as exc:
            return self._classify(exc)
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # Refused, reset, timed out, or dropped after the request went out without an answer:
            # nothing is known to be stored, so all of it is sent again (at-least-once).
            return Verdict(Kind.RETRY, describe_transport_error(exc, self.intake_url, service="Datadog"))
        except Exception as exc:
            # The client library refusing to build the request. Retrying keeps the events; treating
            # it as bad data could dead-letter a whole batch for a problem that is not theirs.
            return Verdict(Kind.RETRY, f"datadog-api-client failed: {type(exc).__name__}: {one_line(exc)}")
        return Verdict(Kind.OK)

    def _classify(self, exc: ApiException) -> Verdict:
        status = exc.status or 0
        if status == 0:
            return Verdict(Kind.RETRY, _no_answer(exc, self.intake_url))
        if status in _KEY_STATUSES:
            return Verdict(Kind.FATAL, self._key_message(exc))
        if status == 413:
            return Verdict(Kind.TOO_LARGE, f"Datadog: {_describe(exc)}")
        if status in _BAD_STATUSES:
            return Verdict(Kind.BAD, f"Datadog refused the logs: {_describe(exc)}")
        if status in _ENDPOINT_STATUSES:
            return Verdict(
                Kind.FATAL,
                f"{self.intake_url}/api/v2/logs is not a Datadog logs intake ({_describe(exc)}): "
                f"check {self._where}.url and site",
            )
        # 408, 429, 5xx, and anything unexpected (a 3xx from a proxy, a stray 4xx): keep the events.
        return Verdict(Kind.RETRY, f"Datadog: {_describe(exc)}", retry_after=_retry_after(exc.headers))

    def _key_message(self, exc: ApiException) -> str:
        return f"Datadog rejected the API key ({_status_line(exc)}): check {self._where}.api_key and site"


def _no_answer(exc: ApiException, url: str) -> str:
    """An ApiException without a status: the client's re-wrapping of a TLS failure as text (the
    urllib3 error is its context), or its refusal to build the request."""
    if exc.__context__ is not None:
        return describe_transport_error(exc, url, service="Datadog")
    return f"datadog-api-client failed: {one_line(exc.reason)}"


def _status_line(exc: ApiException) -> str:
    """``403 Forbidden``; the standard phrase when the answer carried none (HTTP/2 proxies)."""
    reason = one_line(exc.reason or "")
    if not reason:
        try:
            reason = HTTPStatus(exc.status).phrase
        except ValueError:
            reason = ""
    return f"{exc.status} {reason}".strip()


def _describe(exc: ApiException) -> str:
    """``503 Service Unavailable: <Datadog's errors>`` in one line."""
    text = _status_line(exc)
    detail = _errors(exc.body)
    return f"{text}: {detail}" if detail else text


def _errors(body: Any) -> str:
    """Datadog's reason from ``{"errors": ["..."]}`` or ``{"errors": [{"title", "detail"}]}``."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return one_line(body if isinstance(body, str) else body.decode("utf-8", "replace"))
    if not isinstance(body, Mapping):
        return ""
    errors = body.get("errors")
    if not isinstance(errors, list):
        return ""
    parts = []
    for error in errors:
        if isinstance(error, Mapping):
            pieces = [str(error[key]) for key in ("title", "detail") if error.get(key)]
            parts.append(": ".join(pieces) or json.dumps(error))
        else:
            parts.append(str(error))
    return one_line("; ".join(parts))


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait: Datadog's ``X-RateLimit-Reset`` (seconds until the limit resets,
    docs.datadoghq.com/api/latest/rate-limits), else a standard ``Retry-After``."""
    if not headers:
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    for name in ("x-ratelimit-reset", "retry-after"):
        seconds = retry_after_seconds(lowered.get(name))
        if seconds is not None:
            return seconds
    return None
