"""The disk tier of a mount: the chunk store (diskcache.py) seen from the trio thread.

The fetcher asks it before the network (`read`) and hands it what came from the network
(`write`); both run in worker threads, a few at a time, so the trio loop never waits on the
disk. A chunk is one block of the mount (block-aligned, the block size long, shorter only at the
end of a file); an extent that is a whole block is read straight into its buffer (no copy).

Fails soft: a disk error (EIO, ENOSPC, a read-only or vanished directory...) turns the tier off
for `OFF_FOR` seconds, logged once; reads go to the network meanwhile. A chunk that does not check
is unlinked, counted (`disk_corrupt`) and fetched again.

Counters (trio thread): disk_hits, disk_misses, disk_bytes_read, disk_writes, disk_bytes_written,
disk_write_skipped (no room), disk_write_behind (not stored: the writer was behind until the
block left memory),
disk_corrupt, disk_errors, disk_reads_inline and disk_reads_thread (where a chunk read ran),
disk_inline_pauses (the inline gate closed: INLINE_SLOW_RUN slow inline reads in a row).

Concurrency contract: the trio thread only (the store's methods run in worker threads).
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from ..registry import LOCAL, DatastoreConfig
from .diskcache import ChunkError, ChunkStore, StoreId
from .stats import Stats

log = logging.getLogger(__name__)

#: a disk error turns the tier off this long
OFF_FOR = 60.0
#: the store is rescanned this often (other processes' writes, chunks touched by them); its
#: writers also rescan after every RESCAN_SHARE of the cap written (diskcache.py)
RESCAN_EVERY = 30.0
READ_THREADS = 4
_NOWAIT = hasattr(os, "RWF_NOWAIT") and hasattr(os, "preadv")
#: INLINE_SLOW_RUN inline reads (trio thread) in a row slower than INLINE_SLOW send reads to
#: threads for INLINE_PAUSE s. A run, not one: on a busy machine the trio thread is preempted
#: for over a millisecond now and then, and a single such read used to send a whole next job's
#: epoch through the threads (measured: 1724 of 2000 reads, ~80 us of CPU more each); a cold
#: chunk directory makes every read slow, so it still trips the gate after a few.
INLINE_SLOW = 0.001
INLINE_SLOW_RUN = 3
INLINE_PAUSE = 10.0
#: at the end of a mount, chunks still queued are stored for at most this long
DRAIN_TIMEOUT = 8.0
#: the writer thread's nice value: storing runs on CPU that readers (and the job) leave over
WRITER_NICE = 10


class _Writer:
    """One thread at a lower CPU priority that stores chunks, in order: with two cores shared by
    the reader, the job and the daemon, a store at normal priority slowed a cold read by half
    (measured: 1.5 -> 2.1-3.5 s for 256 MiB)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="amlfs-disk-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
        except OSError:
            pass  # stays at the daemon's priority
        while (job := self._jobs.get()) is not None:
            job()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in the writer thread; its result or its exception."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["result"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                box["error"] = e
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        self._jobs.put(job)
        await done.wait()
        if "error" in box:
            raise box["error"]
        return box["result"]

    def close(self, timeout: float) -> int:
        """Store what is queued (at most `timeout` seconds), then stop; chunks left unstored."""
        self._jobs.put(None)
        self._thread.join(timeout)
        return self._jobs.qsize() if self._thread.is_alive() else 0


class InlineGate:
    """Whether chunk reads may run inline on the trio thread: closed for INLINE_PAUSE seconds
    after INLINE_SLOW_RUN inline reads in a row each took longer than INLINE_SLOW (the chunk
    directory is cold and the opens wait for the disk), for good when the filesystem cannot
    read without waiting. One slow read alone (the thread preempted) does not close it."""

    __slots__ = ("closed_until", "slow_run")

    def __init__(self) -> None:
        self.closed_until = 0.0
        self.slow_run = 0  # consecutive slow inline reads

    def open(self, now: float) -> bool:
        return now >= self.closed_until

    def record(self, elapsed: float, now: float) -> bool:
        """One inline read took `elapsed` seconds; True when that closes the gate."""
        if elapsed <= INLINE_SLOW:
            self.slow_run = 0
            return False
        self.slow_run += 1
        if self.slow_run < INLINE_SLOW_RUN:
            return False
        self.slow_run = 0
        self.closed_until = max(self.closed_until, now + INLINE_PAUSE)
        return True

    def close_for_good(self) -> None:
        self.closed_until = float("inf")


class DiskTier:
    def __init__(
        self,
        store: ChunkStore,
        sid: StoreId,
        datastore: str,
        block_size: int,
        stats: Stats,
        max_pending: int = 64 << 20,
    ):
        self.store = store
        #: bytes queued to the writer at most: a block that would queue more is not stored
        #: (`disk_write_behind`), so that a writer slower than the network never holds more
        #: than this of the memory budget pinned
        self.max_pending = max(max_pending, block_size)
        self.pending = 0
        self.sid = sid
        self.datastore = datastore
        self.block_size = block_size
        self.stats = stats
        self._read_limiter = trio.CapacityLimiter(READ_THREADS)
        self._writer: _Writer | None = None
        self._inline = InlineGate()
        self.off_until = 0.0
        self.last_error: str | None = None
        self._said: set[int | None] = set()  # errnos already logged at warning level

    # --- state ---------------------------------------------------------------------------------

    def usable(self, etag: str | None) -> bool:
        """Chunks are keyed by ETag: an object without one is never cached on disk."""
        return etag is not None and time.monotonic() >= self.off_until

    def _off(self, e: OSError, what: str) -> None:
        self.stats.incr("disk_errors")
        was_on = time.monotonic() >= self.off_until
        self.off_until = time.monotonic() + OFF_FOR
        self.last_error = f"{what}: {e}"
        if was_on:
            # Once per kind of error: a cache directory that stays read-only is said once, not
            # every time the tier is tried again.
            level = logging.DEBUG if e.errno in self._said else logging.WARNING
            self._said.add(e.errno)
            log.log(level, "disk cache off for %g s after %s: %s", OFF_FOR, what, e)

    # --- reads and writes ----------------------------------------------------------------------

    def chunks(self, start: int, end: int, size: int) -> list[tuple[int, int]]:
        """(offset, length) of every chunk that [start, end) of a file of `size` bytes touches:
        an extent is one block, or several when the read-ahead's GETs have grown past a block
        (readahead.request_size)."""
        bs = self.block_size
        out = []
        cstart = start - start % bs
        while cstart < end and cstart < size:
            out.append((cstart, min(bs, size - cstart)))
            cstart += bs
        return out

    async def read(self, path: str, etag: str, size: int, start: int, buf: bytearray) -> bool:
        """Fill `buf` (bytes [start, start + len(buf)) of the file) from the disk: True on a hit
        (every chunk it touches). A miss, a corrupt chunk or a disk error: False (the caller
        fetches the whole range from the network)."""
        end = start + len(buf)
        view = memoryview(buf)
        for cstart, clen in self.chunks(start, end, size):
            lo, hi = max(start, cstart), min(end, cstart + clen)
            if not await self._read_chunk(
                path, etag, cstart, clen, lo, view[lo - start : hi - start]
            ):
                self.stats.incr("disk_misses")
                return False
        self.stats.incr("disk_hits")
        self.stats.incr("disk_bytes_read", len(buf))
        return True

    async def _read_chunk(
        self, path: str, etag: str, cstart: int, clen: int, lo: int, out: memoryview
    ) -> bool:
        """Fill `out` with the bytes of chunk (cstart, clen) from file offset `lo`: straight into
        `out` for the whole chunk, else the chunk into a scratch buffer (it is checked whole)."""
        key = self.sid.key(path, etag, cstart, clen)
        whole = cstart == lo and clen == len(out)
        target = out if whole else memoryview(bytearray(clen))
        try:
            hit = self._read_inline(key, cstart, target)
            self.stats.incr("disk_reads_inline" if hit is not None else "disk_reads_thread")
            if hit is None:
                hit = await trio.to_thread.run_sync(
                    self.store.read_into, self.sid, key, cstart, target,
                    limiter=self._read_limiter,
                )  # fmt: skip
        except ChunkError as e:
            self.stats.incr("disk_corrupt")
            log.warning("disk cache: %s: discarded, fetching again", e)
            return False
        except OSError as e:
            self._off(e, f"reading a chunk of {path!r}")
            return False
        if hit and not whole:
            out[:] = target[lo - cstart : lo - cstart + len(out)]
        return bool(hit)

    def _read_inline(self, key: bytes, cstart: int, target: memoryview) -> bool | None:
        """The read on the trio thread when it cannot wait for the disk: the chunk's pages are
        all in the page cache (RWF_NOWAIT), as after a recent job; None: read it in a thread.

        A worker thread's round trip costs ~80 us of CPU, the read itself ~6 us for 128 KiB
        (measured). The open may still wait for a cold directory: see InlineGate."""
        if not _NOWAIT or not self._inline.open(time.monotonic()):
            return None
        t0 = time.perf_counter()
        try:
            return self.store.read_into(self.sid, key, cstart, target, nowait=True)
        except BlockingIOError:
            return None
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                self._inline.close_for_good()  # this filesystem cannot: threads only
                return None
            raise
        finally:
            if self._inline.record(time.perf_counter() - t0, time.monotonic()):
                self.stats.incr("disk_inline_pauses")

    def has_room(self, n: int) -> bool:
        """Storing `n` more bytes would queue at most `max_pending`."""
        return self.pending + n <= self.max_pending

    async def write(self, path: str, etag: str, start: int, data: bytes | memoryview) -> bool:
        """Store a whole chunk (see `chunks`), in the writer thread; False if it was not."""
        key = self.sid.key(path, etag, start, len(data))
        if self._writer is None:
            self._writer = _Writer()
        self.pending += len(data)
        try:
            ok = await self._writer.run(self._write, key, start, data)
        except OSError as e:
            self._off(e, f"writing a chunk of {path!r}")
            return False
        finally:
            self.pending -= len(data)
        if not ok:
            self.stats.incr("disk_write_skipped")
            return False
        self.stats.incr("disk_writes")
        self.stats.incr("disk_bytes_written", len(data))
        return True

    def _write(self, key: bytes, start: int, data: bytes | memoryview) -> bool:
        self.store.describe_store(self.sid, self.datastore)
        return self.store.write(self.sid, key, start, data)

    async def has(self, path: str, etag: str, start: int, length: int) -> bool:
        key = self.sid.key(path, etag, start, length)
        try:
            return await trio.to_thread.run_sync(self.store.contains, self.sid, key,
                                                 limiter=self._read_limiter)  # fmt: skip
        except OSError as e:
            self._off(e, f"looking up a chunk of {path!r}")
            return False

    # --- the background index ------------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Learn the store's size in the background, now and then (never before serving)."""
        task_status.started()
        await self._index()

    def close(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """After the trio run: store what the writer still has queued (bounded), so that the
        next mount finds everything this one read (the unmount waits for it)."""
        if self._writer is not None:
            left = self._writer.close(timeout)
            self._writer = None
            if left:
                log.info("disk cache: %d chunks not stored (stopped after %g s)", left, timeout)

    async def _index(self) -> None:
        while True:
            try:
                await trio.to_thread.run_sync(self.store.rescan, abandon_on_cancel=True)
            except OSError as e:
                self._off(e, "scanning the cache directory")
            await trio.sleep(RESCAN_EVERY)

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "dir": self.store.root,
            "capacity": self.store.capacity,
            "used": self.store.used if self.store.scanned else None,
            "state": "on" if now >= self.off_until else f"off for {self.off_until - now:.0f} s",
            "last_error": self.last_error,
        }


def store_id(ds: DatastoreConfig) -> StoreId | None:
    """Where the datastore's objects live, for the disk cache's keys (None: `local`, not cached)."""
    if ds.type == LOCAL:
        return None
    endpoint = ds.account_url or f"{ds.protocol}://{ds.account_name}.{ds.endpoint}"
    container = ds.container_name or ds.file_share_name or ds.filesystem or ""
    return StoreId(ds.type, endpoint.rstrip("/"), container)
