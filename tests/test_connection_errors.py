"""A transport failure reads the same from the Duvo client and from every sink: one short line
naming host:port and the cause. Real sockets on 127.0.0.1: a closed port, a server that accepts
and never answers, one that resets the connection, and a TLS server with a self-signed
certificate."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import urllib3
from datadog_api_client.exceptions import ApiException

from exporter.source.duvo_client import DuvoClient, DuvoError
from sinks.base import SinkError
from sinks.registry import build_sink, settings_model
from transport.errors import describe_transport_error, endpoint

TIMEOUT = 0.3  # how long the clients wait for a server that never answers

# -- servers that fail in one way each ---------------------------------------------------------------


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """Listens and never accepts: the kernel completes the handshake, nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@contextlib.contextmanager
def _serving(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def loop() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            with conn:
                conn.settimeout(10)
                with contextlib.suppress(OSError):
                    handle(conn)

    thread = threading.Thread(target=loop, name="failing-server", daemon=True)
    thread.start()
    address = listener.getsockname()
    try:
        yield address[1]
    finally:
        # shutdown() wakes the blocked accept(); close() alone does not on Linux.
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=5)


def _read_request(conn: socket.socket) -> None:
    """Read a whole HTTP request (headers and Content-Length body), so the client has sent
    everything and is waiting for the answer when the connection is reset."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return
        body += chunk


def _reset(conn: socket.socket) -> None:
    _read_request(conn)
    # Linger 0: close() sends RST instead of FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@contextlib.contextmanager
def resetting_server() -> Iterator[int]:
    with _serving(_reset) as port:
        yield port


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@contextlib.contextmanager
def tls_server(cert: Path, key: Path) -> Iterator[int]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handshake(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True) as tls:  # the client refuses the certificate
            _read_request(tls)

    with _serving(handshake) as port:
        yield port


# -- the clients ---------------------------------------------------------------------------------


def _event() -> dict[str, Any]:
    run = {"id": "r1", "status": "completed", "agent_id": "a1", "team_id": "t1"}
    return {
        "event_id": "r1:completed",
        "event": "run.finished",
        "run_id": "r1",
        "team_id": "t1",
        "agent_id": "a1",
        "status": "completed",
        "created_at": "2026-05-01T10:00:00.000Z",
        "started_at": "2026-05-01T10:00:01.000Z",
        "completed_at": "2026-05-01T10:02:01.000Z",
        "duration_seconds": 120.0,
        "pending_human_request": None,
        "run": run,
        "exported_at": "2026-05-01T10:02:02.000Z",
    }


SINK_SETTINGS: dict[str, dict[str, Any]] = {
    "datadog": {"api_key": "dd-key-123456"},
    "splunk_hec": {"token": "hec-token-123456"},
    "loki": {"bearer_token": "loki-token-123456"},
}
SERVICE = {"datadog": "Datadog", "splunk_hec": "Splunk HEC", "loki": "Loki"}


def _sink(kind: str, base_url: str, **extra: Any) -> Any:
    values = {"type": kind, "name": kind, "url": base_url, "timeout": TIMEOUT, **SINK_SETTINGS[kind], **extra}
    return build_sink(settings_model(kind).model_validate(values))


def sink_send(kind: str) -> Callable[[str], str]:
    def run(base_url: str) -> str:
        sink = _sink(kind, base_url)
        try:
            result = sink.send([_event()])
        finally:
            sink.close()
        assert result.done == 0 and not result.fatal, result  # kept for a retry
        return result.error or ""

    return run


def sink_health(kind: str) -> Callable[[str], str]:
    def run(base_url: str) -> str:
        sink = _sink(kind, base_url)
        try:
            with pytest.raises(SinkError) as raised:
                sink.healthcheck()
        finally:
            sink.close()
        return str(raised.value)

    return run


def duvo_get(base_url: str) -> str:
    client = DuvoClient(
        base_url + "/v2",
        "dv_key_123456",
        max_attempts=1,
        connect_timeout=TIMEOUT,
        read_timeout=TIMEOUT,
        sleep=lambda seconds: None,
    )
    try:
        with pytest.raises(DuvoError) as raised:
            client.get_run("r1")
    finally:
        client.close()
    return str(raised.value)


DUVO_PREFIX = "Duvo API unavailable for GET /runs/r1 after 1 attempts: "
CLIENTS: dict[str, tuple[Callable[[str], str], str]] = {
    "duvo": (duvo_get, DUVO_PREFIX),
    **{f"{kind} send": (sink_send(kind), f"{SERVICE[kind]} at ") for kind in SERVICE},
    **{f"{kind} check": (sink_health(kind), f"{SERVICE[kind]} at ") for kind in SERVICE},
}


def assert_line(message: str, prefix: str, port: int, cause: str) -> None:
    assert message == f"{prefix}127.0.0.1:{port}: {cause}"
    assert "\n" not in message and "://" not in message


@pytest.mark.parametrize("client", CLIENTS)
def test_connection_refused(client: str) -> None:
    run, prefix = CLIENTS[client]
    port = closed_port()
    assert_line(run(f"http://127.0.0.1:{port}"), prefix, port, "connection refused")


@pytest.mark.parametrize("client", CLIENTS)
def test_a_server_that_never_answers_times_out(client: str) -> None:
    run, prefix = CLIENTS[client]
    with silent_server() as port:
        assert_line(run(f"http://127.0.0.1:{port}"), prefix, port, "timed out waiting for the answer")


@pytest.mark.parametrize("client", CLIENTS)
def test_a_reset_connection(client: str) -> None:
    run, prefix = CLIENTS[client]
    with resetting_server() as port:
        assert_line(run(f"http://127.0.0.1:{port}"), prefix, port, "connection reset")


@pytest.mark.parametrize("client", CLIENTS)
def test_a_self_signed_certificate(client: str, self_signed: tuple[Path, Path]) -> None:
    run, prefix = CLIENTS[client]
    with tls_server(*self_signed) as port:
        message = run(f"https://127.0.0.1:{port}")
    assert_line(message, prefix, port, "TLS: certificate verify failed: self-signed certificate")


@pytest.mark.parametrize("client", CLIENTS)
def test_tls_spoken_to_a_plain_http_server(client: str) -> None:
    """An https URL aimed at a plain HTTP server: the answer is not TLS at all."""
    run, prefix = CLIENTS[client]

    def answer_in_plain_http(conn: socket.socket) -> None:
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    with _serving(answer_in_plain_http) as port:
        message = run(f"https://127.0.0.1:{port}")
    assert message.startswith(f"{prefix}127.0.0.1:{port}: TLS: "), message
    assert "wrong version number" in message or "record layer failure" in message, message
    assert "\n" not in message and "_ssl.c" not in message and "[SSL" not in message


def test_a_refusing_proxy_is_named_without_its_credentials() -> None:
    proxy_port, target_port = closed_port(), closed_port()
    sink = _sink("datadog", f"http://127.0.0.1:{target_port}", proxy=f"http://user:s3cret-pw@127.0.0.1:{proxy_port}")
    try:
        error = sink.send([_event()]).error or ""
    finally:
        sink.close()
    assert error == f"Datadog at 127.0.0.1:{target_port}: via proxy 127.0.0.1:{proxy_port}: connection refused"


# -- describe_transport_error on its own ------------------------------------------------------------


def _raised(call: Callable[[], object]) -> BaseException:
    try:
        call()
    except Exception as exc:
        return exc
    raise AssertionError("nothing raised")


def test_the_host_comes_from_the_exception_when_no_url_is_given() -> None:
    port = closed_port()
    via_requests = _raised(lambda: requests.get(f"http://127.0.0.1:{port}/x?token=abc", timeout=2))
    via_urllib3 = _raised(lambda: urllib3.PoolManager(retries=False).request("GET", f"http://127.0.0.1:{port}/"))
    for exc in (via_requests, via_urllib3):
        assert describe_transport_error(exc) == f"127.0.0.1:{port}: connection refused"
    assert len(str(via_requests)) > 150  # what it replaces


def test_name_not_resolved() -> None:
    """Built rather than provoked: a real lookup would leave this machine."""
    lookup = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    exc = urllib3.exceptions.NameResolutionError("nowhere.invalid", None, lookup)  # type: ignore[arg-type]
    wrapped = requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/x", exc))  # type: ignore[arg-type]
    assert describe_transport_error(wrapped, "https://nowhere.invalid/v2") == "nowhere.invalid:443: name not resolved"
    loki = describe_transport_error(lookup, "http://h.invalid", service="Loki")
    assert loki == "Loki at h.invalid:80: name not resolved"


def test_datadog_clients_tls_wrapping_is_seen_through() -> None:
    """datadog-api-client turns urllib3's SSLError into ApiException(status=0, reason=text)."""
    tls = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)")
    try:
        try:
            raise urllib3.exceptions.SSLError(tls)
        except urllib3.exceptions.SSLError as inner:
            raise ApiException(status=0, reason=f"SSLError\n{inner}")  # noqa: B904 (as rest.py does it)
    except ApiException as outer:
        wrapped = outer
    assert describe_transport_error(wrapped, "https://dd.example", service="Datadog") == (
        "Datadog at dd.example:443: TLS: wrong version number"
    )


def test_an_unknown_error_is_one_short_line_without_urls() -> None:
    exc = requests.exceptions.ContentDecodingError(
        "Received response with content-encoding: gzip, but failed to decode it. "
        "https://user:pw@host.example:8443/path?token=t0k3n\n" + "x" * 500
    )
    line = describe_transport_error(exc, "https://host.example:8443")
    assert line.startswith("host.example:8443: ContentDecodingError: Received response")
    assert "host.example:8443/" not in line and "pw" not in line and "t0k3n" not in line
    assert "\n" not in line and len(line) <= 250


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://api.duvo.ai/v2", "api.duvo.ai:443"),
        ("http://loki:3100/loki/api/v1/push", "loki:3100"),
        ("http://user:pw@[::1]:8088/x?token=t", "[::1]:8088"),
        ("not a url", None),
        ("http://host:notaport/", None),
    ],
)
def test_endpoint(url: str, expected: str | None) -> None:
    assert endpoint(url) == expected
