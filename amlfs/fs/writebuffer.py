"""Memory for the write path: `WriteBudget`, the bytes all write buffers of a mount share, and
`PartBuffer`, what one file has written but not yet shipped.

Concurrency contract: the trio thread only.
"""

from __future__ import annotations

from collections import deque

import trio

from .budget import MemoryBudget


class WriteBudget:
    """Bytes of write buffers held (filled, or in flight to the storage), charged to the mount's
    memory budget as account "writes" too. A taker waits while the budget is full; its wait is
    bounded by its request's deadline. One taker larger than the whole budget is let through
    alone, so no writer waits forever."""

    def __init__(self, capacity: int, memory: MemoryBudget | None = None):
        self.capacity = capacity
        self.memory = memory
        self.used = 0
        self.peak = 0
        self._freed = trio.Event()

    async def take(self, n: int) -> None:
        while self.used and self.used + n > self.capacity:
            await self._freed.wait()
        self.used += n
        self.peak = max(self.peak, self.used)
        if self.memory is not None:
            self.memory.take("writes", n)

    def give(self, n: int) -> None:
        if n <= 0:
            return
        self.used -= n
        if self.memory is not None:
            self.memory.give("writes", n)
        self._freed.set()
        self._freed = trio.Event()

    def snapshot(self) -> dict[str, int]:
        return {"capacity": self.capacity, "used": self.used, "peak": self.peak}


class PartBuffer:
    """Bytes written but not yet shipped, kept as the writes' own bytes objects: no copy while
    filling, one when a part is cut (the kernel's writes are 128 KiB, parts megabytes)."""

    def __init__(self) -> None:
        self.chunks: deque[bytes] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def take(self, n: int) -> bytes:
        out = []
        need = n
        while need:
            c = self.chunks[0]
            if len(c) <= need:
                out.append(self.chunks.popleft())
                need -= len(c)
            else:
                out.append(c[:need])
                self.chunks[0] = c[need:]
                need = 0
        self.size -= n
        return out[0] if len(out) == 1 else b"".join(out)

    def clear(self) -> int:
        n, self.size = self.size, 0
        self.chunks.clear()
        return n
