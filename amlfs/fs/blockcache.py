"""The block cache: an index of file extents, an LRU of the evictable ones, and their bytes in the
mount's one memory budget. Nothing else: what to fetch, when, at what priority and for whom is
the data path's business (datapath.py).

An extent is a byte range [start, end) of one version of a file, keyed by (path, etag, start). It
is in flight (its buffer filling as the body arrives: `filled` bytes are final) until it is ready
or failed. Extents of one file version never overlap: the data path fetches only the holes that
`cover` reports, so a byte is fetched at most once while it is cached, and two readers of one
range share one fetch.

Pins: an extent that an open handle is going to read (fetched ahead for it, or the one it is
reading through) is pinned and is not evicted; unpinned, it goes to the LRU. So one reader's
read-ahead can never evict the blocks another reader has not read yet.

Budget: resident extents are charged to the budget's "cache" account, given back when evicted or
forgotten. The data path charges a fetch's buffer to "inflight" and moves it to "cache" when
`complete` keeps the extent.

Spent extents and recycled buffers: an extent that a sequential reader has read past is "spent"
(`spend`); the kernel's page cache and the disk tier hold those bytes for a re-read. Beyond the
`keep` most recent spent bytes, `recycle` hands a spent extent's buffer to a new fetch of the
same size (its charge moves to "inflight"), so a long sequential read reuses a few windows of
memory instead of faulting in fresh pages for every byte (zeroing a fresh page costs about as
much kernel CPU as the socket's copy of the same bytes). A buffer is only recycled when nothing
else refers to it (a memoryview handed out by `assemble`, a worker thread still writing).

Concurrency contract: the trio thread only; no method awaits except `Extent.wait_filled`, so a
lookup and the update that depends on it are atomic.
"""

from __future__ import annotations

import bisect
import logging
import sys
from collections import OrderedDict
from typing import Any

import trio

from ..backends.errors import BackendError
from .budget import MemoryBudget
from .stats import Stats

log = logging.getLogger(__name__)

# What reads return: bytes, or a read-only memoryview of an extent's buffer (valid as long as it
# is held: eviction only drops the cache's reference). Compares equal to bytes of the same content.
Buffer = bytes | memoryview
Hole = tuple[int, int]
Key = tuple[str, str | None, int]


class Extent:
    """One fetched or in-flight byte range of one file version."""

    __slots__ = (
        "path",
        "etag",
        "start",
        "end",
        "data",
        "filled",
        "error",
        "done",
        "_progress",
        "prefetched",
        "cached",
        "pins",
        "fetch",
        "spent",
    )

    def __init__(self, path: str, etag: str | None, start: int, end: int, prefetch: bool):
        self.path = path
        self.etag = etag
        self.start = start
        self.end = end
        self.data: bytearray | None = None  # the buffer; [0, filled) holds final bytes
        self.filled = 0
        self.error: BackendError | None = None
        self.done = trio.Event()
        self._progress = trio.Event()
        self.prefetched = prefetch  # fetched ahead and not yet read by anyone
        self.cached = False  # resident (in the LRU or pinned)
        self.pins = 0  # handles that are going to read it
        self.fetch: Any = None  # the data path's fetch while in flight
        self.spent = False  # a sequential reader has read past it (see BlockCache.spend)

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pending(self) -> bool:
        return not self.done.is_set()

    def covers(self, end: int) -> bool:
        """Bytes up to `end` are final (the extent is ready, or filled that far)."""
        return self.error is None and self.start + self.filled >= min(end, self.end)

    def advance(self, filled: int) -> None:
        """More of the body arrived (trio thread): wake readers waiting for those bytes."""
        if filled > self.filled:
            self.filled = filled
            ev, self._progress = self._progress, trio.Event()
            ev.set()

    async def wait_filled(self, end: int) -> None:
        """Until the bytes up to `end` are final, or the fetch is over (ready or failed)."""
        while self.pending and not self.covers(end):
            await self._progress.wait()

    def finish(self, error: BackendError | None = None) -> None:
        self.error = error
        if error is None:
            self.filled = self.size
        self.done.set()
        self._progress.set()

    def __repr__(self) -> str:
        state = "pending" if self.pending else ("failed" if self.error else "ready")
        return f"<Extent {self.path!r} [{self.start}, {self.end}) {state}>"


class _FileIndex:
    """The extents (ready and in flight) of one file version, ordered by start."""

    __slots__ = ("starts", "extents")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.extents: dict[int, Extent] = {}

    def add(self, ext: Extent) -> None:
        bisect.insort(self.starts, ext.start)
        self.extents[ext.start] = ext

    def remove(self, ext: Extent) -> bool:
        if self.extents.get(ext.start) is not ext:
            return False
        del self.extents[ext.start]
        del self.starts[bisect.bisect_left(self.starts, ext.start)]
        return True

    def first_at(self, offset: int) -> int:
        """Index in `starts` of the first extent that may contain or follow `offset`."""
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and self.extents[self.starts[i]].end > offset:
            return i
        return i + 1


class BlockCache:
    """Extents of remote files in memory, charged to one memory budget."""

    def __init__(self, budget: MemoryBudget, stats: Stats):
        self.budget = budget
        self.stats = stats
        self._lru: OrderedDict[Key, Extent] = OrderedDict()  # cached and unpinned
        self._lru_bytes = 0
        self._resident = 0
        self._files: dict[str, dict[str | None, _FileIndex]] = {}
        self._spent: OrderedDict[Key, Extent] = OrderedDict()  # in the LRU, oldest spent first
        self._spent_bytes = 0
        budget.add_evictor(self._evict, lambda: self._lru_bytes)

    # --- lookups -------------------------------------------------------------------------------

    @property
    def resident(self) -> int:
        return self._resident

    def get(self, path: str, etag: str | None, start: int, end: int) -> Buffer | None:
        """The bytes [start, end) if all of them are final (a hit), else None (a miss)."""
        index = self._index(path, etag)
        if index is not None:
            i = index.first_at(start)
            pos = start
            found: list[Extent] = []
            starts = index.starts
            while pos < end and i < len(starts):
                ext = index.extents[starts[i]]
                if ext.start > pos or not ext.covers(min(end, ext.end)):
                    break
                found.append(ext)
                pos = ext.end
                i += 1
            if pos >= end:
                self.stats.incr("cache_hits")
                return self.assemble(found, start, end)
        self.stats.incr("cache_misses")
        return None

    def cover(self, path: str, etag: str | None, start: int, end: int) -> list[Extent | Hole]:
        """[start, end) as a list, in order, of the extents (ready or in flight) and holes."""
        out: list[Extent | Hole] = []
        pos = start
        index = self._index(path, etag)
        if index is not None:
            i = index.first_at(start)
            starts = index.starts
            while pos < end and i < len(starts):
                ext = index.extents[starts[i]]
                if ext.start >= end:
                    break
                if ext.start > pos:
                    out.append((pos, ext.start))
                out.append(ext)
                pos = ext.end
                i += 1
        if pos < end:
            out.append((pos, end))
        return out

    def assemble(self, extents: list[Extent], start: int, end: int) -> Buffer:
        """The bytes [start, end) out of contiguous extents whose bytes there are final.

        A range inside one extent is a read-only memoryview of it, not a copy: pyfuse3 hands any
        buffer straight to the kernel, and a copy of every 128 KiB request was a tenth of the
        daemon's CPU in a sequential read. Ranges across extents are joined into new bytes.
        """
        parts: list[Buffer] = []
        for ext in extents:
            key = (ext.path, ext.etag, ext.start)
            if key in self._lru:
                self._lru.move_to_end(key)
            if ext.spent:  # read again: an ordinary cached extent once more
                self._unspend(ext)
            if ext.prefetched:
                ext.prefetched = False
                self.stats.incr("prefetch_hits")
            assert ext.data is not None
            lo = max(start, ext.start) - ext.start
            hi = min(end, ext.end) - ext.start
            parts.append(memoryview(ext.data).toreadonly()[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- in-flight extents ---------------------------------------------------------------------

    def add(self, path: str, etag: str | None, start: int, end: int, prefetch: bool) -> Extent:
        """Index an in-flight extent for the hole [start, end) (its buffer is the caller's to
        charge to the budget)."""
        ext = Extent(path, etag, start, end, prefetch)
        self._files.setdefault(path, {}).setdefault(etag, _FileIndex()).add(ext)
        return ext

    def complete(self, ext: Extent, data: bytearray) -> bool:
        """The fetch of `ext` succeeded: wake its readers; True if the cache keeps it (then its
        bytes are the cache's), False if it was forgotten meanwhile (nothing kept)."""
        ext.data = data
        ext.fetch = None
        index = self._index(ext.path, ext.etag)
        kept = index is not None and index.extents.get(ext.start) is ext
        if kept:
            ext.cached = True
            self._resident += ext.size
            if ext.pins == 0:
                self._lru_put(ext)
        ext.finish()
        self._gauge()
        return kept

    def fail(self, ext: Extent, error: BackendError) -> None:
        """The fetch of `ext` failed or was given up: forget it, wake its readers with `error`."""
        ext.fetch = None
        self._unindex(ext)
        ext.finish(error)

    # --- pins ----------------------------------------------------------------------------------

    def pin(self, ext: Extent) -> None:
        ext.pins += 1
        if ext.pins == 1 and ext.cached:
            self._lru_pop(ext)

    def unpin(self, ext: Extent) -> None:
        ext.pins -= 1
        assert ext.pins >= 0, ext
        if ext.pins == 0 and ext.cached:
            self._lru_put(ext)
            self.budget.settle()

    # --- spent extents, recycled buffers -----------------------------------------------------

    def spend(self, ext: Extent) -> None:
        """A sequential reader has read past `ext`: once nobody pins it, its buffer may be
        recycled (see `recycle`). Reading it again makes it an ordinary cached extent."""
        if ext.cached and not ext.spent:
            ext.spent = True
            if ext.pins == 0:
                self._spent_put(ext)

    def recycle(self, n: int, keep: int) -> bytearray | None:
        """The buffer of the oldest spent extent, when more than `keep` spent bytes are cached
        and it is `n` bytes long and nothing else refers to it: the extent leaves the cache and
        its charge moves from "cache" to "inflight" (the caller's new fetch's). None: take new
        memory. A spent extent that does not fit is kept as an ordinary cached one."""
        while self._spent_bytes > keep:
            ext = next(iter(self._spent.values()))
            self._unspend(ext)
            buf = ext.data
            # 3: ext.data, `buf`, getrefcount's argument. More: a memoryview of it is alive.
            if ext.size != n or buf is None or sys.getrefcount(buf) != 3:
                continue
            self._lru_pop(ext)
            self._unindex(ext)
            ext.cached = False
            ext.data = None
            self._resident -= ext.size
            self.budget.move("cache", "inflight", n)
            self.stats.incr("buffers_recycled")
            self._gauge()
            return buf
        return None

    def _unspend(self, ext: Extent) -> None:
        ext.spent = False
        self._spent_pop(ext)

    def _spent_put(self, ext: Extent) -> None:
        self._spent[(ext.path, ext.etag, ext.start)] = ext
        self._spent_bytes += ext.size

    def _spent_pop(self, ext: Extent) -> None:
        if self._spent.pop((ext.path, ext.etag, ext.start), None) is not None:
            self._spent_bytes -= ext.size

    # --- invalidation --------------------------------------------------------------------------

    def forget(self, path: str, etag: str | None = None, *, all_versions: bool = True) -> None:
        """Drop the cached extents of `path` (of one version when `all_versions` is False).

        In-flight fetches are detached: their readers still get their bytes, nothing is cached.
        """
        versions = self._files.get(path)
        if not versions:
            return
        for v in list(versions) if all_versions else [etag]:
            index = versions.pop(v, None)
            if index is None:
                continue
            for ext in index.extents.values():
                if ext.cached:
                    self._drop(ext)
        if not versions:
            del self._files[path]
        self._gauge()

    def clear(self) -> None:
        for path in list(self._files):
            self.forget(path)

    # --- internals -----------------------------------------------------------------------------

    def _evict(self, n: int) -> int:
        """Drop least recently used unpinned extents until `n` bytes are freed (budget evictor)."""
        freed = 0
        while freed < n and self._lru:
            _, ext = self._lru.popitem(last=False)
            self._lru_bytes -= ext.size
            self._spent_pop(ext)
            if ext.prefetched:
                self.stats.incr("prefetch_evicted_unread")
            freed += ext.size
            self._unindex(ext)
            self._release(ext)
        if freed:
            self._gauge()
        return freed

    def _drop(self, ext: Extent) -> None:
        if ext.pins == 0:
            self._lru_pop(ext)
        self._release(ext)

    def _release(self, ext: Extent) -> None:
        ext.cached = False
        self._resident -= ext.size
        self.budget.give("cache", ext.size)

    def _lru_put(self, ext: Extent) -> None:
        self._lru[(ext.path, ext.etag, ext.start)] = ext
        self._lru_bytes += ext.size
        if ext.spent:
            self._spent_put(ext)

    def _lru_pop(self, ext: Extent) -> None:
        self._spent_pop(ext)
        if self._lru.pop((ext.path, ext.etag, ext.start), None) is not None:
            self._lru_bytes -= ext.size

    def _index(self, path: str, etag: str | None) -> _FileIndex | None:
        versions = self._files.get(path)
        return versions.get(etag) if versions else None

    def _unindex(self, ext: Extent) -> None:
        versions = self._files.get(ext.path)
        if not versions:
            return
        index = versions.get(ext.etag)
        if index is not None and index.remove(ext) and not index.starts:
            del versions[ext.etag]
            if not versions:
                del self._files[ext.path]

    def _gauge(self) -> None:
        self.stats.set("cache_bytes", self._resident)
