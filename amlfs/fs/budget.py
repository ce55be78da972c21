"""One byte budget for everything the mount daemon holds: cached blocks, the buffers of fetches in
flight (counted until the worker thread writing into one has really let go of it), cached
directory listings and the pages of listings being read.

Holders take bytes from named accounts ("cache", "inflight", "listings") and give them back.
When a taker needs room, the budget asks its evictors (registered by the holders of what can be
dropped: the block cache's LRU, the listing cache) to free bytes, in registration order.

Two ways to take:
- `try_take`: for work nobody waits for (prefetch, background listings): refused, never
  overdrawn, when evicting cannot make room.
- `take`: for what a waiting request needs: it evicts what it can and is granted anyway, so the
  budget may be overdrawn by the requests in progress (each at most one block, or one listing
  page); `available()` lets the caller size such a request down first.

Concurrency contract: the trio thread only; no method awaits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .stats import Stats

#: an evictor frees at least the bytes asked for if it can; it returns what it freed
Evictor = Callable[[int], int]


class MemoryBudget:
    def __init__(self, capacity: int, stats: Stats | None = None):
        if capacity <= 0:
            raise ValueError(f"a memory budget must be positive, not {capacity!r}")
        self.capacity = capacity
        self.stats = stats
        self.used: Counter[str] = Counter()
        self.total = 0
        self.peak = 0
        self._evictors: list[tuple[Evictor, Callable[[], int]]] = []

    def add_evictor(self, evict: Evictor, evictable: Callable[[], int]) -> None:
        """Register what can be dropped to make room: `evict(n)` frees about `n` bytes and
        returns what it freed; `evictable()` says how much it could free at most."""
        self._evictors.append((evict, evictable))

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.total)

    def available(self) -> int:
        """Bytes that could be granted without overdrawing: free plus evictable."""
        return self.free + sum(evictable() for _, evictable in self._evictors)

    def try_take(self, account: str, n: int) -> bool:
        """Take `n` bytes if they fit, evicting as needed; False (nothing taken) if they cannot."""
        if self.total + n > self.capacity:
            if self.available() < n:
                return False
            self._evict(self.total + n - self.capacity)
            if self.total + n > self.capacity:
                return False
        self._add(account, n)
        return True

    def take(self, account: str, n: int) -> None:
        """Take `n` bytes for a request that waits: evict what can be evicted, then take."""
        if self.total + n > self.capacity:
            self._evict(self.total + n - self.capacity)
            if self.total + n > self.capacity and self.stats is not None:
                self.stats.incr("budget_overdrawn")
        self._add(account, n)

    def give(self, account: str, n: int) -> None:
        self.used[account] -= n
        self.total -= n
        assert self.used[account] >= 0, (account, self.used[account])
        self._gauge(account)

    def move(self, src: str, dst: str, n: int) -> None:
        """`n` bytes change holder (a fetched buffer becomes a cached block): no eviction."""
        self.used[src] -= n
        self.used[dst] += n
        self._gauge(src)
        self._gauge(dst)

    def settle(self) -> None:
        """After an overdraw (or a pinned block turned evictable): evict back to the capacity."""
        if self.total > self.capacity:
            self._evict(self.total - self.capacity)

    def snapshot(self) -> dict[str, int]:
        return {"capacity": self.capacity, "used": self.total, "peak": self.peak, **self.used}

    def _add(self, account: str, n: int) -> None:
        self.used[account] += n
        self.total += n
        self.peak = max(self.peak, self.total)
        self._gauge(account)

    def _evict(self, n: int) -> None:
        for evict, _ in self._evictors:
            if n <= 0:
                return
            n -= evict(n)

    def _gauge(self, account: str) -> None:
        if self.stats is not None:
            self.stats.set(f"memory.{account}", self.used[account])
