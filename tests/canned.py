"""A canned HTTP server on loopback for the framing corners the real service never sends.

Each request read off any connection is answered with the next step of a script: bytes to send,
`None` to close the connection without answering (an idle keep-alive timeout), or a `Stall`
(send some bytes, then nothing until the client closes or time runs out). Every connection has
its own thread; the server, its connections and its stalls are bounded in time, so a client bug
cannot hang the suite. Tests sequence on its events (`stalled`, `client_closed`), not on sleeps.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass

#: no server outlives this, whatever the script says
LIFETIME = 30.0


@dataclass
class Stall:
    """Send `data` (nothing, a head, a head and part of a body), then answer nothing more until
    the client closes the connection or `limit` seconds pass."""

    data: bytes = b""
    limit: float = 10.0


Step = bytes | Stall | None


def response(
    status: int = 206,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    reason: str = "X",
    version: str = "HTTP/1.1",
    length: int | None = None,
) -> bytes:
    """An HTTP response; Content-Length is `length` (default: the body's) unless `headers`
    has Transfer-Encoding."""
    fields = dict(headers or {})
    if "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Length", str(len(body) if length is None else length))
    head = f"{version} {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode("latin-1") + b"\r\n" + body


def partial(body: bytes, start: int, total: int, **kw) -> bytes:
    """A 206 with `body` at `start` of a `total`-byte object."""
    cr = f"bytes {start}-{start + len(body) - 1}/{total}"
    return response(206, body, {"Content-Range": cr, **kw.pop("headers", {})}, **kw)


def chunked(body: bytes, pieces: int = 3, **kw) -> bytes:
    step = max(1, -(-len(body) // pieces))
    parts = [body[i : i + step] for i in range(0, len(body), step)]
    data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    return response(200, data, {"Transfer-Encoding": "chunked"}, **kw)


class CannedServer:
    """Serves `script` in order across all connections, then stops accepting."""

    def __init__(
        self,
        script: list[Step],
        *,
        lifetime: float = LIFETIME,
        tls: ssl.SSLContext | None = None,
    ):
        """`tls`: a server-side context; then the URL is https://."""
        self.script = list(script)
        self.tls = tls
        self.requests: list[bytes] = []
        self.accepted = 0
        self.stalled = threading.Event()  # a Stall has sent its bytes
        self.client_closed = threading.Event()  # the client closed a stalled connection
        self._deadline = time.monotonic() + lifetime
        self._lock = threading.Lock()
        self._requested = threading.Condition(self._lock)
        self._closed = False
        self._conns: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _left(self) -> float:
        return self._deadline - time.monotonic()

    def _next(self) -> tuple[bool, Step]:
        with self._lock:
            if not self.script:
                return False, None
            return True, self.script.pop(0)

    def _accept(self) -> None:
        while not self._closed and self._left() > 0:
            with self._lock:
                if not self.script:
                    return
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn.settimeout(5)
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        with conn:
            while self._left() > 0:
                if not self._read_request(conn):
                    return
                more, step = self._next()
                if not more or step is None:
                    return
                if isinstance(step, Stall):
                    conn.sendall(step.data)
                    self.stalled.set()
                    self._wait_close(conn, min(step.limit, self._left()))
                    return
                conn.sendall(step)

    def _read_request(self, conn: socket.socket) -> bool:
        data = b""
        conn.settimeout(max(0.01, self._left()))
        while b"\r\n\r\n" not in data:
            try:
                more = conn.recv(65536)
            except OSError:
                return False
            if not more:
                return False
            data += more
        with self._lock:
            self.requests.append(data)
            self._requested.notify_all()
        return True

    def wait_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Wait until `n` requests have arrived."""
        with self._lock:
            return self._requested.wait_for(lambda: len(self.requests) >= n, timeout)

    def _wait_close(self, conn: socket.socket, limit: float) -> None:
        end = time.monotonic() + limit
        while (left := end - time.monotonic()) > 0:
            conn.settimeout(left)
            try:
                if not conn.recv(65536):
                    self.client_closed.set()
                    return
            except TimeoutError:
                return
            except OSError:
                self.client_closed.set()
                return

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=1)

    def __enter__(self) -> CannedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ConnectProxy:
    """An HTTP proxy on loopback that only tunnels (CONNECT host:port), relaying bytes both ways;
    with `authorization`, a CONNECT without that Proxy-Authorization value gets a 407. Records
    each CONNECT head; bounded in time like CannedServer."""

    def __init__(self, *, authorization: str | None = None, lifetime: float = LIFETIME):
        self.authorization = authorization
        self.connects: list[bytes] = []
        self._deadline = time.monotonic() + lifetime
        self._closed = False
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._closed and time.monotonic() < self._deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                more = conn.recv(4096)
                if not more:
                    return
                head += more
            with self._lock:
                self.connects.append(head)
                self._socks.append(conn)
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            fields = dict(line.split(b": ", 1) for line in lines[1:] if b": " in line)
            if method != b"CONNECT":
                conn.sendall(response(405, reason="Method Not Allowed", headers={}))
                return
            want = self.authorization
            if want is not None and fields.get(b"Proxy-Authorization", b"").decode() != want:
                conn.sendall(response(407, reason="Proxy Authentication Required"))
                return
            host, _, port = target.decode().rpartition(":")
            with socket.create_connection((host, int(port)), timeout=5) as up:
                with self._lock:
                    self._socks.append(up)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                self._relay(conn, up)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ, b)
            sel.register(b, selectors.EVENT_READ, a)
            while not self._closed and time.monotonic() < self._deadline:
                for key, _ in sel.select(timeout=0.1):
                    try:
                        data = key.fileobj.recv(1 << 20)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return

    def close(self) -> None:
        self._closed = True
        self.sock.close()
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=1)

    def __enter__(self) -> ConnectProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
