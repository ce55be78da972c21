"""HTTP/1.1 requests over pooled keep-alive connections, for the lean clients (blobget.py): the
connection pool, an HTTP(S) proxy tunnel (CONNECT), and one request with its retries. Response
framing (heads, bodies, the ranged-read checks) is httpframe.py's; the proxy environment rules
httpproxy.py's.

Concurrency: an `HttpClient` is thread-safe (a lock-protected LIFO pool). A connection is used
by one thread at a time; another thread touches it only through an `Abort` closer, which shuts
the socket down (waking the blocked thread) but never closes it: its owner does, after it has
detached the closer, so the descriptor cannot be reused under the closer's feet.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

from .base import Abort
from .errors import Aborted
from .httpframe import (
    Conn,
    HttpStatusError,
    ProtocolError,
    Response,
    Stale,
    drain_error,
    read_head,
)
from .httpproxy import proxy_for

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: retries of a request after its first attempt, 1, 2, 4 s apart (jittered down to half): the one
#: retry budget of every request amlfs sends, the SDK's included (azclient.client_options)
DEFAULT_RETRIES = 3


class HttpClient:
    """GETs to one host (through a proxy tunnel where one applies); thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retry_total: int = DEFAULT_RETRIES,
        retry_backoff: float = 1.0,
    ):
        parts = urlsplit(url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.netloc = parts.netloc
        self.proxy = proxy_for(url)
        self.timeout = timeout
        self.retry_total = retry_total
        self.retry_backoff = retry_backoff
        self._ssl = _ssl_context() if self.https else None
        self._idle: list[Conn] = []
        self._closed = False
        self._lock = threading.Lock()

    # --- connections: a LIFO pool, so that a few warm connections serve many threads ------

    def _connect(self, abort: Abort | None) -> Conn:
        """A new connection: TCP, the proxy tunnel, TLS. Once TCP is up, `abort` can cut the
        rest short (a proxy or a TLS handshake that stalls); TCP connect waits its timeout."""
        proxy = self.proxy
        addr = (proxy.host, proxy.port) if proxy is not None else (self.host, self.port)
        sock = socket.create_connection(addr, timeout=self.timeout)
        closer = functools.partial(shutdown, sock)
        if abort is not None:
            abort.attach(closer)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if proxy is not None:
                self._tunnel(Conn(sock))
            if self._ssl is not None:
                tls = self._ssl.wrap_socket(
                    sock, server_hostname=self.host, do_handshake_on_connect=False
                )
                sock = tls  # it took the descriptor over: the closer follows it
                if abort is not None:
                    abort.detach(closer)
                    closer = functools.partial(shutdown, tls)
                    abort.attach(closer)
                tls.do_handshake()
        except BaseException:
            if abort is not None:
                abort.detach(closer)
            sock.close()
            if abort is not None and abort.cancelled:
                raise Aborted("the call was cancelled") from None
            raise
        if abort is not None:
            abort.detach(closer)
        return Conn(sock)

    def _tunnel(self, conn: Conn) -> None:
        """CONNECT through the proxy; afterwards the socket is a pipe to the service."""
        assert self.proxy is not None
        target = f"{self.host}:{self.port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.proxy.authorization:
            lines.append(f"Proxy-Authorization: {self.proxy.authorization}")
        try:
            r = read_head(conn, ("\r\n".join(lines) + "\r\n\r\n").encode())
        except Stale:
            raise ProtocolError(f"{self.proxy} closed the connection on CONNECT") from None
        if r.status // 100 != 2:
            raise ProtocolError(f"{self.proxy} refused CONNECT {target}: HTTP {r.status}")
        if r.got != r.start:
            raise ProtocolError(f"{self.proxy} sent data after its CONNECT answer")

    def _acquire(self, abort: Abort | None = None) -> tuple[Conn, bool]:
        conn = self.pooled()
        if conn is not None:
            return conn, True
        return self._connect(abort), False

    def pooled(self) -> Conn | None:
        """An idle pooled connection (the caller owns it now), or None."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def connect(self) -> Conn:
        """A new connection (TCP, proxy tunnel, TLS), blocking, with this client's timeout."""
        return self._connect(None)

    def release(self, conn: Conn) -> None:
        """Give back a connection whose last response was read whole (blocking again)."""
        conn.sock.settimeout(self.timeout)
        self._release(conn)

    def _release(self, conn: Conn) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        close_quiet(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._idle = self._idle, []
            self._closed = True
        for c in conns:
            close_quiet(c)

    # --- one request, with retries -------------------------------------------------------

    def get(
        self,
        what: str,
        request: Callable[[], bytes],
        consume: Callable[[Response], T],
        abort: Abort | None = None,
        body: bytes | memoryview | None = None,
    ) -> T:
        """Send `request()` (called again for each retry: a fresh date), then `body` if any (a
        request that may be repeated: a GET, a whole-object PUT); `consume` reads a 2xx
        body. Retries throttling, 5xx, broken connections and protocol errors (jittered
        exponential backoff, `retry_total` times); a pooled connection that the server closed
        while idle is replaced at once, uncounted. A cancelled `abort` ends it with Aborted,
        never a retry. `what` names the request in log lines."""
        attempt = 0
        while True:
            if abort is not None:
                abort.check()
            wait = 0.0  # at least what the service asked for (Retry-After)
            try:
                return self._attempt(request(), consume, abort, body)
            except HttpStatusError as e:
                if e.status_code not in RETRY_STATUS or attempt >= self.retry_total:
                    raise
                wait = _seconds(e.retry_after)
            except Stale as e:
                if e.reused:
                    continue
                if attempt >= self.retry_total:
                    raise ConnectionResetError("the connection closed before a response") from None
            except (OSError, ProtocolError) as e:
                if attempt >= self.retry_total or _unresolvable(e):
                    raise
            delay = max(wait, self.retry_backoff * 2**attempt * random.uniform(0.5, 1.0))
            attempt += 1
            log.debug("retrying %s in %.2f s", what, delay)
            if abort is not None:
                abort.sleep(delay)
            else:
                time.sleep(delay)

    def _attempt(
        self,
        request: bytes,
        consume: Callable[[Response], T],
        abort: Abort | None,
        body: bytes | memoryview | None = None,
    ) -> T:
        """One request on one connection, which goes back to the pool only when the response
        was read whole, allows it, and no abort touched the socket."""
        conn, reused = self._acquire(abort)
        closer = functools.partial(shutdown, conn.sock)
        if abort is not None:
            abort.attach(closer)
        keep = False
        try:
            try:
                r = read_head(conn, request, body)
            except Stale as e:
                e.reused = reused
                raise
            if r.status >= 300:
                keep = drain_error(r) and r.keep_alive
                raise HttpStatusError(
                    r.status,
                    r.fields.get("x-ms-error-code"),
                    retry_after=r.fields.get("retry-after"),
                )
            result = consume(r)
            keep = r.keep_alive
            return result
        except BaseException:
            if abort is not None and abort.cancelled:
                keep = False
                raise Aborted("the call was cancelled") from None
            raise
        finally:
            if abort is not None:
                abort.detach(closer)
                keep = keep and not abort.cancelled  # a shut down socket is never pooled
            if keep:
                self._release(conn)
            else:
                close_quiet(conn)


def _unresolvable(e: BaseException) -> bool:
    """A host name that does not resolve (not a temporary DNS failure): retrying cannot help,
    and the caller's own retries already repeat the lookup (one retry layer, not two)."""
    return isinstance(e, socket.gaierror) and e.errno != socket.EAI_AGAIN


def _seconds(retry_after: str | None) -> float:
    """A Retry-After in seconds (0 when absent or not a number; at most a minute)."""
    try:
        return max(0.0, min(60.0, float(retry_after))) if retry_after else 0.0
    except ValueError:
        return 0.0


def shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked on `sock` (from another thread; the fd stays open until its owner
    closes it). The base-class call leaves an SSL socket's state to its owning thread."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


def close_quiet(conn: Conn | None) -> None:
    if conn is not None:
        try:
            conn.sock.close()
        except OSError:
            pass


def _ssl_context() -> ssl.SSLContext:
    import ssl

    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)
