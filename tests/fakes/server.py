"""LoopbackServer: the lifecycle every fake receiver shares.

It serves the fake's handler on 127.0.0.1 from a daemon thread, stops, and restarts on the same
port (a "crashed" backend coming back). It keeps its URL after stop(), so tests can aim at a
closed port. Handlers reach their fake as ``self.fake``.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout tests) is not a test failure


class LoopbackServer:
    handler_class: ClassVar[type[BaseHTTPRequestHandler]]
    server_class: ClassVar[type[ThreadingHTTPServer]] = QuietServer
    thread_name: ClassVar[str] = "fake-receiver"

    def __init__(self, port: int = 0) -> None:
        self.port = port  # a fixed port lets a test bring a "crashed" backend back at the same URL
        self._stopping = threading.Event()  # wakes handlers sleeping in a scripted delay
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._url: str | None = None

    def start(self) -> Self:
        handler = type(f"Bound{self.handler_class.__name__}", (self.handler_class,), {"fake": self})
        server = self.server_class(("127.0.0.1", self.port), handler)
        self._server = server
        host, port = server.server_address[:2]
        self._url = f"http://{host}:{port}"
        self._stopping.clear()
        # A short poll interval keeps stop() (which waits for the serve loop) fast.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._url is not None, "start() first"
        return self._url
