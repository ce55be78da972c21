"""A thread-safe block cache with read-ahead for one open remote file (fsspec's read side).

The file is cut into fixed blocks; a read waits for the blocks it touches and copies once from
them into the bytes it returns. A reader that goes forward (CSV parsers, Parquet scanners that
read column chunk after column chunk) gets a read-ahead window that doubles on every sequential
read up to `max_readahead` blocks; a jump elsewhere (a Parquet footer, a random probe) drops the
window to nothing, so random readers fetch only the blocks they touch, and a small read there
(up to a quarter block) only its own bytes.

Like fsspec's caching.py, the cache never knows where bytes come from: it is given
`fetch_into(offset, buf, abort) -> int` and a `submit(fn)` that runs `fn` on some worker
thread. Memory: at most `max_readahead` + the blocks of the current read + `keep` blocks are
held; blocks behind the reader are evicted first. `close()` cancels the fetches in flight
through their `Abort` and drops every block.

Concurrency: one lock guards the block table; fetches run outside it, each writing only into
its own block's buffer, which no reader sees before the block's future completes.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future

from ..backends.base import Abort
from ..backends.errors import Aborted

log = logging.getLogger(__name__)

Fetch = Callable[[int, memoryview, Abort], int]


class ShortRead(OSError):
    """The object ended before its pinned size: it cannot be read consistently."""


class _Block:
    __slots__ = ("future", "abort")

    def __init__(self) -> None:
        self.future: Future[memoryview] = Future()
        self.abort = Abort()


class BlockReader:
    """Reads of one object of `size` bytes through a cache of `block_size` blocks."""

    def __init__(
        self,
        fetch_into: Fetch,
        size: int,
        block_size: int,
        submit: Callable[[Callable[[], None]], object],
        max_readahead: int = 4,
        keep: int = 2,
        name: str = "",
    ):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.fetch_into = fetch_into
        self.size = size
        self.block_size = block_size
        self.submit = submit
        self.max_readahead = max(0, max_readahead)
        self.keep = max(0, keep)
        self.name = name
        self.nblocks = -(-size // block_size)
        self._blocks: OrderedDict[int, _Block] = OrderedDict()
        self._lock = threading.Lock()
        self._last_end = 0
        self._window = 0
        self._closed = False
        self.hits = 0
        self.misses = 0
        self.fetched = 0

    # --- the fsspec cache interface (AbstractBufferedFile calls these) ----------------------

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        start = 0 if start is None else start
        end = self.size if end is None else min(end, self.size)
        if start >= end:
            return b""
        first, last = start // self.block_size, (end - 1) // self.block_size
        planned = self._plan(start, end, first, last)
        if planned is None:
            return self._fetch_exact(start, end)
        inline, wanted = planned
        for i, blk in inline:
            self._load(i, blk)
        pieces = []
        try:
            for i, blk in wanted:
                view = blk.future.result()
                lo = max(start - i * self.block_size, 0)
                hi = min(end - i * self.block_size, len(view))
                pieces.append(view[lo:hi])
        except BaseException:
            self._forget_failed(wanted)
            raise
        return bytes(pieces[0]) if len(pieces) == 1 else b"".join(pieces)

    def read_buffer(self, start: int, end: int) -> bytes | bytearray:
        """Like `_fetch`, into one new bytearray, for callers that take any buffer (pyarrow's
        `read_buffer`): blocks that are cached or in flight are copied in, the missing ones
        received straight into it and not cached (no copy). Read-ahead is planned as usual."""
        end = min(end, self.size)
        if start >= end:
            return b""
        first, last = start // self.block_size, (end - 1) // self.block_size
        planned = self._plan(start, end, first, last, direct=True)
        if planned is None:
            return self._fetch_exact(start, end)
        _, wanted = planned
        out = bytearray(end - start)
        view = memoryview(out)
        cached = {i for i, _ in wanted}
        missing = [i for i in range(first, last + 1) if i not in cached]

        def direct(i: int) -> None:
            lo = max(start, i * self.block_size)
            hi = min(end, (i + 1) * self.block_size)
            got = self.fetch_into(lo, view[lo - start : hi - start], Abort())
            if got != hi - lo:
                raise ShortRead(
                    f"{self.name}: the object ended at {lo + got} bytes, before its size"
                    f" {self.size}: it changed while it was read"
                )
            with self._lock:
                self.fetched += got

        futures = []
        for i in missing[1:]:
            fut: Future[None] = Future()
            futures.append(fut)
            self.submit(lambda i=i, fut=fut: _run_into(fut, lambda: direct(i)))
        error: BaseException | None = None
        try:
            if missing:
                direct(missing[0])
        except BaseException as e:
            error = e
        for fut in futures:
            try:
                fut.result()
            except BaseException as e:
                error = error or e
        try:
            for i, blk in wanted:
                block = blk.future.result()
                lo = max(start, i * self.block_size)
                hi = min(end, (i + 1) * self.block_size)
                off = i * self.block_size
                view[lo - start : hi - start] = block[lo - off : hi - off]
        except BaseException as e:
            self._forget_failed(wanted)
            error = error or e
        if error is not None:
            raise error
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            blocks, self._blocks = list(self._blocks.values()), OrderedDict()
        for blk in blocks:
            blk.abort.cancel()

    def _log_stats(self) -> str:
        return f"hits={self.hits} misses={self.misses} fetched={self.fetched}"

    # --- planning and loading ---------------------------------------------------------------

    def _plan(
        self, start: int, end: int, first: int, last: int, direct: bool = False
    ) -> tuple[list[tuple[int, _Block]], list[tuple[int, _Block]]] | None:
        """Under the lock: the blocks this read needs (created if missing), which of them the
        calling thread loads itself, and the read-ahead blocks handed to workers. None: a
        small read away from the last one and not cached, fetched as it is (a Parquet footer
        needs its 64 KiB, not the 8 MiB block around them). `direct`: missing blocks of this
        read are left out (the caller receives them itself), only existing ones are wanted."""
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on closed file.")
            gap = start - self._last_end
            # Forward from where the last read ended, or from the start of the file.
            if 0 <= gap <= self.block_size or start == 0:
                self._window = min(self.max_readahead, max(1, self._window * 2))
            else:
                self._window = 0
            self._last_end = end
            if (
                not self._window
                and end - start <= self.block_size // 4
                and any(i not in self._blocks for i in range(first, last + 1))
            ):
                self.misses += 1
                return None
            wanted: list[tuple[int, _Block]] = []
            missing: list[tuple[int, _Block]] = []
            for i in range(first, last + 1):
                blk = self._blocks.get(i)
                if blk is None and direct:
                    self.misses += 1
                    continue
                if blk is None:
                    blk = self._blocks[i] = _Block()
                    missing.append((i, blk))
                    self.misses += 1
                else:
                    self._blocks.move_to_end(i)
                    self.hits += 1
                wanted.append((i, blk))
            ahead = []
            for i in range(last + 1, min(last + 1 + self._window, self.nblocks)):
                if i not in self._blocks:
                    blk = self._blocks[i] = _Block()
                    ahead.append((i, blk))
            self._evict(first, last + self._window)
        # The caller loads the first missing block itself (no queueing behind read-ahead of
        # other files); workers load the rest of this read, then the read-ahead.
        for i, blk in missing[1:] + ahead:
            try:
                self.submit(lambda i=i, blk=blk: self._load(i, blk))
            except Exception as e:  # a pool shut down: fail the block, never leave it pending
                if blk.future.set_running_or_notify_cancel():
                    blk.future.set_exception(e)
        return missing[:1], wanted

    def _fetch_exact(self, start: int, end: int) -> bytes:
        buf = bytearray(end - start)
        got = self.fetch_into(start, memoryview(buf), Abort())
        if got != len(buf):
            raise ShortRead(
                f"{self.name}: the object ended at {start + got} bytes, before its size"
                f" {self.size}: it changed while it was read"
            )
        with self._lock:
            self.fetched += got
        return bytes(buf)

    def _evict(self, first: int, last: int) -> None:
        cap = (last - first + 1) + self.keep
        if len(self._blocks) <= cap:
            return
        # Behind the reader first (oldest use first), then anything outside [first, last].
        victims = [i for i in self._blocks if i < first] + [i for i in self._blocks if i > last]
        for i in victims:
            if len(self._blocks) <= cap:
                break
            self._blocks.pop(i).abort.cancel()

    def _load(self, i: int, blk: _Block) -> None:
        if not blk.future.set_running_or_notify_cancel():
            return
        offset = i * self.block_size
        want = min(self.block_size, self.size - offset)
        try:
            blk.abort.check(self.name)
            buf = memoryview(bytearray(want))
            got = self.fetch_into(offset, buf, blk.abort)
            if got != want:
                raise ShortRead(
                    f"{self.name}: the object ended at {offset + got} bytes, before its size"
                    f" {self.size}: it changed while it was read"
                )
        except BaseException as e:
            blk.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
            return
        with self._lock:
            self.fetched += want
        blk.future.set_result(buf)

    def _forget_failed(self, wanted: list[tuple[int, _Block]]) -> None:
        """A failed block is dropped, so that the next read fetches it again."""
        with self._lock:
            for i, blk in wanted:
                if blk.future.done() and blk.future.exception() is not None:
                    if self._blocks.get(i) is blk:
                        del self._blocks[i]


__all__ = ["Aborted", "BlockReader", "ShortRead"]


def _run_into(fut: Future[None], fn: Callable[[], None]) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fn()
    except BaseException as e:
        fut.set_exception(e)
        if not isinstance(e, Exception):
            raise
        return
    fut.set_result(None)
