"""The inode table, listing cache and walk detector: pure data structures, driven by a fake clock."""

from __future__ import annotations

import pyfuse3

from amlfs.backends.base import ObjectInfo
from amlfs.fs.inodes import FOREVER, InodeTable, Listing, Timeouts
from amlfs.fs.readahead import WalkDetector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def f(path: str, size: int = 10, etag: str = '"1"') -> ObjectInfo:
    return ObjectInfo(path=path, is_dir=False, size=size, etag=etag)


def d(path: str) -> ObjectInfo:
    return ObjectInfo(path=path, is_dir=True)


def table(clock: Clock | None = None, **kw) -> InodeTable:
    return InodeTable(
        d("pre"), Timeouts(attr=10, listing=20, negative=1), clock=clock or Clock(), **kw
    )


def test_root_is_the_fuse_root_and_never_forgotten():
    t = table()
    assert t.root.inode == pyfuse3.ROOT_INODE
    assert t.by_path("pre") is t.root
    t.forget(pyfuse3.ROOT_INODE, 5)
    assert t.get(pyfuse3.ROOT_INODE) is t.root


def test_numbers_stay_stable_while_looked_up_and_are_never_reused():
    t = table()
    a = t.remember(f("pre/a"))
    again = t.remember(f("pre/a"))
    assert again is a and a.lookups == 2
    t.forget(a.inode, 1)
    assert t.get(a.inode) is a and t.by_path("pre/a") is a
    t.forget(a.inode, 1)
    assert t.get(a.inode) is None and t.by_path("pre/a") is None
    b = t.remember(f("pre/a"))
    assert b.inode != a.inode and b.inode > a.inode


def test_forget_batches_and_forget_all():
    t = table()
    nodes = [t.remember(f(f"pre/{i}")) for i in range(5)]
    for n in nodes[:3]:
        t.remember(n.info)
    for n in nodes:
        t.forget(n.inode, 1)
    assert len(t) == 1 + 3
    t.forget_all()
    assert len(t) == 1


def test_kind_change_gets_a_new_inode_and_the_old_one_stays_valid():
    t = table()
    old = t.remember(f("pre/x"))
    new = t.remember(d("pre/x"))
    assert new is not old and new.info.is_dir and not old.info.is_dir
    assert t.get(old.inode) is old and t.by_path("pre/x") is new
    t.forget(old.inode, 1)  # forgetting the old one does not unmap the new one
    assert t.by_path("pre/x") is new


def test_freshness_follows_the_attribute_timeout():
    clock = Clock()
    t = table(clock)
    n = t.remember(f("pre/a"))
    assert t.is_fresh(n)
    clock.now += 9.9
    assert t.is_fresh(n)
    clock.now += 0.2
    assert not t.is_fresh(n)
    t.update(f("pre/a"))
    assert t.is_fresh(n)


def test_older_information_does_not_overwrite_newer():
    clock = Clock()
    t = table(clock)
    n = t.remember(f("pre/a", size=1, etag='"new"'))
    t.update(f("pre/a", size=2, etag='"new"'), fetched=clock.now - 5)
    assert n.info.size == 1


def test_a_new_version_is_a_new_inode_and_the_old_one_stays_for_its_handles():
    changed = []
    t = table(on_changed=changed.append)
    old = t.remember(f("pre/a", etag='"1"'))
    assert t.update(f("pre/a", etag='"1"')) is old
    assert changed == []
    new = t.update(f("pre/a", etag='"2"'))
    assert changed == [old] and new is not old and new.inode != old.inode
    assert t.by_path("pre/a") is new
    assert t.get(old.inode) is old and old.info.etag == '"1"'  # open handles keep their version
    t.forget(old.inode, 1)
    assert t.get(old.inode) is None and t.get(new.inode) is new


def test_mark_stale_forces_a_revalidation_and_drops_the_parent_listing():
    clock = Clock()
    t = table(clock)
    node = t.remember(f("pre/a"))
    t.store_listing("pre", [f("pre/a")], clock.now)
    assert t.is_fresh(node)
    t.mark_stale(node)
    assert not t.is_fresh(node) and t.listing("pre") is None


def test_listing_cache_expires_and_is_bounded():
    clock = Clock()
    t = table(clock, max_listing_entries=5)
    t.store_listing("pre", [f("pre/a"), f("pre/b")], clock.now)
    lst = t.listing("pre")
    assert lst is not None and lst.get("b").path == "pre/b" and lst.get("zz") is None
    clock.now += 19
    assert t.listing("pre") is not None
    clock.now += 2
    assert t.listing("pre") is None
    t.store_listing("one", [f(f"one/{i}") for i in range(3)], clock.now)
    t.store_listing("two", [f(f"two/{i}") for i in range(3)], clock.now)
    assert t.listing("one") is None and t.listing("two") is not None  # LRU by entries
    t.store_listing("big", [f(f"big/{i}") for i in range(6)], clock.now)
    assert t.listing("big") is None  # larger than the whole budget: not cached


def test_immutable_timeouts_are_forever():
    t = Timeouts.immutable()
    assert t.is_immutable and t.attr == FOREVER and t.negative == FOREVER
    assert not Timeouts().is_immutable


def _listing(n: int, size: int = 100) -> Listing:
    return Listing([f(f"dir/{i:04d}", size=size) for i in range(n)], 0.0)


def test_walk_in_order_prefetches_ahead_once():
    lst = _listing(100)
    w = WalkDetector(ahead=4, max_size=1000)
    assert w.on_open("dir", lst, "0000") == []  # one open is not a walk
    first = w.on_open("dir", lst, "0001")
    assert [e.name for e in first] == ["0002", "0003", "0004", "0005"]
    assert [e.name for e in w.on_open("dir", lst, "0002")] == ["0006"]
    assert w.on_open("dir", lst, "0002") == []  # reopening fetches nothing new
    names = []
    for i in range(3, 100):
        names += [e.name for e in w.on_open("dir", lst, f"{i:04d}")]
    assert names == [f"{i:04d}" for i in range(7, 100)]  # each file prefetched exactly once


def test_walk_tolerates_parallel_readers_and_resets_on_jumps():
    lst = _listing(200)
    w = WalkDetector(ahead=8, max_size=1000, slack=4)
    w.on_open("dir", lst, "0010")
    ahead = w.on_open("dir", lst, "0012")
    assert [e.name for e in ahead] == [f"{i:04d}" for i in range(13, 21)]
    assert w.on_open("dir", lst, "0011") == []  # a late neighbour: part of the walk, nothing new
    assert [e.name for e in w.on_open("dir", lst, "0014")] == ["0021", "0022"]
    assert w.on_open("dir", lst, "0150") == []  # a jump starts over
    assert w.on_open("dir", lst, "0151")


def test_walk_skips_directories_large_and_empty_files():
    entries = [f("dir/a"), f("dir/b"), d("dir/c"), f("dir/d", size=10**9), f("dir/e", size=0)]
    entries.append(f("dir/g"))
    lst = Listing(entries, 0.0)
    w = WalkDetector(ahead=10, max_size=1000)
    w.on_open("dir", lst, "a")
    assert [e.name for e in w.on_open("dir", lst, "b")] == ["g"]
    assert WalkDetector(ahead=0, max_size=1000).on_open("dir", lst, "a") == []
    assert w.on_open("dir", lst, "missing") == []
