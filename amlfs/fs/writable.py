"""The request handlers of a writable mount (`amlfs mount --rw`): the read-only Operations plus
create/write/flush/fsync/release of files being written (writes.py), mkdir/rmdir/unlink/rename
and setattr, all through the backend's Writer (backends/writers.py).

Names: every name the kernel gives is checked (operations._child_path: no '/', NUL, '.', '..'),
and the Writer checks each path again, so nothing is written outside the mounted directory.

Concurrency contract: the trio thread only, like Operations. One write handle per path per mount
(`_writers`); a second open for writing of the same path gets EBUSY, other opens of it read what
the writer wrote.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as statmod
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio
from pyfuse3 import FUSEError

from ..backends.base import ObjectInfo, Writer
from ..backends.bridge import TrioBackend
from ..backends.errors import AlreadyExists, NotFound
from . import attrs
from .attrs import STATS_INODE
from .handlers import handler, refuse
from .inodes import Node
from .operations import Operations
from .partuploads import WriteContext
from .staging import StagingArea
from .writebuffer import WriteBudget
from .writes import WriteHandle

log = logging.getLogger(__name__)

_WRITE_ACCESS = os.O_WRONLY | os.O_RDWR
#: a name found missing this recently needs no second look before create
MISSING_FRESH = 1.0
RENAME_NOREPLACE = 1


@dataclass(eq=False)
class _WriterFh:
    handle: WriteHandle
    node: Node


@dataclass
class WriteConfig:
    write_buffer_bytes: int
    staging_dir: str
    staging_bytes: int
    commit_timeout: float
    unmount_timeout: float
    block_size: int


class WritableOperations(Operations):
    """Operations with the write path: see the module docstring."""

    def __init__(self, *args: Any, writer: Writer, write_config: WriteConfig, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.writer = writer
        self.wconfig = write_config
        self.commit_timeout = write_config.commit_timeout
        self.write_budget = WriteBudget(write_config.write_buffer_bytes, self.budget)
        self.staging = StagingArea(write_config.staging_dir, write_config.staging_bytes)
        self._writers: dict[str, WriteHandle] = {}
        self._wfh: dict[int, _WriterFh] = {}
        self._missing: dict[str, float] = {}
        self._ctx: WriteContext | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Host background listings and part uploads until cancelled."""
        self.staging.open()
        async with trio.open_nursery() as nursery:
            self._ctx = WriteContext(
                backend=self.backend,
                writer=self.writer,
                budget=self.write_budget,
                staging=self.staging,
                nursery=nursery,
                block_size=self.wconfig.block_size,
                request_timeout=self.request_timeout,
                count=self.stats.incr,
            )
            await nursery.start(self.listings.run)
            task_status.started()

    async def drain(self) -> list[str]:
        """At unmount: commit every file still open for writing, within the unmount timeout;
        the paths that could not be committed (each logged)."""
        lost: list[str] = []
        handles = list(self._writers.values())
        if handles:
            log.info("unmounting: committing %d file(s) still open for writing", len(handles))
        with trio.move_on_after(self.wconfig.unmount_timeout) as scope:
            for h in handles:
                try:
                    await h.commit()
                except Exception as e:
                    log.error("%r was not committed at unmount: %s", h.path, e)
                    lost.append(h.path)
        if scope.cancelled_caught:
            pending = [h.path for h in handles if h.dirty and h.path not in lost]
            for path in pending:
                log.error(
                    "%r was not committed: the unmount timeout (%.0f s) passed",
                    path,
                    self.wconfig.unmount_timeout,
                )
            lost += pending
        for h in handles:
            await h.close()
        self._writers.clear()
        self._wfh.clear()
        self.staging.close()
        return lost

    # --- attributes ------------------------------------------------------------------------------

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        h = self._writers.get(node.path)
        size = h.size if h is not None and not node.info.is_dir else None
        return attrs.entry(
            node,
            self.timeouts.attr,
            self.config.uid,
            self.config.gid,
            self._mount_time_ns,
            writable=True,
            size=size,
        )

    async def _refresh(self, node: Node, *, opening: bool = False) -> Node:
        if node.path in self._writers and self.table.by_path(node.path) is node:
            return node  # the writer knows best; the storage may not have it yet
        return await super()._refresh(node, opening=opening)

    @handler("lookup")
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent = self.table.get(parent_inode)
        if parent is not None and name not in (b".", b".."):
            path = self._child_path(parent, name)
            h = self._writers.get(path)
            node = self.table.by_path(path)
            if h is not None and node is not None:
                node.lookups += 1
                return self.attributes(node)
        a = await Operations.lookup.__wrapped__(self, parent_inode, name, ctx)  # type: ignore[attr-defined]
        if a.st_ino == 0 and parent is not None:
            self._note_missing(self._child_path(parent, name))
        return a

    def _note_missing(self, path: str) -> None:
        if len(self._missing) > 10_000:
            self._missing.clear()
        self._missing[path] = self.table.clock()

    @handler("statfs")
    async def statfs(self, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = attrs.BLKSIZE
        s.f_frsize = 4096
        # Remote storage has no meaningful capacity: a large figure that tools checking for
        # room before writing accept.
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 40
        s.f_files = len(self.table)
        s.f_ffree = s.f_favail = 1 << 32
        s.f_namemax = 255
        return s

    # --- files -----------------------------------------------------------------------------------

    def _context(self) -> WriteContext:
        if self._ctx is None:
            raise FUSEError(errno.EIO)  # run() has not started: the mount is not serving
        return self._ctx

    def _new_writer(self, node: Node, existing: ObjectInfo | None, truncate: bool) -> int:
        if node.path in self._writers:
            raise FUSEError(errno.EBUSY)
        h = WriteHandle(self._context(), node.path, existing=existing, truncate=truncate)
        self._writers[node.path] = h
        fh = self._fh()
        self._wfh[fh] = _WriterFh(h, node)
        self.stats.incr("files_opened_for_writing")
        return fh

    @handler("create")
    async def create(
        self,
        parent_inode: int,
        name: bytes,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext | None = None,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self._node(parent_inode)
        if not statmod.S_ISREG(mode) and statmod.S_IFMT(mode):
            raise FUSEError(errno.EPERM)
        path = self._child_path(parent, name)
        if parent is self.table.root and name == b".__amlfs_stats__":
            raise FUSEError(errno.EEXIST)
        if path in self._writers:
            raise FUSEError(errno.EBUSY)
        existing: ObjectInfo | None = None
        seen = self._missing.pop(path, None)
        if seen is None or self.table.clock() - seen > MISSING_FRESH:
            try:
                existing = await self._stat(path)
            except NotFound:
                existing = None
        if existing is not None:
            if existing.is_dir:
                raise FUSEError(errno.EISDIR)
            if flags & os.O_EXCL:
                raise FUSEError(errno.EEXIST)
            node = self.table.update(existing)
            fh = self._new_writer(node, existing, truncate=bool(flags & os.O_TRUNC))
        else:
            info = ObjectInfo(path, False, 0, None, time.time())
            node = self.table.update(info)
            self.table.set_info(node, info)
            fh = self._new_writer(node, None, truncate=True)
        node.lookups += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=False), self.attributes(node)

    @handler("open")
    async def open(
        self, inode: int, flags: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.FileInfo:
        if inode == STATS_INODE or not flags & _WRITE_ACCESS:
            node = self.table.get(inode)
            h = self._writers.get(node.path) if node is not None else None
            if h is None:
                return await Operations.open.__wrapped__(self, inode, flags, ctx)  # type: ignore[attr-defined]
            # A reader of a file this mount is writing reads what the writer wrote.
            h.opens += 1
            fh = self._fh()
            self._wfh[fh] = _WriterFh(h, node)
            return pyfuse3.FileInfo(fh=fh, keep_cache=False)
        node = await self._refresh(self._node(inode), opening=True)
        if node.info.is_dir:
            raise FUSEError(errno.EISDIR)
        fh = self._new_writer(node, node.info, truncate=bool(flags & os.O_TRUNC))
        return pyfuse3.FileInfo(fh=fh, keep_cache=False)

    @handler("read")
    async def read(self, fh: int, off: int, size: int) -> bytes:
        w = self._wfh.get(fh)
        if w is None:
            return await Operations.read.__wrapped__(self, fh, off, size)  # type: ignore[attr-defined]
        data = await w.handle.read(off, size)
        self.stats.incr("bytes_read", len(data))
        return data

    @handler("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        w = self._wfh.get(fh)
        if w is None:
            raise FUSEError(errno.EBADF)
        return await w.handle.write(off, buf)

    async def _commit(self, w: _WriterFh) -> None:
        info = await w.handle.commit()
        if info is not None:
            self.table.set_info(w.node, info)
            self.stats.incr("files_committed")

    @handler("flush", bound="commit_timeout")
    async def flush(self, fh: int) -> None:
        w = self._wfh.get(fh)
        if w is not None:
            await self._commit(w)

    @handler("fsync", bound="commit_timeout")
    async def fsync(self, fh: int, datasync: bool) -> None:
        w = self._wfh.get(fh)
        if w is not None:
            await self._commit(w)

    @handler("release", bound="commit_timeout")
    async def release(self, fh: int) -> None:
        w = self._wfh.pop(fh, None)
        if w is None:
            await Operations.release.__wrapped__(self, fh)  # type: ignore[attr-defined]
            return
        h = w.handle
        h.opens -= 1
        if h.opens > 0:
            return
        try:
            if h.dirty and h.failed is None:
                await self._commit(w)  # flush normally did it; this is the last chance
        except Exception as e:
            log.error("%r was not committed when its last handle was released: %s", h.path, e)
        finally:
            if self._writers.get(h.path) is h:
                del self._writers[h.path]
                if h.etag is None:  # a new file that was never committed: it is not there
                    self._forget_path(h.path)
            await h.close()

    # --- attributes that change ------------------------------------------------------------------

    @handler("setattr", bound="commit_timeout")
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext | None = None,
    ) -> pyfuse3.EntryAttributes:
        node = self._node(inode)
        if inode == STATS_INODE:
            raise FUSEError(errno.EPERM)
        if fields.update_size:
            if node.info.is_dir:
                raise FUSEError(errno.EISDIR)
            w = self._wfh.get(fh) if fh is not None else None
            h = w.handle if w is not None else self._writers.get(node.path)
            if h is not None:
                await h.truncate(attr.st_size)
            else:
                await self._truncate_closed(node, attr.st_size)
        # chmod, chown, utimes: accepted and not stored (SEMANTICS.md): modes are fixed, owner
        # is the daemon's user, and times are the storage's.
        return self.attributes(node)

    async def _truncate_closed(self, node: Node, size: int) -> None:
        node = await self._refresh(node, opening=True)
        fh = self._new_writer(node, node.info, truncate=size == 0)
        w = self._wfh[fh]
        try:
            await w.handle.truncate(size)
            await self._commit(w)
        finally:
            del self._wfh[fh]
            self._writers.pop(node.path, None)
            await w.handle.close()

    # --- names -----------------------------------------------------------------------------------

    async def _writing(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._retrying("write", self.backend.call, fn, *args)

    @handler("mkdir")
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        path = self._child_path(parent, name)
        try:
            info = await self._writing(self.writer.mkdir, path)
        except AlreadyExists:
            raise FUSEError(errno.EEXIST) from None
        node = self.table.update(info)
        self.table.set_info(node, info)
        self.table.store_listing(path, [], self.table.clock())  # new: empty, known
        node.lookups += 1
        return self.attributes(node)

    @handler("rmdir")
    async def rmdir(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> None:
        parent = self._node(parent_inode)
        path = self._child_path(parent, name)
        if any(p.startswith(path + "/") for p in self._writers):
            raise FUSEError(errno.ENOTEMPTY)
        await self._writing(self.writer.rmdir, path)
        self._forget_path(path)

    @handler("unlink")
    async def unlink(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext | None = None
    ) -> None:
        parent = self._node(parent_inode)
        path = self._child_path(parent, name)
        h = self._writers.get(path)
        if h is not None:
            h.unlinked = True  # an open file unlinked: its data is never committed
            del self._writers[path]
        try:
            await self._writing(self.writer.unlink, path)
        except NotFound:
            if h is None:
                raise
        self._forget_path(path)

    def _forget_path(self, path: str) -> None:
        node = self.table.by_path(path)
        if node is not None:
            self.table.drop(node)
        self.table.drop_listing(path)
        self.table.patch_listing(path, None)

    @handler("rename")
    async def rename(
        self,
        parent_old: int,
        name_old: bytes,
        parent_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext | None = None,
    ) -> None:
        src = self._child_path(self._node(parent_old), name_old)
        dst = self._child_path(self._node(parent_new), name_new)
        if flags & ~RENAME_NOREPLACE:
            raise FUSEError(errno.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT
        if src in self._writers or dst in self._writers:
            raise FUSEError(errno.EBUSY)  # commit (close) a file before renaming it
        info = await self._stat(src)
        if info.is_dir and not self.writer.renames_directories:
            raise FUSEError(errno.EXDEV)  # flat Blob: `mv` then copies and deletes
        try:
            target: ObjectInfo | None = await self._stat(dst)
        except NotFound:
            target = None
        if target is not None:
            if flags & RENAME_NOREPLACE:
                raise FUSEError(errno.EEXIST)
            if target.is_dir and not info.is_dir:
                raise FUSEError(errno.EISDIR)
            if info.is_dir and not target.is_dir:
                raise FUSEError(errno.ENOTDIR)
        new = await self._writing(self.writer.rename, info, dst)
        node = self.table.by_path(src)
        if node is not None:
            old_dst = self.table.by_path(dst)
            if old_dst is not None and old_dst is not node:
                self.table.drop(old_dst)
            self.table.move(node, new)
        else:
            self._forget_path(src)
            self.table.patch_listing(dst, new)
        self.stats.incr("renames")

    # --- still refused ---------------------------------------------------------------------------

    mknod = refuse("mknod", errno.EPERM)
    symlink = refuse("symlink", errno.EPERM)
    link = refuse("link", errno.EPERM)
    setxattr = refuse("setxattr", errno.ENOTSUP)
    removexattr = refuse("removexattr", errno.ENOTSUP)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["writes"] = {
            "open_for_writing": len(self._writers),
            "buffers": self.write_budget.snapshot(),
            "staging": self.staging.snapshot(),
        }
        return out


def open_writable(backend: TrioBackend) -> Writer:
    """The Writer for a mount's backend (Unsupported when it has none)."""
    from ..backends.writers import writer_for

    return writer_for(backend.sync)
