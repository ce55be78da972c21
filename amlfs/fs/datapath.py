"""The mount's read path: per-handle readers over one shared block cache, with read-ahead.

`DataPath` owns the cache, the fetch tasks and their priorities; `FileReader` is one open file
handle. Every backend read runs as a task in `DataPath.run`'s nursery, so a fetch outlives the
read that started it and can be shared: it is cancelled only when nobody (no waiting reader, no
handle that asked for it ahead) wants it any more.

Priority: fetches a reader waits for take a slot of `max_inflight` directly; prefetches must
first get a slot of a smaller limiter that leaves `DEMAND_RESERVE` slots to readers, and
small-file prefetches a slot of a smaller one still. A reader that needs a prefetch still queued
promotes it to demand priority.

Every fetch carries the ETag pinned at open (If-Match), so a handle sees one version of the file
or gets `Changed` (ESTALE), never a mix.

Random-mode ranges are cached like blocks, as extents of their own size: they cost the budget
only what was fetched, a re-read of the same record (a second epoch, another handle) is a hit,
and the kernel's split of one record read (up to 1 MiB) into several requests is one GET.

Memory: cached plus in-flight bytes stay within `cache_bytes`, except that a read's own fetch
(at most the rest of one block plus the request, or one random-mode range) may overshoot.
All of this runs on the trio thread; nothing here is thread-safe.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import trio

from ..backends.base import BackendError, Changed, IsADirectory, ObjectInfo, Transient, TrioBackend
from .blockcache import BlockCache, Buffer, Extent
from .readahead import ReadAhead
from .stats import Stats

log = logging.getLogger(__name__)

DEMAND_RESERVE = 2  # concurrency slots that prefetch may never take
BACKOFF_BASE = 0.1
BACKOFF_MAX = 4.0


@dataclass
class DataPathConfig:
    block_size: int = 8 * 1024 * 1024
    cache_bytes: int = 1024 * 1024 * 1024  # global byte budget for cached + in-flight blocks
    initial_window: int = 1 * 1024 * 1024  # first read-ahead request size (about mountpoint-s3's)
    max_window: int = 128 * 1024 * 1024  # read-ahead cap, further bounded by cache_bytes // 4
    read_timeout: float = 60.0  # a read never waits longer: then BackendError(EIO) "timed out"
    max_inflight: int = 16  # concurrent backend reads issued by the data path
    small_file_prefetch: int = 16  # how many following small files prefetch_files may fetch ahead

    def __post_init__(self) -> None:
        for name in ("block_size", "cache_bytes", "initial_window", "max_window", "max_inflight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.read_timeout <= 0:
            raise ValueError(f"read_timeout must be positive, not {self.read_timeout!r}")
        if self.small_file_prefetch < 0:
            raise ValueError("small_file_prefetch may not be negative")

    @property
    def window_cap(self) -> int:
        return max(1, min(self.max_window, self.cache_bytes // 4))


class _FilesPrefetch:
    """The owner of small-file prefetches (no handle owns them; closing one does not cancel)."""

    def __repr__(self) -> str:
        return "<small-file prefetch>"


class DataPath:
    """Reads of remote files for the FUSE mount: one cache, one set of fetch tasks."""

    def __init__(self, backend: TrioBackend, config: DataPathConfig, stats: Stats):
        self.backend = backend
        self.config = config
        self.stats = stats
        self.cache = BlockCache(config.cache_bytes, stats)
        n = config.max_inflight
        self._limiter = trio.CapacityLimiter(n)
        self._prefetch_limiter = trio.CapacityLimiter(max(1, n - DEMAND_RESERVE))
        self._files_limiter = trio.CapacityLimiter(max(1, (n - DEMAND_RESERVE) // 2))
        self._files_owner = _FilesPrefetch()
        self._files_pending = 0
        self._nursery: trio.Nursery | None = None
        self.cache.on_unpromise = self._disown

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the fetch tasks until cancelled. Start with `await nursery.start(dp.run)`."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # --- the API the FUSE layer calls ----------------------------------------------------------

    def open(self, path: str, info: ObjectInfo) -> FileReader:
        """A reader of `path` pinned to `info.etag` and `info.size`."""
        if info.is_dir:
            raise IsADirectory(f"{path!r} is a directory", path)
        return FileReader(self, path, info)

    def prefetch_files(self, infos: list[ObjectInfo]) -> None:
        """Fetch these small files whole in the background, at the lowest priority.

        Directories, large files, files cached or in flight are skipped; at most
        `small_file_prefetch` are outstanding at a time, and the budget is never overdrawn.
        """
        if self._nursery is None:
            return
        for info in infos:
            if self._files_pending >= self.config.small_file_prefetch:
                break
            if info.is_dir or info.size <= 0 or info.size > self.config.block_size:
                continue
            span = self.cache.cover(info.path, info.etag, 0, info.size)
            if len(span) != 1 or not isinstance(span[0], tuple):
                continue  # cached or in flight, wholly or in part
            if not self.cache.try_reserve(info.size):
                break
            ext = self.cache.add_pending(info.path, info.etag, 0, info.size, prefetch=True)
            ext.kind = "files"
            ext.owners.add(self._files_owner)
            self._files_pending += 1
            self._spawn(ext)

    def forget_path(self, path: str) -> None:
        """Drop the cached extents of `path` (the object changed)."""
        self.cache.forget(path)

    # --- fetch scheduling (trio thread only) ---------------------------------------------------

    def _ensure(
        self, owner: FileReader, start: int, end: int, prefetch: bool
    ) -> list[Extent] | None:
        """Extents covering [start, end) of the owner's file, starting fetches for the holes.

        Holes are split at block boundaries. With `prefetch`, reservations may be refused:
        returns None at the first refusal (what was started before it keeps going).
        """
        out: list[Extent] = []
        bs = self.config.block_size
        for item in self.cache.cover(owner.path, owner.etag, start, end):
            if isinstance(item, Extent):
                if item.pending:
                    item.owners.add(owner)
                    owner._owned.add(item)
                out.append(item)
                continue
            lo, hi = item
            while lo < hi:
                stop = min(hi, (lo // bs + 1) * bs)
                if prefetch:
                    if not self.cache.try_reserve(stop - lo):
                        owner._readahead.on_refused(lo)
                        self.stats.incr("prefetch_refused")
                        return None
                else:
                    self.cache.reserve(stop - lo)
                ext = self.cache.add_pending(owner.path, owner.etag, lo, stop, prefetch)
                ext.owners.add(owner)
                owner._owned.add(ext)
                self._spawn(ext)
                out.append(ext)
                lo = stop
        return out

    def _spawn(self, ext: Extent) -> None:
        if self._nursery is None:
            self._finish(ext, error=BackendError("the mount is shutting down", ext.path))
            return
        scope = trio.CancelScope()
        ext.scope = scope
        ext.started = False
        self._nursery.start_soon(self._fetch_task, ext, scope)

    def _promote(self, ext: Extent) -> None:
        """A reader waits for `ext`: if it still queues at prefetch priority, requeue as demand."""
        if ext.demand:
            return
        ext.demand = True
        if not ext.started and ext.scope is not None:
            self.stats.incr("prefetch_promoted")
            ext.scope.cancel()
            self._spawn(ext)

    def _release(self, ext: Extent, owner: object) -> None:
        """`owner` no longer wants `ext`: cancel its fetch if nobody else does."""
        ext.owners.discard(owner)
        if ext.pending and not ext.owners and ext.waiters == 0:
            if ext.scope is not None:
                ext.scope.cancel()
            self._finish(ext, error=BackendError("fetch cancelled", ext.path))

    def _finish(
        self,
        ext: Extent,
        data: bytes | bytearray | None = None,
        error: BackendError | None = None,
    ) -> None:
        if not ext.pending:
            return
        if ext.kind == "files":
            self._files_pending -= 1
        if error is None:
            assert data is not None
            if ext.kind != "demand":
                self.stats.incr("prefetch_bytes", len(data))
            self.cache.complete(ext, data)
            if ext.promised:
                return  # its owners keep it until they read it, close, or seek away
        else:
            if isinstance(error, Changed):
                self.cache.forget(ext.path, ext.etag, all_versions=False)
            self.cache.fail(ext, error)
        self._disown(ext)

    def _disown(self, ext: Extent) -> None:
        for owner in ext.owners:
            if isinstance(owner, FileReader):
                owner._owned.discard(ext)
        ext.owners.clear()

    async def _fetch_task(self, ext: Extent, scope: trio.CancelScope) -> None:
        limiters = [self._limiter]
        if not ext.demand:
            limiters.insert(0, self._prefetch_limiter)
            if ext.kind == "files":
                limiters.insert(0, self._files_limiter)
        held: list[trio.CapacityLimiter] = []
        try:
            with scope:
                try:
                    for lim in limiters:
                        await lim.acquire()
                        held.append(lim)
                    ext.started = True
                    data = await self._get(ext)
                finally:
                    for lim in reversed(held):
                        lim.release()
                if len(data) != ext.size:
                    raise BackendError(
                        f"{ext.path!r}: short read at {ext.start} ({len(data)} of {ext.size}"
                        " bytes): the object is smaller than when it was opened",
                        ext.path,
                    )
                if ext.scope is scope:
                    self._finish(ext, data=data)
        except BackendError as e:
            if ext.scope is scope:
                if not ext.demand:
                    log.debug("prefetch of %r [%d, %d) failed: %s", ext.path, ext.start, ext.end, e)
                self._finish(ext, error=e)
        except Exception as e:  # a bug must not take the mount down: fail this read only
            log.exception("fetch of %r [%d, %d) failed", ext.path, ext.start, ext.end)
            if ext.scope is scope:
                self._finish(
                    ext, error=BackendError(f"{ext.path!r}: internal error: {e}", ext.path)
                )
        finally:
            if ext.scope is scope and ext.pending:  # cancelled: shutdown, or nobody wants it
                self._finish(ext, error=BackendError("the read was cancelled", ext.path))

    async def _get(self, ext: Extent) -> bytearray:
        """One ranged read, retrying transient failures with jittered backoff until the timeout.

        The backend receives straight into the extent's own buffer: the bytes copy of an 8 MiB
        block (and the page faults of a second fresh allocation) cost more CPU than the rest of
        a sequential read's path, and doubled the transient memory of every fetch in flight.
        """
        timeout = self.config.read_timeout
        deadline = trio.current_time() + timeout
        last: BackendError | None = None
        attempt = 0
        with trio.move_on_at(deadline):
            while True:
                self.stats.incr("backend.read_range")
                buf = bytearray(ext.size)
                try:
                    n = await self.backend.call(
                        self.backend.sync.read_range_into,
                        ext.path,
                        ext.start,
                        memoryview(buf),
                        ext.etag,
                    )
                    return buf if n == ext.size else buf[:n]
                except Transient as e:
                    last = e
                    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt) * (
                        0.5 + random.random() / 2
                    )
                    if trio.current_time() + delay >= deadline:
                        break
                    self.stats.incr("read_retries")
                    attempt += 1
                    await trio.sleep(delay)
        why = f" (last error: {last})" if last is not None else ""
        raise BackendError(f"reading {ext.path!r} timed out after {timeout:g} s{why}", ext.path)


class FileReader:
    """One open file handle: its read-ahead state and the fetches it asked for ahead."""

    def __init__(self, datapath: DataPath, path: str, info: ObjectInfo):
        cfg = datapath.config
        self._dp = datapath
        self.path = path
        self.etag = info.etag
        self.size = info.size
        self._readahead = ReadAhead(info.size, cfg.block_size, cfg.initial_window, cfg.window_cap)
        self._owned: set[Extent] = set()  # in flight, or fetched ahead and unread, for this handle
        self.closed = False

    def __repr__(self) -> str:
        return f"<FileReader {self.path!r} size={self.size}>"

    async def read(self, offset: int, size: int) -> Buffer:
        """`size` bytes at `offset`; fewer only at the end of the file, b"" at or after it.

        The result is bytes, or a memoryview of the cache that callers must not write to (see BlockCache.assemble).
        """
        if self.closed:
            raise BackendError(f"{self.path!r}: read on a closed handle", self.path)
        end = min(self.size, offset + size)
        if offset < 0 or offset >= end:
            return b""
        dp = self._dp
        data = dp.cache.get(self.path, self.etag, offset, end)
        advice = self._readahead.on_read(offset, end - offset, data is not None)
        if advice.reset and self._owned:
            self._give_up_ahead(queued_only=True)
        demand: list[Extent] | None = None
        if data is None:
            lo, hi = min(offset, advice.demand[0]), max(end, advice.demand[1])
            demand = dp._ensure(self, lo, hi, prefetch=False)
        if advice.prefetch:
            self._give_up_passed()
        for lo, hi in advice.prefetch:
            if dp._ensure(self, lo, hi, prefetch=True) is None:
                break
        if demand is None:
            return data  # type: ignore[return-value]
        needed = [e for e in demand if e.start < end and e.end > offset]
        timeout = dp.config.read_timeout
        with trio.move_on_after(timeout):
            return await self._wait(needed, offset, end)
        raise BackendError(f"reading {self.path!r} timed out after {timeout:g} s", self.path)

    async def _wait(self, needed: list[Extent], offset: int, end: int) -> Buffer:
        dp = self._dp
        waiting = [ext for ext in needed if ext.pending]
        for ext in waiting:
            dp._promote(ext)
            ext.waiters += 1
        try:
            for ext in needed:
                await ext.done.wait()
                if ext.error is not None:
                    err = ext.error
                    raise type(err)(err.message, err.path)
        finally:
            for ext in waiting:
                ext.waiters -= 1
                if ext.pending and ext.waiters == 0 and not ext.owners:
                    dp._release(ext, self)
        return dp.cache.assemble(needed, offset, end)

    def close(self) -> None:
        """Cancel what this handle asked for ahead (fetches others wait for keep going)."""
        self.closed = True
        self._give_up_ahead(queued_only=False)

    def _give_up_passed(self) -> None:
        """Stop protecting fetched-ahead extents the stream skipped over (it will not return)."""
        behind = self._readahead.pos_behind()
        for ext in [e for e in self._owned if not e.pending and e.end <= behind]:
            self._owned.discard(ext)
            ext.owners.discard(self)
            if not ext.owners:
                self._dp.cache.unpromise(ext)

    def _give_up_ahead(self, queued_only: bool) -> None:
        """Let go of read-ahead: cancel queued (with `queued_only`) or all in-flight fetches
        nobody else wants, and stop protecting fetched-ahead extents this handle has not read."""
        dp = self._dp
        for ext in list(self._owned):
            if ext.pending:
                if queued_only and (ext.started or ext.demand):
                    continue
                self._owned.discard(ext)
                dp._release(ext, self)
            else:
                self._owned.discard(ext)
                ext.owners.discard(self)
                if not ext.owners:
                    dp.cache.unpromise(ext)
