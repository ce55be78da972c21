"""Live counters of a mount: plain integers in one dict, cheap to bump from the trio thread."""

from __future__ import annotations

from collections import Counter


class Stats:
    """Named counters. Only the trio thread writes them, so no lock is needed.

    Names in use: requests.<op> (FUSE requests by kind), backend.<call> (storage calls),
    bytes_fetched, cache_hits, cache_misses, prefetch_hits, prefetch_bytes, errors.<ERRNO>; the
    disk tier's disk_hits, disk_misses, disk_bytes_read, disk_writes, disk_bytes_written,
    disk_write_skipped, disk_write_behind, disk_corrupt, disk_errors, disk_reads_inline,
    disk_reads_thread, disk_inline_pauses (disktier.py).
    Gauges (resident cache bytes) are set with `set`.
    """

    def __init__(self) -> None:
        self.counters: Counter[str] = Counter()

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def set(self, name: str, value: int) -> None:
        self.counters[name] = value

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counters.items()))
