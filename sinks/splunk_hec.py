"""Splunk HTTP Event Collector sink: gzip'd batches of JSON envelopes to /services/collector/event.

One request carries concatenated envelope objects (HEC's batch format: no array, no separator;
we end each with a newline), each ``{"time", "host", "source", "sourcetype", "index", "fields",
"event"}`` with the RunEvent as ``event``. Outcomes are classified on HEC's JSON ``code``, not
only the HTTP status (table in `sinks.splunk_hec_answer`, docs/sinks/splunk_hec.md).
"""

from __future__ import annotations

import gzip
import json
import socket
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import requests
import requests.auth
import structlog
from pydantic import Field, SecretStr, field_validator, model_validator

from sinks.base import Event, SendResult, SinkError
from sinks.settings import BatchSettings, HttpSinkSettings, secret_value
from sinks.splitting import Kind, Verdict, send_splitting
from sinks.splunk_hec_ack import AckPoller
from sinks.splunk_hec_answer import (
    BUSY_CODES,
    CHANNEL_CODES,
    EVENT_CODES,
    HEALTHY_CODE,
    INDEX_CODE,
    NO_DATA_CODE,
    TOKEN_CODES,
    HecAnswer,
)
from transport import timestamps
from transport.errors import describe_transport_error

log = structlog.get_logger(__name__)

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
# Unauthenticated; answers 200 {"text":"HEC is healthy","code":17} or 503 with codes 18-20.
HEALTH_PATH = "/services/collector/health"

DEFAULT_INDEXED_FIELDS = ("run_id", "agent_id", "status", "team_id")
# The envelope's `time`: when the Job finished, else when it was created, else when exported.
TIME_FIELDS = ("completed_at", "created_at", "exported_at")

# Splunk Enterprise >= 6.5 defaults limits.conf [http_input] max_content_length to 838860800
# (800 MiB); older releases and Splunk Cloud's documented HEC limit are 1 MB. 1,000,000 bytes of
# uncompressed body fits every one of them, whether the server measures before or after gzip.
DEFAULT_MAX_REQUEST_BYTES = 1_000_000


class SplunkHecSinkSettings(HttpSinkSettings):
    type: Literal["splunk_hec"]
    token: SecretStr
    index: str | None = Field(default=None, min_length=1)  # None: the token's default index
    sourcetype: str = Field(default="duvo:run", min_length=1)
    source: str = Field(default="duvo-exporter", min_length=1)
    host: str = Field(default_factory=socket.gethostname, min_length=1)
    # Top-level event keys sent as HEC indexed `fields` (searchable as run_id::abc); nulls omitted.
    indexed_fields: list[str] = Field(default_factory=lambda: list(DEFAULT_INDEXED_FIELDS))
    compress: bool = True
    # Largest uncompressed request body; larger batches are split before sending. A single
    # event larger than this is still sent alone (the server's own limit decides).
    max_request_bytes: int = Field(default=DEFAULT_MAX_REQUEST_BYTES, ge=1_000, le=2_147_483_647)
    ack: bool = False
    ack_timeout: float = Field(default=60.0, gt=0, le=3600)
    ack_poll_interval: float = Field(default=1.0, gt=0, le=60)
    batch: BatchSettings = Field(
        default_factory=lambda: BatchSettings(max_events=500, max_bytes=DEFAULT_MAX_REQUEST_BYTES)
    )

    @field_validator("url")
    @classmethod
    def _base_url_only(cls, value: str) -> str:
        if "/services/collector" in value:
            raise ValueError("give the HEC base URL (https://splunk.example:8088), without /services/collector")
        return value

    @field_validator("token")
    @classmethod
    def _token_present(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _ack_poll_order(self) -> SplunkHecSinkSettings:
        if self.ack_poll_interval > self.ack_timeout:
            raise ValueError("ack_poll_interval must be <= ack_timeout")
        return self


class _SplunkAuth(requests.auth.AuthBase):
    """``Authorization: Splunk <token>``, HEC's header scheme."""

    def __init__(self, token: str) -> None:
        self._header = f"Splunk {token}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "_SplunkAuth(***)"


class _Unencodable:
    """An event json.dumps refused (NaN, a non-JSON value): rejected without being sent."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class SplunkHecSink:
    def __init__(self, settings: SplunkHecSinkSettings) -> None:
        self.name = settings.name
        self._settings = settings
        self._where = settings.config_path
        self._event_url = settings.url + EVENT_PATH
        self._health_url = settings.url + HEALTH_PATH
        self._verify = settings.tls.requests_verify()
        self._session = requests.Session()
        # As an auth object, not a default header: requests would otherwise let a ~/.netrc
        # entry for the host replace it.
        self._session.auth = _SplunkAuth(secret_value(settings.token) or "")
        self._session.headers["User-Agent"] = "duvo-exporter"
        self._acks: AckPoller | None = None
        if settings.ack:
            # One GUID channel per sink, on every request (data, ack polls, health). The
            # Session also keeps a load balancer's stickiness cookie, which ack polling needs
            # so the poll reaches the indexer that handed out the ackId.
            self._session.headers["X-Splunk-Request-Channel"] = str(uuid.uuid4())
            self._acks = AckPoller(
                self._session,
                settings.url + ACK_PATH,
                timeout=settings.ack_timeout,
                poll_interval=settings.ack_poll_interval,
                request_timeout=settings.timeout,
                verify=self._verify,
                where=self._where,
            )
        self._warned_no_ack_id = False
        if settings.tls.insecure_skip_verify:
            log.warning(
                "tls_verification_disabled",
                sink=settings.name,
                url=settings.url,
                detail="tls.insecure_skip_verify is on: the Splunk server's certificate is not checked",
            )

    # -- sending ---------------------------------------------------------------------------

    def send(self, events: Sequence[Event]) -> SendResult:
        if not events:
            return SendResult.ok(0)
        # Encode each event once; splitting and bisecting re-slice the same objects.
        encoded = {id(event): self._envelope(event) for event in events}
        return send_splitting(events, lambda batch: self._post([encoded[id(event)] for event in batch]))

    def _envelope(self, event: Event) -> bytes | _Unencodable:
        settings = self._settings
        envelope: dict[str, Any] = {}
        moment = event_time(event)
        if moment is not None:
            envelope["time"] = moment
        envelope["host"] = settings.host
        envelope["source"] = settings.source
        envelope["sourcetype"] = settings.sourcetype
        if settings.index:
            envelope["index"] = settings.index
        fields = indexed_fields(event, settings.indexed_fields)
        if fields:
            envelope["fields"] = fields
        envelope["event"] = event
        try:
            text = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_plain)
        except (TypeError, ValueError) as exc:
            return _Unencodable(f"event cannot be encoded as JSON: {exc}")
        return text.encode("utf-8") + b"\n"

    def _post(self, parts: list[bytes | _Unencodable]) -> Verdict:
        chunks: list[bytes] = []
        for index, part in enumerate(parts):
            if isinstance(part, _Unencodable):
                return Verdict(Kind.BAD, part.reason, bad_index=index)
            chunks.append(part)
        body = b"".join(chunks)
        limit = self._settings.max_request_bytes
        if len(body) > limit and len(parts) > 1:
            return Verdict(Kind.TOO_LARGE, f"request of {len(body)} bytes exceeds max_request_bytes={limit}")
        headers = {"Content-Type": "application/json"}
        if self._settings.compress:
            body = gzip.compress(body, compresslevel=6)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._session.post(
                self._event_url,
                data=body,
                headers=headers,
                timeout=self._settings.timeout,
                verify=self._verify,
                allow_redirects=False,  # a followed redirect would turn the POST into a GET
            )
        except requests.RequestException as exc:
            # Includes a connection dropped after the request went out with no reply: nothing
            # is known to be stored, so the batch is sent again (HEC has no idempotency key;
            # a rare duplicate is the price, recognisable by event_id).
            return Verdict(Kind.RETRY, describe_transport_error(exc, self._event_url, service="Splunk HEC"))
        answer = HecAnswer.parse(response)
        verdict = self._classify(answer, len(parts))
        if verdict.kind is Kind.OK and self._acks is not None:
            return self._await_ack(answer)
        return verdict

    def _classify(self, answer: HecAnswer, count: int) -> Verdict:
        status, code, label = answer.status, answer.code, answer.label()
        if 200 <= status < 300:
            # Including HEC's 2xx capacity warnings: the data was taken.
            return Verdict(Kind.OK)
        if status == 413:
            return Verdict(Kind.TOO_LARGE, f"Splunk HEC refused the request as too large ({label})")
        if code in TOKEN_CODES or status in (401, 403):
            return Verdict(Kind.FATAL, f"Splunk HEC rejected the token ({label}): check {self._where}.token")
        if code in CHANNEL_CODES:
            if self._acks is None:
                return Verdict(
                    Kind.FATAL,
                    f"Splunk HEC requires indexer acknowledgement for this token ({label}): "
                    f"set {self._where}.ack: true",
                )
            return Verdict(
                Kind.FATAL,
                f"Splunk HEC refused the request channel ({label}) although {self._where}.ack is on: "
                "a proxy may drop the X-Splunk-Request-Channel header",
            )
        if code == INDEX_CODE:
            # Every event of this sink carries the same index, so bisecting would dead-letter
            # the whole backlog for one configuration mistake: stop and keep it instead.
            index = repr(self._settings.index) if self._settings.index else "the token's default index"
            return Verdict(
                Kind.FATAL,
                f"Splunk HEC refused index {index} ({label}): check {self._where}.index "
                "against the token's allowed indexes",
            )
        if status in (408, 429) or status >= 500 or code in BUSY_CODES:
            return Verdict(Kind.RETRY, f"Splunk HEC is unavailable ({label})", retry_after=answer.retry_after)
        if status == 400 and code is not None and (code in EVENT_CODES or answer.invalid_event is not None):
            return self._bad(answer, count)
        if 300 <= status < 400:
            location = answer.location or "elsewhere"
            return Verdict(
                Kind.FATAL,
                f"Splunk HEC redirected ({label}) to {location}: set {self._where}.url to the final address",
            )
        if status == 404:
            return Verdict(
                Kind.FATAL,
                f"no Splunk HEC at {self._event_url} ({label}): check {self._where}.url "
                "(HEC enabled? its port, usually 8088?)",
            )
        if status == 415:
            return Verdict(
                Kind.FATAL,
                f"the server refused the request encoding ({label}): set {self._where}.compress: false",
            )
        return Verdict(Kind.FATAL, f"unexpected answer from {self._event_url} ({label})")

    def _bad(self, answer: HecAnswer, count: int) -> Verdict:
        reason = f"Splunk HEC refused the event ({answer.label()})"
        position = answer.invalid_event
        if position is None or not 0 <= position < count:
            return Verdict(Kind.BAD, reason)  # unknown culprit: bisect
        # HEC indexed the events before the invalid one and dropped it and everything after
        # (moby/moby#35862: {"code":6,"invalid-event-number":1} on a 3-event body indexed only
        # the first). With acknowledgement on nothing of that prefix was acknowledged, so it
        # is resent rather than counted as delivered.
        accepted = position if self._acks is None else 0
        return Verdict(Kind.BAD, reason, bad_index=position, accepted_prefix=accepted)

    def _await_ack(self, answer: HecAnswer) -> Verdict:
        assert self._acks is not None
        if answer.ack_id is None:
            # The token has no useACK: Splunk took the data and will never hand out ackIds.
            if not self._warned_no_ack_id:
                self._warned_no_ack_id = True
                log.warning(
                    "splunk_hec_ack_not_enabled_on_token",
                    sink=self.name,
                    detail=f"{self._where}.ack is on but Splunk returned no ackId; "
                    "enable indexer acknowledgement on the token or set ack: false",
                )
            return Verdict(Kind.OK)
        return self._acks.wait(answer.ack_id)

    # -- health ----------------------------------------------------------------------------

    def healthcheck(self) -> None:
        try:
            response = self._session.get(self._health_url, timeout=self._settings.timeout, verify=self._verify)
        except requests.RequestException as exc:
            raise SinkError(describe_transport_error(exc, self._health_url, service="Splunk HEC")) from None
        answer = HecAnswer.parse(response)
        if response.status_code == 404:
            raise SinkError(f"no Splunk HEC at {self._health_url} ({answer.label()}): check {self._where}.url")
        if response.status_code != 200 or (answer.code is not None and answer.code != HEALTHY_CODE):
            raise SinkError(f"Splunk HEC at {self._settings.url} is not healthy ({answer.label()})")
        self._check_token()

    def _check_token(self) -> None:
        """An empty POST: a valid token gets 400 code 5 "No data" (the check AWS Firehose
        makes); an invalid one 401/403, a token needing a channel code 10 — nothing is indexed."""
        try:
            response = self._session.post(
                self._event_url,
                data=b"",
                headers={"Content-Type": "application/json"},
                timeout=self._settings.timeout,
                verify=self._verify,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise SinkError(describe_transport_error(exc, self._event_url, service="Splunk HEC")) from None
        answer = HecAnswer.parse(response)
        if answer.code == NO_DATA_CODE or 200 <= response.status_code < 300:
            return
        verdict = self._classify(answer, 0)
        if verdict.kind is Kind.FATAL:
            raise SinkError(verdict.reason)
        raise SinkError(f"Splunk HEC did not accept the token check ({answer.label()})")

    def close(self) -> None:
        self._session.close()


def event_time(event: Event) -> float | None:
    """Epoch seconds with milliseconds, HEC's ``time`` format (e.g. 1433188255.500)."""
    for key in TIME_FIELDS:
        moment = timestamps.parse(event.get(key))
        if moment is not None:
            return round(moment.timestamp(), 3)
    return None


def indexed_fields(event: Event, names: Sequence[str]) -> dict[str, str | list[str]]:
    """HEC indexed fields take a string or an array of strings per key; a null or an object
    makes HEC refuse the event, so nulls are omitted and scalars sent as text."""
    fields: dict[str, str | list[str]] = {}
    for name in names:
        value = _field_value(event.get(name))
        if value is not None:
            fields[name] = value
    return fields


def _field_value(value: Any) -> str | list[str] | None:
    if value is None or isinstance(value, Mapping):
        return None
    if isinstance(value, list | tuple):
        items = [text for text in (_scalar_text(item) for item in value) if text is not None]
        return items or None
    return _scalar_text(value)


def _scalar_text(value: Any) -> str | None:
    if value is None or isinstance(value, Mapping | list | tuple):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text or None


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
