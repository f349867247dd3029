"""POST /webhooks/duvo: check the token, validate the body, queue the run_id durably, 202.

Nothing else happens in the request: the Job is fetched and exported by the webhook processor
(exporter/source/webhook_queue.py) through the normal outbox, so a repeat, an out-of-order delivery or
the later poll never exports it twice. The token never reaches a log line or a metric label.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import structlog

from exporter import jsoncodec
from exporter.observe import NULL_OBSERVER, Observer
from exporter.state.store import StateStore

log = structlog.get_logger(__name__)

MAX_RUN_ID_LENGTH = 200


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


class WebhookReceiver:
    def __init__(
        self,
        store: StateStore,
        token: str,
        *,
        max_body_bytes: int = 65_536,
        observer: Observer = NULL_OBSERVER,
        on_queued: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._store_lock = threading.Lock()  # one connection, several server threads
        self._token = token.encode()
        self.max_body_bytes = max_body_bytes
        self.observer = observer
        self.on_queued = on_queued
        self.clock = clock
        self.last_accepted: float | None = None  # monotonic time of the last accepted webhook

    def close(self) -> None:
        with self._store_lock:
            self._store.close()

    def webhooks_flowing(self, within: float) -> bool:
        last = self.last_accepted
        return last is not None and time.monotonic() - last <= within

    def handle(self, environ: dict[str, Any]) -> Answer:
        if not self._authorized(environ):
            self.observer.webhook_received("unauthorized")
            # The path alone: the query holds the (wrong) token, and a wrong token may be a real one.
            log.warning(
                "webhook refused: missing or wrong token",
                remote=environ.get("REMOTE_ADDR"),
                path=environ.get("PATH_INFO"),
            )
            return Answer(401, {"error": "missing or wrong token"})
        body = self._read_body(environ)
        if body is None:
            self.observer.webhook_received("too_large")
            log.warning("webhook refused: body too large", limit=self.max_body_bytes)
            return Answer(413, {"error": f"body larger than {self.max_body_bytes} bytes"})
        problem, payload = _parse(body)
        if problem is not None:
            self.observer.webhook_received("malformed")
            log.warning("webhook refused: malformed body", problem=problem)
            return Answer(400, {"error": problem})
        run_id, event, status = payload
        with self._store_lock:
            self._store.queue_webhook(run_id, event, status, self.clock())
        self.last_accepted = time.monotonic()
        self.observer.webhook_received("accepted")
        log.debug("webhook queued", run_id=run_id, webhook_event=event, status=status)
        self.on_queued()
        return Answer(202, {"accepted": True, "run_id": run_id})

    def _authorized(self, environ: dict[str, Any]) -> bool:
        offered: list[bytes] = []
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        offered.extend(value.encode() for value in query.get("token", []))
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            offered.append(credential.strip().encode())
        # Constant time, and every offered value compared, so timing tells nothing.
        matches = [hmac.compare_digest(value, self._token) for value in offered]
        return bool(matches) and any(matches)

    def _read_body(self, environ: dict[str, Any]) -> bytes | None:
        """The body, or None when it is larger than the cap (read no further than the cap)."""
        length_header = environ.get("CONTENT_LENGTH") or ""
        if length_header.isdigit() and int(length_header) > self.max_body_bytes:
            return None
        stream = environ["wsgi.input"]
        body = stream.read(self.max_body_bytes + 1)
        if len(body) > self.max_body_bytes:
            return None
        return body


def _parse(body: bytes) -> tuple[str | None, tuple[str, str, str]]:
    none = ("", "", "")
    try:
        payload = jsoncodec.loads(body)
    except (ValueError, RecursionError):
        return "body is not JSON", none
    if not isinstance(payload, dict):
        return "body is not a JSON object", none
    fields = []
    for name in ("event", "run_id", "status"):
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} is missing or not a non-empty string", none
        fields.append(value)
    event, run_id, status = fields
    if len(run_id) > MAX_RUN_ID_LENGTH or not run_id.isprintable() or "/" in run_id:
        return "run_id is not a Job id", none
    return None, (run_id, event[:100], status[:100])
