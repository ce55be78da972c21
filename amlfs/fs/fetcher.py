"""The fetches of the mount's read path: each is one extent in flight, with its priority, the
handles that want it, and how to stop it; `Fetcher` runs them as tasks in its nursery, so a fetch
outlives the read that started it and can be shared, and settles the memory of its buffer.

Priority: fetches a reader waits for take a slot of `max_inflight` directly; prefetches must
first get a slot of a smaller limiter that leaves `DEMAND_RESERVE` slots to readers, small-file
prefetches (and a preload, `background_slot`) a slot of a smaller one still. A reader that needs
a queued prefetch promotes it.

The disk tier (disktier.py), when there is one, is asked before a fetch takes a storage slot (a
disk hit never queues behind the network), and is given every whole block fetched from the
storage afterwards (the extent pinned meanwhile, its memory in the budget).

Cancellation: a fetch nobody wants any more is cancelled: the backend call is aborted (the
connection is shut down, so its worker thread stops receiving at once) and its buffer stays
charged to the budget until that thread has really let go of it.

Time: a fetch streams into its buffer (readers are woken as bytes arrive), retries transient
failures with jittered backoff (the only retry layer: the mount's backend does not retry), and
gives up after `read_timeout` without progress.

Concurrency contract: the trio thread only, except the progress callbacks, which hop to it.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from ..backends.base import Abort
from ..backends.bridge import TrioBackend
from ..backends.errors import BackendError, Changed, Transient
from .blockcache import BlockCache, Extent
from .budget import MemoryBudget
from .disktier import DiskTier
from .stats import Stats

log = logging.getLogger(__name__)

DEMAND, PREFETCH, FILES = 0, 1, 2
DEMAND_RESERVE = 2  # concurrency slots that prefetch may never take
BACKOFF_BASE = 0.1
BACKOFF_MAX = 4.0
#: blocks remembered for storing later while the disk writer is behind, at most
DEFER_MAX = 4096
#: while no reader waits for a fetch's bytes, its worker thread tells the trio thread about
#: progress only every QUIET_BYTES or QUIET_SECONDS (the idle deadline); with a reader waiting,
#: at every piece the backend reports. Each report wakes the trio thread: a 1 GiB read made
#: 4096 of them, mostly for prefetches nobody was waiting for yet.
QUIET_BYTES = 16 << 20
QUIET_SECONDS = 1.0


class Fetch:
    """One extent in flight: its priority, who wants it, and how to stop it."""

    __slots__ = (
        "extent", "priority", "files", "owners", "waiters", "scope", "started", "charged",
        "size", "from_network",
    )  # fmt: skip

    def __init__(self, extent: Extent, priority: int, size: int | None = None):
        self.extent = extent
        self.priority = priority
        self.size = size  # of the whole object, when known (the disk tier needs it)
        self.from_network = False  # its bytes came from the storage (not the disk tier)
        self.files = priority == FILES  # a small-file prefetch (counted in _files_pending)
        self.owners: set[object] = set()  # handles (or the small-file prefetcher) that asked
        self.waiters = 0  # reads blocked on it
        self.scope: trio.CancelScope | None = None  # of the task running it
        self.started = False  # its backend call has been issued
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


class Fetcher:
    """Runs the fetches of one mount: limiters by priority, retries, cancellation, memory."""

    def __init__(
        self,
        backend: TrioBackend,
        cache: BlockCache,
        budget: MemoryBudget,
        stats: Stats,
        *,
        read_timeout: float,
        max_inflight: int,
        disk: DiskTier | None = None,
    ):
        self.backend = backend
        self.disk = disk
        self.cache = cache
        self.budget = budget
        self.stats = stats
        self.read_timeout = read_timeout
        n = max_inflight
        self._limiter = trio.CapacityLimiter(n)
        self._prefetch_limiter = trio.CapacityLimiter(max(1, n - DEMAND_RESERVE))
        self._files_limiter = trio.CapacityLimiter(max(1, (n - DEMAND_RESERVE) // 2))
        self._preload_limiter = trio.CapacityLimiter(max(1, (n - DEMAND_RESERVE) // 2))
        self.files_pending = 0  # small-file prefetches not over yet
        # Blocks not stored yet because the disk writer was behind: (path, etag, offset, length)
        self._deferred: deque[tuple[str, str, int, int]] = deque()
        self._nursery: trio.Nursery | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        #: told (path, etag) when a fetch finds the object changed (HTTP 412)
        self.on_changed: Callable[[str, str | None], None] | None = None

    @property
    def running(self) -> bool:
        return self._nursery is not None

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Host the fetch tasks until cancelled. Start with `await nursery.start(f.run)`."""
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    @asynccontextmanager
    async def background_slot(self) -> AsyncIterator[None]:
        """A storage slot for work below every read and prefetch (preload): at most half the
        prefetch slots, which leave DEMAND_RESERVE slots to readers."""
        async with self._preload_limiter, self._prefetch_limiter, self._limiter:
            yield

    def start(
        self,
        path: str,
        etag: str | None,
        lo: int,
        hi: int,
        priority: int,
        size: int | None = None,
        buf: bytearray | None = None,
    ) -> Fetch:
        """A fetch of [lo, hi) of an object of `size` bytes, indexed in the cache; its buffer
        (`buf`, hi - lo bytes to overwrite, or new) must already be charged to the budget
        ("inflight")."""
        ext = self.cache.add(path, etag, lo, hi, prefetch=priority != DEMAND)
        ext.data = buf
        fetch = ext.fetch = Fetch(ext, priority, size)
        if priority == FILES:
            self.files_pending += 1
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

    def promote(self, fetch: Fetch) -> None:
        """A reader waits for `fetch`: if it still queues at prefetch priority, requeue it."""
        if fetch.priority == DEMAND:
            return
        fetch.priority = DEMAND
        if not fetch.started and fetch.scope is not None:
            self.stats.incr("prefetch_promoted")
            fetch.scope.cancel()
            self._spawn(fetch)

    def release(self, fetch: Fetch, owner: object) -> None:
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
        """`fetch` is over (ready or failed): nobody owns it any more (its owners notice)."""
        if fetch.files:
            fetch.files = False
            self.files_pending -= 1
        fetch.owners.clear()

    async def _fetch_task(self, fetch: Fetch, scope: trio.CancelScope) -> None:
        ext = fetch.extent
        held: list[trio.CapacityLimiter] = []
        try:
            with scope:
                try:
                    if await self._from_disk(fetch):
                        return
                    limiters = [self._limiter]
                    if fetch.priority != DEMAND:
                        limiters.insert(0, self._prefetch_limiter)
                        if fetch.priority == FILES:
                            limiters.insert(0, self._files_limiter)
                    for lim in limiters:
                        await lim.acquire()
                        held.append(lim)
                    fetch.started = True
                    await self._get(fetch)
                finally:
                    for lim in reversed(held):
                        lim.release()
                await self._to_disk(fetch)
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

    async def _from_disk(self, fetch: Fetch) -> bool:
        """Serve the extent from the disk tier if it holds it (before taking a network slot, so
        a disk hit never queues behind the network). Marked started meanwhile: a promotion does
        not requeue it, and the worker thread filling its buffer is always waited for."""
        ext = fetch.extent
        disk = self.disk
        if disk is None or fetch.size is None or ext.etag is None or not disk.usable(ext.etag):
            return False
        buf = ext.data if ext.data is not None and ext.filled == 0 else bytearray(ext.size)
        fetch.started = True
        try:
            hit = await disk.read(ext.path, ext.etag, fetch.size, ext.start, buf)
        finally:
            fetch.started = False
        if not ext.pending:
            return True  # given up meanwhile (nobody wants it): nothing to complete
        ext.data = buf  # a miss: the network fetch fills this same buffer
        if not hit:
            return False
        self._completed(fetch, buf)
        return True

    async def _to_disk(self, fetch: Fetch) -> None:
        """After a fetch from the network: store its block on disk once the whole block is in
        memory (this extent alone, or with its neighbours when a reader's fetch covered part of
        it), the extents pinned meanwhile so that the memory written from stays in the budget.
        When the writer is behind, the block is remembered and stored later if it is still in
        memory then; this task then stores remembered blocks while the writer has room."""
        ext = fetch.extent
        disk = self.disk
        if disk is None or not fetch.from_network or ext.error is not None or not ext.cached:
            return
        if ext.etag is None or fetch.size is None or not disk.usable(ext.etag):
            return
        for cstart, clen in disk.chunks(ext.start, ext.end, fetch.size):
            await self._store(ext.path, ext.etag, cstart, clen, defer=True)
        while self._deferred and disk.has_room(self._deferred[0][3]):
            await self._store(*self._deferred.popleft(), defer=False)

    async def _store(self, path: str, etag: str, lo: int, n: int, defer: bool) -> None:
        disk = self.disk
        assert disk is not None
        parts = self.cache.cover(path, etag, lo, lo + n)
        if not all(isinstance(e, Extent) and e.cached and not e.pending for e in parts):
            if not defer:
                self.stats.incr("disk_write_behind")  # left memory before the writer had room
            return  # (else the rest of the block is not here yet: whoever completes it stores it)
        if not disk.has_room(n):
            # Reads first: the memory the writer would pin is the read-ahead's.
            if defer and len(self._deferred) < DEFER_MAX:
                self._deferred.append((path, etag, lo, n))
            else:
                self.stats.incr("disk_write_behind")
            return
        extents: list[Extent] = parts  # type: ignore[assignment]
        for e in extents:
            self.cache.pin(e)
        try:
            # These cover [lo, lo + n) in order; a grown read-ahead GET's extent spans several
            # chunks, so each gives only its part.
            views = [
                memoryview(e.data)[
                    max(lo, e.start) - e.start : min(lo + n, e.end) - e.start
                ].toreadonly()  # type: ignore[arg-type]
                for e in extents
            ]
            data = views[0] if len(views) == 1 else b"".join(views)
            await disk.write(path, etag, lo, data)
        finally:
            for e in extents:
                self.cache.unpin(e)

    def _completed(self, fetch: Fetch, buf: bytearray) -> None:
        """The extent's bytes are all in `buf`: to the cache (its charge too), readers woken."""
        ext = fetch.extent
        fetch.charged = False
        if self.cache.complete(ext, buf):
            self.budget.move("inflight", "cache", ext.size)
            self.budget.settle()
        else:
            self.budget.give("inflight", ext.size)
        self._disown(fetch)

    async def _get(self, fetch: Fetch) -> None:
        """Fetch the extent, retrying transient failures with jittered backoff; give up after
        `read_timeout` without progress. On success the buffer's charge moves to the cache; an
        attempt abandoned while its thread runs hands the charge to that thread (`_attempt`)."""
        ext = fetch.extent
        timeout = self.read_timeout
        idle = trio.CancelScope(deadline=trio.current_time() + timeout)
        last: BackendError | None = None
        attempt = 0
        buf = ext.data if ext.data is not None and ext.filled == 0 else bytearray(ext.size)
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
                fetch.from_network = True
                self._completed(fetch, buf)
                return
        why = f" (last error: {last})" if last is not None else ""
        raise BackendError(f"reading {ext.path!r} timed out after {timeout:g} s{why}", ext.path)

    async def _attempt(self, fetch: Fetch, buf: bytearray, idle: trio.CancelScope) -> None:
        """One ranged read into `buf` from where the last attempt stopped. Progress wakes readers
        and pushes back the idle deadline. If cancelled while the worker thread still runs, the
        thread is aborted and takes over the buffer's charge: it is given back when the thread
        has really finished with the buffer."""
        ext = fetch.extent
        token = self._token
        assert token is not None
        timeout = self.read_timeout
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

        told = [0, time.monotonic()]  # worker thread: last reported (bytes, when)

        def progress(n: int) -> None:  # worker thread
            # `fetch.waiters` is the trio thread's; reading a stale value here is harmless: a
            # reader that starts waiting is told at the next piece (or when the fetch ends).
            if not fetch.waiters and n - told[0] < QUIET_BYTES and n < ext.size - base:
                now = time.monotonic()
                if now - told[1] < QUIET_SECONDS:
                    return
            told[0], told[1] = n, time.monotonic()
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
