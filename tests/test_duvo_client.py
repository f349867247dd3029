"""DuvoClient against a small, strict HTTP server on 127.0.0.1 (scripted replies, every request recorded)."""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import structlog
from structlog.testing import capture_logs

from exporter.logsetup import configure_logging
from exporter.source.duvo_client import (
    DuvoAuthError,
    DuvoClient,
    DuvoError,
    DuvoNotFound,
    DuvoUnavailable,
    RunPage,
)

KEY = "dv_test_0123456789abcdef"
TEAM = "t1"


# -- fake server ------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list: sent as JSON; str/bytes: sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (read timeouts)
    truncate: bool = False  # promise more bytes than sent, then close (a body cut short)
    echo_auth: bool = False  # put the received Authorization header into the body (a careless server)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    client_port: int


class FakeDuvo:
    """Answers GETs from a script, in order. Anything unscripted or not a GET is recorded as an error."""

    def __init__(self) -> None:
        self.script: deque[Reply] = deque()
        self.seen: list[Seen] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True
            timeout = 10  # idle keep-alive connections end on their own

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                with fake._lock:
                    fake.seen.append(
                        Seen(
                            "GET",
                            parts.path,
                            parse_qs(parts.query, keep_blank_values=True),
                            dict(self.headers.items()),
                            self.client_address[1],
                        )
                    )
                    reply = fake.script.popleft() if fake.script else None
                if reply is None:
                    with fake._lock:
                        fake.errors.append(f"unscripted GET {self.path}")
                    self._send(Reply(500, {"error": "unscripted request"}))
                    return
                self._send(reply)

            def _refuse(self) -> None:
                with fake._lock:
                    fake.errors.append(f"unexpected {self.command} {self.path}")
                self._send(Reply(405, {"error": "method not allowed"}))

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def _send(self, reply: Reply) -> None:
                if reply.delay:
                    time.sleep(reply.delay)
                body = reply.body
                if reply.echo_auth:
                    body = {"error": f"bad credentials: {self.headers.get('Authorization')}"}
                if isinstance(body, str):
                    payload = body.encode()
                elif isinstance(body, bytes):
                    payload = body
                elif body is None:
                    payload = b""
                else:
                    payload = json.dumps(body).encode()
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": "application/json", **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    length = len(payload) + (100 if reply.truncate else 0)
                    self.send_header("Content-Length", str(length))
                    if reply.truncate:
                        self.send_header("Connection", "close")
                        self.close_connection = True
                    self.end_headers()
                    self.wfile.write(payload)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (read timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()

    def reply(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeTime:
    """Clock that only moves when slept on; records every sleep requested."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


WALL = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def server() -> Iterator[FakeDuvo]:
    fake = FakeDuvo()
    yield fake
    fake.close()
    assert not fake.errors, fake.errors
    assert not fake.script, f"{len(fake.script)} scripted replies were never requested"


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


def make_client(url: str, t: FakeTime, **overrides: Any) -> DuvoClient:
    options: dict[str, Any] = {
        "requests_per_minute": 6000,  # fast enough that pacing never shows up in sleeps unless wanted
        "sleep": t.sleep,
        "clock": t.clock,
        "rng": random.Random(7),
        "wall_clock": lambda: WALL,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    options.update(overrides)
    return DuvoClient(url, KEY, **options)


@pytest.fixture
def client(server: FakeDuvo, fake_time: FakeTime) -> Iterator[DuvoClient]:
    c = make_client(server.url, fake_time)
    yield c
    c.close()


def runs(*ids: str) -> list[dict[str, Any]]:
    return [{"id": i, "status": "completed", "created_at": "2025-01-01T00:00:00Z"} for i in ids]


def jittered(seed: int, attempts: int, initial: float = 0.5, cap: float = 30.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0, min(cap, initial * 2**a)) for a in range(attempts)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- success paths ----------------------------------------------------------------------------------


def test_list_runs_sends_auth_headers_and_all_params(server: FakeDuvo, client: DuvoClient) -> None:
    server.reply(Reply(body={"data": runs("r1", "r2"), "total": 2, "extra": "kept"}))
    page = client.list_runs(
        TEAM,
        since="2025-01-01T00:00:00.5+00:00",
        offset=200,
        limit=50,
        sort_order="desc",
        status="failed",
        params={"has_issues": "true"},
    )
    assert page == RunPage(data=runs("r1", "r2"), total=2, fetched=2)
    assert page.size == 2
    (seen,) = server.seen
    assert seen.path == "/v2/teams/t1/runs"
    assert seen.query == {
        "status": ["failed"],
        "has_issues": ["true"],
        "sort_by": ["created_at"],
        "sort_order": ["desc"],
        "limit": ["50"],
        "offset": ["200"],
        "since": ["2025-01-01T00:00:00.5+00:00"],  # the "+" survived URL encoding
    }
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["User-Agent"] == f"duvo-exporter/{importlib.metadata.version('duvo-exporter')}"


def test_list_runs_defaults(server: FakeDuvo, client: DuvoClient) -> None:
    server.reply(Reply(body={"data": [], "total": 0}))
    page = client.list_runs(TEAM)
    assert page.data == [] and page.total == 0 and page.size == 0
    assert server.seen[0].query == {
        "sort_by": ["created_at"],
        "sort_order": ["asc"],
        "limit": ["100"],
        "offset": ["0"],
    }


def test_ids_are_one_path_segment(server: FakeDuvo, client: DuvoClient) -> None:
    server.reply(Reply(body={"data": [], "total": 0}), Reply(body={"run": {"id": "../x"}}))
    client.list_runs("team/../admin")
    client.get_run("../x")
    assert [s.path for s in server.seen] == ["/v2/teams/team%2F..%2Fadmin/runs", "/v2/runs/..%2Fx"]


def test_connections_are_reused(server: FakeDuvo, client: DuvoClient) -> None:
    server.reply(*(Reply(body={"data": [], "total": 0}) for _ in range(3)))
    for _ in range(3):
        client.list_runs(TEAM)
    assert len({s.client_port for s in server.seen}) == 1


@pytest.mark.parametrize(
    ("total", "expected"),
    [(7, 7), (0, 0), (None, None), ("7", None), (True, None), (7.5, None), (-1, None), ("missing", None)],
)
def test_unusable_total_is_none_not_malformed(
    server: FakeDuvo, client: DuvoClient, fake_time: FakeTime, total: Any, expected: int | None
) -> None:
    body: dict[str, Any] = {"data": runs("r1")}
    if total != "missing":
        body["total"] = total
    server.reply(Reply(body=body))
    page = client.list_runs(TEAM)
    assert page.total == expected and page.data == runs("r1")
    assert len(server.seen) == 1 and fake_time.sleeps == []


def test_bad_rows_are_dropped_with_a_warning_naming_the_index(server: FakeDuvo, client: DuvoClient) -> None:
    rows = [*runs("r1"), "oops", {"id": 5}, {"status": "running"}, None, {"id": ""}, *runs("r2")]
    server.reply(Reply(body={"data": rows, "total": 7}))
    with capture_logs() as logs:
        page = client.list_runs(TEAM, offset=100)
    assert page.data == runs("r1", "r2")
    assert page.fetched == 7 and page.size == 7  # offsets advance past the dropped rows too
    dropped = [e for e in logs if e["event"] == "duvo.row_dropped"]
    assert [e["index"] for e in dropped] == [1, 2, 3, 4, 5]
    assert all(e["log_level"] == "warning" and e["offset"] == 100 for e in dropped)
    assert client.stats.dropped_rows == 5


def test_get_run_returns_the_record(server: FakeDuvo, client: DuvoClient) -> None:
    record = {"id": "r1", "status": "running", "unknown_field": {"x": 1}}
    server.reply(Reply(body={"run": record}))
    assert client.get_run("r1") == record
    assert server.seen[0].path == "/v2/runs/r1" and server.seen[0].query == {}


def test_get_run_404_means_the_job_is_gone(server: FakeDuvo, client: DuvoClient) -> None:
    server.reply(Reply(404, {"error": "not found"}))
    assert client.get_run("gone") is None
    assert len(server.seen) == 1


def test_pending_human_request_beside_run_is_merged_in(server: FakeDuvo, client: DuvoClient) -> None:
    request = {"id": "hr1", "question": "approve?"}
    server.reply(
        Reply(body={"run": {"id": "r1", "status": "waiting"}, "pending_human_request": request}),
        Reply(
            body={
                "run": {"id": "r2", "status": "waiting", "pending_human_request": {"id": "inner"}},
                "pending_human_request": {"id": "outer"},
            }
        ),
        Reply(body={"run": {"id": "r3", "status": "running"}, "pending_human_request": None}),
    )
    assert client.get_run("r1") == {"id": "r1", "status": "waiting", "pending_human_request": request}
    assert client.get_run("r2")["pending_human_request"] == {"id": "inner"}  # type: ignore[index]
    assert client.get_run("r3") == {"id": "r3", "status": "running"}


def test_list_messages(server: FakeDuvo, client: DuvoClient) -> None:
    messages = [{"type": "tool_call", "timestamp": "2025-01-01T00:00:00Z"}, "junk", {"type": "human_request"}]
    server.reply(Reply(body={"messages": messages, "total": 3}), Reply(body={"messages": []}))
    with capture_logs() as logs:
        got, total = client.list_messages("r1", offset=100, limit=25)
    assert got == [messages[0], messages[2]] and total == 3
    assert [e["index"] for e in logs if e["event"] == "duvo.message_dropped"] == [1]
    assert client.list_messages("r1") == ([], None)
    assert server.seen[0].path == "/v2/runs/r1/messages"
    assert server.seen[0].query == {"limit": ["25"], "offset": ["100"]}


def test_arguments_are_checked_before_any_request(server: FakeDuvo, client: DuvoClient) -> None:
    with pytest.raises(ValueError):
        client.list_runs(TEAM, limit=101)
    with pytest.raises(ValueError):
        client.list_runs(TEAM, offset=-1)
    with pytest.raises(ValueError):
        client.list_runs(TEAM, sort_order="random")
    with pytest.raises(ValueError, match="sort_by"):
        client.list_runs(TEAM, params={"sort_by": "id"})
    with pytest.raises(ValueError):
        client.get_run("")
    with pytest.raises(ValueError):
        client.list_messages("r1", limit=0)
    assert server.seen == []


# -- rate limiting ----------------------------------------------------------------------------------


def test_429_retry_after_seconds_pauses_the_bucket(server: FakeDuvo, client: DuvoClient, fake_time: FakeTime):
    server.reply(
        Reply(429, {"error": "slow down"}, {"Retry-After": "7"}), Reply(body={"data": [], "total": 0})
    )
    with capture_logs() as logs:
        client.list_runs(TEAM)
    assert fake_time.sleeps == [7.0]
    assert len(server.seen) == 2
    (retry,) = [e for e in logs if e["event"] == "duvo.retry"]
    assert retry["log_level"] == "warning"
    assert (retry["method"], retry["path"]) == ("GET", "/teams/t1/runs")
    assert (retry["status"], retry["attempt"], retry["wait"], retry["wait_source"]) == (
        429,
        1,
        7.0,
        "retry-after",
    )
    stats = client.stats.snapshot()
    assert stats["throttled"] == 1 and stats["retries"] == 1 and stats["requests"] == 2
    assert stats["by_status"] == {429: 1, 200: 1}
    assert stats["rate_limit_sleep_seconds"] == pytest.approx(7.0)


def test_429_retry_after_fractional_seconds(server: FakeDuvo, client: DuvoClient, fake_time: FakeTime):
    server.reply(Reply(429, headers={"Retry-After": "1.5"}), Reply(body={"run": {"id": "r1"}}))
    client.get_run("r1")
    assert fake_time.sleeps == [1.5]


def test_429_retry_after_http_date(server: FakeDuvo, client: DuvoClient, fake_time: FakeTime):
    when = format_datetime(WALL + timedelta(seconds=30), usegmt=True)
    server.reply(Reply(429, headers={"Retry-After": when}), Reply(body={"data": [], "total": 0}))
    client.list_runs(TEAM)
    assert fake_time.sleeps == [30.0]


def test_429_retry_after_in_the_past_retries_at_once(server: FakeDuvo, client: DuvoClient, fake_time):
    when = format_datetime(WALL - timedelta(seconds=30), usegmt=True)
    server.reply(Reply(429, headers={"Retry-After": when}), Reply(body={"data": [], "total": 0}))
    client.list_runs(TEAM)
    assert fake_time.sleeps == []


def test_429_retry_after_is_capped(server: FakeDuvo, fake_time: FakeTime) -> None:
    client = make_client(server.url, fake_time, max_retry_after=60.0)
    server.reply(Reply(429, headers={"Retry-After": "86400"}), Reply(body={"data": [], "total": 0}))
    with capture_logs() as logs:
        client.list_runs(TEAM)
    assert fake_time.sleeps == [60.0]
    assert [e.get("retry_after_requested") for e in logs if e["event"] == "duvo.retry"] == [86400.0]


@pytest.mark.parametrize("header", [None, "soon", "-5", "nan", "inf", ""])
def test_429_without_usable_retry_after_backs_off(server: FakeDuvo, client: DuvoClient, fake_time, header):
    headers = {} if header is None else {"Retry-After": header}
    server.reply(Reply(429, headers=headers), Reply(body={"data": [], "total": 0}))
    client.list_runs(TEAM)
    assert fake_time.sleeps == pytest.approx(jittered(7, 1))


def test_429_pause_holds_other_callers_too(server: FakeDuvo, fake_time: FakeTime) -> None:
    client = make_client(server.url, fake_time, max_attempts=2)
    server.reply(*(Reply(429, headers={"Retry-After": "5"}) for _ in range(2)))
    with pytest.raises(DuvoUnavailable, match=r"GET /teams/t1/runs after 2 attempts: rate limited \(429\)"):
        client.list_runs(TEAM)
    assert fake_time.sleeps == [5.0]
    # Retry-After was honoured even though the call gave up: the next request waits it out first.
    server.reply(Reply(body={"run": {"id": "r1"}}))
    client.get_run("r1")
    assert fake_time.sleeps == pytest.approx([5.0, 5.0], abs=0.05)  # + one token of debt at 100/s


def test_every_attempt_takes_a_token(server: FakeDuvo, fake_time: FakeTime, monkeypatch) -> None:
    client = make_client(server.url, fake_time)
    taken: list[float] = []
    original = client.bucket.acquire

    def counting(tokens: float = 1.0) -> float:
        taken.append(tokens)
        return original(tokens)

    monkeypatch.setattr(client.bucket, "acquire", counting)
    server.reply(Reply(503), Reply(429), Reply(body="not json"), Reply(body={"data": [], "total": 0}))
    client.list_runs(TEAM)
    assert taken == [1.0] * 4 == [1.0] * len(server.seen)


def test_requests_are_paced_at_the_configured_rate(server: FakeDuvo, fake_time: FakeTime) -> None:
    client = make_client(server.url, fake_time, requests_per_minute=120)  # burst 2, rate (120-2)/min
    server.reply(*(Reply(body={"data": [], "total": 0}) for _ in range(10)))
    start = fake_time.now
    for _ in range(10):
        client.list_runs(TEAM)
    expected = 8 / (118 / 60)  # 8 requests beyond the burst; rate x 60 + burst = the budget
    assert fake_time.now - start == pytest.approx(expected)
    assert client.stats.rate_limit_sleep_seconds == pytest.approx(expected)


# -- transient failures -----------------------------------------------------------------------------


def test_5xx_then_success(server: FakeDuvo, client: DuvoClient, fake_time: FakeTime) -> None:
    server.reply(Reply(503, "upstream down"), Reply(502), Reply(body={"data": runs("r1"), "total": 1}))
    with capture_logs() as logs:
        page = client.list_runs(TEAM)
    assert page.data == runs("r1")
    assert fake_time.sleeps == pytest.approx(jittered(7, 2))
    retries = [e for e in logs if e["event"] == "duvo.retry"]
    assert [(e["status"], e["attempt"]) for e in retries] == [(503, 1), (502, 2)]
    assert "upstream down" in retries[0]["problem"]
    assert client.stats.backoff_sleep_seconds == pytest.approx(sum(jittered(7, 2)))


def test_5xx_exhausts_max_attempts_with_capped_exponential_backoff(server: FakeDuvo, fake_time) -> None:
    client = make_client(server.url, fake_time, max_attempts=6, backoff_initial=1.0, backoff_max=4.0)
    server.reply(*(Reply(500, {"error": {"message": "internal"}}) for _ in range(6)))
    with pytest.raises(DuvoUnavailable) as raised:
        client.list_runs(TEAM)
    assert len(server.seen) == 6
    assert fake_time.sleeps == pytest.approx(jittered(7, 5, initial=1.0, cap=4.0))
    message = str(raised.value)
    assert "GET /teams/t1/runs" in message and "6 attempts" in message and "HTTP 500: internal" in message
    assert raised.value.status == 500 and raised.value.path == "/teams/t1/runs"
    assert client.stats.failures == 1 and client.stats.retries == 5


def test_connection_refused_gives_up_after_max_attempts(fake_time: FakeTime) -> None:
    port = closed_port()
    client = make_client(f"http://127.0.0.1:{port}/v2", fake_time, max_attempts=3)
    with pytest.raises(DuvoUnavailable) as raised:
        client.get_run("r1")
    assert str(raised.value).endswith(f"GET /runs/r1 after 3 attempts: 127.0.0.1:{port}: connection refused")
    assert KEY not in str(raised.value)
    assert len(fake_time.sleeps) == 2
    assert client.stats.transport_errors == 3 and client.stats.requests == 3


def test_read_timeout_is_retried(server: FakeDuvo, fake_time: FakeTime) -> None:
    client = make_client(server.url, fake_time, read_timeout=0.2)
    server.reply(Reply(delay=1.0, body={"run": {"id": "late"}}), Reply(body={"run": {"id": "r1"}}))
    with capture_logs() as logs:
        assert client.get_run("r1") == {"id": "r1"}
    assert client.stats.transport_errors == 1
    problem = next(e for e in logs if e["event"] == "duvo.retry")["problem"]
    assert problem == f"127.0.0.1:{urlsplit(server.url).port}: timed out waiting for the answer"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body="<html>502 Bad Gateway</html>", headers={"Content-Type": "text/html"}),
        Reply(body='{"data": [{"id": "r1"'),  # complete HTTP response, truncated JSON
        Reply(body={"data": runs("r1"), "total": 1}, truncate=True),  # connection closed mid-body
        Reply(body={"items": []}),
        Reply(body={"data": {"id": "r1"}, "total": 1}),
        Reply(body=["not", "an", "object"]),
        Reply(body=b"\xff\xfe\x00garbage"),
        Reply(body="[" * 100_000),
        Reply(204),
    ],
)
def test_malformed_bodies_are_retried(server: FakeDuvo, client: DuvoClient, fake_time, reply: Reply) -> None:
    server.reply(reply, Reply(body={"data": runs("r2"), "total": 1}))
    assert client.list_runs(TEAM).data == runs("r2")
    assert len(server.seen) == 2 and len(fake_time.sleeps) == 1


def test_malformed_bodies_exhaust_to_unavailable(server: FakeDuvo, fake_time: FakeTime) -> None:
    client = make_client(server.url, fake_time, max_attempts=2)
    server.reply(Reply(body={"messages": "nope"}), Reply(body={"messages": {}}))
    with pytest.raises(DuvoUnavailable, match="'messages' is missing or not a list"):
        client.list_messages("r1")
    server.reply(Reply(body={"run": None}), Reply(body={"run": []}))
    with pytest.raises(DuvoUnavailable, match="'run' is missing or not an object"):
        client.get_run("r1")
    assert client.stats.malformed_bodies == 4


# -- errors that must not be retried --------------------------------------------------------------


@pytest.mark.parametrize(("status", "word"), [(401, "unauthorized"), (403, "forbidden")])
def test_auth_errors_fail_fast(
    server: FakeDuvo, client: DuvoClient, fake_time, status: int, word: str
) -> None:
    server.reply(Reply(status, echo_auth=True))
    with pytest.raises(DuvoAuthError) as raised:
        client.list_runs(TEAM)
    message = str(raised.value)
    assert message.startswith(f"Duvo API rejected the API key ({status} {word}) for GET /teams/t1/runs: ")
    assert "duvo.api_key" in message and KEY not in message and "\n" not in message
    assert isinstance(raised.value, DuvoError) and raised.value.status == status
    assert len(server.seen) == 1 and fake_time.sleeps == []


@pytest.mark.parametrize("status", [400, 422, 409])
def test_other_client_errors_are_not_retried(server: FakeDuvo, client: DuvoClient, status: int) -> None:
    server.reply(Reply(status, {"error": {"message": "bad since\nvalue " + "x" * 500}}))
    with pytest.raises(DuvoError) as raised:
        client.list_runs(TEAM, since="yesterday")
    assert type(raised.value) is DuvoError and raised.value.status == status
    message = str(raised.value)
    assert f"({status})" in message and "bad since value xxx" in message
    assert len(message) < 300 and "\n" not in message
    assert len(server.seen) == 1


def test_404_on_a_list_is_an_error(server: FakeDuvo, client: DuvoClient) -> None:
    server.reply(Reply(404, {"message": "no such team"}))
    with pytest.raises(DuvoNotFound, match="no such team"):
        client.list_runs("nope")
    assert len(server.seen) == 1


def test_redirects_are_not_followed(server: FakeDuvo, client: DuvoClient) -> None:
    server.reply(Reply(301, headers={"Location": "https://elsewhere.example/v2/teams/t1/runs"}))
    with pytest.raises(DuvoError, match=r"elsewhere\.example.*check duvo\.base_url"):
        client.list_runs(TEAM)
    assert len(server.seen) == 1


# -- the key stays secret ---------------------------------------------------------------------------


def test_key_never_reaches_exceptions_or_logs_even_when_the_server_echoes_it(
    server: FakeDuvo, fake_time
) -> None:
    client = make_client(server.url, fake_time, max_attempts=2)
    server.reply(Reply(500, echo_auth=True), Reply(502, f"proxy says {KEY}"))
    with capture_logs() as logs, pytest.raises(DuvoUnavailable) as raised:
        client.list_runs(TEAM)
    server.reply(Reply(400, echo_auth=True))
    with capture_logs() as more, pytest.raises(DuvoError) as refused:
        client.list_runs(TEAM)
    for text in (str(raised.value), repr(raised.value), str(refused.value), repr(logs), repr(more)):
        assert KEY not in text
    assert "Bearer ***" in str(refused.value)
    assert KEY not in repr(client) and KEY not in repr(client._session.auth)


def test_key_absent_from_rendered_log_output(server: FakeDuvo, fake_time: FakeTime) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("debug", json=True, stream=out, library_level="debug")  # urllib3's debug lines included
    try:
        client = make_client(server.url, fake_time, max_attempts=2)
        server.reply(Reply(503, echo_auth=True), Reply(body={"data": [], "total": 0}))
        client.list_runs(TEAM)
    finally:
        structlog.reset_defaults()
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
    text = out.getvalue()
    assert '"event": "duvo.retry"' in text and '"logger": "urllib3.connectionpool"' in text
    assert KEY not in text


def test_malformed_key_is_rejected_without_echoing_it() -> None:
    bad = "dv_secret with space\n"
    with pytest.raises(DuvoError) as raised:
        DuvoClient("https://api.duvo.ai/v2", bad)
    assert "secret" not in str(raised.value) and "duvo.api_key" in str(raised.value)


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError):
        DuvoClient("ftp://api.duvo.ai/v2", KEY)
