"""The file objects `AmlfsFileSystem.open` returns: reads pinned to the ETag seen at open, through
a BlockReader with read-ahead; writes spooled locally and uploaded whole on close.

A write is never visible in part: the bytes go to a spool (memory up to `SPOOL_MEMORY`, then a
temporary file), and only `close()` (or the end of a `with` block that raised nothing, or the
commit of an fsspec transaction) hands them to the backend's upload, which for Blob stages
blocks and commits them in one request. A file left by an exception, or dropped without close,
is discarded: nothing is uploaded.
"""

from __future__ import annotations

import errno
import io
import logging
import tempfile
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractBufferedFile

from ..backends.base import Abort, Backend
from ..backends.errors import BackendError
from .blocks import BlockReader
from .errors import os_error

if TYPE_CHECKING:
    from .filesystem import AzureMLFileSystem

log = logging.getLogger(__name__)

#: a written file is kept in memory up to this size, then in a temporary file
SPOOL_MEMORY = 16 << 20


class RemoteReadFile(AbstractBufferedFile):
    """A read-only remote file; `details` hold the size and ETag every read is pinned to."""

    def __init__(
        self,
        fs: AzureMLFileSystem,
        path: str,
        backend: Backend,
        rel: str,
        details: dict[str, Any],
        block_size: int,
        readahead: int,
    ):
        super().__init__(
            fs, path, "rb", block_size=block_size, cache_type="none", size=details["size"]
        )
        self.details = details
        self.backend = backend
        self.rel = rel
        self.etag = details.get("etag")
        self.cache = BlockReader(
            self._fetch_into,
            self.size,
            block_size,
            fs.submit,
            max_readahead=readahead,
            name=path,
        )

    def _fetch_into(self, offset: int, buf: memoryview, abort: Abort) -> int:
        try:
            return self.backend.read_range_into(self.rel, offset, buf, self.etag, abort=abort)
        except BackendError as e:
            raise os_error(e, self.path) from None

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self.cache._fetch(start, end)

    def read_buffer(self, length: int = -1) -> bytes | bytearray:
        """`read`, returned as a bytearray that pyarrow wraps without copying (its PythonFile
        prefers `read_buffer` to `read`); bytes missing from the cache are received straight
        into it."""
        if self.closed:
            raise ValueError("I/O operation on closed file.")
        length = self.size - self.loc if length is None or length < 0 else int(length)
        out = self.cache.read_buffer(self.loc, self.loc + length)
        self.loc += len(out)
        return out


class RemoteWriteFile(AbstractBufferedFile):
    """A file being written ('wb', or 'xb': fails if the file exists, at open and at commit)."""

    def __init__(
        self,
        fs: AzureMLFileSystem,
        path: str,
        backend: Backend,
        rel: str,
        mode: str,
        block_size: int,
        autocommit: bool = True,
    ):
        super().__init__(fs, path, mode, block_size=block_size, autocommit=autocommit)
        self.backend = backend
        self.rel = rel
        self.spool: Any = tempfile.SpooledTemporaryFile(SPOOL_MEMORY, prefix="amlfs-put-")
        self.committed = False

    def _initiate_upload(self) -> None:
        pass

    def _upload_chunk(self, final: bool = False) -> bool:
        self.spool.write(self.buffer.getbuffer())
        if final and self.autocommit:
            self.commit()
        return True

    def commit(self) -> None:
        """Upload the whole file (autocommit: at close; in a transaction: at its end)."""
        if self.spool is None:
            raise ValueError(f"{self.path}: already committed or discarded")
        spool, self.spool = self.spool, None
        try:
            length = spool.tell()
            spool.seek(0)
            try:
                self.backend.write_stream(self.rel, spool, length, overwrite=self.mode != "xb")
            except BackendError as e:
                raise os_error(e, self.path) from None
        finally:
            spool.close()
        self.committed = True
        self.fs.invalidate_cache(self.path)

    def discard(self) -> None:
        """Drop what was written: nothing reaches the datastore."""
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def __exit__(self, exc_type: Any, *args: Any) -> None:
        if exc_type is not None:
            self.discard()
            self.closed = True
            return
        self.close()

    def __del__(self) -> None:
        # Dropped without close: discard, never commit a file its writer did not finish.
        if not self.closed:
            log.warning(
                "%s: a file open for writing was dropped without close: discarded", self.path
            )
            self.discard()
            self.closed = True

    def seek(self, loc: int, whence: int = 0) -> int:
        if (whence, loc) in ((0, self.loc), (1, 0)):
            return self.loc
        raise OSError(errno.ESPIPE, f"{self.path}: a file being written cannot seek")


class TextWriteFile(io.TextIOWrapper):
    """Text mode over a RemoteWriteFile: leaving a `with` block by an exception discards."""

    def __exit__(self, exc_type: Any, *args: Any) -> None:
        raw = self.buffer
        if exc_type is not None and isinstance(raw, RemoteWriteFile) and not raw.closed:
            raw.discard()
            raw.closed = True  # TextIOWrapper.close() then has nothing to flush or commit
            return
        super().__exit__(exc_type, *args)
