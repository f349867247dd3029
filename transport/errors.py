"""One short line for a failed connection, the same from the Duvo client and from every sink.

requests and urllib3 describe a refused connection in ~400 characters (pool repr, connection
object repr, "Max retries exceeded" although retries are off, errno), and datadog-api-client
re-wraps TLS failures as text. `describe_transport_error` walks the exception chain to the real
cause and says it as ``<host>:<port>: <cause>``, after the service's name when given::

    api.duvo.ai:443: timed out waiting for the answer
    Loki at 127.0.0.1:3100: connection refused
    Splunk HEC at splunk.example:8088: TLS: certificate verify failed: self-signed certificate
    Datadog at http-intake.logs.datadoghq.com:443: name not resolved

Only host and port are named, never a URL: URLs can carry credentials (``user:pass@``) or tokens
in their query string.
"""

from __future__ import annotations

import errno
import http.client
import re
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

__all__ = ["describe_transport_error", "endpoint"]

_MAX_CAUSE = 200
_MAX_CHAIN = 32  # exceptions visited per description; chains are a handful deep in practice

# A URL inside a fallback message: shown as host:port only (it may carry credentials or tokens).
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>)]+")
# urllib3's pool and connection reprs say nothing the host:port prefix does not.
_POOL_REPR = re.compile(r"\bHTTPS?Connection(?:Pool)?\([^)]*\):?\s*")
# OpenSSL's "[SSL: CODE] " prefix and CPython's " (_ssl.c:1006)" suffix: noise to an operator.
_SSL_NOISE = re.compile(r"^\[[A-Z0-9_]+(?::\s*[A-Z0-9_]+)?\]\s*|\s*\(_ssl\.c:\d+\)$")

_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection aborted",
    errno.EPIPE: "connection closed while sending",
    errno.ETIMEDOUT: "timed out connecting",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
}


def endpoint(url: str) -> str | None:
    """``host:port`` of ``url`` (the scheme's default port when none is given), or None."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a malformed port or IPv6 literal
        return None
    if not host:
        return None
    if port is None:
        port = {"https": 443, "http": 80}.get(parts.scheme.lower())
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


def describe_transport_error(exc: BaseException, url: str | None = None, *, service: str | None = None) -> str:
    """``[<service> at ]<host>:<port>: <cause>`` for a failed request to ``url``, in one line.

    ``url`` is the address the caller meant to reach; without it the host comes from the
    exception, when it names one. Never raises: an unknown error is described by its type.
    """
    chain = list(_chain(exc))
    where = (endpoint(url) if url else None) or _endpoint_from(chain)
    cause = _cause(chain)
    proxied = [i for i, e in enumerate(chain) if isinstance(e, urllib3.exceptions.ProxyError)]
    if proxied:
        # The proxy refused or failed, not the host: say so, or "refused" would point at the host.
        # The connection that failed below the ProxyError is the one to the proxy.
        proxy = _endpoint_from(chain[proxied[0] + 1 :])
        cause = f"via proxy {proxy}: {cause}" if proxy else f"via proxy: {cause}"
    line = f"{where}: {cause}" if where else cause
    if service:
        line = f"{service} at {line}" if where else f"{service}: {line}"
    return " ".join(line.split())


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps, outermost first, each once.

    Wrapping is spread over ``__cause__``/``__context__``, constructor args (requests'
    ConnectionError(MaxRetryError(...)), urllib3's ProtocolError("...", OSError)) and ``reason``
    (MaxRetryError)."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < _MAX_CHAIN:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner: list[object] = [getattr(current, "reason", None), *getattr(current, "args", ())]
        inner += [current.__cause__, current.__context__]
        pending.extend(e for e in inner if isinstance(e, BaseException))


def _cause(chain: list[BaseException]) -> str:
    # One pass per kind, most telling first: the errno deep inside says "refused" where the
    # wrappers around it say "connection error" or even "timeout" (urllib3's NewConnectionError
    # subclasses ConnectTimeoutError).
    for exc in chain:
        if isinstance(exc, socket.gaierror | urllib3.exceptions.NameResolutionError):
            return "name not resolved"
    for exc in chain:
        if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) and exc.errno in _ERRNO_CAUSES:
            return _ERRNO_CAUSES[exc.errno]
    for exc in chain:
        if isinstance(exc, requests.exceptions.ConnectTimeout) or (
            isinstance(exc, urllib3.exceptions.ConnectTimeoutError)
            and not isinstance(exc, urllib3.exceptions.NewConnectionError)
        ):
            return "timed out connecting"
    for exc in chain:
        if isinstance(exc, requests.exceptions.Timeout | urllib3.exceptions.ReadTimeoutError | TimeoutError):
            return "timed out waiting for the answer"
    for exc in chain:
        if isinstance(exc, ssl.SSLError):
            return "TLS: " + _tls_reason(exc)
    for exc in chain:
        if isinstance(exc, urllib3.exceptions.SSLError | requests.exceptions.SSLError):
            return "TLS: " + (_clean(_SSL_NOISE.sub("", str(exc))) or "handshake failed")
    for exc in chain:
        if isinstance(exc, http.client.RemoteDisconnected):
            return "connection closed without an answer"
    for exc in chain:
        if isinstance(
            exc,
            http.client.IncompleteRead
            | requests.exceptions.ChunkedEncodingError
            | urllib3.exceptions.IncompleteRead
            | urllib3.exceptions.ProtocolError,
        ):
            return "connection closed before the answer was complete"
    for exc in chain:
        text = exc.strerror if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError) else None
        if isinstance(text, str) and text:  # "Network is unreachable" and the like, from the OS
            return text[0].lower() + text[1:]
    innermost = chain[-1]
    return _clean(f"{type(innermost).__name__}: {innermost}")


def _tls_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    text = exc.strerror if isinstance(exc.strerror, str) and exc.strerror else str(exc)
    return _clean(_SSL_NOISE.sub("", text)) or str(exc.reason or "handshake failed").lower()


def _clean(text: str) -> str:
    text = _URL.sub(lambda m: endpoint(m.group(0)) or "<url>", text)
    text = " ".join(_POOL_REPR.sub("", text).split())
    return text if len(text) <= _MAX_CAUSE else text[: _MAX_CAUSE - 1] + "…"


def _endpoint_from(chain: list[BaseException]) -> str | None:
    for exc in chain:
        # MaxRetryError and friends hold the pool, NewConnectionError the connection; reading
        # .pool on the latter is deprecated.
        holder = exc.pool if isinstance(exc, urllib3.exceptions.PoolError) else getattr(exc, "conn", None)
        if holder is not None:
            host, port = getattr(holder, "host", None), getattr(holder, "port", None)
            if isinstance(host, str) and host:
                host = f"[{host}]" if ":" in host else host
                return f"{host}:{port}" if port else host
        request = getattr(exc, "request", None)
        request_url = getattr(request, "url", None)
        if isinstance(request_url, str):
            found = endpoint(request_url)
            if found:
                return found
    return None
