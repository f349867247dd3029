"""A strict fake of the Datadog Logs intake (POST /api/v2/logs) and key validation (GET /api/v1/validate).

It checks what the real intake checks and answers the way the real intake answers
(docs.datadoghq.com/api/latest/logs/#send-logs): 202 ``{}`` when accepted, 400 with ``{"errors": [...]}``
refusing the whole request, 401 without a key, 403 ``{"errors": ["Forbidden"]}`` for a wrong key, 413 over
the 5 MB (uncompressed) / 1,000-entry request limits. It records every request and every stored log, and
can be scripted to fail: the next requests answer a given status and headers, hang, or drop the
connection after reading the request; logs carrying a given ``run_id`` make their request a 400.

Dates, as the real intake treats them: a log's official date is the first of Datadog's date
attributes it carries (``timestamp``, ``date``, ``_timestamp``, ``Timestamp``, ``eventTime``,
``published_date``; docs .../log_date_remapper), read as ISO 8601 or epoch milliseconds, else the
time of receipt. A log dated more than 18 h before receipt or more than 2 h after it ("Log events can
be submitted up to 18 hours in the past and two hours in the future") is answered 202 with the rest
and then dropped: it is not in ``stored`` but in ``dropped``, so a sink that sends a wrong date
loses the log here as it would in Datadog. ``clock`` (epoch seconds) is the intake's time; tests that
pin the sink's clock pin this one too. ``stored_dates`` is each stored log's official date.

Deliberate differences, so that a sink which lets one through is caught: the real intake truncates a
single log over 1 MB and accepts it, and (as far as its docs say) stamps a log whose date it cannot
read on receipt; this fake refuses either with a 400.

    with DatadogFake(api_key="k") as fake:
        fake.script(429, headers={"X-Ratelimit-Reset": "7"})
        fake.reject_run_ids("r3")
        ... sink pointed at fake.url ...
        fake.stored, fake.requests, fake.dropped
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.server import LoopbackServer

LOGS_PATH = "/api/v2/logs"
VALIDATE_PATH = "/api/v1/validate"
MAX_ENTRIES = 1000
MAX_PAYLOAD_BYTES = 5_000_000  # uncompressed
MAX_ENTRY_BYTES = 1_000_000
# The date remapper's default attributes, in the order Datadog lists them.
DATE_ATTRIBUTES = ("timestamp", "date", "_timestamp", "Timestamp", "eventTime", "published_date")
MAX_PAST_SECONDS = 18 * 3600
MAX_FUTURE_SECONDS = 2 * 3600
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Step:
    """What to do with one upcoming request to ``path`` instead of (or before) handling it normally."""

    status: int = 0  # 0: handle normally (after any delay)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None  # JSON-able, or bytes as is; None: Datadog's usual body for the status
    drop: bool = False  # read the request, then close the connection without answering
    delay: float = 0.0  # seconds to hang before answering
    path: str = LOGS_PATH
    # Handle the request normally (the logs are stored), then close the connection without
    # answering: the client cannot tell it from a request that never arrived.
    drop_after: bool = False


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body_bytes: int  # as sent (compressed if it was)
    decoded_bytes: int  # after Content-Encoding
    entries: int  # logs in the request (0 if it never parsed)
    status: int | None  # None: the connection was dropped
    client_port: int = 0  # the same port on two requests: the connection was reused


@dataclass(frozen=True)
class Dropped:
    """A log the intake accepted (202) and then discarded for its date."""

    entry: dict[str, Any]
    reason: str


class DatadogFake(LoopbackServer):
    thread_name = "datadog-fake"

    def __init__(self, api_key: str = "test-api-key", port: int = 0, clock: Callable[[], float] = time.time) -> None:
        super().__init__(port)
        self.api_key = api_key
        self.clock = clock
        self.bad_reason = "Invalid log entry"
        self._lock = threading.Lock()
        self._steps: deque[Step] = deque()
        self._bad_run_ids: set[str] = set()
        self._stored: list[dict[str, Any]] = []
        self._stored_dates: list[int] = []
        self._dropped: list[Dropped] = []
        self._requests: list[Request] = []

    # -- scripting --------------------------------------------------------------------------

    def script(
        self,
        status: int = 0,
        *,
        times: int = 1,
        headers: Mapping[str, str] | None = None,
        body: Any = None,
        drop: bool = False,
        delay: float = 0.0,
        path: str = LOGS_PATH,
        drop_after: bool = False,
    ) -> None:
        """Queue what the next ``times`` requests to ``path`` get."""
        step = Step(status, dict(headers or {}), body, drop, delay, path, drop_after)
        with self._lock:
            self._steps.extend([step] * times)

    def reject_run_ids(self, *run_ids: str, reason: str | None = None) -> None:
        """A request holding a log with one of these run_ids is refused whole with a 400."""
        with self._lock:
            self._bad_run_ids.update(run_ids)
            if reason is not None:
                self.bad_reason = reason

    def clear_rejections(self) -> None:
        """The backend was fixed: stop refusing the marked run_ids."""
        with self._lock:
            self._bad_run_ids.clear()

    # -- records ----------------------------------------------------------------------------

    @property
    def stored(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._stored)

    @property
    def stored_run_ids(self) -> list[str]:
        return [entry.get("run_id") for entry in self.stored]

    @property
    def stored_dates(self) -> dict[str, int]:
        """run_id -> the official date (epoch ms) of its last stored log: its own date, else receipt."""
        with self._lock:
            pairs = zip(self._stored, self._stored_dates, strict=True)
            return {str(entry.get("run_id")): date for entry, date in pairs}

    @property
    def dropped(self) -> list[Dropped]:
        with self._lock:
            return list(self._dropped)

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def log_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path == LOGS_PATH]

    # -- internals used by the handler ------------------------------------------------------

    def _next_step(self, path: str) -> Step | None:
        with self._lock:
            for index, step in enumerate(self._steps):
                if step.path == path:
                    del self._steps[index]
                    return step
        return None

    def _record(self, request: Request, stored: Iterable[tuple[dict[str, Any], int, str | None]] = ()) -> None:
        """Record a request and the logs it delivered, each with its official date; a log with a
        reason (dated outside the intake's window) is dropped after the 202, as Datadog does."""
        with self._lock:
            self._requests.append(request)
            for entry, date, reason in stored:
                if reason:
                    self._dropped.append(Dropped(entry, reason))
                else:
                    self._stored.append(entry)
                    self._stored_dates.append(date)

    def _is_bad(self, entry: Mapping[str, Any]) -> bool:
        with self._lock:
            return entry.get("run_id") in self._bad_run_ids


class _Handler(BaseHTTPRequestHandler):
    fake: DatadogFake
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    _drop_after = False  # set by a drop_after step for the request being handled

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {name.lower(): value for name, value in self.headers.items()}

    def _read_body(self) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        return self.rfile.read(int(length))

    def _answer(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
        if body is None:
            body = {} if 200 <= status < 300 else {"errors": [_REASONS.get(status, "Error")]}
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status, _REASONS.get(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        self.close_connection = True  # handler returns without a reply; the server closes the socket

    def _scripted(self, path: str, request: Request) -> bool:
        """Apply the next scripted step for ``path``; True if it answered (or dropped) the request."""
        step = self.fake._next_step(path)
        self._drop_after = step is not None and step.drop_after
        if step is None:
            return False
        if step.delay and self.fake._stopping.wait(step.delay):
            self._drop()
            return True
        if step.drop:
            self.fake._record(_with_status(request, None))
            self._drop()
            return True
        if step.status:
            self.fake._record(_with_status(request, step.status))
            self._answer(step.status, step.body, step.headers)
            return True
        return False

    def _auth_status(self) -> int:
        key = self.headers.get("DD-API-KEY")
        if not key:
            return 401
        return 0 if key == self.fake.api_key else 403

    # -- endpoints --------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        request = Request("GET", path, self._headers(), 0, 0, 0, None, self.client_address[1])
        if path != VALIDATE_PATH:
            self.fake._record(_with_status(request, 404))
            self._answer(404)
            return
        if self._scripted(path, request):
            return
        status = self._auth_status()
        if status:
            self.fake._record(_with_status(request, status))
            self._answer(status)
            return
        self.fake._record(_with_status(request, 200))
        self._answer(200, {"valid": True})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        raw = self._read_body()
        request = Request("POST", path, self._headers(), len(raw or b""), 0, 0, None, self.client_address[1])
        if raw is None:
            self.fake._record(_with_status(request, 411))
            self._answer(411)
            self.close_connection = True
            return
        if path != LOGS_PATH:
            self.fake._record(_with_status(request, 404))
            self._answer(404)
            return
        if self._scripted(path, request):
            return
        status, body, stored, request = self._intake(raw, request)
        if self._drop_after:
            self._drop_after = False
            self.fake._record(_with_status(request, None), stored)
            self._drop()
            return
        self.fake._record(_with_status(request, status), stored)
        self._answer(status, body)

    def do_PUT(self) -> None:
        self._read_body()
        self.fake._record(
            Request("PUT", urlsplit(self.path).path, self._headers(), 0, 0, 0, 405, self.client_address[1])
        )
        self._answer(405)

    def _intake(
        self, raw: bytes, request: Request
    ) -> tuple[int, Any, list[tuple[dict[str, Any], int, str | None]], Request]:
        """Datadog's checks, in the order the intake applies them. Returns status, body, and the
        accepted logs with their official date and, for those it then drops, why."""
        auth = self._auth_status()
        if auth:
            return auth, None, [], request
        content_type = self.headers.get("Content-Type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return 400, {"errors": [f"unsupported Content-Type {content_type!r}"]}, [], request
        encoding = self.headers.get("Content-Encoding", "identity").strip().lower()
        try:
            decoded = _decode(raw, encoding)
        except ValueError as exc:
            return 400, {"errors": [str(exc)]}, [], request
        request = _replace(request, decoded_bytes=len(decoded))
        if len(decoded) > MAX_PAYLOAD_BYTES:
            return 413, {"errors": ["Request too large"]}, [], request
        try:
            payload = json.loads(decoded)
        except ValueError:
            return 400, {"errors": ["Malformed JSON payload"]}, [], request
        entries = payload if isinstance(payload, list) else [payload]
        request = _replace(request, entries=len(entries))
        if len(entries) > MAX_ENTRIES:
            return 413, {"errors": ["Too many log entries in one request"]}, [], request
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                return 400, {"errors": [f"log entry {index} is not a JSON object"]}, [], request
            size = len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode())
            if size > MAX_ENTRY_BYTES:
                return 400, {"errors": [f"log entry {index} is {size} bytes, over 1MB"]}, [], request
        if any(self.fake._is_bad(entry) for entry in entries):
            return 400, {"errors": [self.fake.bad_reason]}, [], request
        received_ms = int(self.fake.clock() * 1000)
        dated: list[tuple[dict[str, Any], int, str | None]] = []
        for index, entry in enumerate(entries):
            date = _official_date(entry, received_ms)
            if date is None:
                return 400, {"errors": [f"log entry {index}: unreadable date (a deliberate fake check)"]}, [], request
            dated.append((entry, date, _out_of_window(date, received_ms)))
        return 202, {}, dated, request


def _official_date(entry: Mapping[str, Any], received_ms: int) -> int | None:
    """Epoch ms of the log's date: its first date attribute read as epoch milliseconds (a number
    or a string of digits) or ISO 8601, else the receipt time; None if the attribute is unreadable."""
    for name in DATE_ATTRIBUTES:
        if name not in entry:
            continue
        value = entry[name]
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float):
            return int(value)
        if isinstance(value, str):
            if value.isdigit():
                return int(value)
            try:
                moment = datetime.fromisoformat(value)
            except ValueError:
                return None
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            return int(moment.timestamp() * 1000)
        return None
    return received_ms


def _out_of_window(date_ms: int, received_ms: int) -> str | None:
    if date_ms < received_ms - MAX_PAST_SECONDS * 1000:
        return f"date {date_ms} is more than 18 h before receipt ({received_ms})"
    if date_ms > received_ms + MAX_FUTURE_SECONDS * 1000:
        return f"date {date_ms} is more than 2 h after receipt ({received_ms})"
    return None


def _decode(raw: bytes, encoding: str) -> bytes:
    limit = MAX_PAYLOAD_BYTES + 1  # enough to tell "too large" without inflating a bomb
    try:
        if encoding == "gzip":
            inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            data = inflater.decompress(raw, limit)
            if not inflater.eof and len(data) < limit:
                raise ValueError("truncated gzip body")
            return data
        if encoding == "deflate":
            return zlib.decompressobj().decompress(raw, limit)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"cannot decode {encoding} body: {exc}") from None
    if encoding in ("identity", ""):
        return raw
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def _replace(request: Request, **changes: Any) -> Request:
    return Request(**{**request.__dict__, **changes})


def _with_status(request: Request, status: int | None) -> Request:
    return _replace(request, status=status)


DatadogFake.handler_class = _Handler
