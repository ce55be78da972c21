"""BlockCache: extent index, LRU within the byte budget, reservations, waiters, invalidation."""

from __future__ import annotations

import pytest
import trio

from amlfs.backends.base import BackendError, Changed
from amlfs.fs.blockcache import BlockCache, Extent
from amlfs.fs.stats import Stats

KiB = 1024


def fetch(cache: BlockCache, path: str, start: int, end: int, prefetch=False, etag='"e"'):
    """Reserve, register and complete an extent whose bytes are `bytes([start % 256]) * n`."""
    if prefetch:
        assert cache.try_reserve(end - start)
    else:
        cache.reserve(end - start)
    ext = cache.add_pending(path, etag, start, end, prefetch)
    cache.complete(ext, bytes([start % 256]) * (end - start))
    return ext


def test_get_assembles_contiguous_extents_and_counts_hits_and_misses():
    stats = Stats()
    c = BlockCache(1024 * KiB, stats)
    fetch(c, "f", 0, 100)
    fetch(c, "f", 100, 250)
    assert c.get("f", '"e"', 50, 150) == b"\x00" * 50 + b"\x64" * 50
    assert c.get("f", '"e"', 0, 100) == b"\x00" * 100
    assert c.get("f", '"e"', 200, 300) is None  # runs past the cached bytes
    assert c.get("f", '"other"', 0, 10) is None  # another version
    assert c.get("g", '"e"', 0, 10) is None
    assert stats.counters["cache_hits"] == 2 and stats.counters["cache_misses"] == 3
    assert stats.counters["bytes_fetched"] == 250
    assert stats.counters["cache_bytes"] == 250


def test_cover_lists_extents_and_holes_in_order():
    c = BlockCache(1024 * KiB, Stats())
    a = fetch(c, "f", 100, 200)
    c.reserve(100)
    b = c.add_pending("f", '"e"', 300, 400, prefetch=False)  # in flight
    assert c.cover("f", '"e"', 0, 500) == [(0, 100), a, (200, 300), b, (400, 500)]
    assert c.cover("f", '"e"', 150, 350) == [a, (200, 300), b]
    assert c.cover("f", '"e"', 210, 290) == [(210, 290)]
    assert c.cover("f", '"x"', 0, 10) == [(0, 10)]
    assert c.get("f", '"e"', 300, 310) is None  # in flight is not a hit


def test_lru_evicts_least_recently_used_within_the_budget():
    c = BlockCache(300, Stats())
    fetch(c, "f", 0, 100)
    fetch(c, "f", 100, 200)
    fetch(c, "f", 200, 300)
    c.get("f", '"e"', 0, 10)  # touch the first: the second is now the oldest
    fetch(c, "g", 0, 100)
    assert c.resident == 300
    assert c.get("f", '"e"', 0, 10) is not None
    assert c.get("f", '"e"', 100, 110) is None
    assert c.cover("f", '"e"', 100, 200) == [(100, 200)]  # evicted from the index too


def test_reservations_count_against_the_budget():
    c = BlockCache(300, Stats())
    fetch(c, "f", 0, 200)
    assert c.try_reserve(200)  # evicts the cached extent to make room
    assert c.resident == 0 and c.reserved == 200
    assert c.try_reserve(100)
    assert not c.try_reserve(1)  # in flight fills the budget: refused, never blocks
    c.reserve(50)  # a reader's own fetch may overshoot
    assert c.reserved == 350


def test_unread_prefetch_is_protected_until_read_or_given_up():
    stats = Stats()
    c = BlockCache(300, stats)
    ext = fetch(c, "f", 0, 200, prefetch=True)
    assert ext.promised and c.unread_prefetch == 200
    assert not c.try_reserve(150)  # 200 owed to a reader + 150 > 300
    assert c.get("f", '"e"', 0, 10) is not None
    assert stats.counters["prefetch_hits"] == 1
    assert c.unread_prefetch == 0 and not ext.promised
    assert c.try_reserve(150)  # now it is an ordinary LRU entry, evictable
    assert stats.counters["prefetch_hits"] == 1  # counted once per extent

    gone = []
    c2 = BlockCache(300, Stats())
    c2.on_unpromise = gone.append
    e2 = fetch(c2, "f", 0, 100, prefetch=True)
    c2.unpromise(e2)
    assert gone == [e2] and c2.unread_prefetch == 0


def test_an_extent_larger_than_the_budget_is_handed_over_not_cached():
    c = BlockCache(100, Stats())
    c.reserve(200)
    ext = c.add_pending("f", '"e"', 0, 200, prefetch=False)
    c.complete(ext, b"x" * 200)
    assert ext.data == b"x" * 200 and not ext.cached
    assert c.resident == 0 and c.reserved == 0
    assert c.cover("f", '"e"', 0, 200) == [(0, 200)]


def test_waiters_wake_with_data_or_with_the_error_and_failures_are_not_cached():
    async def main():
        c = BlockCache(1024 * KiB, Stats())
        c.reserve(100)
        ok = c.add_pending("f", '"e"', 0, 100, prefetch=False)
        c.reserve(100)
        bad = c.add_pending("f", '"e"', 100, 200, prefetch=False)
        seen = []

        async def wait(ext: Extent):
            await ext.done.wait()
            seen.append((ext.start, ext.data, type(ext.error)))

        async with trio.open_nursery() as n:
            for ext in (ok, ok, bad, bad):
                n.start_soon(wait, ext)
            await trio.sleep(0.01)
            assert seen == []
            c.complete(ok, b"a" * 100)
            c.fail(bad, Changed("changed", "f"))
        assert sorted(seen, key=lambda s: s[0]) == [
            (0, b"a" * 100, type(None)),
            (0, b"a" * 100, type(None)),
            (100, None, Changed),
            (100, None, Changed),
        ]
        assert c.reserved == 0
        assert c.cover("f", '"e"', 0, 200) == [ok, (100, 200)]

    trio.run(main)


def test_forget_drops_every_version_and_detaches_in_flight_fetches():
    c = BlockCache(1024 * KiB, Stats())
    fetch(c, "f", 0, 100, etag='"1"')
    fetch(c, "f", 0, 100, etag='"2"')
    fetch(c, "g", 0, 100)
    c.reserve(100)
    pending = c.add_pending("f", '"2"', 100, 200, prefetch=True)
    c.forget("f")
    assert c.resident == 100  # only g left
    assert c.cover("f", '"2"', 0, 200) == [(0, 200)]
    c.complete(pending, b"z" * 100)  # its waiters get the bytes; nothing is cached
    assert pending.data == b"z" * 100 and not pending.cached
    assert c.resident == 100 and c.reserved == 0 and c.unread_prefetch == 0


def test_forget_one_version_keeps_the_others():
    c = BlockCache(1024 * KiB, Stats())
    fetch(c, "f", 0, 100, etag='"1"')
    fetch(c, "f", 0, 100, etag='"2"')
    c.forget("f", '"1"', all_versions=False)
    assert c.get("f", '"1"', 0, 10) is None
    assert c.get("f", '"2"', 0, 10) is not None


def test_extent_repr_and_errors_carry_no_data():
    c = BlockCache(1024, Stats())
    c.reserve(10)
    ext = c.add_pending("dir/f", '"e"', 0, 10, prefetch=False)
    assert repr(ext) == "<Extent 'dir/f' [0, 10) pending>"
    c.fail(ext, BackendError("boom", "dir/f"))
    assert "failed" in repr(ext)
    with pytest.raises(KeyError):
        BlockCache(1, Stats())._lru.popitem()


def test_a_read_inside_one_extent_is_a_read_only_view_that_outlives_eviction():
    c = BlockCache(200, Stats())
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
