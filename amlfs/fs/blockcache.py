"""Byte-budgeted LRU of immutable file extents, with in-flight de-duplication.

An extent is a fetched byte range [start, end) of one version of a file, keyed by
(path, etag, start). In sequential reading an extent is a whole block (or the rest of one); a
small file is one extent; a random-mode read is a request-sized extent. Extents of one file never
overlap: fetches are only ever made for the holes between cached or in-flight extents, so a byte
is fetched at most once while it is cached, and two readers of one range cause one GET (the second
waits on the first's `trio.Event`). A failed fetch wakes its waiters with the error and is not
cached.

Budget: the LRU's resident bytes plus the reservations of in-flight fetches stay within
`capacity`. Prefetch reserves with `try_reserve`, which also refuses when in-flight plus
prefetched-but-unread bytes would pass the capacity (that refusal is what halves a read-ahead
window); a reader's own fetch reserves with `reserve`, which may overshoot by that fetch.

Everything here runs on the trio thread; there is no await between a lookup and the update that
depends on it, which is what keeps the index consistent without a lock.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable
from typing import Any

import trio
from cachetools import LRUCache

from ..backends.base import BackendError
from .stats import Stats

log = logging.getLogger(__name__)

FileKey = tuple[str, str | None]  # (path, etag)
# What reads return: bytes, or a memoryview of a cached extent (valid as long as it is held:
# eviction only drops the cache's reference). Compares equal to bytes with the same content.
Buffer = bytes | memoryview
Hole = tuple[int, int]


class Extent:
    """One fetched or in-flight byte range of one file version."""

    __slots__ = (
        "path",
        "etag",
        "start",
        "end",
        "data",
        "error",
        "done",
        "prefetched",
        "promised",
        "cached",
        "owners",
        "waiters",
        "scope",
        "started",
        "demand",
        "kind",
    )

    def __init__(self, path: str, etag: str | None, start: int, end: int, prefetch: bool):
        self.path = path
        self.etag = etag
        self.start = start
        self.end = end
        self.data: bytes | bytearray | None = None
        self.error: BackendError | None = None
        self.done = trio.Event()
        self.prefetched = prefetch  # fetched by prefetch and not yet read by anyone
        self.promised = False  # counted in the cache's unread_prefetch (see BlockCache)
        self.cached = False  # resident in the LRU (and in the index as ready)
        # Scheduling state, owned by the data path:
        # Handles (or the data path) that asked for it ahead: while in flight, and afterwards
        # while it is promised (fetched ahead for them and not yet read).
        self.owners: set[Any] = set()
        self.waiters = 0  # readers blocked on it
        self.scope: trio.CancelScope | None = None
        self.started = False  # its backend call has been issued
        self.demand = not prefetch  # a reader waits for it: runs at demand priority
        self.kind = "prefetch" if prefetch else "demand"

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def pending(self) -> bool:
        return not self.done.is_set()

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
        i = bisect.bisect_left(self.starts, ext.start)
        del self.starts[i]
        return True

    def first_at(self, offset: int) -> int:
        """Index in `starts` of the first extent that may contain or follow `offset`."""
        i = bisect.bisect_right(self.starts, offset) - 1
        if i >= 0 and self.extents[self.starts[i]].end > offset:
            return i
        return i + 1


class _LRU(LRUCache):
    """cachetools' LRU, telling the owner about every eviction it makes."""

    def __init__(self, maxsize: int, on_evict):
        super().__init__(maxsize, getsizeof=_size_of)
        self._on_evict = on_evict

    def popitem(self):
        key, ext = super().popitem()
        self._on_evict(ext)
        return key, ext


def _size_of(ext: Extent) -> int:
    return ext.size


class BlockCache:
    """Extents of remote files in memory, within one byte budget shared with in-flight fetches."""

    def __init__(self, capacity: int, stats: Stats):
        self.capacity = max(1, capacity)
        self.stats = stats
        self.reserved = 0  # bytes reserved by in-flight fetches
        self.unread_prefetch = 0  # resident bytes fetched ahead for a handle, not yet read
        #: called when an extent stops being promised (read, evicted, dropped or given up)
        self.on_unpromise: Callable[[Extent], None] | None = None
        self._lru = _LRU(self.capacity, self._evicted)
        self._files: dict[str, dict[str | None, _FileIndex]] = {}

    # --- lookups -------------------------------------------------------------------------------

    @property
    def resident(self) -> int:
        return self._lru.currsize

    def get(self, path: str, etag: str | None, start: int, end: int) -> Buffer | None:
        """The bytes [start, end) if all of them are cached (a hit), else None (a miss)."""
        index = self._index(path, etag)
        if index is not None:
            i = index.first_at(start)
            pos = start
            found: list[Extent] = []
            starts = index.starts
            while pos < end and i < len(starts):
                ext = index.extents[starts[i]]
                if ext.start > pos or not ext.cached:
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
        """The bytes [start, end) out of contiguous ready `extents`; marks them read.

        A range inside one extent is a memoryview of it, not a copy: pyfuse3 hands any buffer
        straight to the kernel, and a copy of every 128 KiB request was a tenth of the daemon's
        CPU in a sequential read. Ranges across extents are joined into new bytes.
        """
        parts: list[Buffer] = []
        for ext in extents:
            if ext.cached:
                self._lru[(ext.path, ext.etag, ext.start)]  # touch: most recently used
            if ext.prefetched:
                ext.prefetched = False
                self.stats.incr("prefetch_hits")
            self.unpromise(ext)
            assert ext.data is not None
            lo = max(start, ext.start) - ext.start
            hi = min(end, ext.end) - ext.start
            parts.append(memoryview(ext.data).toreadonly()[lo:hi])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # --- budget --------------------------------------------------------------------------------

    def try_reserve(self, n: int) -> bool:
        """Reserve `n` bytes for a prefetch, evicting least recently used extents; never blocks.

        Refuses when in-flight and unread prefetched bytes leave no room: those are the
        read-ahead already promised to readers, which only reading can free.
        """
        if self.reserved + self.unread_prefetch + n > self.capacity:
            return False
        self._make_room(n)
        if self._lru.currsize + self.reserved + n > self.capacity:
            return False
        self.reserved += n
        return True

    def reserve(self, n: int) -> None:
        """Reserve `n` bytes for a fetch a reader waits for: evicts, and may overshoot by `n`."""
        self._make_room(n)
        self.reserved += n

    def _make_room(self, n: int) -> None:
        while self._lru.currsize and self._lru.currsize + self.reserved + n > self.capacity:
            self._lru.popitem()

    # --- in-flight extents ---------------------------------------------------------------------

    def add_pending(
        self, path: str, etag: str | None, start: int, end: int, prefetch: bool
    ) -> Extent:
        """Register an in-flight fetch of the hole [start, end); its bytes must be reserved."""
        ext = Extent(path, etag, start, end, prefetch)
        self._files.setdefault(path, {}).setdefault(etag, _FileIndex()).add(ext)
        return ext

    def complete(self, ext: Extent, data: bytes | bytearray) -> None:
        """The fetch of `ext` succeeded: cache it (unless forgotten meanwhile) and wake waiters."""
        self.reserved -= ext.size
        ext.data = data
        self.stats.incr("bytes_fetched", len(data))
        index = self._index(ext.path, ext.etag)
        if index is not None and index.extents.get(ext.start) is ext:
            try:
                self._lru[(ext.path, ext.etag, ext.start)] = ext
                ext.cached = True
                if ext.prefetched and ext.kind == "prefetch":
                    # A handle's read-ahead is owed to it; small-file prefetch, whose reader
                    # may never come, stays an ordinary LRU entry.
                    ext.promised = True
                    self.unread_prefetch += ext.size
            except ValueError:  # larger than the whole budget: hand it over, keep nothing
                self._unindex(ext)
        ext.done.set()
        self._gauge()

    def fail(self, ext: Extent, error: BackendError) -> None:
        """The fetch of `ext` failed or was abandoned: forget it and wake waiters with `error`."""
        self.reserved -= ext.size
        ext.error = error
        self._unindex(ext)
        ext.done.set()
        self._gauge()

    # --- invalidation --------------------------------------------------------------------------

    def forget(self, path: str, etag: str | None = None, *, all_versions: bool = True) -> None:
        """Drop the cached extents of `path` (of one version when `all_versions` is False).

        In-flight fetches are detached: their waiters still get their bytes, nothing is cached.
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
                    self._drop_resident(ext)
        if not versions:
            del self._files[path]
        self._gauge()

    def clear(self) -> None:
        for path in list(self._files):
            self.forget(path)

    # --- internals -----------------------------------------------------------------------------

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

    def unpromise(self, ext: Extent) -> None:
        """`ext` no longer counts as read-ahead owed to a reader: it is an ordinary LRU entry."""
        if ext.promised:
            ext.promised = False
            self.unread_prefetch -= ext.size
            if self.on_unpromise is not None:
                self.on_unpromise(ext)

    def _drop_resident(self, ext: Extent) -> None:
        ext.cached = False
        self.unpromise(ext)
        del self._lru[(ext.path, ext.etag, ext.start)]

    def _evicted(self, ext: Extent) -> None:
        ext.cached = False
        if ext.prefetched:
            self.stats.incr("prefetch_evicted_unread")
        self.unpromise(ext)
        self._unindex(ext)

    def _gauge(self) -> None:
        self.stats.set("cache_bytes", self._lru.currsize)
        self.stats.set("cache_inflight_bytes", self.reserved)
