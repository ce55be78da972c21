"""Lean ranged GETs of Blob objects: the hot path of downloads, stage and the mount.

The SDK costs ~2 ms of client CPU per request (pipeline policies, requests, urllib3, header
objects) and copies every body several times; a stage of 2000 small files spends more CPU in the
SDK than the service spends serving them. This module sends the same authenticated `Get Blob`
request over one persistent HTTP/1.1 connection per thread, parses the response head by hand and
receives the body straight into its buffer (~0.1 ms per request). Everything else (listing,
upload, metadata) stays on the SDK. Not used behind an HTTP proxy (the SDK honours proxies).

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
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, urlsplit

log = logging.getLogger(__name__)

API_VERSION = "2021-08-06"
STORAGE_SCOPE = "https://storage.azure.com/.default"
_HEAD_MAX = 64 << 10
_RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


class HttpStatusError(Exception):
    """A non-2xx response. `status_code` and `error_code` as on azure.core's HttpResponseError."""

    def __init__(
        self, status_code: int, error_code: str | None, reason: str = "", keep: bool = False
    ):
        super().__init__(f"HTTP {status_code} {error_code or reason}".strip())
        self.status_code = status_code
        self.error_code = error_code
        self.keep = keep  # the connection is still usable


def usable(account_url: str) -> bool:
    """False when an HTTP proxy applies to the account URL: then only the SDK gets through."""
    host = urlsplit(account_url).hostname or ""
    proxies = urllib.request.getproxies()
    return not proxies or bool(urllib.request.proxy_bypass(host))


class _Auth:
    """Adds authentication to one request: SharedKey signature, SAS query, or bearer token."""

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
            now = time.time()
            if self._token is None or self._token[1] - 300 < now:
                tok = self.token_credential.get_token(STORAGE_SCOPE)  # type: ignore[union-attr]
                self._token = (tok.token, float(tok.expires_on))
            return self._token[0]

    def sign(self, path: str, headers: dict[str, str]) -> str:
        """The Authorization value for a GET of `path` (already percent-encoded)."""
        xms = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
        to_sign = (
            "GET\n\n\n\n\n\n\n\n"
            + headers.get("If-Match", "")
            + "\n\n\n\n"
            + xms
            + f"/{self.account}{path}"
        )
        digest = hmac.new(self.key, to_sign.encode("utf-8"), hashlib.sha256).digest()  # type: ignore[arg-type]
        return f"SharedKey {self.account}:{base64.b64encode(digest).decode()}"


class _Conn:
    __slots__ = ("sock", "head", "uses")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.head = bytearray(_HEAD_MAX)
        self.uses = 0


class RangeReader:
    """Ranged GETs of the blobs of one container; thread-safe (one connection per thread)."""

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
        self._date = ("", 0)

    # --- connections: a LIFO pool, so that a few warm connections serve many threads ----------

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

    # --- requests ------------------------------------------------------------------------

    def _now(self) -> str:
        sec = int(time.time())
        if self._date[1] != sec:
            self._date = (formatdate(sec, usegmt=True), sec)
        return self._date[0]

    def _request_bytes(self, name: str, offset: int, length: int, etag: str | None) -> bytes:
        path = f"{self.base}/{quote(name, safe='/~')}"
        headers = {
            "x-ms-date": self._now(),
            "x-ms-version": API_VERSION,
            "x-ms-range": f"bytes={offset}-{offset + length - 1}",
        }
        if etag is not None:
            headers["If-Match"] = etag
        target = path
        if self.auth.key is not None:
            headers["Authorization"] = self.auth.sign(path, headers)
        elif self.auth.sas:
            target = f"{path}?{self.auth.sas}"
        elif self.auth.token_credential is not None:
            headers["Authorization"] = f"Bearer {self.auth.bearer()}"
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def read(self, name: str, offset: int, length: int, etag: str | None = None) -> bytes:
        """Up to `length` bytes of blob `name` from `offset` (If-Match `etag` when given).

        Retries throttling, 5xx and broken connections (jittered exponential backoff); a
        keep-alive connection the server closed while idle is replaced at once, uncounted.
        """
        attempt = 0
        while True:
            conn: _Conn | None = None
            try:
                conn, reused = self._acquire()
                data, keep = self._exchange(conn, name, offset, length, etag)
                if keep:
                    self._release(conn)
                else:
                    _close_quiet(conn)
                return data
            except HttpStatusError as e:
                if e.keep:
                    self._release(conn)  # type: ignore[arg-type]
                else:
                    _close_quiet(conn)
                if e.status_code not in _RETRY_STATUS or attempt >= self.retry_total:
                    raise
            except _StaleConnection:
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
            log.debug("retrying GET %r in %.2f s", name, delay)
            time.sleep(delay)

    def _exchange(
        self, conn: _Conn, name: str, offset: int, length: int, etag: str | None
    ) -> tuple[bytes, bool]:
        """One request and response on `conn`: (body, whether the connection is reusable)."""
        sock = conn.sock
        head = conn.head
        view = memoryview(head)
        got = 0
        end = -1
        try:
            sock.sendall(self._request_bytes(name, offset, length, etag))
            while end < 0:
                n = sock.recv_into(view[got:])
                if n == 0:
                    if got:
                        raise ConnectionError("the response broke off")
                    raise _StaleConnection
                got += n
                end = head.find(b"\r\n\r\n", max(0, got - n - 3), got)
                if end < 0 and got == len(head):
                    raise ConnectionError("response head too large")
        except (ConnectionResetError, BrokenPipeError) as e:
            if got == 0:
                raise _StaleConnection from e
            raise
        conn.uses += 1
        status, fields = _parse_head(bytes(head[:end]))
        body_start = end + 4
        clen = fields.get("content-length")
        keep = fields.get("connection", "").lower() != "close"
        if status >= 300 or clen is None:
            # Drain a small sized error body to keep the connection; otherwise give it up.
            if clen is not None and body_start + int(clen) <= len(head):
                _recv_exact(sock, view, got, body_start + int(clen))
            else:
                keep = False
            raise HttpStatusError(
                status, fields.get("x-ms-error-code"), fields.get(":reason", ""), keep
            )
        size = int(clen)
        body = bytearray(size)
        have = min(got - body_start, size)
        body[:have] = head[body_start : body_start + have]
        if have < size:
            bview = memoryview(body)
            while have < size:
                n = sock.recv_into(bview[have:])
                if n == 0:
                    raise ConnectionError("the response broke off")
                have += n
        return bytes(body), keep


class _StaleConnection(Exception):
    """The server closed the connection before sending anything (an idle keep-alive timeout)."""


def _close_quiet(conn: _Conn | None) -> None:
    if conn is not None:
        try:
            conn.sock.close()
        except OSError:
            pass


def _recv_exact(sock: socket.socket, view: memoryview, got: int, want: int) -> None:
    while got < want:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError("the response broke off")
        got += k


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ConnectionError(f"not an HTTP response: {lines[0][:80]!r}")
    fields = {":reason": parts[2] if len(parts) > 2 else ""}
    for line in lines[1:]:
        k, sep, v = line.partition(":")
        if sep:
            fields[k.strip().lower()] = v.strip()
    if fields.get("transfer-encoding", "").lower() == "chunked":
        fields.pop("content-length", None)
    return int(parts[1]), fields


def _ssl_context() -> ssl.SSLContext:
    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if not cafile:
        try:
            import certifi

            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)
