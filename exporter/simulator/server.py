"""The HTTP face of the simulator: Duvo's public API under /v2 and a control API under /_sim."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .faults import Faults
from .options import RETRY_AFTER_FORMATS, SINCE_MODES, SimulatorOptions
from .ratelimit import SlidingWindow
from .stats import Stats
from .timefmt import parse_iso
from .world import SEVERITIES, STATUSES, World

_JSON = "application/json"
_NOT_JSON_BODY = b"<html><head><title>502 Bad Gateway</title></head><body>upstream error</body></html>"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()
    drop: bool = False  # close the connection without answering


_DROP = Reply(0, drop=True)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def reply(self) -> Reply:
        return _json(self.status, {"error": {"code": self.code, "message": self.message}}, self.headers)


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, json.dumps(payload, separators=(",", ":")).encode(), _JSON, headers)


_ERROR_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


class App:
    """Routing and semantics of both APIs, independent of the HTTP plumbing. Thread-safe."""

    def __init__(self, world: World, faults: Faults, options: SimulatorOptions) -> None:
        self.world = world
        self.faults = faults
        self.stats = Stats()
        self.limiter = SlidingWindow(options.requests_per_minute)
        self.api_keys = {key: None if teams is None else frozenset(teams) for key, teams in options.api_keys.items()}
        self.since_mode = options.since_mode
        self.retry_after_format = options.retry_after_format
        self.default_limit = options.default_limit
        self.max_limit = options.max_limit
        self.verbose = options.verbose

    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Reply:
        split = urlsplit(target)
        parts = [unquote(part) for part in split.path.strip("/").split("/")]
        query = {name: values[-1] for name, values in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            if parts[0] == "v2":
                return self._api(method, parts[1:], query, headers, body)
            if parts[0] == "_sim":
                return self._control(method, parts[1:], query, body)
            raise ApiError(404, "not_found", f"no such path: {split.path}")
        except ApiError as error:
            return error.reply()

    # -- /v2 ----------------------------------------------------------------------------------

    def _api(self, method: str, parts: list[str], query: dict[str, str], headers: Any, body: bytes) -> Reply:
        endpoint, allowed_methods = _route(method, parts)
        verdict = self.faults.before_request()
        if verdict.delay:
            time.sleep(verdict.delay)
        try:
            if verdict.reset:
                reply = _DROP
            elif verdict.burst_429 is not None:
                raise self._too_many(verdict.burst_429)
            elif verdict.error_status is not None:
                status = verdict.error_status
                raise ApiError(status, _ERROR_CODES.get(status, "error"), "simulated server error")
            else:
                reply = self._authorized(method, endpoint, allowed_methods, parts, query, headers, body)
        except ApiError as error:
            reply = error.reply()
        self.stats.record(endpoint, "reset" if reply.drop else reply.status)
        return reply

    def _authorized(
        self,
        method: str,
        endpoint: str,
        allowed_methods: tuple[str, ...],
        parts: list[str],
        query: dict[str, str],
        headers: Any,
        body: bytes,
    ) -> Reply:
        scheme, _, key = (headers.get("Authorization") or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or key not in self.api_keys:
            raise ApiError(401, "unauthorized", "missing or invalid API key")
        wait = self.limiter.acquire(key)
        if wait is not None:
            raise self._too_many(wait)
        if endpoint == "unknown":
            raise ApiError(404, "not_found", "no such endpoint")
        if method not in allowed_methods:
            raise ApiError(
                405, "method_not_allowed", f"{method} is not supported here", (("Allow", ", ".join(allowed_methods)),)
            )
        teams = self.api_keys[key]
        if endpoint == "list_runs":
            return self._list_runs(parts[1], teams, query)
        if endpoint == "create_run":
            return self._create_run(parts[1], teams, body)
        if endpoint == "get_run":
            run = self._visible_run(parts[1], teams)
            return self._ok({"run": run}, "run")
        return self._messages(parts[1], teams, query)

    def _too_many(self, seconds: int) -> ApiError:
        if self.retry_after_format == "http-date":
            moment = datetime.fromtimestamp(math.ceil(time.time()) + seconds, UTC)
            value = format_datetime(moment, usegmt=True)
        else:
            value = str(seconds)
        return ApiError(429, "rate_limited", "too many requests for this API key", (("Retry-After", value),))

    def _check_team(self, team_id: str, teams: frozenset[str] | None) -> None:
        if teams is not None and team_id not in teams:
            raise ApiError(403, "forbidden", f"this API key may not read team {team_id}")
        if not self.world.has_team(team_id):
            raise ApiError(404, "not_found", f"team {team_id} not found")

    def _visible_run(self, run_id: str, teams: frozenset[str] | None) -> dict[str, Any]:
        run = self.world.get_run(run_id)
        if run is None:
            raise ApiError(404, "not_found", f"run {run_id} not found")
        if teams is not None and run["team_id"] not in teams:
            raise ApiError(403, "forbidden", "this API key may not read that run's team")
        return run

    def _limit_offset(self, query: dict[str, str]) -> tuple[int, int]:
        limit = min(_int_param(query, "limit", self.default_limit, 1), self.max_limit)
        return limit, _int_param(query, "offset", 0, 0)

    def _list_runs(self, team_id: str, teams: frozenset[str] | None, query: dict[str, str]) -> Reply:
        self._check_team(team_id, teams)
        limit, offset = self._limit_offset(query)
        since_us = None
        if "since" in query:
            since_us = parse_iso(query["since"])
            if since_us is None:
                raise ApiError(400, "invalid_request", "since must be an ISO-8601 timestamp")
        if query.get("sort_by", "created_at") != "created_at":
            raise ApiError(400, "invalid_request", "sort_by must be created_at")
        order = query.get("sort_order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, "invalid_request", "sort_order must be asc or desc")
        status = _choice_param(query, "status", STATUSES)
        severity = _choice_param(query, "issue_severity", SEVERITIES)
        flagged = _choice_param(query, "has_issues", ("true", "false"))
        agent_id = query.get("agent_id")
        if agent_id == "":
            raise ApiError(400, "invalid_request", "agent_id must not be empty")
        inserts = self.faults.inserts_for_page(offset)
        if inserts:
            self.world.spawn(team_id, inserts)
        rows, total = self.world.list_runs(
            team_id,
            limit=limit,
            offset=offset,
            since_us=since_us,
            since_mode=self.since_mode,
            descending=order == "desc",
            agent_id=agent_id,
            status=status,
            has_issues=None if flagged is None else flagged == "true",
            issue_severity=severity,
        )
        plan = self.faults.plan_page(offset, len(rows), total)
        if plan.keep is not None:
            rows = rows[: plan.keep]
        return self._ok({"data": rows, "total": total + plan.total_offset}, "list")

    def _messages(self, run_id: str, teams: frozenset[str] | None, query: dict[str, str]) -> Reply:
        self._visible_run(run_id, teams)
        failing = self.faults.settings.messages_error_status
        if failing:
            retry = (("Retry-After", "0"),) if failing == 429 else ()
            raise ApiError(failing, _ERROR_CODES.get(failing, "error"), "simulated messages failure", retry)
        limit, offset = self._limit_offset(query)
        found = self.world.messages(run_id, limit=limit, offset=offset)
        if found is None:  # deleted in between
            raise ApiError(404, "not_found", f"run {run_id} not found")
        return self._ok({"messages": found[0], "total": found[1]}, "messages")

    def _create_run(self, team_id: str, teams: frozenset[str] | None, body: bytes) -> Reply:
        self._check_team(team_id, teams)
        payload = _json_body(body)
        agent_id = payload.get("agent_id")
        if not isinstance(agent_id, str) or not agent_id:
            raise ApiError(400, "invalid_request", "agent_id is required")
        webhook_url = payload.get("webhook_url")
        if webhook_url is not None and not (
            isinstance(webhook_url, str) and webhook_url.startswith(("http://", "https://"))
        ):
            raise ApiError(400, "invalid_request", "webhook_url must be an http(s) URL")
        run = self.world.start_run(team_id, agent_id, webhook_url)
        return _json(201, {"run_id": run["id"], "run": run})

    def _ok(self, payload: dict[str, Any], kind: str) -> Reply:
        broken = self.faults.malformed()
        if broken is None:
            return _json(200, payload)
        self.stats.count(f"malformed_{broken}")
        if broken == "not_json":
            return Reply(200, _NOT_JSON_BODY, "text/html; charset=utf-8")
        if broken == "truncated":
            whole = _json(200, payload).body
            return Reply(200, whole[: max(1, len(whole) // 2)])
        # Missing keys: either the expected keys under other names, or one of them dropped.
        first_key = {"list": "data", "run": "run", "messages": "messages"}[kind]
        if self.faults.coin():
            return _json(200, {"items": payload[first_key]})
        return _json(200, {key: value for key, value in payload.items() if key != first_key} or {"ok": True})

    # -- /_sim -------------------------------------------------------------------------------

    def _control(self, method: str, parts: list[str], query: dict[str, str], body: bytes) -> Reply:
        try:
            return self._control_route(method, parts, query, body)
        except (ValueError, TypeError) as error:
            raise ApiError(400, "invalid_request", str(error)) from error
        except KeyError as error:
            raise ApiError(404, "not_found", f"not found: {error}") from error

    def _control_route(self, method: str, parts: list[str], query: dict[str, str], body: bytes) -> Reply:
        route = (method, *parts)
        match route:
            case ("GET", "health"):
                return _json(200, {"ok": True})
            case ("GET", "stats"):
                return _json(200, self.snapshot())
            case ("POST", "reset_stats"):
                self.stats.reset()
                return _json(200, {"ok": True})
            case ("POST", "reset_rate_limits"):
                self.limiter.reset()
                return _json(200, {"ok": True})
            case ("GET", "faults"):
                return _json(200, self.faults.snapshot())
            case ("POST", "faults"):
                return _json(200, self.faults.update(_json_body(body)))
            case ("GET", "config"):
                return _json(200, self.config())
            case ("POST", "config"):
                return _json(200, self.configure(**_json_body(body)))
            case ("GET", "jobs"):
                jobs = self.world.jobs(query.get("team_id") or None)
                return _json(200, {"jobs": jobs, "total": len(jobs)})
            case ("POST", "jobs"):
                return _json(201, self.world.create_job(**_json_body(body)))
            case ("POST", "jobs", run_id, "status"):
                payload = _json_body(body)
                if not isinstance(payload.get("status"), str):
                    raise ValueError("status is required")
                job = self.world.set_status(run_id, payload["status"], payload.get("pending_human_request"))
                return _json(200, job)
            case ("POST", "jobs", run_id, "messages"):
                payload = _json_body(body)
                return _json(200, {"total": self.world.set_messages(run_id, payload.get("messages"))})
            case ("DELETE", "jobs", run_id):
                if not self.world.delete(run_id):
                    raise KeyError(run_id)
                return _json(200, {"deleted": True})
        raise ApiError(404, "not_found", f"no control endpoint {method} /_sim/{'/'.join(parts)}")

    def snapshot(self) -> dict[str, Any]:
        return {**self.stats.snapshot(), **self.world.counts()}

    def config(self) -> dict[str, Any]:
        return {
            "jobs_per_second": self.world.jobs_per_second,
            "requests_per_minute": self.limiter.per_minute,
            "retry_after_format": self.retry_after_format,
            "since_mode": self.since_mode,
        }

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change API behaviour at run time: jobs_per_second, requests_per_minute, retry_after_format, since_mode."""
        unknown = set(changes) - set(self.config())
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        if changes.get("since_mode", self.since_mode) not in SINCE_MODES:
            raise ValueError(f"since_mode must be one of {SINCE_MODES}")
        if changes.get("retry_after_format", self.retry_after_format) not in RETRY_AFTER_FORMATS:
            raise ValueError(f"retry_after_format must be one of {RETRY_AFTER_FORMATS}")
        if "requests_per_minute" in changes:
            self.limiter.per_minute = changes["requests_per_minute"]
        if "jobs_per_second" in changes:
            self.world.set_jobs_per_second(float(changes["jobs_per_second"]))
        self.since_mode = changes.get("since_mode", self.since_mode)
        self.retry_after_format = changes.get("retry_after_format", self.retry_after_format)
        return self.config()


def _route(method: str, parts: list[str]) -> tuple[str, tuple[str, ...]]:
    """(endpoint name for stats, allowed methods)."""
    match parts:
        case ["teams", team, "runs"] if team:
            return "create_run" if method == "POST" else "list_runs", ("GET", "POST")
        case ["runs", run_id] if run_id:
            return "get_run", ("GET",)
        case ["runs", run_id, "messages"] if run_id:
            return "messages", ("GET",)
    return "unknown", ()


def _int_param(query: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise ApiError(400, "invalid_request", f"{name} must be an integer") from None
    if value < minimum:
        raise ApiError(400, "invalid_request", f"{name} must be >= {minimum}")
    return value


def _choice_param(query: dict[str, str], name: str, allowed: tuple[str, ...]) -> str | None:
    raw = query.get(name)
    if raw is not None and raw not in allowed:
        raise ApiError(400, "invalid_request", f"{name} must be one of {', '.join(allowed)}")
    return raw


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        payload = json.loads(body)
    except ValueError:
        raise ApiError(400, "invalid_request", "body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_request", "body must be a JSON object")
    return payload


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every answer carries Content-Length
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body leave in one write
    timeout = 120  # idle keep-alive connections do not hold a thread forever
    server_version = "DuvoSimulator/1.0"
    server: SimulatorHTTPServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        app = self.server.app
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._write(ApiError(400, "invalid_request", "bad Content-Length").reply())
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        try:
            reply = app.handle(method, self.path, self.headers, body)
        except Exception as error:  # the simulator must answer, whatever went wrong inside
            if app.verbose:
                self.log_error("internal error: %r", error)
            reply = ApiError(500, "internal_error", f"simulator error: {error!r}").reply()
        if reply.drop:
            self._drop()
        else:
            self._write(reply)

    def _write(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def _drop(self) -> None:
        self.close_connection = True
        # Linger 0: closing sends a TCP reset, like a crashing proxy, not a polite FIN.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.app.verbose:
            super().log_message(format, *args)


class SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, app: App, host: str = "127.0.0.1", port: int = 0) -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise ValueError("the simulator only binds 127.0.0.1")
        self.app = app
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Stopping must also end keep-alive connections, or clients would still be served."""
        with self._open_lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if self.app.verbose:  # clients hanging up mid-answer are normal, not worth a traceback
            super().handle_error(request, client_address)
