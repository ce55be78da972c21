"""Preload: hydrate a whole tree of a datastore into the disk cache, at the lowest priority.

Used by a mount with `--preload` (after it is live, beside its readers) and by
`amlfs cache warm` (no mount). It lists the tree once, then fetches every block that the disk
cache does not hold yet and stores it there, never in the memory cache: a preload does not push
out what readers cached. Each block's buffer is charged to the memory budget ("inflight") and
only taken when it fits (a preload waits, readers never do), and each storage read takes a slot
that `slot()` gives: in a mount, the fetcher's prefetch slots, which leave room to readers.

Progress (`progress`): state (listing, running, done, failed), files and bytes done of total,
files that could not be loaded (changed meanwhile, failed after retries, no room on disk).

Concurrency contract: the trio thread only.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import trio

from ..backends.base import ObjectInfo
from ..backends.bridge import TrioBackend
from ..backends.errors import BackendError, Transient
from .budget import MemoryBudget
from .disktier import DiskTier
from .stats import Stats

log = logging.getLogger(__name__)

#: blocks a preload fetches at once
CONCURRENCY = 8
ATTEMPTS = 4
#: a preload that cannot take its buffer from the budget waits this long before trying again
ROOM_POLL = 0.05


class Preloader:
    def __init__(
        self,
        backend: TrioBackend,
        disk: DiskTier,
        budget: MemoryBudget,
        stats: Stats,
        *,
        block_size: int,
        slot: Callable[[], AbstractAsyncContextManager[Any]],
        concurrency: int = CONCURRENCY,
    ):
        self.backend = backend
        self.disk = disk
        self.budget = budget
        self.stats = stats
        self.block_size = block_size
        self.slot = slot
        self.concurrency = concurrency
        self.progress: dict[str, Any] = {
            "state": "waiting",
            "files_total": 0,
            "files_done": 0,
            "files_failed": 0,
            "bytes_total": 0,
            "bytes_done": 0,
            "bytes_fetched": 0,
        }
        self._left: dict[str, int] = {}  # blocks not stored yet, by path
        self._failed: set[str] = set()

    async def run(self, path: str) -> dict[str, Any]:
        """Preload every file below `path`; the final progress."""
        p = self.progress
        p["state"] = "listing"
        try:
            infos = await self.backend.call(_files_below, self.backend.sync, path)
        except BackendError as e:
            p["state"] = f"failed: {e}"
            log.warning("preload of %r: cannot list it: %s", path, e)
            return p
        p["files_total"] = len(infos)
        p["bytes_total"] = sum(i.size for i in infos)
        p["state"] = "running"
        send, recv = trio.open_memory_channel[tuple[ObjectInfo, int, int]](0)
        async with trio.open_nursery() as nursery:
            for _ in range(self.concurrency):
                nursery.start_soon(self._worker, recv.clone())
            recv.close()
            async with send:
                for info in infos:
                    if info.size == 0 or info.etag is None:
                        self._file_over(info.path, ok=info.etag is not None or info.size == 0)
                        continue
                    blocks = -(-info.size // self.block_size)
                    self._left[info.path] = blocks
                    for off in range(0, info.size, self.block_size):
                        await send.send((info, off, min(self.block_size, info.size - off)))
        p["state"] = "done"
        log.info(
            "preload of %r done: %d files, %d bytes (%d fetched), %d failed", path,
            p["files_done"], p["bytes_done"], p["bytes_fetched"], p["files_failed"],
        )  # fmt: skip
        return p

    async def _worker(self, recv: trio.MemoryReceiveChannel) -> None:
        async with recv:
            async for info, off, n in recv:
                ok = info.path not in self._failed and await self._block(info, off, n)
                if ok:
                    self.progress["bytes_done"] += n
                else:
                    self._failed.add(info.path)
                self._left[info.path] -= 1
                if self._left[info.path] == 0:
                    del self._left[info.path]
                    self._file_over(info.path, ok=info.path not in self._failed)

    def _file_over(self, path: str, ok: bool) -> None:
        self.progress["files_done" if ok else "files_failed"] += 1
        self._failed.discard(path)

    async def _block(self, info: ObjectInfo, off: int, n: int) -> bool:
        """Store one block of `info` on disk (unless it is there); False if it could not be."""
        assert info.etag is not None
        disk = self.disk
        if not disk.usable(info.etag):
            return False
        if await disk.has(info.path, info.etag, off, n):
            return True
        while not self.budget.try_take("inflight", n):
            await trio.sleep(ROOM_POLL)
        try:
            buf = bytearray(n)
            try:
                await self._read(info, off, buf)
            except BackendError as e:
                log.debug("preload of %r [%d, %d) failed: %s", info.path, off, off + n, e)
                return False
            return await disk.write(info.path, info.etag, off, memoryview(buf).toreadonly())
        finally:
            self.budget.give("inflight", n)

    async def _read(self, info: ObjectInfo, off: int, buf: bytearray) -> None:
        for attempt in range(ATTEMPTS):
            try:
                async with self.slot():
                    self.stats.incr("backend.read_range")
                    got = await self.backend.read_range_into(
                        info.path, off, memoryview(buf), info.etag
                    )
            except Transient:
                if attempt == ATTEMPTS - 1:
                    raise
                await trio.sleep(0.1 * 2**attempt * random.uniform(0.5, 1.0))
                continue
            self.stats.incr("bytes_fetched", got)
            self.progress["bytes_fetched"] += got
            if got != len(buf):
                raise BackendError(f"{info.path!r}: short read at {off}", info.path)
            return


def _files_below(backend, path: str) -> list[ObjectInfo]:
    return [i for i in backend.walk(path) if not i.is_dir]


#: the memory a warm (no mount) may hold in block buffers, at most
WARM_MEMORY = 256 << 20


def warm(
    backend,
    ds,
    path: str,
    *,
    cache_dir: str,
    capacity: int,
    block_size: int,
    workers: int = CONCURRENCY,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Preload `path` of datastore `ds` (opened as `backend`) into the disk cache at `cache_dir`
    without a mount (`amlfs cache warm`), `block_size` being that of the mounts that will read
    it; the final progress and the counters. UsageError for a `local` datastore."""
    from ..errors import UsageError
    from .diskcache import ChunkStore
    from .disktier import store_id

    sid = store_id(ds)
    if sid is None:
        raise UsageError(f"datastore {ds.name!r} is local: it is never cached on disk")
    stats = Stats()
    tb = TrioBackend(backend, max_threads=workers + 4)
    store = ChunkStore(cache_dir, capacity)
    disk = DiskTier(store, sid, ds.name, block_size, stats)
    budget = MemoryBudget(max(WARM_MEMORY, 2 * workers * block_size), stats)
    limiter = trio.CapacityLimiter(workers)

    def slot() -> trio.CapacityLimiter:
        return limiter

    pre = Preloader(tb, disk, budget, stats, block_size=block_size, slot=slot, concurrency=workers)

    async def main() -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            if on_progress is not None:

                async def report() -> None:
                    while True:
                        on_progress(pre.progress)
                        await trio.sleep(1.0)

                nursery.start_soon(report)
            result = await pre.run(path)
            nursery.cancel_scope.cancel()
        return {**result, "counters": stats.snapshot(), "disk": disk.describe()}

    return trio.run(main)
