"""LokiSink: pushes events to Grafana Loki's ``POST /loki/api/v1/push`` as gzipped JSON.

One request per stream (label set): Loki's reply to a multi-stream push describes only the last
stream, so entries it ignored in the others would be lost without a word. Entries of a stream
are sorted by time; timestamps and lines are deterministic for a given event. A 400 is mapped
back to the exact entries Loki ignored (see `sinks.loki_response`); everything else in that
request was stored. Protobuf+snappy pushes are left out: no snappy library is available, and
gzip gives comparable savings for JSON lines.
"""

from __future__ import annotations

import gzip
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit

import requests
import structlog
from pydantic import Field, SecretStr, field_validator, model_validator

from sinks.base import Event, Rejection, SendResult, SinkError, one_line
from sinks.loki_encode import Encoder, Entry, TimestampField, check_static_labels, push_body
from sinks.loki_response import map_rejections, parse_reply
from sinks.settings import BatchSettings, HttpSinkSettings, StrictModel, secret_value
from sinks.splitting import Kind, Verdict, send_splitting
from transport.errors import describe_transport_error
from transport.ratelimit import TokenBucket, retry_after_seconds

log = structlog.get_logger(__name__)

PUSH_PATH = "/loki/api/v1/push"
# Loki's tenant IDs: at most 150 of [a-zA-Z0-9!-_.*'()], not "." or ".." (dskit tenant.ValidTenantID).
_TENANT_ID = re.compile(r"^[a-zA-Z0-9!\-_.*'()]{1,150}$")
_REASON_LIMIT = 500


class LokiBasicAuth(StrictModel):
    username: str = Field(min_length=1)  # Grafana Cloud: the numeric user / instance ID
    password: SecretStr  # Grafana Cloud: an access-policy token with logs:write


class LokiSinkSettings(HttpSinkSettings):
    type: Literal["loki"]
    labels: dict[str, str] = Field(default_factory=dict)
    tenant_id: str | None = None
    basic_auth: LokiBasicAuth | None = None
    bearer_token: SecretStr | None = None
    label_agent_id: bool = False
    timestamp: TimestampField = "exported_at"
    compress: bool = True
    structured_metadata: bool = True
    omit_null_fields: bool = True
    # Stock Loki allows 4 MB/s per tenant (ingestion_rate_mb) and 3 MB/s per stream; stay under.
    max_bytes_per_second: int = Field(default=2_000_000, ge=0)  # 0 = no pacing
    # Loki's max_line_size default (256 KB): a longer line is refused, so reject it before sending.
    max_line_bytes: int = Field(default=262_144, ge=0)  # 0 = no check
    # Uncompressed body cap; larger requests are split before sending (Loki's gRPC hop to the
    # ingesters defaults to 4 MiB messages).
    max_request_bytes: int = Field(default=4_194_304, ge=1_000, le=100_000_000)
    # ~1 MB requests: a 429 or 5xx costs one small resend.
    batch: BatchSettings = Field(default_factory=lambda: BatchSettings(max_events=1000, max_bytes=1_000_000))

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use basic_auth or bearer_token")
        # Accept the push URL Grafana Cloud shows, and push to it all the same.
        return value.removesuffix(PUSH_PATH).rstrip("/")

    @field_validator("tenant_id")
    @classmethod
    def _tenant(cls, value: str | None) -> str | None:
        if value is not None and (not _TENANT_ID.match(value) or value in (".", "..")):
            raise ValueError("must be 1-150 characters of a-z A-Z 0-9 ! - _ . * ' ( ) and not '.' or '..'")
        return value

    @model_validator(mode="after")
    def _loki_rules(self) -> LokiSinkSettings:
        if self.basic_auth is not None and self.bearer_token is not None:
            raise ValueError("set basic_auth or bearer_token, not both")
        check_static_labels(self.labels, self.label_agent_id)
        return self


def _masked_line(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return one_line(text, _REASON_LIMIT)


# 400 bodies that no resend or bisecting can fix: the configuration (or Loki's) must change.
_CONFIG_PROBLEMS = (
    ("structured metadata, but this feature is disallowed", "set structured_metadata: false for this Loki"),
    ("missing required labels", "add the tenant's enforced labels to labels"),
    ("label names; limit", "use fewer labels"),
    ("has label name too long", "use shorter label names"),
    ("has duplicate label name", "check labels"),
    ("Error parsing labels", "check labels"),
    ("at least one label pair is required", "check labels"),
)
_LABEL_VALUE_TOO_LONG = re.compile(r"has label value too long: '(.*)'")
_BLOCKED = re.compile(r"ingestion blocked for user .* until '([^']+)'")


class LokiSink:
    def __init__(
        self,
        settings: LokiSinkSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = settings.name
        self._where = settings.config_path
        self._settings = settings
        self._push_url = settings.url + PUSH_PATH
        self._encoder = Encoder(
            settings.labels,
            label_agent_id=settings.label_agent_id,
            timestamp=settings.timestamp,
            structured_metadata=settings.structured_metadata,
            omit_null_fields=settings.omit_null_fields,
        )
        rate = settings.max_bytes_per_second
        self._bucket = TokenBucket(rate, rate, clock=clock, sleep=sleep) if rate else None
        password = settings.basic_auth.password if settings.basic_auth is not None else None
        self._secrets = [s for s in (secret_value(settings.bearer_token), secret_value(password)) if s]
        self._session = requests.Session()
        self._session.headers.update(self._auth_headers())
        self._verify = settings.tls.requests_verify()
        self._session.verify = self._verify
        if settings.tls.insecure_skip_verify:
            log.warning("tls verification disabled", sink=self.name, url=settings.url)

    def _auth_headers(self) -> dict[str, str]:
        headers = {"User-Agent": "duvo-exporter"}
        if self._settings.tenant_id:
            headers["X-Scope-OrgID"] = self._settings.tenant_id
        if self._settings.bearer_token is not None:
            headers["Authorization"] = f"Bearer {secret_value(self._settings.bearer_token)}"
        return headers

    def _auth(self) -> tuple[str, str] | None:
        auth = self._settings.basic_auth
        return (auth.username, auth.password.get_secret_value()) if auth is not None else None

    # -- delivery ---------------------------------------------------------------------------

    def send(self, events: Sequence[Event]) -> SendResult:
        if not events:
            return SendResult.ok(0)
        rejected: dict[int, str] = {}
        pending = set(range(len(events)))
        failure: SendResult | None = None
        limit = self._settings.max_line_bytes
        for stream in self._encoder.streams(events):
            entries = []
            for entry in stream.entries:
                if limit and entry.line_bytes() > limit:
                    # Loki would refuse it (max_line_size: "Max entry size ... exceeded").
                    rejected[entry.index] = (
                        f"line is {entry.line_bytes()} bytes, over max_line_bytes {limit} (Loki's max_line_size)"
                    )
                    pending.discard(entry.index)
                else:
                    entries.append(entry)
            if failure is not None:
                continue  # Loki is failing or refusing: leave the other streams for the retry
            result = send_splitting(entries, self._poster(stream.labels))
            for entry in entries[: result.done]:
                pending.discard(entry.index)
            for rejection in result.rejected:
                rejected[entries[rejection.index].index] = rejection.reason
            if result.done < len(entries):
                failure = result
        done = min(pending) if pending else len(events)
        rejections = [Rejection(i, rejected[i]) for i in sorted(rejected) if i < done]
        if failure is None:
            return SendResult.ok(done, rejections)
        return SendResult(
            done=done,
            rejected=tuple(rejections),
            error=failure.error,
            retry_after=failure.retry_after,
            fatal=failure.fatal,
        )

    def _poster(self, labels: dict[str, str]) -> Callable[[Sequence[Entry]], Verdict]:
        def post(items: Sequence[Entry]) -> Verdict:
            return self._post(labels, items)

        return post

    def _post(self, labels: dict[str, str], entries: Sequence[Entry]) -> Verdict:
        body = push_body(labels, entries)
        if len(body) > self._settings.max_request_bytes:
            if len(entries) == 1:
                return Verdict(Kind.BAD, f"entry is {len(body)} bytes, over max_request_bytes")
            return Verdict(Kind.TOO_LARGE, "request over max_request_bytes")
        if self._bucket is not None:
            # Loki's rate limits count uncompressed line bytes; the JSON body is a close upper bound.
            self._bucket.acquire(len(body))
        headers = {"Content-Type": "application/json"}
        if self._settings.compress:
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._session.post(
                self._push_url,
                data=body,
                headers=headers,
                auth=self._auth(),
                timeout=self._settings.timeout,
                allow_redirects=False,
                verify=self._verify,  # per request: REQUESTS_CA_BUNDLE would override session.verify
            )
        except requests.RequestException as exc:
            # Includes a connection dropped after the request was sent: Loki may or may not have
            # stored it; resending identical entries is the safe side.
            return Verdict(Kind.RETRY, describe_transport_error(exc, self._push_url, service="Loki"))
        return self._classify(response, labels, entries)

    def _clean(self, text: str) -> str:
        return _masked_line(text, self._secrets)

    def _classify(self, response: requests.Response, labels: dict[str, str], entries: Sequence[Entry]) -> Verdict:
        status = response.status_code
        if status in (200, 204):
            return Verdict(Kind.OK)
        text = response.text
        reason = f"HTTP {status} from Loki: {self._clean(text) or response.reason}"
        blocked = _BLOCKED.search(text)
        if blocked is not None:
            # An operator blocked the tenant (limits_config block_ingestion_until), answering 260 by
            # default: nothing was stored. Keep the events until the block ends.
            return Verdict(Kind.RETRY, reason, retry_after=_until(blocked.group(1)))
        if 200 <= status < 300:
            return Verdict(Kind.OK)
        after = retry_after_seconds(response.headers.get("Retry-After"))
        if status in (401, 403):
            hint = f"check {self._where}.basic_auth / bearer_token and tenant_id"
            return Verdict(
                Kind.FATAL,
                f"Loki: push refused with HTTP {status} ({hint}): {self._clean(text)[:200]}",
            )
        if status in (404, 405) or 300 <= status < 400:
            return Verdict(
                Kind.FATAL,
                f"Loki: HTTP {status} for {self._push_url}: check {self._where}.url (Loki's base URL)",
            )
        if status == 413:
            return Verdict(Kind.TOO_LARGE, reason)
        if status in (408, 429) or status >= 500:
            if status == 429 and self._bucket is not None:
                self._bucket.pause(0.0)  # spend no saved burst on the resend
            return Verdict(Kind.RETRY, reason, retry_after=after)
        if status == 400:
            return self._classify_400(text, reason, labels, entries)
        return Verdict(Kind.BAD, reason)

    def _classify_400(self, text: str, reason: str, labels: dict[str, str], entries: Sequence[Entry]) -> Verdict:
        for needle, hint in _CONFIG_PROBLEMS:
            if needle in text:
                return Verdict(
                    Kind.FATAL, f"Loki refused the stream ({hint}): {self._clean(text)[:300]}"
                )
        if "request body too large" in text:
            return Verdict(Kind.TOO_LARGE, reason)
        too_long = _LABEL_VALUE_TOO_LONG.search(text)
        if too_long is not None:
            if too_long.group(1) in self._settings.labels.values():
                return Verdict(Kind.FATAL, "Loki: a static label value is too long for Loki")
            # A per-event label value (status, agent_id): every entry of this stream shares it.
            why = self._clean(text)
            return Verdict(Kind.OK, rejected=tuple(Rejection(i, why) for i in range(len(entries))))
        mapped = map_rejections(parse_reply(text), labels, entries)
        if mapped:
            return Verdict(
                Kind.OK,
                rejected=tuple(Rejection(position, self._clean(why)) for position, why in sorted(mapped.items())),
            )
        # Unaccounted for: bisect; a single entry refused this way is rejected with Loki's words.
        return Verdict(Kind.BAD, reason)

    # -- health -----------------------------------------------------------------------------

    def healthcheck(self) -> None:
        url = self._settings.url
        credentials = self._settings.basic_auth is not None or self._settings.bearer_token is not None
        try:
            ready = self._session.get(
                url + "/ready", auth=self._auth(), timeout=self._settings.timeout, verify=self._verify
            )
        except requests.RequestException as exc:
            raise SinkError(describe_transport_error(exc, url, service="Loki")) from None
        if ready.status_code in (401, 403):
            raise SinkError(f"Loki: credentials refused (HTTP {ready.status_code}) at {url}/ready")
        # Hosted gateways (Grafana Cloud) do not expose /ready; the push check below covers them.
        if ready.status_code != 200 and not (credentials and ready.status_code == 404):
            answer = self._clean(ready.text)[:200]
            raise SinkError(f"Loki: {url}/ready answered HTTP {ready.status_code}: {answer}")
        if not (credentials or self._settings.tenant_id):
            return
        # An empty push proves write access without storing anything, and works with write-only
        # tokens (a read endpoint would not): Loki answers 204 or 4xx "at least one valid stream".
        try:
            probe = self._session.post(
                self._push_url,
                data=b'{"streams":[]}',
                headers={"Content-Type": "application/json"},
                auth=self._auth(),
                timeout=self._settings.timeout,
                allow_redirects=False,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise SinkError(describe_transport_error(exc, self._push_url, service="Loki")) from None
        if probe.status_code in (401, 403):
            raise SinkError(
                f"Loki: push credentials refused (HTTP {probe.status_code}): "
                f"{self._clean(probe.text)[:200]}"
            )
        if probe.status_code in (404, 405) or probe.status_code >= 500:
            raise SinkError(f"Loki: {self._push_url} answered HTTP {probe.status_code}")

    def close(self) -> None:
        self._session.close()


def _until(stamp: str) -> float | None:
    try:
        moment = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
