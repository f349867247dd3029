"""A strict fake Grafana Loki 3 push endpoint on 127.0.0.1, for sink, fault and benchmark tests.

It follows Loki's own code paths (pkg/distributor, pkg/ingester, pkg/validation) and answers with
Loki's status codes and plain-text bodies:

- ``POST /loki/api/v1/push``: optional gateway auth (basic or bearer; 401 otherwise), with
  ``auth_enabled`` an ``X-Scope-OrgID`` (401 ``no org id``; else tenant ``fake``), Content-Encoding
  gzip / deflate / none, Content-Type application/json (no protobuf), a decoded body over
  ``max_body_bytes`` gets 413. The JSON is checked strictly: ``streams`` of ``{"stream": {name:
  value}, "values": [["<ns>", "<line>"(, {name: value})], ...]}``. No streams: 422.
- The distributor's checks, per stream then per entry: label names and counts, then "too old"
  (``reject_old_samples_max_age``, 7 days), "too new" (``creation_grace_period``, 10 min), line
  size, structured metadata. Refused entries are dropped, the rest go on; messages are grouped as
  Loki's ``GroupedErrors`` does (``"; "``, ``"N errors like: "``). ``service_name`` is added.
- The tenant rate limit (optional): 429 ``Ingestion rate limit exceeded ...``, nothing stored.
- The ingester, per stream in request order: an entry equal to the stream's last one is skipped,
  one older than the stream's newest minus ``max_chunk_age``/2 (1 h) is ignored "too far behind",
  the rest are stored. Its reply names at most ``max_returned_errors`` entries and, as Loki does,
  describes only the *last* stream of the request and replaces the distributor's reply.
- ``GET /ready`` (200 ``ready`` / 503), ``GET /loki/api/v1/labels``.

Scripting: ``script(status, times=, headers=, body=, drop=, delay=)`` for the next requests to a
path; ``reject(predicate, body)`` refuses a whole request holding a matching entry with a 400 (an
error the sink cannot map); ``seed(labels, ts_ns)`` pretends another writer pushed to a stream.

    with FakeLoki(auth_enabled=True, now=lambda: NOW) as loki:
        loki.script(429, headers={"Retry-After": "3"})
        ... sink pointed at loki.url ...
        loki.entries, loki.stored, loki.requests
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.server import LoopbackServer

PUSH_PATH = "/loki/api/v1/push"
READY_PATH = "/ready"
LABELS_PATH = "/loki/api/v1/labels"
_NS = 1_000_000_000
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# limits_config discover_service_name default, in order.
_SERVICE_SOURCES = (
    "service",
    "app",
    "application",
    "name",
    "app_kubernetes_io_name",
    "container",
    "container_name",
    "component",
    "workload",
    "job",
)
_REASONS = {
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
RATE_LIMITED = (
    "Ingestion rate limit exceeded for user {user} (limit: {limit} bytes/sec) while attempting to ingest "
    "'{lines}' lines totaling '{bytes}' bytes, reduce log volume or contact your Loki administrator to see "
    "if the limit can be increased"
)


# -- Go formatting, written independently of the sink so that the two cannot share a mistake --


def go_quote(value: str) -> str:
    """strconv.Quote."""
    out = ['"']
    specials = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}
    for char in value:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in specials:
            out.append(specials[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        elif not char.isprintable():
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def labels_string(labels: Mapping[str, str]) -> str:
    """Prometheus labels.String(): sorted, ``{a="b", c="d"}``."""
    return "{" + ", ".join(f"{name}={go_quote(labels[name])}" for name in sorted(labels)) + "}"


def go_time_string(ts_ns: int) -> str:
    """time.Unix(0, ns).String() with the process in UTC."""
    seconds, nanos = divmod(ts_ns, _NS)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + " +0000 UTC"


def rfc3339(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns // _NS, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- records --------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEntry:
    tenant: str
    labels: dict[str, str]  # as Loki stores them (service_name included)
    ts_ns: int
    line: str
    metadata: dict[str, str]

    @property
    def event(self) -> Any:
        return json.loads(self.line)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body_bytes: int  # as sent
    decoded_bytes: int  # after Content-Encoding
    payload: Any  # the parsed JSON body, or None
    status: int | None  # None: the connection was dropped
    answer: str = ""
    client_port: int = 0


@dataclass(frozen=True)
class Step:
    status: int = 0  # 0: handle normally (after any delay)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None  # None: Loki's usual body for the status
    drop: bool = False  # read the request, then close the connection without answering
    delay: float = 0.0
    path: str = PUSH_PATH
    # Handle the request normally (the entries are stored), then close the connection without
    # answering: the client cannot tell it from a request that never arrived.
    drop_after: bool = False


@dataclass
class _StreamState:
    highest_ns: int = 0
    last: tuple[int, str] | None = None


@dataclass
class _Incoming:
    labels: dict[str, str]
    key: tuple[tuple[str, str], ...]
    entries: list[tuple[int, str, dict[str, str]]]


class _Refusal(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(body)
        self.status = status
        self.body = body


class FakeLoki(LoopbackServer):
    thread_name = "loki-fake"

    def __init__(
        self,
        *,
        auth_enabled: bool = False,
        basic_auth: tuple[str, str] | None = None,
        bearer_token: str | None = None,
        now: Callable[[], float] = time.time,
        reject_old_samples_max_age: float = 7 * 86400,
        creation_grace_period: float = 600,
        max_chunk_age: float = 7200,
        max_line_size: int = 256 * 1024,
        max_returned_errors: int = 10,
        allow_structured_metadata: bool = True,
        max_structured_metadata_size: int = 64 * 1024,
        max_structured_metadata_entries: int = 128,
        max_label_names_per_series: int = 15,
        max_label_name_length: int = 1024,
        max_label_value_length: int = 2048,
        discover_service_name: bool = True,
        max_body_bytes: int | None = None,
        ingestion_rate_bytes: float | None = None,
        ingestion_burst_bytes: float | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(port)
        self.auth_enabled = auth_enabled
        self.basic_auth = basic_auth
        self.bearer_token = bearer_token
        self.now = now
        self.reject_old_samples_max_age = reject_old_samples_max_age
        self.creation_grace_period = creation_grace_period
        self.max_chunk_age = max_chunk_age
        self.max_line_size = max_line_size
        self.max_returned_errors = max_returned_errors
        self.allow_structured_metadata = allow_structured_metadata
        self.max_structured_metadata_size = max_structured_metadata_size
        self.max_structured_metadata_entries = max_structured_metadata_entries
        self.max_label_names_per_series = max_label_names_per_series
        self.max_label_name_length = max_label_name_length
        self.max_label_value_length = max_label_value_length
        self.discover_service_name = discover_service_name
        self.max_body_bytes = max_body_bytes
        self.ingestion_rate_bytes = ingestion_rate_bytes
        self.ingestion_burst_bytes = ingestion_burst_bytes or ingestion_rate_bytes
        self.ready = True
        self._tokens = self.ingestion_burst_bytes or 0.0
        self._tokens_at = now()
        self._lock = threading.Lock()
        self._steps: deque[Step] = deque()
        self._rejects: list[tuple[Callable[[StoredEntry], bool], str]] = []
        self._streams: dict[tuple[str, tuple[tuple[str, str], ...]], _StreamState] = {}
        self._entries: list[StoredEntry] = []
        self._requests: list[Request] = []

    # -- scripting --------------------------------------------------------------------------

    def script(
        self,
        status: int = 0,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        drop: bool = False,
        delay: float = 0.0,
        path: str = PUSH_PATH,
        drop_after: bool = False,
    ) -> None:
        """What the next ``times`` requests to ``path`` get instead of the normal handling."""
        with self._lock:
            self._steps.extend([Step(status, dict(headers or {}), body, drop, delay, path, drop_after)] * times)

    def reject(self, predicate: Callable[[StoredEntry], bool], body: str = "invalid entry") -> None:
        """A push holding an entry matching ``predicate`` is refused whole with a 400 ``body``."""
        with self._lock:
            self._rejects.append((predicate, body))

    def seed(self, labels: Mapping[str, str], ts_ns: int, tenant: str = "fake") -> None:
        """Pretend another writer pushed an entry at ``ts_ns`` to the stream with ``labels``."""
        stored = self._with_service_name(dict(labels))
        with self._lock:
            state = self._streams.setdefault((tenant, tuple(sorted(stored.items()))), _StreamState())
            state.highest_ns = max(state.highest_ns, ts_ns)

    # -- records ----------------------------------------------------------------------------

    @property
    def entries(self) -> list[StoredEntry]:
        with self._lock:
            return list(self._entries)

    @property
    def stored(self) -> list[Any]:
        """The stored lines, parsed (the sink's events)."""
        return [entry.event for entry in self.entries]

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def push_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path == PUSH_PATH]

    def stream_labels(self) -> list[dict[str, str]]:
        with self._lock:
            return [dict(key) for _, key in self._streams]

    # -- Loki's behaviour -------------------------------------------------------------------

    def _take_step(self, path: str) -> Step | None:
        with self._lock:
            for index, step in enumerate(self._steps):
                if step.path == path:
                    del self._steps[index]
                    return step
        return None

    def _record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def authorize(self, headers: Mapping[str, str]) -> str:
        """The tenant of a request, or _Refusal(401) as a gateway / Loki would answer."""
        given = headers.get("authorization", "")
        if self.basic_auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.basic_auth).encode()).decode()
            if given != expected:
                raise _Refusal(401, "invalid authentication credentials")
        if self.bearer_token is not None and given != f"Bearer {self.bearer_token}":
            raise _Refusal(401, "invalid authentication credentials")
        if not self.auth_enabled:
            return "fake"
        tenant = headers.get("x-scope-orgid", "")
        if not tenant:
            raise _Refusal(401, "no org id")
        return tenant

    def push(self, headers: Mapping[str, str], raw: bytes) -> tuple[int, str, Any, int]:
        """Handle a push: (status, body, parsed payload, decoded size)."""
        tenant = self.authorize(headers)
        decoded = _decode(raw, headers.get("content-encoding", ""))
        if self.max_body_bytes is not None and len(decoded) > self.max_body_bytes:
            raise _Refusal(413, f"request body too large: {len(decoded)} bytes, limit: {self.max_body_bytes} bytes")
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/json":
            raise _Refusal(400, f"unsupported Content-Type {media!r}: this fake speaks JSON only")
        payload = _parse_json(decoded)
        streams = _parse_push(payload)
        if not streams:
            raise _Refusal(422, "error at least one valid stream is required for ingestion")
        with self._lock:
            for predicate, body in self._rejects:
                for stream in streams:
                    for ts_ns, line, metadata in stream.entries:
                        if predicate(StoredEntry(tenant, stream.labels, ts_ns, line, metadata)):
                            raise _Refusal(400, body)
            return (*self._ingest(tenant, streams), payload, len(decoded))

    def _with_service_name(self, labels: dict[str, str]) -> dict[str, str]:
        if self.discover_service_name and "service_name" not in labels:
            labels["service_name"] = next(
                (labels[name] for name in _SERVICE_SOURCES if labels.get(name)), "unknown_service"
            )
        return labels

    def _ingest(self, tenant: str, streams: list[_Incoming]) -> tuple[int, str]:
        now_ns = int(self.now() * _NS)
        oldest_ns = now_ns - int(self.reject_old_samples_max_age * _NS)
        newest_ns = now_ns + int(self.creation_grace_period * _NS)
        errors: list[str] = []
        accepted: list[_Incoming] = []
        validated_bytes = validated_lines = 0
        for stream in streams:
            if not stream.entries:
                continue
            text = labels_string(stream.labels)
            problem = self._label_problem(stream.labels, text)
            if problem:
                errors.append(problem)
                continue
            stored_labels = self._with_service_name(dict(stream.labels))
            name = labels_string(stored_labels)
            kept = []
            for ts_ns, line, metadata in stream.entries:
                problem = self._entry_problem(name, ts_ns, line, metadata, oldest_ns, newest_ns)
                if problem:
                    errors.append(problem)
                    continue
                kept.append((ts_ns, line, metadata))
                validated_lines += 1
                validated_bytes += len(line.encode()) + sum(len(k) + len(v) for k, v in metadata.items())
            if kept:
                accepted.append(_Incoming(stored_labels, tuple(sorted(stored_labels.items())), kept))
        validation = _grouped(errors)
        if not accepted:
            return (400, validation) if validation else (204, "")
        if not self._allow(validated_bytes):
            limit = int(self.ingestion_rate_bytes or 0)
            return 429, RATE_LIMITED.format(user=tenant, limit=limit, lines=validated_lines, bytes=validated_bytes)
        append_error: str | None = None
        for stream in accepted:
            # pkg/ingester/instance.go: each stream's result replaces the previous one.
            append_error = self._append(tenant, stream)
        if append_error is not None:
            return 400, append_error
        return (400, validation) if validation else (204, "")

    def _label_problem(self, labels: dict[str, str], text: str) -> str | None:
        if not labels:
            return "error at least one label pair is required per stream"
        for name in labels:
            if not _LABEL_NAME.match(name):
                return f"Error parsing labels '{text}' with error: 1:2: parse error: invalid label name {name!r}"
        count = len([name for name in labels if name != "service_name"])
        if count > self.max_label_names_per_series:
            return f"entry for stream '{text}' has {count} label names; limit {self.max_label_names_per_series}"
        for name, value in sorted(labels.items()):
            if len(name) > self.max_label_name_length:
                return f"stream '{text}' has label name too long: '{name}'"
            if len(value) > self.max_label_value_length:
                return f"stream '{text}' has label value too long: '{value}'"
        return None

    def _entry_problem(
        self, stream: str, ts_ns: int, line: str, metadata: dict[str, str], oldest_ns: int, newest_ns: int
    ) -> str | None:
        if ts_ns < oldest_ns:
            return (
                f"entry for stream '{stream}' has timestamp too old: {rfc3339(ts_ns)}, "
                f"oldest acceptable timestamp is: {rfc3339(oldest_ns)}"
            )
        if ts_ns > newest_ns:
            return f"entry for stream '{stream}' has timestamp too new: {rfc3339(ts_ns)}"
        if self.max_line_size and len(line.encode()) > self.max_line_size:
            return (
                f"Max entry size '{self.max_line_size}' bytes exceeded for stream '{stream}' while adding an "
                f"entry with length '{len(line.encode())}' bytes"
            )
        if metadata:
            if not self.allow_structured_metadata:
                return (
                    f"stream '{stream}' includes structured metadata, but this feature is disallowed. Please see "
                    "`limits_config.allow_structured_metadata` or contact your Loki administrator to enable it."
                )
            size = sum(len(k) + len(v) for k, v in metadata.items())
            if size > self.max_structured_metadata_size:
                return (
                    f"stream '{stream}' has structured metadata too large: '{size}' bytes, limit: "
                    f"'{self.max_structured_metadata_size}' bytes. Please see "
                    "`limits_config.max_structured_metadata_size` or contact your Loki administrator to increase it."
                )
            if len(metadata) > self.max_structured_metadata_entries:
                return (
                    f"stream '{stream}' has too many structured metadata labels: '{len(metadata)}', limit: "
                    f"'{self.max_structured_metadata_entries}'. Please see "
                    "`limits_config.max_structured_metadata_entries_count` or contact your Loki administrator "
                    "to increase it."
                )
        return None

    def _allow(self, size: int) -> bool:
        if self.ingestion_rate_bytes is None:
            return True
        now = self.now()
        burst = self.ingestion_burst_bytes or self.ingestion_rate_bytes
        self._tokens = min(burst, self._tokens + (now - self._tokens_at) * self.ingestion_rate_bytes)
        self._tokens_at = now
        if size > self._tokens:
            return False
        self._tokens -= size
        return True

    def _append(self, tenant: str, stream: _Incoming) -> str | None:
        state = self._streams.setdefault((tenant, stream.key), _StreamState())
        window_ns = int(self.max_chunk_age / 2 * _NS)
        failed: list[tuple[int, str]] = []
        for ts_ns, line, metadata in stream.entries:
            if state.last == (ts_ns, line):
                continue  # Loki skips a resend of the stream's last entry
            cutoff = state.highest_ns - window_ns
            if state.highest_ns and ts_ns < cutoff:
                failed.append(
                    (
                        ts_ns,
                        f"entry too far behind, entry timestamp is: {rfc3339(ts_ns)}, "
                        f"oldest acceptable timestamp is: {rfc3339(cutoff)}",
                    )
                )
                continue
            self._entries.append(StoredEntry(tenant, dict(stream.labels), ts_ns, line, dict(metadata)))
            state.last = (ts_ns, line)
            state.highest_ns = max(state.highest_ns, ts_ns)
        if not failed:
            return None
        listed = failed[: self.max_returned_errors] if self.max_returned_errors > 0 else failed
        lines = [f"entry with timestamp {go_time_string(ts)} ignored, reason: '{why}',\n" for ts, why in listed]
        name = labels_string(stream.labels)
        summary = f"user '{tenant}', total ignored: {len(failed)} out of {len(stream.entries)} for stream: {name}"
        return "".join(lines) + summary


def _grouped(errors: list[str]) -> str:
    """pkg/util GroupedErrors.Error()."""
    counts: dict[str, int] = {}
    for error in errors:
        counts[error] = counts.get(error, 0) + 1
    parts = [f"{n} errors like: {text}" if len(counts) > 1 or n > 1 else text for text, n in counts.items()]
    return "; ".join(parts)


def _decode(raw: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    try:
        if encoding == "":
            return raw
        if encoding == "gzip":
            return gzip.decompress(raw)
        if encoding == "deflate":
            return zlib.decompress(raw, -zlib.MAX_WBITS)
    except (OSError, EOFError, zlib.error) as exc:
        raise _Refusal(400, f"{encoding}: invalid header ({exc})") from None
    raise _Refusal(400, f'Content-Encoding "{encoding}" not supported')


def _parse_json(decoded: bytes) -> Any:
    try:
        return json.loads(decoded.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _Refusal(400, f"loghttp.PushRequest: ReadObject: {exc}") from None


def _parse_push(payload: Any) -> list[_Incoming]:
    """The JSON push shape as Loki's decoder enforces it (pkg/loghttp, pkg/util/unmarshal)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("streams", []), list):
        raise _Refusal(400, "loghttp.PushRequest.Streams: ReadArray: expect [ or n")
    streams = []
    for stream in payload.get("streams") or []:
        if not isinstance(stream, dict):
            raise _Refusal(400, "loghttp.PushRequest.Streams: ReadObject: expect { or n")
        labels = stream.get("stream", {})
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise _Refusal(400, 'loghttp.Stream.Labels: ReadString: expects " or n')
        values = stream.get("values", [])
        if not isinstance(values, list):
            raise _Refusal(400, "loghttp.Stream.Values: ReadArray: expect [ or n")
        entries = []
        for value in values:
            if not isinstance(value, list) or len(value) not in (2, 3):
                raise _Refusal(400, "error reading entry: array must contain 2 or 3 values")
            ts, line = value[0], value[1]
            if not isinstance(ts, str) or not re.fullmatch(r"-?\d+", ts):
                raise _Refusal(400, f"error reading entry timestamp: strconv.ParseInt: parsing {ts!r}: invalid syntax")
            if not isinstance(line, str):
                raise _Refusal(400, 'error reading entry line: ReadString: expects " or n')
            metadata = value[2] if len(value) == 3 else {}
            if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
                raise _Refusal(400, 'error reading structured metadata: ReadString: expects " or n')
            entries.append((int(ts), line, dict(metadata)))
        streams.append(_Incoming(dict(labels), tuple(sorted(labels.items())), entries))
    return streams


class _Handler(BaseHTTPRequestHandler):
    fake: FakeLoki
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    _drop_after = False  # set by a drop_after step for the request being handled

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _answer(
        self, status: int, body: str | bytes, headers: Mapping[str, str] | None = None, *, json_body: bool = False
    ) -> None:
        data = body if isinstance(body, bytes) else ((body + "\n") if body else "").encode()
        self.send_response(status, _REASONS.get(status))
        if data or status != 204:
            self.send_header("Content-Type", "application/json" if json_body else "text/plain; charset=utf-8")
            self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    def _scripted(self, path: str, request: Request) -> bool:
        step = self.fake._take_step(path)
        self._drop_after = step is not None and step.drop_after
        if step is None:
            return False
        if step.delay and self.fake._stopping.wait(step.delay):
            self.close_connection = True
            return True
        if step.drop:
            self.fake._record(_replace(request, status=None))
            self.close_connection = True  # no reply; the server closes the socket
            return True
        if step.status:
            body = step.body if step.body is not None else _default_body(step.status)
            self.fake._record(_replace(request, status=step.status, answer=body))
            self._answer(step.status, body, step.headers)
            return True
        return False

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        request = Request("GET", path, self._headers(), 0, 0, None, None, client_port=self.client_address[1])
        if self._scripted(path, request):
            return
        if path == READY_PATH:
            status, body = (200, "ready") if self.fake.ready else (503, "Ingester not ready: waiting for 15s")
            self.fake._record(_replace(request, status=status, answer=body))
            self._answer(status, body)
            return
        if path == LABELS_PATH:
            try:
                tenant = self.fake.authorize(request.headers)
            except _Refusal as refusal:
                self.fake._record(_replace(request, status=refusal.status, answer=refusal.body))
                self._answer(refusal.status, refusal.body)
                return
            names = sorted({n for e in self.fake.entries if e.tenant == tenant for n in e.labels})
            self.fake._record(_replace(request, status=200))
            self._answer(200, json.dumps({"status": "success", "data": names}).encode(), json_body=True)
            return
        self.fake._record(_replace(request, status=404))
        self._answer(404, "404 page not found")

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        length = self.headers.get("Content-Length")
        raw = self.rfile.read(int(length)) if length is not None else b""
        request = Request("POST", path, self._headers(), len(raw), 0, None, None, client_port=self.client_address[1])
        if path != PUSH_PATH:
            self.fake._record(_replace(request, status=404))
            self._answer(404, "404 page not found")
            return
        if self._scripted(path, request):
            return
        try:
            status, body, payload, decoded = self.fake.push(request.headers, raw)
        except _Refusal as refusal:
            self.fake._record(_replace(request, status=refusal.status, answer=refusal.body))
            self._answer(refusal.status, refusal.body)
            return
        if self._drop_after:
            self._drop_after = False
            self.fake._record(_replace(request, status=None, payload=payload, decoded_bytes=decoded))
            self.close_connection = True
            return
        self.fake._record(_replace(request, status=status, answer=body, payload=payload, decoded_bytes=decoded))
        self._answer(status, body)

    def do_PUT(self) -> None:
        length = self.headers.get("Content-Length")
        if length is not None:
            self.rfile.read(int(length))
        self._answer(405, "method not allowed")


def _default_body(status: int) -> str:
    if status == 429:
        return RATE_LIMITED.format(user="fake", limit=4194304, lines=1, bytes=1)
    if status >= 500:
        return "rpc error: code = Unavailable desc = connection error"
    return _REASONS.get(status, "error")


def _replace(request: Request, **changes: Any) -> Request:
    return Request(**{**request.__dict__, **changes})


FakeLoki.handler_class = _Handler
