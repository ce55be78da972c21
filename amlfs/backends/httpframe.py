"""HTTP/1.1 response framing for the lean clients, checked by hand: response heads, bodies
received straight into the caller's buffer, chunked bodies (listings), and the ranged-read rule --
a ranged read is answered by the range asked for or fails, never with bytes from another offset.

Hand-written rather than h11: the ranged-read body is received with `recv_into` into the
caller's buffer (no per-chunk bytes objects), which keeps a GiB at ~0.3-0.4 client CPU-s; the
framing kept by hand is small: Content-Length, chunked, Connection. Connections, retries and
the pool are http.py's; this module knows nothing of them but the socket a `Conn` holds.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass

HEAD_MAX = 64 << 10
#: progress is reported at least this often while a body arrives
PIECE = 256 << 10
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
