"""Client for the Duvo public API: list Jobs, fetch one Job, fetch its messages.

Every attempt is paced by a token bucket (the key's limit is shared with other processes), transient
failures are retried with full-jitter backoff, 429 honours Retry-After for all threads at once, and a
rejected key fails fast. The API key never appears in an exception message or a log line.
"""

from __future__ import annotations

import importlib.metadata
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import structlog
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from exporter import jsoncodec
from exporter.logsetup import redact, register_secret
from exporter.observe import NULL_OBSERVER, Observer
from transport import timestamps
from transport.errors import describe_transport_error
from transport.ratelimit import TokenBucket, retry_after_seconds

log = structlog.get_logger(__name__)

try:
    # Installed metadata rather than exporter.__version__: an editable install made before the
    # package had an __init__.py resolves `exporter` as a namespace package without that attribute.
    _VERSION = importlib.metadata.version("duvo-exporter")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    _VERSION = "0+unknown"

MAX_PAGE_SIZE = 100  # the API's own cap on `limit`
_ERROR_TEXT_LIMIT = 200
_POOL_SIZE = 10  # concurrent requests per process; the rate limit, not the pool, is the real bound
_LIST_RESERVED_PARAMS = frozenset({"limit", "offset", "since", "sort_by", "sort_order", "status"})
_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Printable ASCII without spaces. Rejecting anything else up front keeps requests from echoing a
# bad key back in its "invalid header value" exception text.
_KEY_SHAPE = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class RunPage:
    data: list[dict[str, Any]]
    total: int | None  # None when the body lacked a usable integer total
    # Rows the server sent, including any dropped as invalid. Advance offsets by this, not by
    # len(data), and treat only fetched == 0 as the end; None (hand-built pages) means len(data).
    fetched: int | None = None

    @property
    def size(self) -> int:
        return self.fetched if self.fetched is not None else len(self.data)


class DuvoError(Exception):
    """Any Duvo API failure. ``str()`` is a single line and never contains the API key."""

    def __init__(self, message: str, *, status: int | None = None, path: str | None = None) -> None:
        super().__init__(" ".join(message.split()))
        self.status = status
        self.path = path


class DuvoAuthError(DuvoError):
    """401/403: the key is wrong, revoked or lacks access. Retrying would only burn the shared budget."""


class DuvoUnavailable(DuvoError):
    """Retries exhausted on 5xx, 429, connection errors, timeouts or malformed bodies."""


class DuvoNotFound(DuvoError):
    """404 on a list endpoint (unknown team or Job); ``get_run`` turns it into None instead."""


@dataclass
class ClientStats:
    """Counters since the client was created; updated from any thread."""

    requests: int = 0  # HTTP attempts sent, retries included
    by_status: dict[int, int] = field(default_factory=dict)
    retries: int = 0
    throttled: int = 0  # 429 responses
    rate_limit_sleep_seconds: float = 0.0  # waited on the token bucket (pacing and Retry-After)
    backoff_sleep_seconds: float = 0.0
    transport_errors: int = 0  # connection errors and timeouts
    malformed_bodies: int = 0
    dropped_rows: int = 0
    failures: int = 0  # DuvoUnavailable raised
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def _add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def _count_status(self, status: int) -> None:
        with self._lock:
            self.by_status[status] = self.by_status.get(status, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy, for metrics or a status line."""
        with self._lock:
            return {
                "requests": self.requests,
                "by_status": dict(self.by_status),
                "retries": self.retries,
                "throttled": self.throttled,
                "rate_limit_sleep_seconds": self.rate_limit_sleep_seconds,
                "backoff_sleep_seconds": self.backoff_sleep_seconds,
                "transport_errors": self.transport_errors,
                "malformed_bodies": self.malformed_bodies,
                "dropped_rows": self.dropped_rows,
                "failures": self.failures,
            }


class _BearerAuth(AuthBase):
    # An auth object rather than a session header: it stops requests from replacing the header
    # with credentials from ~/.netrc, and its repr cannot leak the key.
    def __init__(self, key: str) -> None:
        self._header = f"Bearer {key}"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self._header
        return request

    def __repr__(self) -> str:
        return "_BearerAuth(***)"


class _Retryable(Exception):
    """One failed attempt worth retrying; ``retry_after`` is the server's wait, if it gave one."""

    def __init__(self, problem: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.status = status
        self.retry_after = retry_after


class DuvoClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        requests_per_minute: float = 240,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 6,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 300.0,
        user_agent: str = f"duvo-exporter/{_VERSION}",
        verify: bool | str = True,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        wall_clock: Callable[[], datetime] = timestamps.now,
        observer: Observer = NULL_OBSERVER,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"duvo.base_url must be an http(s) URL, got {base_url!r}")
        if not api_key or not _KEY_SHAPE.fullmatch(api_key):
            # Deliberately without the value: it is a secret even when malformed.
            raise DuvoError("duvo.api_key is empty or contains whitespace/control characters: check duvo.api_key")
        if requests_per_minute <= 0:
            raise ValueError("requests_per_minute must be positive")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        register_secret(api_key)
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            log.warning("duvo.insecure_base_url", base_url=base_url, hint="the API key is sent unencrypted")

        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._timeout = (connect_timeout, read_timeout)
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._max_retry_after = max_retry_after
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._wall_clock = wall_clock
        # A burst of one second's worth keeps spend smooth for the other users of the key. The API
        # counts a sliding 60 s window, so rate x 60 + burst must stay within the budget: a full
        # rate plus the burst on top would draw 429s.
        burst = max(1.0, requests_per_minute / 60.0)
        rate = max(requests_per_minute - burst, requests_per_minute / 2) / 60.0
        self.bucket = TokenBucket(rate, burst, clock=clock, sleep=sleep)
        self.stats = ClientStats()
        self.observer = observer  # metrics hooks; replaceable after construction

        session = requests.Session()
        # Retries are ours (with the bucket and logging); urllib3 must not retry behind our back.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=_POOL_SIZE, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        session.headers.update({"User-Agent": user_agent, "Accept": "application/json"})
        session.auth = _BearerAuth(api_key)
        # Proxy settings (HTTP(S)_PROXY, NO_PROXY) are read once here: with trust_env requests
        # re-reads the environment on every request (~1 ms each), and ~/.netrc could replace the
        # Authorization header.
        session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        session.trust_env = False
        session.verify = verify
        # Passed on every request too: REQUESTS_CA_BUNDLE would override session.verify.
        self._verify = verify
        self._session = session

    # -- public API ---------------------------------------------------------------------------------

    def list_runs(
        self,
        team_id: str,
        *,
        since: str | None = None,
        offset: int = 0,
        limit: int = 100,
        sort_order: str = "asc",
        status: str | None = None,
        params: Mapping[str, str] | None = None,
    ) -> RunPage:
        """One page of a team's Jobs, always sorted by ``created_at``; only those in ``status`` if given."""
        _check_page(offset, limit)
        if sort_order not in ("asc", "desc"):
            raise ValueError(f"sort_order must be 'asc' or 'desc', got {sort_order!r}")
        extra = dict(params or {})
        clash = _LIST_RESERVED_PARAMS & extra.keys()
        if clash:
            raise ValueError(f"pass {', '.join(sorted(clash))} as arguments, not in params")
        query: dict[str, str] = {**extra, "sort_by": "created_at", "sort_order": sort_order}
        query["limit"] = str(limit)
        query["offset"] = str(offset)
        if since is not None:
            query["since"] = since
        if status is not None:
            query["status"] = status
        path = f"/teams/{_segment(team_id, 'team_id')}/runs"
        body = self._get(path, query, _runs_shape, "/teams/{team_id}/runs")
        rows = body["data"]
        data: list[dict[str, Any]] = []
        for index, row in enumerate(rows):
            reason = _bad_row_reason(row)
            if reason is None:
                data.append(row)
            else:
                self.stats._add(dropped_rows=1)
                log.warning("duvo.row_dropped", path=path, offset=offset, index=index, reason=reason)
        return RunPage(data=data, total=_usable_total(body), fetched=len(rows))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The full Job record, or None when the Job no longer exists (404)."""
        path = f"/runs/{_segment(run_id, 'run_id')}"
        try:
            body = self._get(path, None, _run_shape, "/runs/{run_id}")
        except DuvoNotFound:
            return None
        run: dict[str, Any] = body["run"]
        # The guide reads pending_human_request from the same response as .run, so it may sit
        # beside the record instead of inside it; the record is what travels downstream.
        outer = body.get("pending_human_request")
        if outer is not None and run.get("pending_human_request") is None:
            run = {**run, "pending_human_request": outer}
        return run

    def list_messages(
        self, run_id: str, *, offset: int = 0, limit: int = 100, keep_malformed: bool = False
    ) -> tuple[list[Any], int | None]:
        """One page of a Job's step log (chronological) and the total, if the server gave a usable one.
        Messages that are not objects are dropped (logged), unless ``keep_malformed``: the diagnosis
        reads them, so that step indices stay those of the log."""
        _check_page(offset, limit)
        path = f"/runs/{_segment(run_id, 'run_id')}/messages"
        body = self._get(path, {"limit": str(limit), "offset": str(offset)}, _messages_shape, "/runs/{run_id}/messages")
        messages: list[Any] = []
        for index, message in enumerate(body["messages"]):
            if isinstance(message, dict) or keep_malformed:
                messages.append(message)
            else:
                self.stats._add(dropped_rows=1)
                log.warning("duvo.message_dropped", path=path, offset=offset, index=index, reason="not an object")
        return messages, _usable_total(body)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> DuvoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DuvoClient(base_url={self.base_url!r})"

    # -- transport ----------------------------------------------------------------------------------

    def _get(
        self, path: str, query: Mapping[str, str] | None, shape: Callable[[Any], str | None], template: str = "other"
    ) -> Any:
        """The decoded body of a 200 that passed ``shape``, after retrying whatever is transient.
        ``template`` names the endpoint in metrics without its ids."""
        endpoint = f"GET {path}"
        last: _Retryable | None = None
        for attempt in range(self._max_attempts):
            waited = self.bucket.acquire()
            self.stats._add(requests=1, rate_limit_sleep_seconds=waited)
            if waited > 0:
                self.observer.rate_limit_waited(waited)
            try:
                return self._attempt(path, query, shape, template)
            except _Retryable as problem:
                last = problem
            if last.status == 429:
                # Honoured even when giving up, so the next caller does not hit the wall again.
                self._hold_off(path, last, attempt)
            elif attempt + 1 < self._max_attempts:
                self._back_off(path, last, attempt)
        assert last is not None  # max_attempts >= 1, so the loop ran and every pass set `last`
        self.stats._add(failures=1)
        raise DuvoUnavailable(
            f"Duvo API unavailable for {endpoint} after {self._max_attempts} attempts: {last.problem}",
            status=last.status,
            path=path,
        )

    def _attempt(
        self, path: str, query: Mapping[str, str] | None, shape: Callable[[Any], str | None], template: str = "other"
    ) -> Any:
        endpoint = f"GET {path}"
        try:
            # No redirects: following one could carry the key somewhere unexpected, and the API has
            # no reason to redirect a correct base URL.
            response = self._session.get(
                self.base_url + path, params=query, timeout=self._timeout, allow_redirects=False, verify=self._verify
            )
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.InvalidSchema,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidHeader,
        ) as exc:
            raise DuvoError(f"invalid request for {endpoint}: {self._scrub(str(exc))}", path=path) from None
        except requests.RequestException as exc:
            # Connection refused/reset, timeouts, DNS, TLS, and bodies cut short: one short line
            # that reads as the sinks' do (`host:port: cause`), not requests' 400 characters.
            self.stats._add(transport_errors=1)
            self.observer.duvo_request(template, "error")
            raise _Retryable(self._scrub(describe_transport_error(exc, self.base_url))) from None

        status = response.status_code
        self.stats._count_status(status)
        self.observer.duvo_request(template, str(status))
        if status in (401, 403):
            reason, hint = (
                ("unauthorized", "check duvo.api_key")
                if status == 401
                else ("forbidden", "check duvo.api_key and that it may read this team's Jobs")
            )
            raise DuvoAuthError(
                f"Duvo API rejected the API key ({status} {reason}) for {endpoint}: {hint}",
                status=status,
                path=path,
            )
        if status == 429:
            self.stats._add(throttled=1)
            self.observer.rate_limited()
            raise _Retryable("rate limited (429)", status=status, retry_after=self._retry_after(response.headers))
        if status == 408 or status >= 500:
            raise _Retryable(f"HTTP {status}: {self._error_text(response)}", status=status)
        if status == 404:
            raise DuvoNotFound(
                f"Duvo API found nothing at {endpoint} (404): {self._error_text(response)}",
                status=status,
                path=path,
            )
        if 300 <= status < 400:
            location = self._scrub(response.headers.get("Location", "")[:_ERROR_TEXT_LIMIT]) or "nowhere"
            raise DuvoError(
                f"Duvo API redirected {endpoint} ({status}) to {location}: check duvo.base_url",
                status=status,
                path=path,
            )
        if not 200 <= status < 300:
            raise DuvoError(
                f"Duvo API refused {endpoint} ({status}): {self._error_text(response)}",
                status=status,
                path=path,
            )

        try:
            body = jsoncodec.loads(response.content)
        except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            self.stats._add(malformed_bodies=1)
            ctype = self._scrub(response.headers.get("Content-Type", "no content type"))
            raise _Retryable(
                f"malformed body: not JSON ({ctype}, {len(response.content)} bytes)", status=status
            ) from None
        problem = shape(body)
        if problem is not None:
            self.stats._add(malformed_bodies=1)
            raise _Retryable(f"malformed body: {problem}", status=status)
        return body

    def _backoff_seconds(self, attempt: int) -> float:
        # Full jitter: spreads the retries of many clients instead of synchronising them.
        ceiling = min(self._backoff_max, self._backoff_initial * 2.0 ** min(attempt, 64))
        return self._rng.uniform(0, ceiling)

    def _hold_off(self, path: str, problem: _Retryable, attempt: int) -> None:
        """429: stop the whole bucket, so every thread sharing this client waits, not just this one."""
        extra: dict[str, Any] = {}
        if problem.retry_after is None:
            wait, source = self._backoff_seconds(attempt), "backoff"
        else:
            wait, source = problem.retry_after, "retry-after"
            if wait > self._max_retry_after:
                extra["retry_after_requested"] = wait
                wait = self._max_retry_after
        # The next acquire() does the sleeping, which stats count as rate-limit time.
        self.bucket.pause(wait)
        if attempt + 1 < self._max_attempts:
            self._log_retry(path, problem, attempt, wait, source, **extra)

    def _back_off(self, path: str, problem: _Retryable, attempt: int) -> None:
        wait = self._backoff_seconds(attempt)
        self._log_retry(path, problem, attempt, wait, "backoff")
        self.stats._add(backoff_sleep_seconds=wait)
        self._sleep(wait)

    def _log_retry(self, path: str, problem: _Retryable, attempt: int, wait: float, source: str, **extra: Any) -> None:
        self.stats._add(retries=1)
        log.warning(
            "duvo.retry",
            method="GET",
            path=path,
            status=problem.status,
            problem=problem.problem,
            attempt=attempt + 1,
            max_attempts=self._max_attempts,
            wait=round(wait, 3),
            wait_source=source,
            **extra,
        )

    def _retry_after(self, headers: Mapping[str, str]) -> float | None:
        """Seconds the server asked us to wait, or None when the header is absent or unusable."""
        return retry_after_seconds(headers.get("Retry-After"), self._wall_clock)

    def _error_text(self, response: requests.Response) -> str:
        text: str | None = None
        try:
            body = jsoncodec.loads(response.content)
        except (ValueError, RecursionError):
            body = None
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict):
                error = error.get("message") or error.get("detail") or error.get("code")
            for candidate in (error, body.get("message"), body.get("detail")):
                if isinstance(candidate, str) and candidate.strip():
                    text = candidate
                    break
        if text is None:
            text = response.content.decode("utf-8", errors="replace")
        text = " ".join(text.split()) or "(empty body)"
        if len(text) > _ERROR_TEXT_LIMIT:
            text = text[:_ERROR_TEXT_LIMIT] + "..."
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        # Servers and proxies sometimes echo the credential they rejected.
        return redact(text.replace(self._api_key, "***"))


def _segment(value: str, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string")
    # safe="" so an id containing "/" or ".." cannot address a different endpoint.
    return quote(value, safe="")


def _check_page(offset: int, limit: int) -> None:
    if offset < 0:
        raise ValueError("offset must be >= 0")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")


def _usable_total(body: dict[str, Any]) -> int | None:
    total = body.get("total")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        return None
    return total


def _bad_row_reason(row: Any) -> str | None:
    if not isinstance(row, dict):
        return f"not an object ({type(row).__name__})"
    run_id = row.get("id")
    if not isinstance(run_id, str) or not run_id:
        return "missing string id"
    return None


def _runs_shape(body: Any) -> str | None:
    if not isinstance(body, dict):
        return f"expected an object, got {type(body).__name__}"
    if not isinstance(body.get("data"), list):
        return "'data' is missing or not a list"
    return None


def _run_shape(body: Any) -> str | None:
    if not isinstance(body, dict):
        return f"expected an object, got {type(body).__name__}"
    if not isinstance(body.get("run"), dict):
        return "'run' is missing or not an object"
    return None


def _messages_shape(body: Any) -> str | None:
    if not isinstance(body, dict):
        return f"expected an object, got {type(body).__name__}"
    if not isinstance(body.get("messages"), list):
        return "'messages' is missing or not a list"
    return None
