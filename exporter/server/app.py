"""The WSGI app (routing) and the waitress server that serves it from a background thread."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from waitress.server import create_server

from exporter import jsoncodec
from exporter.pipeline import Exporter
from exporter.server.health import Readiness, interval_seconds, readiness
from exporter.server.metrics import build_registry
from exporter.server.webhooks import WebhookReceiver
from exporter.state.store import StateStore
from transport.durations import parse_duration

log = structlog.get_logger(__name__)

WEBHOOK_PATH = "/webhooks/duvo"
_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class ServerError(Exception):
    """The server could not start (a busy port, an address that does not exist)."""


class App:
    """GET /healthz, GET /readyz, GET /metrics, POST /webhooks/duvo (when webhooks are configured)."""

    def __init__(
        self,
        state_path: str,
        interval: float,
        sinks: Sequence[str],
        registry: CollectorRegistry,
        webhooks: WebhookReceiver | None = None,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.interval = interval
        self.sinks = list(sinks)
        self.registry = registry
        self.webhooks = webhooks
        self._store = StateStore(state_path, create=False)
        self._store_lock = threading.Lock()
        self._on_close = on_close
        self.started_at = time.time()  # passes of an earlier process do not make this one ready

    def close(self) -> None:
        self._on_close()
        with self._store_lock:
            self._store.close()
        if self.webhooks is not None:
            self.webhooks.close()

    def readiness(self) -> Readiness:
        with self._store_lock:
            return readiness(self._store, self.interval, self.sinks, since=self.started_at)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        try:
            status, content_type, body = self._route(method, path, environ)
        except Exception as exc:
            log.exception("server: request failed", path=path, error=str(exc))
            status, content_type, body = 500, "application/json", _json({"error": "internal error"})
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body)))]
        if status == 405:
            headers.append(("Allow", "POST" if path == WEBHOOK_PATH else "GET"))
        start_response(f"{status} {_REASONS.get(status, '')}", headers)
        return [body] if method != "HEAD" else []

    def _route(self, method: str, path: str, environ: dict[str, Any]) -> tuple[int, str, bytes]:
        if path == WEBHOOK_PATH and self.webhooks is not None:
            if method != "POST":
                return 405, "application/json", _json({"error": "use POST"})
            answer = self.webhooks.handle(environ)
            return answer.status, "application/json", _json(answer.body)
        if path not in ("/healthz", "/readyz", "/metrics"):
            return 404, "application/json", _json({"error": "not found"})
        if method not in ("GET", "HEAD"):
            return 405, "application/json", _json({"error": "use GET"})
        if path == "/healthz":
            return 200, "application/json", _json({"alive": True})
        if path == "/readyz":
            ready = self.readiness()
            return (200 if ready.ready else 503), "application/json", ready.body()
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)


def _json(payload: Any) -> bytes:
    return jsoncodec.dumps(payload).encode() + b"\n"


class Server:
    """waitress in a background thread; ``start`` raises ServerError when it cannot listen."""

    def __init__(self, app: App, host: str, port: int, *, threads: int = 4) -> None:
        self.app = app
        # waitress logs each failed socket and queue depth on its own logger; ours say enough.
        logging.getLogger("waitress").setLevel(logging.ERROR)
        try:
            self._server: Any = create_server(
                app,
                host=host,
                port=port,
                threads=threads,
                ident="duvo-exporter",
                expose_tracebacks=False,
                # Bodies are capped by the app (413 counted in metrics); this is waitress' backstop.
                max_request_body_size=max(1 << 20, (app.webhooks.max_body_bytes * 2) if app.webhooks else 0),
                channel_timeout=30,
            )
        except OSError as exc:
            app.close()
            raise ServerError(f"server.listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self.port: int = self._server.effective_port
        self.host: str = host
        self._thread: threading.Thread | None = None

    def start(self) -> Server:
        self._thread = threading.Thread(target=self._server.run, name="http-server", daemon=True)
        self._thread.start()
        log.info("server listening", listen=f"{self.host}:{self.port}")
        return self

    def stop(self, timeout: float = 2.0) -> None:
        server = self._server
        # What webtest's StopableWSGIServer does: close every channel and the listening socket,
        # so the asyncore loop ends, then let the worker threads finish their requests.
        while server._map:
            for channel in list(server._map.values()):
                channel.handle_close()
        server.task_dispatcher.shutdown(timeout=timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        self.app.close()


def start_server(exporter: Exporter) -> Server:
    """Build the metrics, hook them into ``exporter``, and serve on server.listen. Raises
    ServerError when the address cannot be bound."""
    config = exporter.config
    address = config.server.address
    assert address is not None
    registry, observer, collector = build_registry(
        config.state.path, config.duvo.team_ids, exporter.sink_names, config.insights
    )
    exporter.set_observer(observer)
    receiver: WebhookReceiver | None = None
    if config.webhooks is not None and exporter.webhooks is not None:
        receiver = WebhookReceiver(
            StateStore(config.state.path, synchronous=config.state.synchronous),
            config.webhooks.token.get_secret_value(),
            max_body_bytes=config.server.max_body_bytes,
            observer=observer,
            on_queued=exporter.webhooks.wake.set,
        )
        relaxed = parse_duration(config.webhooks.recheck_interval)
        flowing = receiver.webhooks_flowing
        exporter.set_recheck_floor(lambda: relaxed if flowing(relaxed) else 0.0)
    app = App(
        config.state.path,
        interval_seconds(config.schedule),
        exporter.sink_names,
        registry,
        receiver,
        on_close=collector.close,
    )
    return Server(app, address[0], address[1]).start()
