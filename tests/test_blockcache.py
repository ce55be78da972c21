"""BlockCache and MemoryBudget: extent index, LRU within one budget, pins, streaming fills,
waiters, invalidation."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from amlfs.backends.errors import BackendError, Changed
from amlfs.fs.blockcache import BlockCache, Extent
from amlfs.fs.budget import MemoryBudget
from amlfs.fs.stats import Stats

KiB = 1024


def cache_of(capacity: int, stats: Stats | None = None) -> BlockCache:
    stats = stats or Stats()
    return BlockCache(MemoryBudget(capacity, stats), stats)


def charge(c: BlockCache, n: int, prefetch: bool) -> bool:
    """As the data path does: a prefetch must fit, a reader's fetch is taken anyway."""
    if prefetch:
        return c.budget.try_take("inflight", n)
    c.budget.take("inflight", n)
    return True


def land(c: BlockCache, ext: Extent) -> None:
    """Complete `ext` with `bytes([start % 256]) * n`, settling its charge as the data path does."""
    if c.complete(ext, bytearray([ext.start % 256]) * ext.size):
        c.budget.move("inflight", "cache", ext.size)
        c.budget.settle()
    else:
        c.budget.give("inflight", ext.size)


def fetch(c: BlockCache, path: str, start: int, end: int, prefetch=False, etag='"e"') -> Extent:
    assert charge(c, end - start, prefetch)
    ext = c.add(path, etag, start, end, prefetch)
    land(c, ext)
    return ext


def test_get_assembles_contiguous_extents_and_counts_hits_and_misses():
    stats = Stats()
    c = cache_of(1024 * KiB, stats)
    fetch(c, "f", 0, 100)
    fetch(c, "f", 100, 250)
    assert c.get("f", '"e"', 50, 150) == b"\x00" * 50 + b"\x64" * 50
    assert c.get("f", '"e"', 0, 100) == b"\x00" * 100
    assert c.get("f", '"e"', 200, 300) is None  # runs past the cached bytes
    assert c.get("f", '"other"', 0, 10) is None  # another version
    assert c.get("g", '"e"', 0, 10) is None
    assert stats.counters["cache_hits"] == 2 and stats.counters["cache_misses"] == 3
    assert stats.counters["cache_bytes"] == 250
    assert c.budget.used["cache"] == 250 and c.budget.used["inflight"] == 0


def test_cover_lists_extents_and_holes_in_order():
    c = cache_of(1024 * KiB)
    a = fetch(c, "f", 100, 200)
    charge(c, 100, False)
    b = c.add("f", '"e"', 300, 400, prefetch=False)  # in flight
    assert c.cover("f", '"e"', 0, 500) == [(0, 100), a, (200, 300), b, (400, 500)]
    assert c.cover("f", '"e"', 150, 350) == [a, (200, 300), b]
    assert c.cover("f", '"e"', 210, 290) == [(210, 290)]
    assert c.cover("f", '"x"', 0, 10) == [(0, 10)]
    assert c.get("f", '"e"', 300, 310) is None  # in flight, nothing arrived: not a hit


def test_lru_evicts_least_recently_used_within_the_budget():
    c = cache_of(300)
    fetch(c, "f", 0, 100)
    fetch(c, "f", 100, 200)
    fetch(c, "f", 200, 300)
    c.get("f", '"e"', 0, 10)  # touch the first: the second is now the oldest
    fetch(c, "g", 0, 100)
    assert c.resident == 300 and c.budget.total == 300
    assert c.get("f", '"e"', 0, 10) is not None
    assert c.get("f", '"e"', 100, 110) is None
    assert c.cover("f", '"e"', 100, 200) == [(100, 200)]  # evicted from the index too


def test_prefetch_never_overdraws_and_a_waiting_read_does_by_at_most_itself():
    stats = Stats()
    c = cache_of(300, stats)
    fetch(c, "f", 0, 200)
    assert c.budget.try_take("inflight", 200)  # evicts the cached extent to make room
    assert c.resident == 0 and c.budget.used["inflight"] == 200
    assert c.budget.try_take("inflight", 100)
    assert not c.budget.try_take("inflight", 1)  # in flight fills the budget: refused
    assert c.budget.total == 300
    c.budget.take("inflight", 50)  # a waiting reader's fetch is granted anyway, and counted
    assert c.budget.total == 350 and stats.counters["budget_overdrawn"] == 1
    assert c.budget.available() == 0


def test_pinned_extents_are_never_evicted_until_unpinned():
    stats = Stats()
    c = cache_of(300, stats)
    charge(c, 200, True)
    ahead = c.add("f", '"e"', 0, 200, prefetch=True)
    c.pin(ahead)  # fetched ahead for a reader: pinned while in flight and after
    land(c, ahead)
    assert c.budget.available() == 100  # only the free part: nothing evictable
    assert not c.budget.try_take("inflight", 150)  # another reader's prefetch cannot evict it
    assert c.get("f", '"e"', 0, 10) is not None
    assert stats.counters["prefetch_hits"] == 1
    c.unpin(ahead)  # the reader passed it: an ordinary LRU entry
    assert c.budget.try_take("inflight", 150)
    assert c.resident == 0 and stats.counters["prefetch_hits"] == 1


def test_an_overdraw_is_evicted_back_when_the_fetch_lands():
    c = cache_of(100)
    charge(c, 200, False)
    ext = c.add("f", '"e"', 0, 200, prefetch=False)
    land(c, ext)  # larger than the whole budget: the reader gets it, the cache keeps nothing
    assert ext.data == b"\x00" * 200 and not ext.cached
    assert c.resident == 0 and c.budget.total == 0
    assert c.cover("f", '"e"', 0, 200) == [(0, 200)]


def test_a_filling_extent_serves_the_bytes_that_arrived_and_wakes_its_readers():
    async def main():
        c = cache_of(1024 * KiB)
        charge(c, 100, False)
        ext = c.add("f", '"e"', 0, 100, prefetch=False)
        ext.data = bytearray(100)
        woke = []

        async def wait(end):
            await ext.wait_filled(end)
            woke.append(end)

        async with trio.open_nursery() as n:
            n.start_soon(wait, 30)
            n.start_soon(wait, 100)
            await trio.testing.wait_all_tasks_blocked()
            ext.data[:40] = b"x" * 40
            ext.advance(40)
            await trio.testing.wait_all_tasks_blocked()
            assert woke == [30]
            assert c.get("f", '"e"', 0, 40) == b"x" * 40  # final bytes: a hit already
            assert c.get("f", '"e"', 0, 41) is None
            land(c, ext)
        assert woke == [30, 100]

    trio.run(main)


def test_waiters_wake_with_data_or_with_the_error_and_failures_are_not_cached():
    async def main():
        c = cache_of(1024 * KiB)
        charge(c, 200, False)
        ok = c.add("f", '"e"', 0, 100, prefetch=False)
        bad = c.add("f", '"e"', 100, 200, prefetch=False)
        seen = []

        async def wait(ext: Extent):
            await ext.done.wait()
            seen.append((ext.start, bytes(ext.data or b""), type(ext.error)))

        async with trio.open_nursery() as n:
            for ext in (ok, ok, bad, bad):
                n.start_soon(wait, ext)
            await trio.testing.wait_all_tasks_blocked()
            assert seen == []
            c.budget.give("inflight", 100)
            land(c, ok)
            c.fail(bad, Changed("changed", "f"))
        assert sorted(seen, key=lambda s: s[0]) == [
            (0, b"\x00" * 100, type(None)),
            (0, b"\x00" * 100, type(None)),
            (100, b"", Changed),
            (100, b"", Changed),
        ]
        assert c.budget.used["inflight"] == 0
        assert c.cover("f", '"e"', 0, 200) == [ok, (100, 200)]

    trio.run(main)


def test_forget_drops_every_version_and_detaches_in_flight_fetches():
    c = cache_of(1024 * KiB)
    fetch(c, "f", 0, 100, etag='"1"')
    fetch(c, "f", 0, 100, etag='"2"')
    fetch(c, "g", 0, 100)
    charge(c, 100, True)
    pending = c.add("f", '"2"', 100, 200, prefetch=True)
    c.forget("f")
    assert c.resident == 100  # only g left
    assert c.cover("f", '"2"', 0, 200) == [(0, 200)]
    land(c, pending)  # its waiters get the bytes; nothing is cached
    assert pending.data == b"\x64" * 100 and not pending.cached
    assert c.resident == 100 and c.budget.total == 100


def test_forget_one_version_keeps_the_others():
    c = cache_of(1024 * KiB)
    fetch(c, "f", 0, 100, etag='"1"')
    fetch(c, "f", 0, 100, etag='"2"')
    c.forget("f", '"1"', all_versions=False)
    assert c.get("f", '"1"', 0, 10) is None
    assert c.get("f", '"2"', 0, 10) is not None


def test_extent_repr_and_errors_carry_no_data():
    c = cache_of(1024)
    charge(c, 10, False)
    ext = c.add("dir/f", '"e"', 0, 10, prefetch=False)
    assert repr(ext) == "<Extent 'dir/f' [0, 10) pending>"
    c.fail(ext, BackendError("boom", "dir/f"))
    assert "failed" in repr(ext)
    with pytest.raises(ValueError):
        MemoryBudget(0)


def test_a_read_inside_one_extent_is_a_read_only_view_that_outlives_eviction():
    c = cache_of(200)
    ext = fetch(c, "f", 0, 100)
    view = c.get("f", '"e"', 10, 20)
    assert isinstance(view, memoryview) and view.readonly
    assert view == b"\x00" * 10
    assert view.obj is ext.data  # no copy
    with pytest.raises(TypeError):
        view[0] = 1
    fetch(c, "g", 0, 200)  # evicts f
    assert c.get("f", '"e"', 10, 20) is None
    assert bytes(view) == b"\x00" * 10  # the reader's view keeps its bytes alive
    fetch(c, "h", 0, 50)
    fetch(c, "h", 50, 100)
    joined = c.get("h", '"e"', 40, 60)
    assert isinstance(joined, bytes) and joined == b"\x00" * 10 + b"\x32" * 10


def test_spent_extents_beyond_keep_give_their_buffers_to_new_fetches():
    stats = Stats()
    c = cache_of(1024 * KiB, stats)
    exts = [fetch(c, "f", i * 100, (i + 1) * 100) for i in range(4)]
    for e in exts[:3]:
        c.spend(e)
    # (ids: a reference held here would itself keep a buffer from being recycled)
    id0, id1 = id(exts[0].data), id(exts[1].data)
    assert id(c.recycle(100, keep=100)) == id0  # the oldest spent one
    assert c.get("f", '"e"', 0, 100) is None and not exts[0].cached and exts[0].data is None
    assert c.budget.used["cache"] == 300 and c.budget.used["inflight"] == 100
    assert stats.counters["cache_bytes"] == 300
    assert id(c.recycle(100, keep=100)) == id1
    assert c.recycle(100, keep=100) is None  # 100 spent bytes left: kept
    assert c.get("f", '"e"', 200, 400) == b"\xc8" * 100 + b"\x2c" * 100
    assert stats.counters["buffers_recycled"] == 2
    assert c.budget.used["cache"] == 200 and c.budget.used["inflight"] == 200


def test_a_buffer_in_use_pinned_read_again_or_of_another_size_is_not_recycled():
    c = cache_of(1024 * KiB)
    a, b, d, e = (fetch(c, "f", i * 100, (i + 1) * 100) for i in range(4))
    for x in (a, b, d, e):
        c.spend(x)
    view = c.get("f", '"e"', 0, 50)  # a memoryview of a's buffer, still alive
    assert c.get("f", '"e"', 100, 150) is not None  # b is read again: not spent any more
    c.pin(d)
    id_e = id(e.data)
    assert id(c.recycle(100, keep=0)) == id_e  # a (viewed) and b (read again) were passed over
    assert view == b"\x00" * 50 and a.cached and b.cached  # both still cached, intact
    assert c.recycle(100, keep=0) is None  # d is pinned
    c.unpin(d)  # unpinned, it is spent again
    assert c.recycle(60, keep=0) is None  # no buffer of that size: d stays cached
    assert d.cached and c.get("f", '"e"', 200, 300) == b"\xc8" * 100
    assert c.budget.used["cache"] == 300 and c.budget.used["inflight"] == 100
