"""The mount's read path: per-handle readers over one shared block cache, with read-ahead.

A `FileReader` (one open file handle) calls one operation, `DataPath.ensure(owner, path, etag,
range, priority)`, and is told what is in flight for it and whether a prefetch was refused; the
fetches themselves (priorities, cancellation, retries) are the `Fetcher`'s (fetcher.py).

Memory: everything is charged to one `MemoryBudget`: cached extents ("cache") and fetch buffers
("inflight"). Prefetch only takes what fits (else the reader's window halves); a reader's own
fetch is sized down to what the budget can hold (never below the request itself), and the
read-ahead window of each reader is capped at its share of the budget across the open readers.
The extents a reader is going to read are pinned, so other readers' read-ahead cannot evict them.

Time: a read waits at most `read_timeout` from its arrival. Its bytes are served as soon as they
have arrived (fetches stream into their buffers), so the bound is per request, not per block: a
slow link still makes progress. The kernel retries a failed read-ahead with a synchronous read of
the same range: that retry inherits the failed request's deadline, so a caller never waits twice.

Every fetch carries the ETag pinned at open (If-Match): a handle sees one version of the file or
gets `Changed` (ESTALE), never a mix.

All of this runs on the trio thread; nothing here is thread-safe.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..backends.base import ObjectInfo
from ..backends.bridge import TrioBackend
from ..backends.errors import BackendError, IsADirectory
from .blockcache import BlockCache, Buffer, Extent
from .budget import MemoryBudget
from .disktier import DiskTier
from .fetcher import DEMAND, FILES, PREFETCH, Fetch, Fetcher
from .readahead import ReadAhead
from .stats import Stats

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
#: a reader's own fetch is never sized below this (nor below the request)
MIN_DEMAND = 128 * KiB
#: a failed request is remembered this long past its deadline, for the kernel's retry of it
RETRY_GRACE = 1.0


@dataclass
class DataPathConfig:
    block_size: int = 8 * MiB
    cache_bytes: int = 1024 * MiB  # the memory budget (when the data path makes its own)
    initial_window: int = 1 * MiB  # first read-ahead request size (about mountpoint-s3's)
    max_window: int = 128 * MiB  # read-ahead cap, further bounded by the budget (window_cap)
    read_timeout: float = 60.0  # a read never waits longer: then BackendError(EIO) "timed out"
    max_inflight: int = 16  # concurrent backend reads issued by the data path
    small_file_prefetch: int = 16  # how many following small files prefetch_files may fetch ahead
    #: spent bytes (extents sequential readers have read past) kept cached before their buffers
    #: are recycled for new fetches (BlockCache.recycle)
    spent_keep: int = 32 * MiB

    def __post_init__(self) -> None:
        for name in ("block_size", "cache_bytes", "initial_window", "max_window", "max_inflight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if self.read_timeout <= 0:
            raise ValueError(f"read_timeout must be positive, not {self.read_timeout!r}")
        if self.small_file_prefetch < 0 or self.spent_keep < 0:
            raise ValueError("small_file_prefetch and spent_keep may not be negative")

    @property
    def window_cap(self) -> int:
        return max(1, min(self.max_window, self.cache_bytes // 4))


@dataclass
class Ensured:
    """What `DataPath.ensure` did: the extents covering the range (ready or in flight), the
    fetches the caller now co-owns, and where a prefetch was refused (None: it was not)."""

    extents: list[Extent]
    fetches: list[Fetch]
    refused_at: int | None = None


class _FilesPrefetch:
    """The owner of small-file prefetches (no handle owns them; closing one does not cancel)."""

    def __repr__(self) -> str:
        return "<small-file prefetch>"


class DataPath:
    """Reads of remote files for the FUSE mount: one cache, one set of fetch tasks."""

    def __init__(
        self,
        backend: TrioBackend,
        config: DataPathConfig,
        stats: Stats,
        budget: MemoryBudget | None = None,
        disk: DiskTier | None = None,
    ):
        self.backend = backend
        self.disk = disk
        self.config = config
        self.stats = stats
        self.budget = budget or MemoryBudget(config.cache_bytes, stats)
        self.cache = BlockCache(self.budget, stats)
        self.fetcher = Fetcher(
            backend,
            self.cache,
            self.budget,
            stats,
            read_timeout=config.read_timeout,
            max_inflight=config.max_inflight,
            disk=disk,
        )
        self._files_owner = _FilesPrefetch()
        self._streams: set[object] = set()  # open handles reading sequentially

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the fetch tasks (and the disk tier's background index) until cancelled. Start
        with `await nursery.start(dp.run)`."""
        async with trio.open_nursery() as nursery:
            if self.disk is not None:
                await nursery.start(self.disk.run)
            await nursery.start(self.fetcher.run)
            task_status.started()

    @property
    def on_changed(self) -> Callable[[str, str | None], None] | None:
        """Told (path, etag) when a fetch finds the object changed (HTTP 412)."""
        return self.fetcher.on_changed

    @on_changed.setter
    def on_changed(self, fn: Callable[[str, str | None], None] | None) -> None:
        self.fetcher.on_changed = fn

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
        if not self.fetcher.running:
            return
        for info in infos:
            if self.fetcher.files_pending >= self.config.small_file_prefetch:
                break
            if info.is_dir or info.size <= 0 or info.size > self.config.block_size:
                continue
            span = self.cache.cover(info.path, info.etag, 0, info.size)
            if len(span) != 1 or not isinstance(span[0], tuple):
                continue  # cached or in flight, wholly or in part
            if not self.budget.try_take("inflight", info.size):
                break
            fetch = self.fetcher.start(info.path, info.etag, 0, info.size, FILES, info.size)
            fetch.owners.add(self._files_owner)

    def forget_path(self, path: str) -> None:
        """Drop the cached extents of `path` (the object changed)."""
        self.cache.forget(path)

    def window_cap(self) -> int:
        """The read-ahead one reader may hold: its share of the budget across the open readers
        that read sequentially, so that one reader's prefetch leaves room for the others'."""
        share = self.budget.capacity // (2 * max(1, len(self._streams)))
        return max(1, min(self.config.max_window, self.budget.capacity // 4, share))

    def ensure(
        self,
        owner: object,
        path: str,
        etag: str | None,
        start: int,
        end: int,
        priority: int,
        need: int | None = None,
        size: int | None = None,
        piece: int = 0,
    ) -> Ensured:
        """The extents covering [start, end) of `path` at `etag`, starting fetches for the holes
        (split at block boundaries, or at multiples of `piece` when larger: the read-ahead's
        GET size, see readahead.request_size) on behalf of `owner`. A DEMAND range is sized down
        to what the budget holds, but never below [start, need); a PREFETCH that does not fit is
        refused (`refused_at`: what was started before it keeps going). `size`: the object's, when
        known (the disk tier stores and finds whole blocks by it)."""
        if priority == DEMAND and need is not None and end > need:
            room = max(MIN_DEMAND, min(self.window_cap(), self.budget.available()))
            end = max(need, min(end, start + room))
        out = Ensured([], [])
        bs = max(self.config.block_size, piece)
        for item in self.cache.cover(path, etag, start, end):
            if isinstance(item, Extent):
                if item.fetch is not None:
                    item.fetch.owners.add(owner)
                    out.fetches.append(item.fetch)
                out.extents.append(item)
                continue
            lo, hi = item
            while lo < hi:
                stop = min(hi, (lo // bs + 1) * bs)
                # A spent extent's buffer, already charged and its pages already touched; else
                # new memory from the budget.
                buf = self.cache.recycle(stop - lo, self.config.spent_keep)
                if buf is not None:
                    pass
                elif priority == DEMAND:
                    self.budget.take("inflight", stop - lo)
                elif not self.budget.try_take("inflight", stop - lo):
                    self.stats.incr("prefetch_refused")
                    out.refused_at = lo
                    return out
                fetch = self.fetcher.start(path, etag, lo, stop, priority, size, buf)
                fetch.owners.add(owner)
                out.fetches.append(fetch)
                out.extents.append(fetch.extent)
                lo = stop
        return out

    def streaming(self, reader: object, on: bool) -> None:
        """Count `reader` among the sequential readers that share the budget (or stop)."""
        if on:
            self._streams.add(reader)
        else:
            self._streams.discard(reader)


class FileReader:
    """One open file handle: its read-ahead state, the fetches it asked for and the extents it
    pins (going to read them)."""

    def __init__(self, datapath: DataPath, path: str, info: ObjectInfo):
        cfg = datapath.config
        self._dp = datapath
        self.path = path
        self.etag = info.etag
        self.size = info.size
        self._readahead = ReadAhead(
            info.size, cfg.block_size, cfg.initial_window, datapath.window_cap()
        )
        self._owned: set[Fetch] = set()  # in flight, asked for by this handle
        self._pinned: set[Extent] = set()
        # Recently failed requests: (start, end, deadline, error), for the kernel's retries.
        self._failed: deque[tuple[int, int, float, BackendError]] = deque(maxlen=8)
        self.closed = False

    def __repr__(self) -> str:
        return f"<FileReader {self.path!r} size={self.size}>"

    async def read(self, offset: int, size: int) -> Buffer:
        """`size` bytes at `offset`; fewer only at the end of the file, b"" at or after it.

        The result is bytes, or a read-only memoryview of the cache (see BlockCache.assemble).
        """
        if self.closed:
            raise BackendError(f"{self.path!r}: read on a closed handle", self.path)
        end = min(self.size, offset + size)
        if offset < 0 or offset >= end:
            return b""
        dp = self._dp
        deadline = self._deadline(offset, end)
        data = dp.cache.get(self.path, self.etag, offset, end)
        ra = self._readahead
        ra.cap = dp.window_cap()
        advice = ra.on_read(offset, end - offset, data is not None)
        if advice.reset:
            self._let_go(queued_only=True)
        self._stream(not ra.random and not ra.small)
        demand: list[Extent] | None = None
        if data is None:
            lo, hi = min(offset, advice.demand[0]), max(end, advice.demand[1])
            demand = self._ensure(lo, hi, DEMAND, need=end).extents
            if not advice.random:
                self._pin(demand)
        if self._pinned:
            self._unpin_passed(offset)
        for lo, hi in advice.prefetch:
            ahead = self._ensure(lo, hi, PREFETCH, piece=advice.piece)
            if ahead.refused_at is not None:
                ra.on_refused(ahead.refused_at)
                self._pin(ahead.extents)
                break
            self._pin(ahead.extents)
        if demand is None:
            return data  # type: ignore[return-value]
        needed = [e for e in demand if e.start < end and e.end > offset]
        try:
            with trio.move_on_at(deadline):
                return await self._wait(needed, offset, end)
            raise BackendError(
                f"reading {self.path!r} timed out after {dp.config.read_timeout:g} s", self.path
            )
        except BaseException as e:  # cancelled by an outer bound too: the kernel retries it
            err = e if isinstance(e, BackendError) else BackendError("read cancelled", self.path)
            self._failed.append((offset, end, deadline, err))
            raise

    def _ensure(
        self, lo: int, hi: int, priority: int, need: int | None = None, piece: int = 0
    ) -> Ensured:
        got = self._dp.ensure(
            self, self.path, self.etag, lo, hi, priority, need, size=self.size, piece=piece
        )
        # Forget the fetches that are over: a fetch refers to its extent and so to its buffer,
        # which must not outlive the cache's copy unaccounted.
        self._owned = {f for f in self._owned if f.pending}
        self._owned.update(f for f in got.fetches if f.pending)
        return got

    def _deadline(self, offset: int, end: int) -> float:
        """When this request must be answered: `read_timeout` from now, or, for the kernel's
        retry of a request that just failed (an overlapping range), that request's deadline."""
        now = trio.current_time()
        # Inside an outer bound (the request's, set by the FUSE handler): end just before it, so
        # the failure is recorded here with its own message.
        deadline = min(now + self._dp.config.read_timeout, trio.current_effective_deadline() - 1e-3)
        for lo, hi, when, _ in self._failed:
            if lo < end and offset < hi and now < when + RETRY_GRACE:
                deadline = min(deadline, when)
        return deadline

    async def _wait(self, needed: list[Extent], offset: int, end: int) -> Buffer:
        dp = self._dp
        waiting = [e.fetch for e in needed if e.fetch is not None]
        for fetch in waiting:
            dp.fetcher.promote(fetch)
            fetch.waiters += 1
        # Pinned while waiting: an extent that is ready already must not be evicted and its
        # buffer recycled before the bytes are assembled.
        for ext in needed:
            dp.cache.pin(ext)
        try:
            for ext in needed:
                await ext.wait_filled(min(end, ext.end))
                if ext.error is not None:
                    err = ext.error
                    raise type(err)(err.message, err.path)
            return dp.cache.assemble(needed, offset, end)
        finally:
            for ext in needed:
                dp.cache.unpin(ext)
            for fetch in waiting:
                fetch.waiters -= 1
                if fetch.pending and not fetch.wanted:
                    dp.fetcher.release(fetch, self)

    def close(self) -> None:
        """Cancel what this handle asked for (fetches others want keep going); unpin."""
        self.closed = True
        self._let_go(queued_only=False)
        self._stream(False)

    def _stream(self, on: bool) -> None:
        self._dp.streaming(self, on)

    def _pin(self, extents: list[Extent] | None) -> None:
        for ext in extents or ():
            if ext not in self._pinned and (ext.pending or ext.cached):
                self._pinned.add(ext)
                self._dp.cache.pin(ext)

    def _unpin_passed(self, offset: int) -> None:
        """Stop pinning the extents wholly behind this read: they stay cached, as the most
        recently used, but may be evicted (a reordered read that finds one gone refetches it),
        and a sequential reader's are spent (their buffers may be recycled: BlockCache.spend)."""
        cache = self._dp.cache
        stream = not self._readahead.random
        for ext in [e for e in self._pinned if e.end <= offset]:
            self._pinned.discard(ext)
            cache.unpin(ext)
            if stream:
                cache.spend(ext)

    def _let_go(self, queued_only: bool) -> None:
        """Let go of read-ahead: cancel queued (with `queued_only`) or all in-flight fetches
        nobody else wants, and unpin every extent this handle pinned."""
        dp = self._dp
        for fetch in list(self._owned):
            if not fetch.pending:
                self._owned.discard(fetch)
                continue
            if queued_only and (fetch.started or fetch.priority == DEMAND):
                continue
            self._owned.discard(fetch)
            dp.fetcher.release(fetch, self)
        for ext in self._pinned:
            dp.cache.unpin(ext)
        self._pinned.clear()
