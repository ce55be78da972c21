"""Lean ranged reads for Azure Files and ADLS Gen2: the Blob lean client (blobget.py) serves them.

Get File (Azure Files) and an ADLS Gen2 read (a Get Blob on the account's Blob endpoint, which
is what the datalake SDK sends) are the same request as a Blob ranged read: `GET /<share or
filesystem>/<path>` with `x-ms-range`, signed with the same SharedKey string-to-sign, or a SAS,
or a bearer token. Through the SDK they cost ~1.7-2.2 client CPU-s per GiB and ~2 ms per
request; through http.py the same framing checks as Blob's (a 206 answering exactly the range
asked for, lengths that add up) and bodies received straight into the caller's buffer or file.

What differs per service is kept here, as a mixin placed before SdkReads:
- Azure Files has no If-Match on Get File: the ETag of the response is compared with the pinned
  one (Changed), as the SDK path does; a directory is 409 ResourceTypeMismatch (IsADirectory).
- ADLS Gen2 reads send If-Match (412: Changed); a directory answers with `hdi_isfolder=true`
  metadata (IsADirectory).
- A read at or past the end (416) goes to the SDK path, which checks the pin with a HEAD.
Everything else (listings, stat, writes) stays on the SDK.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .azure import is_folder, quoted_etag
from .base import Abort, normpath
from .blobget import BlobFastPath, HttpStatusError
from .errors import Aborted, BackendError, Changed, IsADirectory
from .failures import error_code
from .http import DEFAULT_RETRIES
from .httpframe import Response

log = logging.getLogger(__name__)

Check = Callable[[Response], None]


def lean_client(
    url: str,
    root: str,
    credential: Any,
    *,
    api_version: str,
    timeout: float,
    retry_total: int | None,
    retry_backoff: float,
    extra_headers: dict[str, str] | None = None,
    description: str = "",
) -> BlobFastPath | None:
    """A lean GET client for `/<root>/...` at `url`, or None (the SDK reads) when an HTTP proxy
    applies that it cannot tunnel through. A malformed account key raises binascii.Error (the
    caller reports it in one line)."""
    try:
        return BlobFastPath(
            url,
            root,
            credential,
            timeout=timeout,
            retry_total=DEFAULT_RETRIES if retry_total is None else retry_total,
            retry_backoff=retry_backoff,
            api_version=api_version,
            extra_headers=extra_headers,
        )
    except binascii.Error:
        raise
    except ValueError as e:
        log.info("%s: reads go through the SDK: %s", description, e)
        return None


def blob_endpoint(dfs_url: str) -> str:
    """The Blob endpoint of an ADLS Gen2 account URL (the datalake SDK's rule: the first
    `.dfs.` of the host becomes `.blob.`; an emulator's one address serves both)."""
    parts = urlsplit(dfs_url)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(".dfs.", ".blob.", 1)))


class LeanReads:
    """read_range / read_range_into / read_range_to_fd through `self._lean` when set (else the
    next class: SdkReads). A subclass says how a response answers a pinned read (`_pin`)."""

    _lean: BlobFastPath | None = None
    description: str

    # provided by AzureBackend / SdkReads
    _map_error: Callable[[BaseException, str], BackendError]
    _read: Callable[..., bytes]

    def _pin(self, rel: str, etag: str | None) -> tuple[str | None, Check | None]:
        """The If-Match value to send and the check of a 2xx head, for a read of `rel` pinned
        to `etag` (None: unpinned)."""
        raise NotImplementedError

    def _lean_error(self, e: BaseException, rel: str) -> BackendError:
        return self._map_error(e, rel)

    def _lean_read(
        self, path: str, length: int, offset: int, etag: str | None, fn: Callable[..., int]
    ) -> int:
        """Run `fn(rel, if_match, check)`; a 416 (at or past the end) is answered by the SDK path
        (an empty read, or the pin's failure)."""
        rel = normpath(path)
        if length <= 0:
            return 0
        if_match, check = self._pin(rel, etag)
        try:
            return fn(rel, if_match, check)
        except HttpStatusError as e:
            if e.status_code == 416:
                return len(self._read(rel, offset, length, etag, {}))
            raise self._lean_error(e, rel) from None
        except Aborted:
            raise Aborted(f"reading {rel!r} was cancelled", rel) from None
        except BackendError:
            raise
        except Exception as e:
            raise self._lean_error(e, rel) from None

    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        fast = self._lean
        if fast is None:
            return super().read_range(path, offset, length, etag)  # type: ignore[misc]
        buf = bytearray(max(length, 0))
        n = self.read_range_into(path, offset, memoryview(buf), etag)
        return bytes(buf) if n == len(buf) else bytes(buf[:n])

    def read_range_into(
        self,
        path: str,
        offset: int,
        buf: memoryview,
        etag: str | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        abort: Abort | None = None,
    ) -> int:
        """Streams into `buf`: `progress` as the body arrives, and `abort` shuts the connection
        down (see Backend.read_range_into)."""
        fast = self._lean
        if fast is None:
            return super().read_range_into(  # type: ignore[misc]
                path, offset, buf, etag, progress=progress, abort=abort
            )
        return self._lean_read(
            path,
            len(buf),
            offset,
            etag,
            lambda rel, im, ck: fast.read_into(
                rel, offset, buf, im, progress=progress, abort=abort, check=ck
            ),
        )

    def read_range_to_fd(
        self,
        path: str,
        offset: int,
        length: int,
        fd: int,
        fd_offset: int,
        etag: str | None = None,
    ) -> int:
        fast = self._lean
        if fast is None:
            return super().read_range_to_fd(  # type: ignore[misc]
                path, offset, length, fd, fd_offset, etag
            )
        return self._lean_read(
            path,
            length,
            offset,
            etag,
            lambda rel, im, ck: fast.read_to_fd(rel, offset, length, fd, fd_offset, im, ck),
        )

    def _close_lean(self) -> None:
        if self._lean is not None:
            self._lean.close()


class ShareLeanReads(LeanReads):
    """Azure Files: no If-Match; the response's ETag must be the pinned one."""

    def _pin(self, rel: str, etag: str | None) -> tuple[str | None, Check | None]:
        want = quoted_etag(etag)
        if not want:
            return None, None
        description = self.description

        def check(r: Response) -> None:
            if quoted_etag(r.fields.get("etag")) != want:
                raise Changed(f"{rel!r} in {description} changed since it was opened", rel)

        return None, check

    def _lean_error(self, e: BaseException, rel: str) -> BackendError:
        if isinstance(e, HttpStatusError) and error_code(e) == "ResourceTypeMismatch":
            return IsADirectory(f"{rel!r} in {self.description} is a directory", rel)
        return self._map_error(e, rel)


class AdlsLeanReads(LeanReads):
    """ADLS Gen2 (its Blob endpoint): If-Match; a directory carries hdi_isfolder metadata."""

    def _pin(self, rel: str, etag: str | None) -> tuple[str | None, Check | None]:
        description = self.description

        def check(r: Response) -> None:
            meta = {k[10:]: v for k, v in r.fields.items() if k.startswith("x-ms-meta-")}
            if meta and is_folder(meta):
                raise IsADirectory(f"{rel!r} in {description} is a directory", rel)

        return (quoted_etag(etag) if etag else None), check
