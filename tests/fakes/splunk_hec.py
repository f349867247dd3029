"""A strict fake Splunk HTTP Event Collector on 127.0.0.1, for sink, fault and benchmark tests.

It behaves as HEC does, with HEC's status codes and JSON bodies:

- ``POST /services/collector[/event[/1.0]]``: ``Authorization: Splunk <token>`` (401 code 2
  without a token, 401 code 3 for another scheme, 403 code 4 for a wrong token, 403 code 1 for
  a disabled one); with ``use_ack`` a GUID ``X-Splunk-Request-Channel`` (400 code 10 / 11);
  ``Content-Encoding`` gzip or none (415 otherwise); a body over ``max_content_length`` (wire or
  decoded size) gets 413; the body is parsed as concatenated JSON objects, each needing a
  non-null ``event`` (code 12) that is not blank (code 13), a numeric ``time``, string
  metadata, an allowed ``index`` (code 7), ``fields`` whose values are strings or arrays of
  strings (code 15). The events before the first invalid one are stored (HEC indexes them) and
  the answer names it: ``{"text":"Invalid data format","code":6,"invalid-event-number":3}``.
- ``POST /services/collector/ack``: ``{"acks":[ids]}`` -> ``{"acks":{"id":bool}}``; 400 code 14
  when the token has no ack. A status is forgotten once reported true, as Splunk does.
- ``GET /services/collector/health[/1.0]``: 200 code 17, or 503 code 18 when ``healthy`` is off.

Scripting: ``script(Fault(...), ...)`` queues faults for the next requests to an endpoint
(status + body + headers, dropping the connection after reading the request, answering late);
``reject(predicate)`` refuses matching envelopes the way HEC refuses invalid ones;
``ack_after_polls`` acknowledges late (``None``: never).
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.server import LoopbackServer

EVENT_PATHS = frozenset({"/services/collector", "/services/collector/event", "/services/collector/event/1.0"})
ACK_PATH = "/services/collector/ack"
HEALTH_PATHS = frozenset({"/services/collector/health", "/services/collector/health/1.0"})

SUCCESS = {"text": "Success", "code": 0}
SERVER_BUSY = {"text": "Server is busy", "code": 9}
INTERNAL_ERROR = {"text": "Internal server error", "code": 8}


def _forbid_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_forbid_constant)


@dataclass
class Fault:
    """What to do with the next request to ``endpoint`` ("event", "ack", "health" or "any")."""

    status: int = 503
    body: dict[str, Any] | str | None = field(default_factory=lambda: dict(SERVER_BUSY))
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # read the request, then close the connection without a reply
    delay: float = 0.0  # wait this long before answering
    passthrough: bool = False  # after the delay, handle the request normally
    endpoint: str = "event"
    # Handle the request normally (the events are stored), then close the connection without
    # a reply: the client cannot tell it from a request that never arrived.
    drop_after: bool = False

    @classmethod
    def busy(cls, retry_after: float | None = None) -> Fault:
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        return cls(503, dict(SERVER_BUSY), headers)

    @classmethod
    def dropped(cls, endpoint: str = "event") -> Fault:
        return cls(drop=True, endpoint=endpoint)

    @classmethod
    def slow(cls, seconds: float, endpoint: str = "event") -> Fault:
        return cls(delay=seconds, passthrough=True, endpoint=endpoint)

    @classmethod
    def stored_then_dropped(cls, endpoint: str = "event") -> Fault:
        return cls(passthrough=True, drop_after=True, endpoint=endpoint)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes  # as received
    decoded: bytes  # after Content-Encoding


@dataclass
class _Rule:
    predicate: Callable[[dict[str, Any]], bool]
    code: int
    text: str
    name_event: bool


class _HecError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("text"))
        self.status = status
        self.body = body


class FakeSplunkHec(LoopbackServer):
    thread_name = "fake-splunk-hec"

    def __init__(
        self,
        token: str = "fake-hec-token",
        *,
        max_content_length: int = 1_000_000,
        use_ack: bool = False,
        allowed_indexes: set[str] | None = None,
        default_index: str = "main",
        token_disabled: bool = False,
        port: int = 0,
    ) -> None:
        self.token = token
        super().__init__(port)
        self.max_content_length = max_content_length
        self.use_ack = use_ack
        self.allowed_indexes = allowed_indexes
        self.default_index = default_index
        self.token_disabled = token_disabled
        self.healthy = True
        self.ack_after_polls: int | None = 0  # polls answered false before true; None: never
        self.stored: list[dict[str, Any]] = []  # accepted envelopes, in order
        self.requests: list[RecordedRequest] = []
        self.ack_polls = 0
        self._faults: deque[Fault] = deque()
        self._rules: list[_Rule] = []
        self._next_ack: dict[str, int] = {}
        self._pending_acks: dict[tuple[str, int], int] = {}  # (channel, ackId) -> polls seen
        self._lock = threading.Lock()

    # -- scripting and inspection ----------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def reject(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        code: int = 6,
        text: str = "Invalid data format",
        name_event: bool = True,
    ) -> None:
        """Refuse envelopes matching ``predicate`` with 400 ``code``; ``name_event=False``
        answers without ``invalid-event-number`` and stores nothing of that request."""
        with self._lock:
            self._rules.append(_Rule(predicate, code, text, name_event))

    @property
    def events(self) -> list[Any]:
        with self._lock:
            return [envelope["event"] for envelope in self.stored]

    def data_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path in EVENT_PATHS]

    # -- request handling (called from server threads) -------------------------------------

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.endpoint in (endpoint, "any"):
                    self._faults.remove(fault)
                    return fault
        return None

    def _authorize(self, headers: dict[str, str]) -> None:
        value = headers.get("authorization")
        if not value:
            raise _HecError(401, {"text": "Token is required", "code": 2})
        scheme, _, token = value.partition(" ")
        if scheme != "Splunk" or not token:
            raise _HecError(401, {"text": "Invalid authorization", "code": 3})
        if token != self.token:
            raise _HecError(403, {"text": "Invalid token", "code": 4})
        if self.token_disabled:
            raise _HecError(403, {"text": "Token disabled", "code": 1})

    def _channel(self, headers: dict[str, str], required: bool) -> str | None:
        channel = headers.get("x-splunk-request-channel")
        if channel is None:
            if required:
                raise _HecError(400, {"text": "Data channel is missing", "code": 10})
            return None
        try:
            uuid.UUID(channel)
        except ValueError:
            raise _HecError(400, {"text": "Invalid data channel", "code": 11}) from None
        return channel.lower()

    def handle_event(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        if len(body) > self.max_content_length:  # the HTTP layer refuses before anything else
            raise _HecError(
                413, {"text": f"Content-Length of {len(body)} too large (maximum is {self.max_content_length})"}
            )
        self._authorize(headers)
        channel = self._channel(headers, required=self.use_ack)
        encoding = headers.get("content-encoding", "")
        if encoding not in ("", "gzip"):
            raise _HecError(415, {"text": f'Content-Encoding "{encoding}" is not supported', "code": 6})
        decoded = self._decode(encoding, body)
        envelopes, failure = self._parse(decoded)
        with self._lock:
            self.stored.extend(envelopes)  # HEC indexes what precedes an invalid event
            if failure is not None:
                raise failure
            if self.use_ack and channel is not None:
                ack_id = self._next_ack.get(channel, 0)
                self._next_ack[channel] = ack_id + 1
                self._pending_acks[(channel, ack_id)] = 0
                return 200, {**SUCCESS, "ackId": ack_id}
        return 200, dict(SUCCESS)

    def _decode(self, encoding: str, body: bytes) -> bytes:
        if not body:
            raise _HecError(400, {"text": "No data", "code": 5})
        decoded = body
        if encoding == "gzip":
            try:
                decoded = gzip.decompress(body)
            except (OSError, EOFError):
                raise _HecError(400, {"text": "Invalid data format", "code": 6}) from None
        if len(decoded) > self.max_content_length:
            raise _HecError(
                413, {"text": f"Content-Length of {len(decoded)} too large (maximum is {self.max_content_length})"}
            )
        return decoded

    def _parse(self, decoded: bytes) -> tuple[list[dict[str, Any]], _HecError | None]:
        try:
            text = decoded.decode("utf-8")
        except UnicodeDecodeError:
            return [], _HecError(400, {"text": "Invalid data format", "code": 6, "invalid-event-number": 0})
        accepted: list[dict[str, Any]] = []
        position = 0
        while True:
            while position < len(text) and text[position] in " \t\r\n":
                position += 1
            if position >= len(text):
                break
            number = len(accepted)
            try:
                envelope, position = _DECODER.raw_decode(text, position)
            except ValueError:
                return accepted, _invalid(6, "Invalid data format", number)
            problem = self._validate(envelope)
            if problem is not None:
                code, message, name_event = problem
                if not name_event:
                    return [], _HecError(400, {"text": message, "code": code})
                return accepted, _invalid(code, message, number)
            accepted.append(envelope)
        if not accepted:
            return [], _HecError(400, {"text": "No data", "code": 5})
        return accepted, None

    def _validate(self, envelope: Any) -> tuple[int, str, bool] | None:
        if not isinstance(envelope, dict):
            return 6, "Invalid data format", True
        if envelope.get("event") is None:
            return 12, "Event field is required", True
        event = envelope["event"]
        if isinstance(event, str) and not event.strip():
            return 13, "Event field cannot be blank", True
        if "time" in envelope and not _is_epoch(envelope["time"]):
            return 6, "Invalid data format", True
        for key in ("host", "source", "sourcetype", "index"):
            if key in envelope and not isinstance(envelope[key], str):
                return 6, "Invalid data format", True
        index = envelope.get("index", self.default_index)
        if self.allowed_indexes is not None and index not in self.allowed_indexes:
            return 7, "Incorrect index", True
        if "fields" in envelope and not _flat_fields(envelope["fields"]):
            return 15, "Error in handling indexed fields", True
        with self._lock:
            rules = list(self._rules)
        for rule in rules:
            if rule.predicate(envelope):
                return rule.code, rule.text, rule.name_event
        return None

    def handle_ack(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        self._authorize(headers)
        if not self.use_ack:
            raise _HecError(400, {"text": "ACK is disabled", "code": 14})
        channel = self._channel(headers, required=True)
        assert channel is not None
        try:
            request = json.loads(body)
            ids = request["acks"]
            if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
                raise ValueError("acks must be a non-empty list of integers")
        except (ValueError, KeyError, TypeError):
            raise _HecError(400, {"text": "Invalid data format", "code": 6}) from None
        statuses: dict[str, bool] = {}
        with self._lock:
            self.ack_polls += 1
            for ack_id in ids:
                key = (channel, ack_id)
                seen = self._pending_acks.get(key)
                done = seen is not None and self.ack_after_polls is not None and seen >= self.ack_after_polls
                if done:
                    del self._pending_acks[key]  # reported true once, then forgotten
                elif seen is not None:
                    self._pending_acks[key] = seen + 1
                statuses[str(ack_id)] = done
        return 200, {"acks": statuses}

    def handle_health(self) -> tuple[int, dict[str, Any]]:
        if self.healthy:
            return 200, {"text": "HEC is healthy", "code": 17}
        return 503, {"text": "HEC is unhealthy, queues are full", "code": 18}


def _invalid(code: int, text: str, number: int) -> _HecError:
    return _HecError(400, {"text": text, "code": code, "invalid-event-number": number})


def _is_epoch(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def _flat_fields(fields: Any) -> bool:
    if not isinstance(fields, dict):
        return False
    for value in fields.values():
        if isinstance(value, str):
            continue
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            continue
        return False
    return True


class _Handler(BaseHTTPRequestHandler):
    fake: FakeSplunkHec
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        fake = self.fake
        body = self._read_body()
        headers = {name.lower(): value for name, value in self.headers.items()}
        path = self.path.split("?", 1)[0]
        decoded = body
        if headers.get("content-encoding") == "gzip":
            try:
                decoded = gzip.decompress(body)
            except (OSError, EOFError):
                decoded = b""
        with fake._lock:
            fake.requests.append(RecordedRequest(self.command, path, headers, body, decoded))
        endpoint = "event" if path in EVENT_PATHS else "ack" if path == ACK_PATH else "health"
        fault = fake._take_fault(endpoint)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self.close_connection = True
                return
            if not fault.passthrough:
                self._answer(fault.status, fault.body, fault.headers)
                return
        try:
            status, answer = self._route(path, headers, body)
        except _HecError as error:
            status, answer = error.status, error.body
        if fault is not None and fault.drop_after:
            self.close_connection = True
            return
        self._answer(status, answer)

    def _route(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        fake = self.fake
        if path in HEALTH_PATHS:
            return fake.handle_health()
        if path in EVENT_PATHS or path == ACK_PATH:
            if self.command != "POST":
                raise _HecError(400, {"text": 'Only "POST" method is supported', "code": 6})
            if path == ACK_PATH:
                return fake.handle_ack(headers, body)
            return fake.handle_event(headers, body)
        raise _HecError(404, {"text": "The requested URL was not found on this server.", "code": 404})

    def _answer(self, status: int, body: dict[str, Any] | str | None, headers: dict[str, str] | None = None) -> None:
        if body is None:
            payload = b""
        elif isinstance(body, str):
            payload = body.encode()
        else:
            payload = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


FakeSplunkHec.handler_class = _Handler
