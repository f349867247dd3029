"""WebhookSender: POSTs Duvo's webhook to a Job's webhook_url when it finishes or waits for a human.

{"event": "run_completed" | "run_failed" | "run_interrupted" | "run_stopped" | "human_request",
"run_id": "...", "status": "..."}: the guide's events (plus run_stopped, which it does not name
but a stopped Job has to announce somehow); pending, starting and running send nothing. Statuses are
derived from time, so a background thread polls the world for changes. Loopback URLs only: the
simulator never sends anything off the machine.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit

import requests

from .world import World

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
EVENTS = {
    "completed": "run_completed",
    "failed": "run_failed",
    "interrupted": "run_interrupted",
    "stopped": "run_stopped",
    "waiting": "human_request",
}


def event_for(status: str) -> str:
    return EVENTS[status]


class WebhookSender:
    def __init__(self, world: World, poll_interval: float = 0.02) -> None:
        self.world = world
        self.poll_interval = poll_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = requests.Session()
        self._session.trust_env = False
        self._lock = threading.Lock()
        # run_id -> time.time() the terminal webhook was sent, and every delivery's answer.
        self.sent_terminal: dict[str, float] = {}
        self.deliveries: list[tuple[str, str, int | str]] = []  # (run_id, status, HTTP status or error)

    def start(self) -> WebhookSender:
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sim-webhooks", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            for url, run_id, status in self.world.webhook_changes():
                if status in EVENTS:
                    self.send(url, run_id, status)

    def send(self, url: str, run_id: str, status: str) -> None:
        if urlsplit(url).hostname not in LOOPBACK:
            outcome: int | str = "not sent: not a loopback URL"
        else:
            if status in EVENTS and status != "waiting":
                with self._lock:
                    self.sent_terminal.setdefault(run_id, time.time())
            try:
                response = self._session.post(
                    url, json={"event": event_for(status), "run_id": run_id, "status": status}, timeout=5
                )
                outcome = response.status_code
            except requests.RequestException as exc:
                outcome = type(exc).__name__
        with self._lock:
            self.deliveries.append((run_id, status, outcome))
