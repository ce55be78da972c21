"""Read-ahead policy: per-handle access-pattern detection and window, and the detection of
in-order directory walks (whose next small files are worth fetching). Pure policy: no I/O, no trio.

The data path feeds every read (offset, size, whether its bytes were already cached) to a
`ReadAhead` and gets back an `Advice`: the range to fetch if the read must wait (`demand`) and the
ranges to prefetch behind it. Fetching, caching and de-duplication are the data path's job; asking
for a range that is already cached or in flight costs nothing there.

The policy follows the peers (see /work/shared/design.md, "The read path"):

- A stream starts (at the first read, or after a seek) with a small request of `initial_window`
  bytes, so the first byte comes quickly and a random reader does not pay for whole blocks.
- From the second read of a stream on, prefetch keeps `window` bytes requested ahead of the
  reader, in whole blocks, topping up when less than half of the window remains (mountpoint-s3's
  backpressure controller). The window doubles when the reader finds its data not ready
  (starvation), once per generation of requests so that concurrent kernel requests stalled on
  one fetch count once, up to the cap; it halves when the global budget refuses a reservation,
  and never blocks on the budget.
- Kernel reordering is tolerated: a backward step of up to 1 MiB (or two requests), or a forward
  skip that lands in what is already requested (at most 16 MiB ahead) or within 1 MiB, is still
  sequential.
- After `SEEKS_FOR_RANDOM` seeks the handle turns random: each miss fetches only a request-sized
  range (the average run length rounded up to 64 KiB, between 64 KiB and 1 MiB, like gcsfuse's
  random reader), never whole blocks, and nothing is prefetched. A sequential run of
  `RETURN_TO_SEQUENTIAL` bytes turns it sequential again.
- Files of at most one block are fetched whole on the first read.
- The size of one prefetch GET grows with the window (`request_size`: a quarter of it, in whole
  blocks, from one block up to `MAX_REQUEST`), so a sequential reader that the storage cannot
  keep up with (its window grown by starvation) costs the storage fewer, larger GETs (fewer billed transactions; Azurite spends ~40% less CPU per GiB served in
  32 MiB ranges than in 8 MiB ones) while about four stay in flight. `Advice.piece` says how
  large; the data path splits prefetch holes at multiples of it instead of at block boundaries.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backends.base import ObjectInfo
    from .inodes import Listing

KiB = 1024
MiB = 1024 * KiB

FORWARD_SKIP = 16 * MiB  # the farthest forward jump still served from the stream
REORDER_SLACK = 1 * MiB  # backward step, and unrequested forward skip, still called sequential
SEEKS_FOR_RANDOM = 3
RANDOM_MIN = 64 * KiB
RANDOM_MAX = 1 * MiB
RANDOM_ALIGN = 64 * KiB
RETURN_TO_SEQUENTIAL = 4 * MiB
RUNS_KEPT = 8
MAX_REQUEST = 64 * MiB  # the largest prefetch GET

Range = tuple[int, int]


@dataclass
class Advice:
    """What to fetch for one read. Ranges are half-open [start, end) inside the file.

    `demand` covers the read and is what the reader waits for when its bytes were not ready;
    `prefetch` ranges each lie within one aligned `piece` (a multiple of the block size; 0: one
    block), in file order, and are fetched in the background, one GET per piece.
    """

    demand: Range
    prefetch: list[Range] = field(default_factory=list)
    piece: int = 0
    random: bool = False
    reset: bool = False  # the read was a seek: read-ahead for the old position is moot


class ReadAhead:
    """The read-ahead policy of one open file handle."""

    def __init__(self, file_size: int, block_size: int, initial_window: int, max_window: int):
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        self.file_size = max(0, file_size)
        self.block_size = block_size
        self.cap = max(1, max_window)
        self.initial_window = max(1, min(initial_window, self.cap))
        self.window = self.initial_window
        self.small = self.file_size <= block_size
        self.random = False
        self.pos: int | None = None  # end of the stream so far (highest byte read + 1)
        self.stream_start = 0  # where the current stream began
        self.starve_mark = 0  # stalls on bytes requested before this were already counted
        self.requested = 0  # end of what the stream has asked for, ahead of pos
        self.fresh = True  # the next read is the first of a stream
        self.seeks = 0  # seeks since the last long sequential run
        self.run = 0  # bytes read in the current sequential run
        self.runs: deque[int] = deque(maxlen=RUNS_KEPT)
        self.max_request = 0  # largest read seen (bounded), to size the reorder slack

    # --- feedback ------------------------------------------------------------------------------

    def on_read(self, offset: int, size: int, ready: bool) -> Advice:
        """Record a read of `size` bytes at `offset`; `ready` says its bytes were all cached."""
        end = min(self.file_size, offset + max(0, size))
        if offset < 0 or offset >= end:
            edge = max(0, min(offset, self.file_size))
            return Advice((edge, edge))
        if self.small:
            return Advice((0, self.file_size))

        self.max_request = max(self.max_request, min(end - offset, 4 * MiB))
        self.window = max(1, min(self.window, self.cap))
        reset = False
        if self.pos is None:
            self._new_stream(offset)
            self.run = end - offset
        elif self._sequential(offset):
            self.run += end - offset
            if (
                not ready
                and not self.fresh
                and not self.random
                and offset >= max(self.stream_start, self.starve_mark)
            ):
                # Starvation: the reader ran into bytes the stream should have had ready. Count
                # it once per generation of requests: concurrent reads stalled on the same
                # fetch are one stall. (A step back before the stream's start is no signal.)
                self.window = min(self.cap, self.window * 2)
                self.starve_mark = self.requested
            if self.random and self.run >= RETURN_TO_SEQUENTIAL:
                self.random = False
                self.seeks = 0
                self.runs.clear()
                self.window = self.initial_window
                self.requested = max(self.requested, self.pos)
        else:
            reset = True
            self.seeks += 1
            self.runs.append(self.run)
            self.run = 0
            if self.seeks >= SEEKS_FOR_RANDOM:
                self.random = True
            self._new_stream(offset)
            self.run = end - offset
        assert self.pos is not None
        self.pos = max(self.pos, end)

        if self.random:
            self.fresh = False
            n = max(end - offset, self.random_size())
            demand = (offset, min(self.file_size, offset + n))
            self.requested = max(self.requested, demand[1] if not ready else end)
            return Advice(demand, random=True, reset=reset)

        first_of_stream = self.fresh
        if first_of_stream:
            self.fresh = False
            first = min(offset + self.initial_window, self._block_end(offset))
            demand = (offset, min(self.file_size, max(end, first)))
        else:
            demand = (offset, self._block_end(end - 1))
        if not ready:
            self.requested = max(self.requested, demand[1])
        self.requested = max(self.requested, end)
        # One read is no evidence of a stream: prefetch from the second on.
        prefetch = [] if first_of_stream else self._prefetch()
        return Advice(demand, prefetch, reset=reset, piece=self.request_size())

    def on_refused(self, start: int) -> None:
        """The budget refused the prefetch range starting at `start` (and so all after it)."""
        self.window = max(self.initial_window, self.window // 2)
        if self.pos is not None:
            self.requested = max(self.pos, min(self.requested, start))

    # --- helpers -------------------------------------------------------------------------------

    def random_size(self) -> int:
        """The size of a random-mode fetch: the average run length, rounded up to 64 KiB."""
        runs = [*self.runs, self.run] if self.run else list(self.runs)
        avg = sum(runs) // len(runs) if runs else RANDOM_MIN
        avg = -(-avg // RANDOM_ALIGN) * RANDOM_ALIGN
        return max(RANDOM_MIN, min(RANDOM_MAX, avg))

    def request_size(self) -> int:
        """The size of one prefetch GET: a quarter of the window in whole blocks, between one
        block and MAX_REQUEST (0 -- one block, the data path's default -- while the cap is
        below a block)."""
        bs = self.block_size
        if self.cap < bs:
            return 0
        return max(bs, min(MAX_REQUEST, self.window // 4) // bs * bs)

    def outstanding(self) -> int:
        """Bytes requested ahead of the reader."""
        return 0 if self.pos is None else max(0, self.requested - self.pos)

    def _sequential(self, offset: int) -> bool:
        assert self.pos is not None
        if offset <= self.pos:
            # Two concurrent requests swapped put the earlier one two requests behind.
            return offset >= self.pos - max(REORDER_SLACK, 2 * self.max_request)
        ahead = min(FORWARD_SKIP, max(self.requested - self.pos, REORDER_SLACK))
        return offset <= self.pos + ahead

    def _new_stream(self, offset: int) -> None:
        self.fresh = True
        self.window = self.initial_window
        self.requested = offset
        self.pos = offset
        self.stream_start = offset
        self.starve_mark = offset

    def _block_end(self, offset: int) -> int:
        return min(self.file_size, (offset // self.block_size + 1) * self.block_size)

    def _prefetch(self) -> list[Range]:
        assert self.pos is not None
        if self.requested >= self.file_size or self.requested - self.pos >= self.window // 2:
            return []
        target = self.pos + self.window
        if self.cap < self.block_size:
            # A share of the budget smaller than a block: prefetch in pieces of the window.
            end = min(self.file_size, -(-target // RANDOM_ALIGN) * RANDOM_ALIGN)
        else:
            end = self._block_end(target - 1)
            if end - self.pos > self.cap:
                # Whole blocks; round down so that the outstanding bytes stay within the cap.
                end = (target // self.block_size) * self.block_size
        if end <= self.requested:
            return []
        out: list[Range] = []
        start = self.requested
        piece = self.request_size() or self.block_size
        while start < end:
            stop = min(end, (start // piece + 1) * piece)
            out.append((start, stop))
            start = stop
        self.requested = end
        return out


# --- directory walks ------------------------------------------------------------------------------


@dataclass
class _Walk:
    last: int
    streak: int
    prefetched_upto: int


class WalkDetector:
    """Spots a reader opening a directory's files in listing order (an image dataset read by a
    data loader) and names the next small files worth fetching before they are opened.

    Parallel readers open neighbouring files slightly out of order, so any open within `slack`
    positions of the furthest one seen counts as part of the walk.
    """

    def __init__(
        self, ahead: int, max_size: int, *, slack: int = 16, streak: int = 2, max_dirs: int = 256
    ):
        self.ahead = ahead
        self.max_size = max_size
        self.slack = slack
        self.streak = streak
        self.max_dirs = max_dirs
        self._walks: OrderedDict[str, _Walk] = OrderedDict()

    def on_open(self, directory: str, listing: Listing, name: str) -> list[ObjectInfo]:
        """Note that `name` in `directory` was opened; return the files to prefetch now."""
        pos = listing.position(name)
        if pos is None or self.ahead <= 0:
            return []
        walk = self._walks.get(directory)
        if walk is not None and walk.last - self.slack < pos <= walk.last + self.slack:
            if pos != walk.last:
                walk.streak += 1
            walk.last = max(walk.last, pos)
            self._walks.move_to_end(directory)
        else:
            walk = self._walks[directory] = _Walk(last=pos, streak=1, prefetched_upto=pos)
            while len(self._walks) > self.max_dirs:
                self._walks.popitem(last=False)
        if walk.streak < self.streak:
            return []
        start = max(walk.prefetched_upto, walk.last) + 1
        stop = min(len(listing.entries), walk.last + 1 + self.ahead)
        if start >= stop:
            return []
        walk.prefetched_upto = stop - 1
        return [
            e for e in listing.entries[start:stop] if not e.is_dir and 0 < e.size <= self.max_size
        ]
