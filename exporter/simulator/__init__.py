"""An embedded simulator of the Duvo public API (/v2), for the demo, the tests and the benchmarks.

with Simulator(SimulatorOptions(backfill=1000)) as sim:
    requests.get(f"{sim.url}/teams/team-sim/runs", headers={"Authorization": "Bearer dv_sim_key"})
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Any

from .clock import ManualClock
from .faults import Faults, FaultSettings
from .options import SimulatorOptions
from .server import App, SimulatorHTTPServer
from .webhooks import WebhookSender
from .world import STATUSES, TERMINAL_STATUSES, World

__all__ = [
    "STATUSES",
    "TERMINAL_STATUSES",
    "FaultSettings",
    "Faults",
    "ManualClock",
    "Simulator",
    "SimulatorOptions",
    "World",
    "serve_forever",
]


class Simulator:
    """The simulated API served from a background thread. `world` and `faults` may be used before start()."""

    def __init__(
        self,
        options: SimulatorOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the simulator only binds 127.0.0.1")
        self.options = options or SimulatorOptions()
        self.world = World(self.options, clock)
        self.faults = Faults(self.options.seed, self.options.faults)
        self.app = App(self.world, self.faults, self.options)
        self.port = port
        self.url = ""
        self.control_url = ""
        self._server: SimulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.webhooks = WebhookSender(self.world)  # POSTs to Jobs' webhook_url once started

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        server = SimulatorHTTPServer(self.app, "127.0.0.1", self.port)
        self._server = server
        self.port = server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v2"
        self.control_url = f"http://127.0.0.1:{self.port}/_sim"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"duvo-sim-{self.port}", daemon=True
        )
        self._thread.start()
        self.webhooks.start()
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self.webhooks.stop()
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def stats(self) -> dict[str, Any]:
        """Requests by endpoint and status, 429s, resets, jobs_total, terminal (as GET /_sim/stats)."""
        return self.app.snapshot()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(
    options: SimulatorOptions,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[Simulator], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT (`duvo-exporter simulate --port N`).

    ``on_ready`` runs once the port is bound, so nothing claims success for a port that turns out
    to be busy (that raises OSError before it). SIGTERM is handled explicitly because as a
    container's PID 1 the process gets no default action for it."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    simulator = Simulator(options, host=host, port=port).start()
    try:
        if on_ready is not None:
            on_ready(simulator)
        while not stop.wait(0.5):
            pass
    finally:
        simulator.stop()
