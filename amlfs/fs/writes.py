"""One file being written through a writable mount: `WriteHandle` (its memory: writebuffer.py;
its parts in flight: partuploads.py).

A handle streams while the writer writes sequentially (from the start of a new or truncated
file, or from the end of an existing one: append): whole blocks are staged as parts of an
upload (Put Block) in the background while the writer goes on, each buffer counted in the write
budget until the thread sending it has let go of it. Everything written is also kept in a local
staging file while the staging budget allows ("the tee"), so that the writer can read back what
it wrote and, at the first out-of-order write or truncate, the handle can switch to *staged*
mode: the staging file becomes the file (the kept remote content downloaded into it), and the
whole file is uploaded from it at the next commit. When the tee could not be kept (the staging
budget was full) such a write fails with ENOSPC.

Commits (flush on close, fsync, release, unmount) wait for the parts in flight and commit them
conditionally (base.Upload): the real result goes back to close()/fsync().

Concurrency contract: the trio thread only. A handle's methods may interleave at their awaits
(the kernel may send two writes of one file at once); `_lock` serialises every operation of one
handle, so the state seen between two awaits of one operation is its own.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import random
from collections.abc import Callable
from typing import Any

import trio
from pyfuse3 import FUSEError

from ..backends.base import ObjectInfo, Upload
from ..backends.errors import BackendError, Changed, NotFound, Transient
from .partuploads import BACKOFF_BASE, BACKOFF_MAX, PARTS_IN_FLIGHT, PartUploads, WriteContext
from .staging import StagingFile
from .writebuffer import PartBuffer

log = logging.getLogger(__name__)


class WriteHandle(PartUploads):
    """One file open for writing (one per path per mount)."""

    def __init__(
        self,
        ctx: WriteContext,
        path: str,
        *,
        existing: ObjectInfo | None,
        truncate: bool,
    ):
        self.ctx = ctx
        self.path = path
        self.etag = existing.etag if existing is not None else None  # what commits replace
        kept = 0 if existing is None or truncate else existing.size
        self.kept_end = kept  # [0, kept_end) is the remote content as opened
        self.keep = existing if kept else None
        self.size = kept
        self.dirty = existing is None or truncate
        self.staged = False  # staged mode: the staging file is the whole file
        self.failed: BackendError | None = None
        self.unlinked = False
        self.opens = 1  # file handles sharing this write handle
        self._lock = trio.Lock()
        # stream mode
        self._buf = PartBuffer()
        self._hashed: trio.Event | None = None  # set once the last part shipped is hashed
        self._upload: Upload | None = None
        self._parts: list[int] = []
        self._next_part = 0
        self._shipped_end = kept  # bytes handed to the upload (in flight or staged)
        self._md5: Any = hashlib.md5() if kept == 0 else None
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._error: BackendError | None = None
        self._unreleased: dict[int, int] = {}
        self._released = trio.Event()
        self._discarding: set[int] = set()
        # the tee (and, staged, the file itself): valid from tee_from (0 once staged)
        self.tee: StagingFile | None = None
        self.tee_from = kept
        try:
            self.tee = ctx.staging.create(path)
        except FUSEError:
            self.tee = None

    # --- writing ---------------------------------------------------------------------------------

    async def write(self, off: int, data: bytes) -> int:
        async with self._lock:
            self._check()
            if not self.staged and off == self.size:
                await self._append(data)
            else:
                await self._to_staged()
                assert self.tee is not None
                self.tee.pwrite(data, off)
                self.size = max(self.size, off + len(data))
            self.dirty = True
            return len(data)

    async def truncate(self, size: int) -> None:
        async with self._lock:
            self._check()
            if size == self.size:
                return
            if size == 0 and not self.staged:
                await self._restart_empty()
            else:
                await self._to_staged()
                assert self.tee is not None
                self.tee.truncate(size)
                self.size = size
            self.dirty = True

    def _check(self) -> None:
        if self.failed is not None:
            raise FUSEError(self.failed.errno)

    async def _append(self, data: bytes) -> None:
        if self.tee is not None:
            try:
                self.tee.pwrite(data, self.size)
            except FUSEError as e:
                self._drop_tee(e)
        n = len(data)
        await self.ctx.budget.take(n)
        self._buf.add(data)
        self.size += n
        block = self.ctx.block_size
        while len(self._buf) >= block:
            await self._ship(block)

    def _drop_tee(self, e: FUSEError) -> None:
        assert self.tee is not None
        log.info(
            "%r: the staging budget is full: its data is no longer kept locally (%s)",
            self.path,
            errno.errorcode.get(e.errno, e.errno),
        )
        self.tee.close()
        self.tee = None

    async def _restart_empty(self) -> None:
        """O_TRUNC (or truncate to 0) while streaming: start over, nothing kept."""
        await self._wait_idle()
        self.ctx.budget.give(self._buf.clear())
        self._hashed = None
        if self._upload is not None:
            self._discard(self._upload)
            self._upload = None
        self._parts = []
        self.keep = None
        self.kept_end = self.size = self._shipped_end = 0
        self._md5 = hashlib.md5()
        if self.tee is None:
            try:
                self.tee = self.ctx.staging.create(self.path)
            except FUSEError:
                self.tee = None
        else:
            self.tee.truncate(0)
        self.tee_from = 0

    # --- out of order: the staging file becomes the file --------------------------------------

    async def _to_staged(self) -> None:
        if self.staged:
            return
        if self.tee is None:
            log.warning(
                "%r: an out-of-order write or truncate needs the staging file, and the staging"
                " budget is full: ENOSPC",
                self.path,
            )
            raise FUSEError(errno.ENOSPC)
        tee = self.tee
        if self.tee_from > 0:
            # The remote content as opened (or as last committed) fills the start.
            tee.reserve(self.tee_from)
            await self._retrying(
                "read",
                lambda: self.ctx.backend.call(
                    self.ctx.backend.sync.read_range_to_fd,
                    self.path,
                    0,
                    self.tee_from,
                    tee.fd,
                    0,
                    self.etag,
                ),
            )
            self.tee_from = 0
        await self._wait_idle()
        self.ctx.budget.give(self._buf.clear())
        self._hashed = None
        if self._upload is not None:
            self._discard(self._upload)  # parts staged so far are never committed
            self._upload = None
        self._parts = []
        self._md5 = None
        self._error = None
        self.staged = True

    # --- reading back ----------------------------------------------------------------------------

    async def read(self, off: int, size: int) -> bytes:
        async with self._lock:
            end = min(self.size, off + size)
            if off >= end:
                return b""
            out = b""
            if off < self.tee_from:
                upto = min(end, self.tee_from)
                out = await self._retrying(
                    "read",
                    lambda: self.ctx.backend.read_range(self.path, off, upto - off, self.etag),
                )
                off += len(out)
            if off < end:
                if self.tee is None:
                    log.warning("%r: its data is not kept locally (staging full): EIO", self.path)
                    raise FUSEError(errno.EIO)
                out += self.tee.pread(off, end - off)
            return out

    # --- committing ------------------------------------------------------------------------------

    async def commit(self) -> ObjectInfo | None:
        """Commit what was written, if anything changed; the new object (None if unchanged).
        Raises BackendError with the real reason when the upload failed."""
        async with self._lock:
            if self.failed is not None:
                raise self.failed
            if not self.dirty or self.unlinked:
                return None
            try:
                info = await self._commit()
            except BackendError as e:
                self.failed = e
                log.warning("%r was not committed: %s", self.path, e)
                raise
            self.dirty = False
            self.etag = info.etag
            return info

    async def _commit(self) -> ObjectInfo:
        if self.staged:
            return await self._commit_staged()
        if self._upload is None and self.keep is None and self._md5 is not None:
            return await self._put_whole()
        if len(self._buf) or self._upload is None:
            if len(self._buf):
                await self._ship(len(self._buf))
            elif self._upload is None:
                self._upload = await self._open_upload(self.keep)
        await self._wait_idle()
        if self._error is not None:
            raise self._error
        upload = self._upload
        assert upload is not None
        md5 = self._md5.digest() if self._md5 is not None else None
        info = await self._commit_upload(upload, list(self._parts), md5)
        self._parts = []
        return info

    async def _put_whole(self) -> ObjectInfo:
        """A file that fits one block and was never shipped: one request (Blob: Put Blob).
        Later writes after this commit go to an upload keeping what it made."""
        data = self._buf.take(len(self._buf))
        assert self._md5 is not None
        self._md5.update(data)
        md5 = self._md5.digest()
        upload = await self._open_upload(None)
        info = await self._retrying_commit(
            lambda: self.ctx.backend.call(upload.put, data, md5), md5
        )
        self.ctx.budget.give(len(data))
        self._upload = upload
        self._shipped_end = self.size
        self.ctx.count("bytes_written", len(data))
        return info

    async def _commit_upload(
        self, upload: Upload, parts: list[int], md5: bytes | None
    ) -> ObjectInfo:
        return await self._retrying_commit(
            lambda: self.ctx.backend.call(upload.commit, parts, self.size, md5), md5
        )

    async def _retrying_commit(self, fn: Callable[[], Any], md5: bytes | None) -> ObjectInfo:
        """A commit, retried after transient failures; a retry refused as a conflict may be
        the earlier try having been applied: the object is then checked (size and MD5)."""
        size = self.size
        tries = 0
        while True:
            try:
                return await fn()
            except Transient as e:
                tries += 1
                delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**tries) * random.uniform(0.5, 1.0)
                log.debug("commit %r: %s; retrying in %.2f s", self.path, e, delay)
                await trio.sleep(delay)
            except Changed:
                if tries == 0:
                    raise
                # An earlier try may have been applied before its answer was lost.
                try:
                    now = await self.ctx.backend.stat(self.path)
                except NotFound:
                    raise Changed(f"{self.path!r} changed remotely", self.path) from None
                if now.size == size and md5 is not None and now.content_md5 == md5:
                    return now
                raise

    async def _commit_staged(self) -> ObjectInfo:
        tee = self.tee
        assert tee is not None
        upload = await self._open_upload(None)
        block = self.ctx.block_size
        md5 = hashlib.md5()
        parts: list[int] = []
        self._error = None
        try:
            for i, off in enumerate(range(0, self.size, block)):
                n = min(block, self.size - off)
                while self._inflight >= PARTS_IN_FLIGHT:
                    await self._idle_one()
                await self.ctx.budget.take(n)  # given back by _stage_part
                data = await trio.to_thread.run_sync(_read_hashed, tee, off, n, md5)
                parts.append(i)
                self._start_part(upload, i, off, data)
            await self._wait_idle()
            if self._error is not None:
                raise self._error
            return await self._commit_upload(upload, parts, md5.digest())
        finally:
            # Committed, failed, or cancelled (the commit timeout): each upload of the staging
            # file is a new one, never used again.
            self._discard(upload)

    # --- closing ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Let go of everything (after the last commit, or giving up on it)."""
        with trio.CancelScope(shield=True):
            with trio.move_on_after(self.ctx.request_timeout):
                await self._wait_idle()
        self.ctx.budget.give(self._buf.clear())
        self._hashed = None
        if self._upload is not None:
            self._discard(self._upload)  # once its parts still in flight have ended
        self._upload = None
        if self.tee is not None:
            self.tee.close()
            self.tee = None


def _read_hashed(tee: StagingFile, off: int, n: int, md5: Any) -> bytes:
    """`n` bytes of the staging file at `off` (zeros past a sparse end), hashed (in a thread)."""
    data = tee.pread(off, n)
    if len(data) < n:
        data += bytes(n - len(data))
    md5.update(data)
    return data
