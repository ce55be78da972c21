"""The mount's read path: per-handle readers over one shared block cache, with read-ahead.

`DataPath` owns the fetches: every backend read is a `Fetch` (an extent in flight, with its
priority, the handles that want it, and how to stop it) running as a task in `DataPath.run`'s
nursery, so a fetch outlives the read that started it and can be shared. A `FileReader` (one open
file handle) calls one operation, `DataPath.ensure(reader, start, end, priority)`, and is told
when a prefetch was refused.

Priority: fetches a reader waits for take a slot of `max_inflight` directly; prefetches must
first get a slot of a smaller limiter that leaves `DEMAND_RESERVE` slots to readers, small-file
prefetches a slot of a smaller one still. A reader that needs a queued prefetch promotes it.

Cancellation: a fetch nobody wants any more (its handles closed or seeked away, no reader waits)
is cancelled: the backend call is aborted (the connection is shut down, so its worker thread stops
receiving at once) and its buffer stays charged to the budget until that thread has really let
go of it.

Memory: everything is charged to one `MemoryBudget`: cached extents ("cache") and fetch buffers
("inflight"). Prefetch only takes what fits (else the reader's window halves); a reader's own
fetch is sized down to what the budget can hold (never below the request itself), and the
read-ahead window of each reader is capped at its share of the budget across the open readers.

Time: a read waits at most `read_timeout` from its arrival. Its bytes are served as soon as they
have arrived (the fetch streams into its buffer), so the bound is per request, not per block: a
slow link still makes progress. A fetch retries transient failures with backoff (the only retry
layer: the mount opens its backend without retries of its own) and gives up after `read_timeout`
without progress. The kernel retries a failed read-ahead with a synchronous read of the same
range: that retry inherits the failed request's deadline, so a caller never waits twice.

Every fetch carries the ETag pinned at open (If-Match): a handle sees one version of the file or
gets `Changed` (ESTALE), never a mix.

All of this runs on the trio thread; nothing here is thread-safe.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..backends.base import (
    Abort,
    BackendError,
    Changed,
    IsADirectory,
    ObjectInfo,
    Transient,
    TrioBackend,
)
from .blockcache import BlockCache, Buffer, Extent
from .budget import MemoryBudget
from .readahead import ReadAhead
from .stats import Stats

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
DEMAND_RESERVE = 2  # concurrency slots that prefetch may never take
BACKOFF_BASE = 0.1
BACKOFF_MAX = 4.0
#: a reader's own fetch is never sized below this (nor below the request)
MIN_DEMAND = 128 * KiB
#: a failed request is remembered this long past its deadline, for the kernel's retry of it
RETRY_GRACE = 1.0

DEMAND, PREFETCH, FILES = 0, 1, 2


@dataclass
class DataPathConfig:
    block_size: int = 8 * MiB
    cache_bytes: int = 1024 * MiB  # the memory budget (when the data path makes its own)
    initial_window: int = 1 * MiB  # first read-ahead request size (about mountpoint-s3's)
    max_window: int = 128 * MiB  # read-ahead cap, further bounded by the budget (window_cap)
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


class Fetch:
    """One extent in flight: its priority, who wants it, and how to stop it."""

    __slots__ = (
        "extent", "priority", "files", "owners", "waiters", "scope", "started", "buffer", "charged"
    )  # fmt: skip

    def __init__(self, extent: Extent, priority: int):
        self.extent = extent
        self.priority = priority
        self.files = priority == FILES  # a small-file prefetch (counted in _files_pending)
        self.owners: set[object] = set()  # handles (or the small-file prefetcher) that asked
        self.waiters = 0  # reads blocked on it
        self.scope: trio.CancelScope | None = None  # of the task running it
        self.started = False  # its backend call has been issued
        self.buffer: bytearray | None = None  # the buffer of the attempt in progress
        # Its buffer's bytes are charged to the budget ("inflight") and this fetch must give
        # them back (False once they moved to the cache or to a worker thread still using them).
        self.charged = True

    @property
    def pending(self) -> bool:
        return self.extent.pending

    @property
    def start(self) -> int:
        return self.extent.start

    @property
    def demand(self) -> bool:
        return self.priority == DEMAND

    @property
    def wanted(self) -> bool:
        return bool(self.owners) or self.waiters > 0

    def __repr__(self) -> str:
        return f"<Fetch {self.extent!r} priority={self.priority} started={self.started}>"


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
    ):
        self.backend = backend
        self.config = config
        self.stats = stats
        self.budget = budget or MemoryBudget(config.cache_bytes, stats)
        self.cache = BlockCache(self.budget, stats)
        n = config.max_inflight
        self._limiter = trio.CapacityLimiter(n)
        self._prefetch_limiter = trio.CapacityLimiter(max(1, n - DEMAND_RESERVE))
        self._files_limiter = trio.CapacityLimiter(max(1, (n - DEMAND_RESERVE) // 2))
        self._files_owner = _FilesPrefetch()
        self._files_pending = 0
        self._streams: set[FileReader] = set()  # open handles reading sequentially
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        #: told (path, etag) when a fetch finds the object changed (HTTP 412)
        self.on_changed: Callable[[str, str | None], None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the fetch tasks until cancelled. Start with `await nursery.start(dp.run)`."""
        self._token = trio.lowlevel.current_trio_token()
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
            if not self.budget.try_take("inflight", info.size):
                break
            fetch = self._new_fetch(info.path, info.etag, 0, info.size, FILES)
            fetch.owners.add(self._files_owner)
            self._files_pending += 1

    def forget_path(self, path: str) -> None:
        """Drop the cached extents of `path` (the object changed)."""
        self.cache.forget(path)

    def window_cap(self) -> int:
        """The read-ahead one reader may hold: its share of the budget across the open readers
        that read sequentially, so that one reader's prefetch leaves room for the others'."""
        share = self.budget.capacity // (2 * max(1, len(self._streams)))
        return max(1, min(self.config.max_window, self.budget.capacity // 4, share))

    def ensure(
        self, reader: FileReader, start: int, end: int, priority: int, need: int | None = None
    ) -> list[Extent] | None:
        """The extents covering [start, end) of the reader's file, starting fetches for the holes
        (split at block boundaries). A DEMAND range is sized down to what the budget holds, but
        never below [start, need); a PREFETCH that does not fit is refused: None at the first
        refusal (what was started before it keeps going)."""
        if priority == DEMAND and need is not None and end > need:
            room = max(MIN_DEMAND, min(self.window_cap(), self.budget.available()))
            end = max(need, min(end, start + room))
        out: list[Extent] = []
        bs = self.config.block_size
        for item in self.cache.cover(reader.path, reader.etag, start, end):
            if isinstance(item, Extent):
                if item.fetch is not None:
                    item.fetch.owners.add(reader)
                    reader._owned.add(item.fetch)
                out.append(item)
                continue
            lo, hi = item
            while lo < hi:
                stop = min(hi, (lo // bs + 1) * bs)
                if priority == DEMAND:
                    self.budget.take("inflight", stop - lo)
                elif not self.budget.try_take("inflight", stop - lo):
                    reader._readahead.on_refused(lo)
                    self.stats.incr("prefetch_refused")
                    return None
                fetch = self._new_fetch(reader.path, reader.etag, lo, stop, priority)
                fetch.owners.add(reader)
                reader._owned.add(fetch)
                out.append(fetch.extent)
                lo = stop
        return out

    # --- fetch scheduling (trio thread only) ---------------------------------------------------

    def _new_fetch(self, path: str, etag: str | None, lo: int, hi: int, priority: int) -> Fetch:
        """A fetch of [lo, hi) whose buffer is already charged to the budget ("inflight")."""
        ext = self.cache.add(path, etag, lo, hi, prefetch=priority != DEMAND)
        fetch = ext.fetch = Fetch(ext, priority)
        self._spawn(fetch)
        return fetch

    def _spawn(self, fetch: Fetch) -> None:
        if self._nursery is None:
            self._uncharge(fetch)
            self._finish(fetch, BackendError("the mount is shutting down", fetch.extent.path))
            return
        scope = trio.CancelScope()
        fetch.scope = scope
        fetch.started = False
        self._nursery.start_soon(self._fetch_task, fetch, scope)

    def _promote(self, fetch: Fetch) -> None:
        """A reader waits for `fetch`: if it still queues at prefetch priority, requeue it."""
        if fetch.priority == DEMAND:
            return
        fetch.priority = DEMAND
        if not fetch.started and fetch.scope is not None:
            self.stats.incr("prefetch_promoted")
            fetch.scope.cancel()
            self._spawn(fetch)

    def _release(self, fetch: Fetch, owner: object) -> None:
        """`owner` no longer wants `fetch`: cancel it if nobody else does."""
        fetch.owners.discard(owner)
        ext = fetch.extent
        if fetch.pending and not fetch.wanted and ext.filled < ext.size:
            if fetch.scope is not None:
                fetch.scope.cancel()
            self.stats.incr("fetches_cancelled")
            self._finish(fetch, BackendError("fetch cancelled", fetch.extent.path))

    def _finish(self, fetch: Fetch, error: BackendError) -> None:
        """`fetch` failed or was given up (its buffer's charge is settled by `_get`)."""
        ext = fetch.extent
        if not ext.pending:
            return
        if isinstance(error, Changed):
            self.cache.forget(ext.path, ext.etag, all_versions=False)
            if self.on_changed is not None:
                self.on_changed(ext.path, ext.etag)
        self.cache.fail(ext, error)
        self._disown(fetch)

    def _uncharge(self, fetch: Fetch) -> None:
        if fetch.charged:
            fetch.charged = False
            self.budget.give("inflight", fetch.extent.size)

    def _disown(self, fetch: Fetch) -> None:
        """`fetch` is over (ready or failed): nobody owns it any more."""
        if fetch.files:
            fetch.files = False
            self._files_pending -= 1
        for owner in fetch.owners:
            if isinstance(owner, FileReader):
                owner._owned.discard(fetch)
        fetch.owners.clear()

    async def _fetch_task(self, fetch: Fetch, scope: trio.CancelScope) -> None:
        ext = fetch.extent
        limiters = [self._limiter]
        if fetch.priority != DEMAND:
            limiters.insert(0, self._prefetch_limiter)
            if fetch.priority == FILES:
                limiters.insert(0, self._files_limiter)
        held: list[trio.CapacityLimiter] = []
        try:
            with scope:
                try:
                    for lim in limiters:
                        await lim.acquire()
                        held.append(lim)
                    fetch.started = True
                    await self._get(fetch)
                finally:
                    for lim in reversed(held):
                        lim.release()
        except BackendError as e:
            if fetch.scope is scope:
                if fetch.priority != DEMAND:
                    log.debug("prefetch of %r [%d, %d) failed: %s", ext.path, ext.start, ext.end, e)
                self._finish(fetch, e)
        except Exception as e:  # a bug must not take the mount down: fail this read only
            log.exception("fetch of %r [%d, %d) failed", ext.path, ext.start, ext.end)
            if fetch.scope is scope:
                self._finish(fetch, BackendError(f"{ext.path!r}: internal error: {e}", ext.path))
        finally:
            if fetch.scope is scope:  # (a promoted fetch's first task leaves it to the second)
                self._uncharge(fetch)
                if ext.pending:  # cancelled: shutdown, or nobody wants it
                    self._finish(fetch, BackendError("the read was cancelled", ext.path))

    async def _get(self, fetch: Fetch) -> None:
        """Fetch the extent, retrying transient failures with jittered backoff; give up after
        `read_timeout` without progress. On success the buffer's charge moves to the cache; an
        attempt abandoned while its thread runs hands the charge to that thread (`_attempt`)."""
        ext = fetch.extent
        timeout = self.config.read_timeout
        idle = trio.CancelScope(deadline=trio.current_time() + timeout)
        last: BackendError | None = None
        attempt = 0
        buf = fetch.buffer = bytearray(ext.size)
        ext.data = buf
        with idle:
            while True:
                self.stats.incr("backend.read_range")
                try:
                    await self._attempt(fetch, buf, idle)
                except Transient as e:
                    last = e
                    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
                    if trio.current_time() + delay >= idle.deadline:
                        break
                    self.stats.incr("read_retries")
                    attempt += 1
                    await trio.sleep(delay)
                    continue
                fetch.charged = False
                if self.cache.complete(ext, buf):
                    self.budget.move("inflight", "cache", ext.size)
                    self.budget.settle()
                else:
                    self.budget.give("inflight", ext.size)
                self._disown(fetch)
                return
        why = f" (last error: {last})" if last is not None else ""
        raise BackendError(f"reading {ext.path!r} timed out after {timeout:g} s{why}", ext.path)

    async def _attempt(self, fetch: Fetch, buf: bytearray, idle: trio.CancelScope) -> None:
        """One ranged read into `buf` from where the last attempt stopped. Progress wakes readers
        and pushes back the idle deadline. If cancelled while the worker thread still runs, the
        thread is aborted and `fetch.buffer` is cleared: its charge is given back when the thread
        has really finished with the buffer."""
        ext = fetch.extent
        token = self._token
        assert token is not None
        timeout = self.config.read_timeout
        base = ext.filled
        state = {"live": True, "exited": False, "abandoned": False}
        received = [0]

        def count(n: int) -> None:
            if n > received[0]:
                self.stats.incr("bytes_fetched", n - received[0])
                received[0] = n

        def on_progress(n: int) -> None:  # trio thread
            if state["live"] and ext.pending:
                count(n)
                ext.advance(base + n)
                idle.deadline = max(idle.deadline, trio.current_time() + timeout)

        def progress(n: int) -> None:  # worker thread
            try:
                token.run_sync_soon(on_progress, n)
            except trio.RunFinishedError:
                pass

        def on_exit() -> None:  # trio thread, once the worker thread has ended
            state["exited"] = True
            if state["abandoned"]:
                self.budget.give("inflight", ext.size)

        abort = Abort()
        try:
            n = await self.backend.read_range_into(
                ext.path,
                ext.start + base,
                memoryview(buf)[base:],
                ext.etag,
                progress=progress,
                abort=abort,
                on_exit=on_exit,
            )
        except trio.Cancelled:
            state["live"] = False
            if not state["exited"] and fetch.charged:
                state["abandoned"] = True
                fetch.charged = False
                fetch.buffer = None
            raise
        finally:
            state["live"] = False
        count(n)
        if base + n != ext.size:
            raise BackendError(
                f"{ext.path!r}: short read at {ext.start + base} ({base + n} of {ext.size}"
                " bytes): the object is smaller than when it was opened",
                ext.path,
            )


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
            demand = dp.ensure(self, lo, hi, DEMAND, need=end)
            if not advice.random:
                self._pin(demand)
        if self._pinned:
            self._unpin_passed(offset)
        for lo, hi in advice.prefetch:
            ahead = dp.ensure(self, lo, hi, PREFETCH)
            if ahead is None:
                break
            self._pin(ahead)
        if demand is None:
            return data  # type: ignore[return-value]
        needed = [e for e in demand if e.start < end and e.end > offset]
        try:
            with trio.move_on_at(deadline):
                return await self._wait(needed, offset, end)
            raise BackendError(
                f"reading {self.path!r} timed out after {dp.config.read_timeout:g} s", self.path
            )
        except BackendError as e:
            self._failed.append((offset, end, deadline, e))
            raise

    def _deadline(self, offset: int, end: int) -> float:
        """When this request must be answered: `read_timeout` from now, or, for the kernel's
        retry of a request that just failed (an overlapping range), that request's deadline."""
        now = trio.current_time()
        deadline = now + self._dp.config.read_timeout
        for lo, hi, when, _ in self._failed:
            if lo < end and offset < hi and now < when + RETRY_GRACE:
                deadline = min(deadline, when)
        return deadline

    async def _wait(self, needed: list[Extent], offset: int, end: int) -> Buffer:
        dp = self._dp
        waiting = [e.fetch for e in needed if e.fetch is not None]
        for fetch in waiting:
            dp._promote(fetch)
            fetch.waiters += 1
        try:
            for ext in needed:
                await ext.wait_filled(min(end, ext.end))
                if ext.error is not None:
                    err = ext.error
                    raise type(err)(err.message, err.path)
        finally:
            for fetch in waiting:
                fetch.waiters -= 1
                if fetch.pending and not fetch.wanted:
                    dp._release(fetch, self)
        return dp.cache.assemble(needed, offset, end)

    def close(self) -> None:
        """Cancel what this handle asked for (fetches others want keep going); unpin."""
        self.closed = True
        self._let_go(queued_only=False)
        self._stream(False)

    def _stream(self, on: bool) -> None:
        if on:
            self._dp._streams.add(self)
        else:
            self._dp._streams.discard(self)

    def _pin(self, extents: list[Extent] | None) -> None:
        for ext in extents or ():
            if ext not in self._pinned and (ext.pending or ext.cached):
                self._pinned.add(ext)
                self._dp.cache.pin(ext)

    def _unpin_passed(self, offset: int) -> None:
        """Stop pinning the extents wholly behind this read: they stay cached, as the most
        recently used, but may be evicted (a reordered read that finds one gone refetches it)."""
        for ext in [e for e in self._pinned if e.end <= offset]:
            self._pinned.discard(ext)
            self._dp.cache.unpin(ext)

    def _let_go(self, queued_only: bool) -> None:
        """Let go of read-ahead: cancel queued (with `queued_only`) or all in-flight fetches
        nobody else wants, and unpin every extent this handle pinned."""
        dp = self._dp
        for fetch in list(self._owned):
            if queued_only and (fetch.started or fetch.priority == DEMAND):
                continue
            self._owned.discard(fetch)
            dp._release(fetch, self)
        for ext in self._pinned:
            dp.cache.unpin(ext)
        self._pinned.clear()
