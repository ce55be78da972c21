"""HTTP/1.1 GETs over pooled keep-alive connections, for the lean clients (blobget.py): the
connection pool, an HTTP(S) proxy tunnel (CONNECT), response heads, and bodies received straight
into the caller's buffer with every framing rule checked -- a ranged read is answered by the range
asked for or fails, never with bytes from another offset.

Hand-written rather than h11: the ranged-read body is received with `recv_into` into the
caller's buffer (no per-chunk bytes objects), which keeps a GiB at ~0.3-0.4 client CPU-s;
the framing kept by hand is small: Content-Length, chunked (listings), Connection.

Concurrency: an `HttpClient` is thread-safe (a lock-protected LIFO pool). A connection is used
by one thread at a time; another thread touches it only through an `Abort` closer, which shuts
the socket down (waking the blocked thread) but never closes it: its owner does, after it has
detached the closer, so the descriptor cannot be reused under the closer's feet.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote, urlsplit

from .base import Abort, Aborted

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)

T = TypeVar("T")

HEAD_MAX = 64 << 10
#: progress is reported at least this often while a body arrives
PIECE = 256 << 10
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


class HttpStatusError(Exception):
    """A non-2xx response. `status_code` and `error_code` as on azure.core's HttpResponseError."""

    def __init__(
        self,
        status_code: int,
        error_code: str | None,
        reason: str = "",
        retry_after: str | None = None,
    ):
        super().__init__(f"HTTP {status_code} {error_code or reason}".strip())
        self.status_code = status_code
        self.error_code = error_code
        self.retry_after = retry_after  # the Retry-After header, read by azure.retry_after


class ProtocolError(Exception):
    """A response that breaks HTTP framing or does not answer the request (a wrong range, a
    length that does not add up, a proxy that refused the tunnel). Transient: a retry may meet
    a better-behaved server or proxy."""


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy that tunnels (CONNECT) to the service."""

    host: str
    port: int
    authorization: str | None  # a Proxy-Authorization value, from the proxy URL's userinfo

    def __str__(self) -> str:
        return f"proxy {self.host}:{self.port}"


def proxy_for(url: str) -> Proxy | None:
    """The proxy that urllib's environment rules (`*_proxy`, `no_proxy`) apply to `url`, or
    None. ValueError for a proxy this client cannot tunnel through (not an http:// proxy)."""
    parts = urlsplit(url)
    if sys.platform == "linux" and not any(k.lower().endswith("_proxy") for k in os.environ):
        return None  # urllib would find none (Linux: the environment only), without its import
    import urllib.request  # ~0.1 s of start-up: http.client, email

    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    p = urlsplit(proxy)
    if p.scheme != "http" or not p.hostname:
        raise ValueError(f"cannot tunnel through proxy {p.scheme}://{p.hostname}")
    auth = None
    if p.username is not None:
        pair = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return Proxy(p.hostname, p.port or 80, auth)


class Conn:
    """One connection and the buffer its response heads are read into."""

    __slots__ = ("sock", "head")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.head = bytearray(HEAD_MAX)


class Stale(Exception):
    """The server closed a connection before answering (an idle keep-alive timeout)."""

    reused = False


@dataclass
class Response:
    status: int
    version: str  # "HTTP/1.1"
    fields: dict[str, str]  # lower-case names
    conn: Conn
    start: int  # body bytes already in conn.head[start:got]
    got: int

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this response."""
        tokens = {t.strip().lower() for t in self.fields.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def content_length(self) -> int | None:
        value = self.fields.get("content-length")
        if value is None:
            return None
        if not value.isdigit():
            raise ProtocolError(f"bad Content-Length {value!r}")
        return int(value)


class HttpClient:
    """GETs to one host (through a proxy tunnel where one applies); thread-safe."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        retry_total: int = 3,
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
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(abort), False

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


# --- heads and bodies ----------------------------------------------------------------------------


def read_head(conn: Conn, request: bytes, body: bytes | memoryview | None = None) -> Response:
    """Send `request` (and `body`) and read the response head (Stale if the server closed at
    once)."""
    sock, head = conn.sock, conn.head
    view = memoryview(head)
    got = 0
    try:
        sock.sendall(request)
        if body:
            sock.sendall(body)
        while True:
            n = sock.recv_into(view[got:])
            if n == 0:
                if got:
                    raise ConnectionError("the response broke off")
                raise Stale
            got += n
            end = head.find(b"\r\n\r\n", max(0, got - n - 3), got)
            if end >= 0:
                break
            if got == len(head):
                raise ProtocolError("response head too large")
    except (ConnectionResetError, BrokenPipeError) as e:
        if got == 0:
            raise Stale from e
        raise
    version, status, fields = parse_head(bytes(head[:end]))
    return Response(status, version, fields, conn, end + 4, got)


def parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP response: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip().lower()] = v.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        fields.pop("content-length", None)
    elif "transfer-encoding" in fields:
        raise ProtocolError(f"unsupported Transfer-Encoding {fields['transfer-encoding']!r}")
    return parts[0], int(parts[1]), fields


def range_size(r: Response, offset: int, length: int) -> int:
    """How many body bytes answer a read of `length` bytes at `offset`, after checking that the
    response is that range: a 206 whose Content-Range starts at `offset`, ends inside the
    request (short only at the object's end) and matches Content-Length; or a 200 (the whole
    object) only for a read at 0 that it fits. ProtocolError otherwise."""
    size = r.content_length()
    if size is None:
        raise ProtocolError(f"HTTP {r.status} to a ranged read without Content-Length")
    if r.status == 200:
        if offset != 0:
            raise ProtocolError(f"HTTP 200 (the whole object) to a ranged read at {offset}")
        if size > length:
            raise ProtocolError(f"HTTP 200 with {size} bytes to a read of {length}")
        return size
    if r.status != 206:
        raise ProtocolError(f"HTTP {r.status} to a ranged read")
    value = r.fields.get("content-range", "")
    m = _CONTENT_RANGE.fullmatch(value)
    if m is None:
        raise ProtocolError(f"HTTP 206 with Content-Range {value!r}")
    start, end, total = int(m[1]), int(m[2]), m[3]
    asked = f"bytes {offset}-{offset + length - 1}"
    if size == 0 and start == offset and end == start - 1 and total == str(offset):
        return 0  # Azurite's answer to a read at the very end: "bytes 10-9/10", no body
    if start != offset or end < start or end > offset + length - 1:
        raise ProtocolError(f"Content-Range {value!r} for a read of {asked}")
    if size != end - start + 1:
        raise ProtocolError(f"Content-Length {size} with Content-Range {value!r}")
    if end < offset + length - 1 and (total == "*" or end != int(total) - 1):
        raise ProtocolError(f"Content-Range {value!r} is short of {asked}, not at the end")
    return size


def body_into(
    r: Response, buf: memoryview, size: int, progress: Callable[[int], None] | None = None
) -> int:
    """Receive the `size`-byte body into `buf` (len(buf) >= size), calling `progress` with the
    bytes in `buf` so far at least every PIECE bytes and at the end."""
    have = r.got - r.start
    if have > size:
        raise ProtocolError(f"more than the {size} bytes of Content-Length")
    buf[:have] = r.conn.head[r.start : r.got]
    sock = r.conn.sock
    reported = 0
    step = size if progress is None else PIECE  # reports at most PIECE apart
    while have < size:
        n = sock.recv_into(buf[have : min(size, reported + step)])
        if n == 0:
            raise ConnectionError("the response broke off")
        have += n
        if progress is not None and have - reported >= PIECE:
            progress(have)
            reported = have
    if progress is not None and (reported != size or not size):
        progress(size)
    return size


def body_bytes(r: Response) -> bytes:
    """The whole body: Content-Length or chunked."""
    size = r.content_length()
    if size is not None:
        buf = bytearray(size)
        body_into(r, memoryview(buf), size)
        return bytes(buf)
    if r.fields.get("transfer-encoding", "").lower() != "chunked":
        raise ProtocolError("a response without a length")
    return read_chunked(r.conn.sock, bytes(r.conn.head[r.start : r.got]))


def read_chunked(sock: socket.socket, pending: bytes) -> bytes:
    """Decode a chunked body; `pending` holds bytes already received."""
    buf = bytearray(pending)
    out = bytearray()
    pos = 0

    def need(n: int) -> None:
        while len(buf) - pos < n:
            more = sock.recv(1 << 16)
            if not more:
                raise ConnectionError("the response broke off")
            buf.extend(more)

    while True:
        while (eol := buf.find(b"\r\n", pos)) < 0:
            if len(buf) - pos > 1024:
                raise ProtocolError("a chunk size line over 1 KiB")
            need(len(buf) - pos + 1)
        line = bytes(buf[pos:eol]).split(b";")[0].strip()
        try:
            size = int(line, 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size {line[:20]!r}") from None
        pos = eol + 2
        if size == 0:
            while buf.find(b"\r\n\r\n", pos - 2) < 0:  # trailers end with an empty line
                need(len(buf) - pos + 1)
            return bytes(out)
        need(size + 2)
        if buf[pos + size : pos + size + 2] != b"\r\n":
            raise ProtocolError("a chunk longer than its size")
        out += buf[pos : pos + size]
        pos += size + 2


def drain_error(r: Response) -> bool:
    """Read a small error body off the connection; False when it cannot be reused."""
    try:
        size = r.content_length()
    except ProtocolError:
        return False
    if size is None or r.start + size > len(r.conn.head):
        return False
    view = memoryview(r.conn.head)
    got = r.got
    while got < r.start + size:
        n = r.conn.sock.recv_into(view[got:])
        if n == 0:
            return False
        got += n
    return got == r.start + size


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
