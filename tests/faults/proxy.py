"""A fault-injecting HTTP/1.1 proxy on loopback, between amlfs and a real server (Azurite, the
File/DFS protocol servers).

The client talks plain HTTP to the proxy as if it were the service (the account URL points at
the proxy); the proxy forwards each request on its own upstream connection and relays the
response, unless a `Rule` matching the request (method + path regex, for its next `count`
requests) says otherwise: add latency, stall (before the headers, or after the headers and
`after` body bytes), reset the connection (RST: SO_LINGER 0), cut the body after `after` bytes,
answer with an HTTP error (500, 503 ServerBusy + Retry-After, 429...), or cap the bandwidth.
`reset_open()` resets every open client connection; `reset_new` resets the next new ones at
accept. Every request is logged (`log`) with its time, for rates and counts.

Bounded: sockets time out, a stall ends when its `seconds` pass or the proxy stops, and `stop()`
closes every socket; all threads are daemons.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_IO_TIMEOUT = 120.0


@dataclass
class Rule:
    """What to do with the next `count` requests (None: all) matching `method` and `path`."""

    action: str  # latency | stall | stall_body | reset | reset_body | cut | status | bandwidth
    method: str = ".*"
    path: str = ".*"
    count: int | None = None
    seconds: float = 0.0  # latency, or how long a stall lasts (bounded)
    after: int = 0  # body bytes relayed before stall_body / reset_body / cut
    status: int = 500
    code: str = "InternalError"
    retry_after: float | None = None
    rate: float = 0.0  # bandwidth: bytes per second
    json: bool = False  # status: a JSON error body (the token endpoint's), else storage XML
    hits: int = 0

    def take(self, method: str, path: str) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if not (re.fullmatch(self.method, method) and re.search(self.path, path)):
            return False
        self.hits += 1
        return True


@dataclass
class Entry:
    t: float
    method: str
    path: str
    action: str


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    rules: list[Rule] = field(default_factory=list)
    reset_new: int = 0
    log: deque = field(default_factory=lambda: deque(maxlen=200_000))
    #: (certfile, keyfile): speak TLS to the client with this certificate and TLS upstream
    tls: tuple[str, str] | None = None
    #: rewrite the upstream's address to the proxy's in JSON bodies (the AAD stand-in's
    #: discovery document names its token endpoint), as a reverse proxy rewrites Location
    rewrite_json: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(256)
        self.port = self._listener.getsockname()[1]
        self._server_tls = self._client_tls = None
        if self.tls is not None:
            self._server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._server_tls.load_cert_chain(*self.tls)
            self._client_tls = ssl._create_unverified_context()  # the test's own server
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="proxy")
        self._thread.start()

    # --- control ----------------------------------------------------------------------------

    def url(self, account_url: str) -> str:
        """`account_url` with its host and port replaced by the proxy's."""
        m = re.match(r"https?://[^/]+(.*)", account_url)
        assert m, account_url
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{m[1]}"

    def add(self, action: str, **kw) -> Rule:
        rule = Rule(action, **kw)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.reset_new = 0

    def reset_open(self) -> int:
        """RST every open client connection; how many."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _rst(c)
        return len(conns)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def count(self, method: str = ".*", path: str = ".*", since: float = 0.0) -> int:
        return sum(
            1
            for e in list(self.log)
            if e.t >= since and re.fullmatch(method, e.method) and re.search(path, e.path)
        )

    def stop(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept loop
        except OSError:
            pass
        self._listener.close()
        self.reset_open()
        self._thread.join(5)

    # --- serving ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                reset = self.reset_new > 0
                self.reset_new -= reset
            if reset:
                self.log.append(Entry(time.monotonic(), "-", "-", "reset_new"))
                _rst(client)
                continue
            client.settimeout(_IO_TIMEOUT)
            with self._lock:
                self._conns.add(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _rule(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for r in self.rules:
                if r.take(method, path):
                    return r
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            if self._server_tls is not None:
                tls_client = self._server_tls.wrap_socket(client, server_side=True)
                with self._lock:
                    self._conns.discard(client)
                    self._conns.add(tls_client)
                client = tls_client
            reader = _Reader(client)
            while not self._stop.is_set():
                head = reader.head()
                if head is None:
                    return
                method, target = head.split(b" ", 2)[:2]
                m, path = method.decode(), target.decode("latin-1")
                body = reader.body(_fields(head), request=True)
                rule = self._rule(m, path)
                self.log.append(Entry(time.monotonic(), m, path, rule.action if rule else "ok"))
                if rule is not None and not self._before(rule, client):
                    return
                if rule is not None and rule.action == "status":
                    client.sendall(_error_response(rule, head_only=m == "HEAD"))
                    continue
                if upstream is None:
                    upstream = socket.create_connection(self.upstream, timeout=_IO_TIMEOUT)
                    if self._client_tls is not None:
                        upstream = self._client_tls.wrap_socket(upstream)
                upstream.sendall(head + body)
                if not self._relay(upstream, client, m, rule):
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._conns.discard(client)
            client.close()
            if upstream is not None:
                upstream.close()

    def _before(self, rule: Rule, client: socket.socket) -> bool:
        """Faults before the request is forwarded; False when the connection is done."""
        if rule.action == "latency":
            self._stop.wait(rule.seconds)
        elif rule.action == "stall":
            self._stop.wait(rule.seconds or 60)
            return False
        elif rule.action == "reset":
            _rst(client)
            return False
        return True

    def _relay(self, up: socket.socket, client: socket.socket, method: str, rule: Rule | None):
        """Relay one response; False when the connection must close."""
        reader = _Reader(up)
        head = reader.head()
        if head is None:
            return False
        fields = _fields(head)
        no_body = method == "HEAD" or head.split(b" ", 2)[1] in (b"204", b"304")
        action = rule.action if rule else "ok"
        if self.rewrite_json and "json" in fields.get("content-type", "") and not no_body:
            body = reader.body(fields).replace(
                f"127.0.0.1:{self.upstream[1]}".encode(), f"127.0.0.1:{self.port}".encode()
            )
            head = re.sub(rb"(?im)^content-length:.*\r\n", b"", head)
            head = head[:-2] + f"Content-Length: {len(body)}\r\n\r\n".encode()
            reader = _Reader(up)
            reader.buf = body
            fields["content-length"] = str(len(body))
        client.sendall(head)
        sent = 0
        for piece in reader.body_pieces(fields, no_body):
            if action in ("stall_body", "reset_body", "cut") and sent + len(piece) >= rule.after:
                client.sendall(piece[: max(0, rule.after - sent)])
                if action == "stall_body":
                    self._stop.wait(rule.seconds or 60)
                    return False
                if action == "reset_body":
                    _rst(client)
                    return False
                client.shutdown(socket.SHUT_WR)
                return False
            if action == "bandwidth":
                for i in range(0, len(piece), 16 << 10):
                    part = piece[i : i + (16 << 10)]
                    client.sendall(part)
                    if self._stop.wait(len(part) / rule.rate):
                        return False
            else:
                client.sendall(piece)
            sent += len(piece)
        return fields.get("connection", "").lower() != "close"


class _Reader:
    """Buffered reads of HTTP heads and bodies off one socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        data = self.sock.recv(256 << 10)
        self.buf += data
        return bool(data)

    def head(self) -> bytes | None:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 1 << 20 or not self._more():
                return None
        end = self.buf.index(b"\r\n\r\n") + 4
        head, self.buf = self.buf[:end], self.buf[end:]
        return head

    def body(self, fields: dict[str, str], request: bool = False) -> bytes:
        return b"".join(self.body_pieces(fields, False, request))

    def body_pieces(self, fields: dict[str, str], no_body: bool, request: bool = False):
        if no_body:
            return
        if "content-length" in fields:
            left = int(fields["content-length"])
            while left > 0:
                if not self.buf and not self._more():
                    raise ConnectionError("body cut short upstream")
                piece, self.buf = self.buf[:left], self.buf[left:]
                left -= len(piece)
                yield piece
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            while True:
                while b"\r\n" not in self.buf:
                    if not self._more():
                        raise ConnectionError("chunked body cut short")
                line_end = self.buf.index(b"\r\n") + 2
                size = int(self.buf[: line_end - 2].split(b";")[0], 16)
                want = line_end + size + 2
                while len(self.buf) < want:
                    if not self._more():
                        raise ConnectionError("chunked body cut short")
                piece, self.buf = self.buf[:want], self.buf[want:]
                yield piece
                if size == 0:
                    return
        elif not request:
            while True:
                if self.buf:
                    piece, self.buf = self.buf, b""
                    yield piece
                if not self._more():
                    return


def _fields(head: bytes) -> dict[str, str]:
    out = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip().lower()] = v.strip()
    return out


def _error_response(rule: Rule, head_only: bool = False) -> bytes:
    if rule.json:  # an Entra ID (token endpoint) error
        body = f'{{"error":"{rule.code}","error_description":"injected by the fault proxy"}}'
        ctype = "application/json"
    else:  # a storage service error
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{rule.code}</Code>'
            f"<Message>injected by the fault proxy</Message></Error>"
        )
        ctype = "application/xml"
    lines = [
        f"HTTP/1.1 {rule.status} {rule.code}",
        f"x-ms-error-code: {rule.code}",
        f"Content-Type: {ctype}",
        f"Content-Length: {len(body.encode())}",
    ]
    if rule.retry_after is not None:
        lines.append(f"Retry-After: {rule.retry_after:g}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body.encode())


def _rst(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes a thread blocked reading it; sends nothing
    except OSError:
        pass
    sock.close()
