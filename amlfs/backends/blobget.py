"""A lean Blob client for the hot requests: ranged `Get Blob` and `List Blobs`.

The SDK costs ~2 ms of client CPU per request (pipeline policies, requests, urllib3, model
deserialisation) and copies every body several times; a stage of 2000 small files spent more CPU
in the SDK than the service spent serving them, and deserialising a 5000-blob listing page takes
~0.9 s (bloblist.py parses one in ~50 ms). This module sends the same authenticated requests
(SharedKey signature, SAS, or bearer token from the same credential objects the SDK takes) over
persistent HTTP/1.1 connections, parses response heads by hand, and receives bodies straight into
the caller's buffer. Everything else (uploads, metadata, container operations) stays on the SDK.
Not used behind an HTTP proxy.

Failures are raised as `HttpStatusError` (status, x-ms-error-code) or `OSError`, shaped like the
SDK's exceptions so that the backend maps both in one place.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import random
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from .base import LocalIOError
from .bloblist import ListedBlob, ListedPrefix, parse_listing

log = logging.getLogger(__name__)

T = TypeVar("T")

API_VERSION = "2021-08-06"
STORAGE_SCOPE = "https://storage.azure.com/.default"
_HEAD_MAX = 64 << 10
#: received and written at a time by read_to_fd: small enough to stay in the CPU cache
_PIECE = 256 << 10
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HttpStatusError(Exception):
    """A non-2xx response. `status_code` and `error_code` as on azure.core's HttpResponseError."""

    def __init__(self, status_code: int, error_code: str | None, reason: str = ""):
        super().__init__(f"HTTP {status_code} {error_code or reason}".strip())
        self.status_code = status_code
        self.error_code = error_code


def usable(account_url: str) -> bool:
    """False when an HTTP proxy applies to the account URL: then only the SDK gets through."""
    host = urlsplit(account_url).hostname or ""
    proxies = urllib.request.getproxies()
    return not proxies or bool(urllib.request.proxy_bypass(host))


class _Auth:
    """Authenticates one request: SharedKey signature, SAS query, bearer token, or nothing."""

    def __init__(self, credential: Any):
        self.key: bytes | None = None
        self.account = ""
        self.sas = ""
        self.token_credential = None
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()
        named = getattr(credential, "named_key", None)
        if named is not None:  # AzureNamedKeyCredential
            self.account, self.key = named.name, base64.b64decode(named.key)
        elif isinstance(credential, str):
            self.sas = credential.lstrip("?")
        elif credential is not None and hasattr(credential, "get_token"):
            self.token_credential = credential

    def bearer(self) -> str:
        with self._lock:
            if self._token is None or self._token[1] - 300 < time.time():
                tok = self.token_credential.get_token(STORAGE_SCOPE)  # type: ignore[union-attr]
                self._token = (tok.token, float(tok.expires_on))
            return self._token[0]

    def sign(self, path: str, headers: dict[str, str], query: dict[str, str]) -> str:
        """The SharedKey Authorization value for a GET of `path` (percent-encoded)."""
        xms = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
        resource = f"/{self.account}{path}" + "".join(
            f"\n{k}:{v}" for k, v in sorted(query.items())
        )
        to_sign = "GET\n\n\n\n\n\n\n\n" + headers.get("If-Match", "") + "\n\n\n\n" + xms + resource
        digest = hmac.new(self.key, to_sign.encode("utf-8"), hashlib.sha256).digest()  # type: ignore[arg-type]
        return f"SharedKey {self.account}:{base64.b64encode(digest).decode()}"


class _Conn:
    __slots__ = ("sock", "head")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.head = bytearray(_HEAD_MAX)


class _Stale(Exception):
    """The server closed an idle keep-alive connection before answering."""


@dataclass
class _Response:
    status: int
    fields: dict[str, str]
    conn: _Conn
    start: int  # body bytes already in conn.head[start:got]
    got: int


class BlobFastPath:
    """Ranged reads and flat listings of one container; thread-safe (a pool of connections)."""

    def __init__(
        self,
        account_url: str,
        container: str,
        credential: Any,
        *,
        timeout: float = 30.0,
        retry_total: int = 3,
        retry_backoff: float = 1.0,
    ):
        parts = urlsplit(account_url)
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if self.https else 80)
        self.netloc = parts.netloc
        self.base = f"{parts.path.rstrip('/')}/{quote(container, safe='')}"
        self.auth = _Auth(credential)
        self.timeout = timeout
        self.retry_total = retry_total
        self.retry_backoff = retry_backoff
        self._ssl = _ssl_context() if self.https else None
        self._idle: list[_Conn] = []
        self._closed = False
        self._lock = threading.Lock()
        self._local = threading.local()
        self._date = ("", 0)

    # --- the public requests -------------------------------------------------------------

    def read_into(self, name: str, offset: int, buf: memoryview, etag: str | None = None) -> int:
        """Fill `buf` from blob `name` at `offset` (If-Match `etag`); the byte count, fewer
        only at the end of the blob."""
        headers = {"x-ms-range": f"bytes={offset}-{offset + len(buf) - 1}"}
        if etag is not None:
            headers["If-Match"] = etag
        path = f"{self.base}/{quote(name, safe='/~')}"
        return self._call(path, {}, headers, lambda r: self._body_into(r, buf))

    def read_to_fd(
        self,
        name: str,
        offset: int,
        length: int,
        fd: int,
        fd_offset: int,
        etag: str | None = None,
    ) -> int:
        """Like read_into, but each piece is written with pwrite to `fd` at `fd_offset` as it
        arrives (still in the CPU cache), through a small per-thread buffer."""
        headers = {"x-ms-range": f"bytes={offset}-{offset + length - 1}"}
        if etag is not None:
            headers["If-Match"] = etag
        path = f"{self.base}/{quote(name, safe='/~')}"
        return self._call(path, {}, headers, lambda r: self._body_to_fd(r, length, fd, fd_offset))

    def read(self, name: str, offset: int, length: int, etag: str | None = None) -> bytes:
        buf = bytearray(length)
        n = self.read_into(name, offset, memoryview(buf), etag)
        return bytes(buf) if n == length else bytes(buf[:n])

    def list_flat(self, prefix: str, page_size: int = 5000) -> Iterator[ListedBlob]:
        """Every blob whose name starts with `prefix`, in name order, with metadata."""
        marker = ""
        while True:
            items, marker = self.list_page(prefix, marker, page_size)
            yield from items  # type: ignore[misc]  # no delimiter: blobs only
            if not marker:
                return

    def list_page(
        self, prefix: str, marker: str = "", page_size: int = 5000, delimiter: str = ""
    ) -> tuple[list[ListedBlob | ListedPrefix], str]:
        """One `List Blobs` page (with metadata) in the service's order, and the marker of the
        next page ('' after the last). With `delimiter`, names below the next delimiter come
        as one ListedPrefix each. Markers are the SDK's continuation tokens."""
        query = {"restype": "container", "comp": "list", "include": "metadata"}
        query["maxresults"] = str(page_size)
        if prefix:
            query["prefix"] = prefix
        if delimiter:
            query["delimiter"] = delimiter
        if marker:
            query["marker"] = marker
        return parse_listing(self._call(self.base, query, {}, self._body_bytes))

    # --- connections: a LIFO pool, so that a few warm connections serve many threads ------

    def _acquire(self) -> tuple[_Conn, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_hostname=self.host)
        return _Conn(sock), False

    def _release(self, conn: _Conn) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        _close_quiet(conn)

    def close(self) -> None:
        with self._lock:
            conns, self._idle = self._idle, []
            self._closed = True
        for c in conns:
            _close_quiet(c)

    # --- one request, with retries -------------------------------------------------------

    def _call(
        self,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        consume: Callable[[_Response], T],
    ) -> T:
        """Send GET `path`; `consume` reads a 2xx body. Retries throttling, 5xx and broken
        connections (jittered exponential backoff); a keep-alive connection that the server
        closed while idle is replaced at once, uncounted."""
        attempt = 0
        request = self._request(path, query, headers)
        while True:
            conn: _Conn | None = None
            try:
                conn, reused = self._acquire()
                r = self._head(conn, request)
                if r.status >= 300:
                    keep = self._drain_error(r)
                    err = HttpStatusError(r.status, r.fields.get("x-ms-error-code"))
                    if keep:
                        self._release(conn)
                    else:
                        _close_quiet(conn)
                    conn = None
                    raise err
                result = consume(r)
                if r.fields.get("connection", "").lower() == "close":
                    _close_quiet(conn)
                else:
                    self._release(conn)
                return result
            except HttpStatusError as e:
                if e.status_code not in _RETRY_STATUS or attempt >= self.retry_total:
                    raise
            except _Stale:
                _close_quiet(conn)
                if reused:
                    continue
                if attempt >= self.retry_total:
                    raise ConnectionResetError("the connection closed before a response") from None
            except OSError:
                _close_quiet(conn)
                if attempt >= self.retry_total:
                    raise
            except BaseException:
                _close_quiet(conn)  # mid-response: the connection is unusable
                raise
            delay = self.retry_backoff * 2**attempt * random.uniform(0.5, 1.0)
            attempt += 1
            log.debug("retrying GET %s in %.2f s", path, delay)
            time.sleep(delay)
            request = self._request(path, query, headers)  # a fresh x-ms-date

    def _request(self, path: str, query: dict[str, str], extra: dict[str, str]) -> bytes:
        sec = int(time.time())
        if self._date[1] != sec:
            self._date = (formatdate(sec, usegmt=True), sec)
        headers = {"x-ms-date": self._date[0], "x-ms-version": API_VERSION, **extra}
        q = urlencode(query, quote_via=quote) if query else ""
        if self.auth.key is not None:
            headers["Authorization"] = self.auth.sign(path, headers, query)
        elif self.auth.sas:
            q = f"{q}&{self.auth.sas}" if q else self.auth.sas
        elif self.auth.token_credential is not None:
            headers["Authorization"] = f"Bearer {self.auth.bearer()}"
        target = f"{path}?{q}" if q else path
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _head(self, conn: _Conn, request: bytes) -> _Response:
        sock, head = conn.sock, conn.head
        view = memoryview(head)
        got = 0
        try:
            sock.sendall(request)
            while True:
                n = sock.recv_into(view[got:])
                if n == 0:
                    if got:
                        raise ConnectionError("the response broke off")
                    raise _Stale
                got += n
                end = head.find(b"\r\n\r\n", max(0, got - n - 3), got)
                if end >= 0:
                    break
                if got == len(head):
                    raise ConnectionError("response head too large")
        except (ConnectionResetError, BrokenPipeError) as e:
            if got == 0:
                raise _Stale from e
            raise
        status, fields = _parse_head(bytes(head[:end]))
        return _Response(status, fields, conn, end + 4, got)

    def _drain_error(self, r: _Response) -> bool:
        """Read a small error body off the connection; False when it cannot be reused."""
        clen = r.fields.get("content-length")
        if clen is None or r.start + int(clen) > len(r.conn.head):
            return False
        view = memoryview(r.conn.head)
        got = r.got
        while got < r.start + int(clen):
            n = r.conn.sock.recv_into(view[got:])
            if n == 0:
                return False
            got += n
        return True

    def _body_into(self, r: _Response, buf: memoryview) -> int:
        clen = r.fields.get("content-length")
        if clen is None:
            raise ConnectionError("a ranged read without Content-Length")
        size = int(clen)
        if size > len(buf):
            raise ConnectionError(f"the service sent {size} bytes for a {len(buf)}-byte range")
        have = min(r.got - r.start, size)
        buf[:have] = r.conn.head[r.start : r.start + have]
        sock = r.conn.sock
        while have < size:
            n = sock.recv_into(buf[have:size])
            if n == 0:
                raise ConnectionError("the response broke off")
            have += n
        return size

    def _body_to_fd(self, r: _Response, length: int, fd: int, fd_offset: int) -> int:
        clen = r.fields.get("content-length")
        if clen is None:
            raise ConnectionError("a ranged read without Content-Length")
        size = int(clen)
        if size > length:
            raise ConnectionError(f"the service sent {size} bytes for a {length}-byte range")
        have = min(r.got - r.start, size)
        _pwrite_all(fd, memoryview(r.conn.head)[r.start : r.start + have], fd_offset)
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = memoryview(bytearray(_PIECE))
        sock = r.conn.sock
        while have < size:
            n = sock.recv_into(scratch[: min(_PIECE, size - have)])
            if n == 0:
                raise ConnectionError("the response broke off")
            _pwrite_all(fd, scratch[:n], fd_offset + have)
            have += n
        return size

    def _body_bytes(self, r: _Response) -> bytes:
        clen = r.fields.get("content-length")
        if clen is not None:
            buf = bytearray(int(clen))
            self._body_into(r, memoryview(buf))
            return bytes(buf)
        if r.fields.get("transfer-encoding", "").lower() != "chunked":
            raise ConnectionError("a response without a length")
        return _read_chunked(r.conn.sock, bytes(r.conn.head[r.start : r.got]))


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """A local write: its OSError (ENOSPC, EIO...) is the disk's, not the network's, so it
    leaves as LocalIOError, which `_call` neither retries nor counts as a broken connection."""
    pos = 0
    try:
        while pos < len(view):
            pos += os.pwrite(fd, view[pos:], offset + pos)
    except OSError as e:
        raise LocalIOError.for_fd(e, fd) from None


def _read_chunked(sock: socket.socket, pending: bytes) -> bytes:
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
            need(len(buf) - pos + 1)
        size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            while buf.find(b"\r\n\r\n", pos - 2) < 0:  # trailers end with an empty line
                need(len(buf) - pos + 1)
            return bytes(out)
        need(size + 2)
        out += buf[pos : pos + size]
        pos += size + 2


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"not an HTTP response: {lines[0][:80]!r}")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip().lower()] = v.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        fields.pop("content-length", None)
    return int(parts[1]), fields


def _close_quiet(conn: _Conn | None) -> None:
    if conn is not None:
        try:
            conn.sock.close()
        except OSError:
            pass


def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)
