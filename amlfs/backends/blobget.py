"""A lean Blob client for the hot requests: ranged `Get Blob`, `List Blobs`, `Put Blob` of a
whole small file, and `Put Block` / `Put Block List` of a large one (blobupload.py).

The SDK costs ~2 ms of client CPU per request (pipeline policies, requests, urllib3, model
deserialisation) and copies every body several times; a stage of 2000 small files spent more CPU
in the SDK than the service spent serving them, and deserialising a 5000-blob listing page takes
~0.9 s (bloblist.py parses one in ~50 ms). This module sends the same authenticated requests
(SharedKey signature, SAS, or bearer token from the same credential objects the SDK takes) over
persistent HTTP/1.1 connections (http.py: pool, proxy tunnel, framing checks) and receives
bodies straight into the caller's buffer. Everything else (metadata, deletes, container
operations, the writable mount's blocks) stays on the SDK.

Concurrency: a BlobFastPath is thread-safe; each call blocks its thread, and an `Abort` ends a
call from another thread. Failures are raised as `HttpStatusError` (status, x-ms-error-code),
`ProtocolError` (a response that does not answer the request), `Aborted` or `OSError`, shaped
like the SDK's exceptions so that the backend maps them in one place.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from .base import Abort
from .bloblist import ListedBlob, ListedPrefix, parse_listing
from .errors import LocalIOError
from .http import DEFAULT_RETRIES, HttpClient
from .httpframe import (
    PIECE,
    HttpStatusError,
    ProtocolError,
    Response,
    body_bytes,
    body_into,
    range_size,
)

__all__ = ["BlobFastPath", "HttpStatusError", "ProtocolError"]

log = logging.getLogger(__name__)

T = TypeVar("T")

API_VERSION = "2021-08-06"
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: received and written at a time by read_to_fd: small enough to stay in the CPU cache
_PIECE = PIECE


class NamedKey:
    """An account name and key, shaped like azure.core's AzureNamedKeyCredential (`named_key`)
    without importing the SDK."""

    def __init__(self, name: str, key: str):
        self.named_key = self
        self.name = name
        self.key = key


def lean_credential(rc: Any, account_name: str | None) -> Any:
    """What `_Auth` takes for the resolved credential `rc` (credentials.ResolvedCredential): as
    credentials.sdk_credential, but an account key needs no SDK import."""
    from ..credentials import ACCOUNT_KEY, SAS, TOKEN, sdk_credential

    if rc.kind == ACCOUNT_KEY and account_name:
        return NamedKey(account_name, rc.value)
    if rc.kind in (SAS, TOKEN):
        return rc.value
    return sdk_credential(rc, account_name)  # its errors, and the rarer kinds


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

    def sign(
        self, path: str, headers: dict[str, str], query: dict[str, str], verb: str = "GET"
    ) -> str:
        """The SharedKey Authorization value for a request of `path` (percent-encoded); the
        standard headers are taken from `headers` as this client spells them."""
        xms = "".join(f"{k}:{v}\n" for k, v in sorted(headers.items()) if k.startswith("x-ms-"))
        resource = f"/{self.account}{path}" + "".join(
            f"\n{k}:{v}" for k, v in sorted(query.items())
        )
        if verb == "GET":
            standard = "\n\n\n\n\n\n\n" + headers.get("If-Match", "") + "\n\n\n\n"
        else:
            length = headers.get("Content-Length", "")
            standard = "\n".join(
                [
                    "",  # Content-Encoding
                    "",  # Content-Language
                    "" if length == "0" else length,
                    headers.get("Content-MD5", ""),
                    headers.get("Content-Type", ""),
                    "",  # Date (x-ms-date is sent)
                    "",  # If-Modified-Since
                    headers.get("If-Match", ""),
                    headers.get("If-None-Match", ""),
                    "",  # If-Unmodified-Since
                    "",  # Range
                    "",
                ]
            )
        to_sign = verb + "\n" + standard + xms + resource
        digest = hmac.new(self.key, to_sign.encode("utf-8"), hashlib.sha256).digest()  # type: ignore[arg-type]
        return f"SharedKey {self.account}:{base64.b64encode(digest).decode()}"


class _Ahead:
    """`fn(*args)` started now on a daemon thread; `result()` waits for it (bounded by the
    request's own timeouts and retries) and returns or raises what it did. Abandoned (a walk
    the caller stops early), it finishes on its own and its result is dropped."""

    def __init__(self, fn: Callable[..., Any], *args: Any):
        self._fn, self._args = fn, args
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="amlfs-list-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._fn(*self._args)
        except BaseException as e:  # handed to the caller by result()
            self._error = e

    def result(self) -> Any:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._value


class BlobFastPath:
    """Ranged reads and flat listings of one container; thread-safe (a pool of connections)."""

    def __init__(
        self,
        account_url: str,
        container: str,
        credential: Any,
        *,
        timeout: float = 30.0,
        retry_total: int = DEFAULT_RETRIES,
        retry_backoff: float = 1.0,
        api_version: str = API_VERSION,
        extra_headers: dict[str, str] | None = None,
    ):
        """ValueError when an HTTP proxy applies that cannot be tunnelled through (see
        http.proxy_for). `extra_headers`: sent (and signed) with every request (Azure Files'
        `x-ms-file-request-intent` for a token). `container` is the first path segment: a
        container, a File share, an ADLS Gen2 filesystem (Get File and ADLS reads are the same
        ranged GET of `/<root>/<path>`, signed the same way)."""
        parts = urlsplit(account_url)
        self.api_version = api_version
        self.netloc = parts.netloc
        self.base = f"{parts.path.rstrip('/')}/{quote(container, safe='')}"
        self.auth = _Auth(credential)
        self.extra_headers = dict(extra_headers or {})
        self.http = HttpClient(
            account_url, timeout=timeout, retry_total=retry_total, retry_backoff=retry_backoff
        )
        self._local = threading.local()
        self._date = ("", 0)

    # --- the public requests -------------------------------------------------------------

    def read_into(
        self,
        name: str,
        offset: int,
        buf: memoryview,
        etag: str | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        abort: Abort | None = None,
        check: Callable[[Response], None] | None = None,
    ) -> int:
        """Fill `buf` from blob `name` at `offset` (If-Match `etag`); the byte count, fewer
        only at the end of the blob. `progress(n)`: bytes in `buf` so far, as they arrive;
        `abort`: shuts the connection down from another thread (Aborted, never retried);
        `check(response)`: sees a 2xx head before its body is read, and may raise (not
        retried; the connection is closed)."""
        headers = {"x-ms-range": f"bytes={offset}-{offset + len(buf) - 1}"}
        if etag is not None:
            headers["If-Match"] = etag
        path = f"{self.base}/{quote(name, safe='/~')}"

        def consume(r: Response) -> int:
            if check is not None:
                check(r)
            return body_into(r, buf, range_size(r, offset, len(buf)), progress)

        return self._call(path, {}, headers, consume, abort=abort)

    def read_to_fd(
        self,
        name: str,
        offset: int,
        length: int,
        fd: int,
        fd_offset: int,
        etag: str | None = None,
        check: Callable[[Response], None] | None = None,
    ) -> int:
        """Like read_into, but each piece is written with pwrite to `fd` at `fd_offset` as it
        arrives (still in the CPU cache), through a small per-thread buffer."""
        headers = {"x-ms-range": f"bytes={offset}-{offset + length - 1}"}
        if etag is not None:
            headers["If-Match"] = etag
        path = f"{self.base}/{quote(name, safe='/~')}"

        def consume(r: Response) -> int:
            if check is not None:
                check(r)
            return self._body_to_fd(r, offset, length, fd, fd_offset)

        return self._call(path, {}, headers, consume)

    def read(
        self,
        name: str,
        offset: int,
        length: int,
        etag: str | None = None,
        check: Callable[[Response], None] | None = None,
    ) -> bytes:
        buf = bytearray(length)
        n = self.read_into(name, offset, memoryview(buf), etag, check=check)
        return bytes(buf) if n == length else bytes(buf[:n])

    def put(
        self, name: str, data: bytes | memoryview, md5: bytes, overwrite: bool = True
    ) -> dict[str, Any]:
        """`Put Blob` of the whole block blob `name` in one request, its Content-MD5 stored (and
        checked by the service against the body). Not `overwrite`: If-None-Match: *, which
        fails with HttpStatusError 409 (or 412) when the blob exists. Returns the SDK's shape:
        {"etag": '"0x..."', "last_modified": datetime}."""
        headers = {
            "Content-Length": str(len(data)),
            "Content-Type": "application/octet-stream",
            "x-ms-blob-type": "BlockBlob",
            "x-ms-blob-content-md5": base64.b64encode(md5).decode(),
        }
        if not overwrite:
            headers["If-None-Match"] = "*"
        return self._put(name, {}, headers, data)

    def put_block(
        self, name: str, block_id: str, data: bytes | memoryview, md5: bytes | None = None
    ) -> None:
        """`Put Block`: stage `data` as block `block_id` (a str, sent base64-encoded as the SDK's
        stage_block does) of blob `name`. `md5`: the block's transactional Content-MD5, which
        the service checks against the body (400 Md5Mismatch) and does not store. Repeatable
        (the same id and bytes), so retried like a GET."""
        headers = {"Content-Length": str(len(data))}
        if md5 is not None:
            headers["Content-MD5"] = base64.b64encode(md5).decode()
        query = {"comp": "block", "blockid": block_id_b64(block_id)}
        self._put(name, query, headers, data)

    def put_block_list(
        self, name: str, block_ids: list[str], md5: bytes | None, overwrite: bool = True
    ) -> dict[str, Any]:
        """`Put Block List`: commit the staged blocks `block_ids` (in order, from the latest
        uncommitted) as blob `name`, with `md5` stored as its Content-MD5 (not checked: the
        service never sees the whole body). Not `overwrite`: If-None-Match: * (409 or 412 when
        the blob exists). Returns the SDK's shape: {"etag", "last_modified"}."""
        body = "".join(f"<Latest>{block_id_b64(i)}</Latest>" for i in block_ids)
        data = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{body}</BlockList>'.encode()
        headers = {"Content-Length": str(len(data))}
        if md5 is not None:
            headers["x-ms-blob-content-md5"] = base64.b64encode(md5).decode()
        if not overwrite:
            headers["If-None-Match"] = "*"
        return self._put(name, {"comp": "blocklist"}, headers, data)

    def exists(self, name: str) -> bool:
        """Whether blob `name` exists, from the head of a one-byte ranged GET (the read
        permission the SDK's HEAD needs; a HEAD's error has no body to frame). An empty blob
        answers 416 (Azurite: a 206 with a range past its end, not looked at)."""
        try:
            self.read_into(name, 0, memoryview(bytearray(1)), check=_found)
        except _Found:
            return True
        except HttpStatusError as e:
            if e.status_code == 416:
                return True
            if e.status_code == 404 and e.error_code != "ContainerNotFound":
                return False
            raise
        return True

    def _put(
        self, name: str, query: dict[str, str], headers: dict[str, str], data: bytes | memoryview
    ) -> dict[str, Any]:
        path = f"{self.base}/{quote(name, safe='/~')}"

        def consume(r: Response) -> dict[str, Any]:
            body_bytes(r)  # nothing, normally: read so that the connection can be reused
            modified = r.fields.get("last-modified")
            return {
                "etag": r.fields.get("etag"),
                "last_modified": parsedate_to_datetime(modified) if modified else None,
            }

        return self.http.get(
            f"PUT {path}",
            lambda: self._request(path, query, headers, "PUT"),
            consume,
            body=data,
        )

    def list_flat(
        self, prefix: str, page_size: int = 5000, first_page: int | None = None
    ) -> Iterator[ListedBlob]:
        """Every blob whose name starts with `prefix`, in name order, with metadata. The first
        request asks for `first_page` entries (when given), the others for `page_size`. While
        the caller works through a page, the next one is being fetched (one request ahead, on
        a helper thread): a long listing costs the service's time or the caller's, not their
        sum. A failed page raises where the caller reaches it, as before."""
        size = min(first_page, page_size) if first_page else page_size
        items, marker = self.list_page(prefix, "", size)
        while True:
            ahead = _Ahead(self.list_page, prefix, marker, page_size) if marker else None
            yield from items  # type: ignore[misc]  # no delimiter: blobs only
            if ahead is None:
                return
            items, marker = ahead.result()

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
        return parse_listing(self._call(self.base, query, {}, body_bytes))

    def close(self) -> None:
        self.http.close()

    # --- one request ---------------------------------------------------------------------

    def _call(
        self,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        consume: Callable[[Response], T],
        abort: Abort | None = None,
    ) -> T:
        """GET `path` (see HttpClient.get: retries, abort)."""
        return self.http.get(path, lambda: self._request(path, query, headers), consume, abort)

    def _request(
        self, path: str, query: dict[str, str], extra: dict[str, str], verb: str = "GET"
    ) -> bytes:
        sec = int(time.time())
        if self._date[1] != sec:
            self._date = (formatdate(sec, usegmt=True), sec)
        headers = {"x-ms-date": self._date[0], "x-ms-version": self.api_version}
        headers.update(self.extra_headers)
        headers.update(extra)
        q = urlencode(query, quote_via=quote) if query else ""
        if self.auth.key is not None:
            headers["Authorization"] = self.auth.sign(path, headers, query, verb)
        elif self.auth.sas:
            q = f"{q}&{self.auth.sas}" if q else self.auth.sas
        elif self.auth.token_credential is not None:
            headers["Authorization"] = f"Bearer {self.auth.bearer()}"
        target = f"{path}?{q}" if q else path
        lines = [f"{verb} {target} HTTP/1.1", f"Host: {self.netloc}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")

    def _body_to_fd(self, r: Response, offset: int, length: int, fd: int, fd_offset: int) -> int:
        size = range_size(r, offset, length)
        have = r.got - r.start
        if have > size:
            raise ProtocolError(f"more than the {size} bytes of Content-Length")
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


class _Found(Exception):
    """A 2xx head came: the blob exists (raised by `exists`' check, before the body)."""


def _found(r: Response) -> None:
    raise _Found


def block_id_b64(block_id: str) -> str:
    """A block id as the service takes it: base64 of its UTF-8 (the SDK's encode_base64)."""
    return base64.b64encode(block_id.encode("utf-8")).decode()


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """A local write: its OSError (ENOSPC, EIO...) is the disk's, not the network's, so it
    leaves as LocalIOError, which `_call` neither retries nor counts as a broken connection."""
    pos = 0
    try:
        while pos < len(view):
            pos += os.pwrite(fd, view[pos:], offset + pos)
    except OSError as e:
        raise LocalIOError.for_fd(e, fd) from None
