"""Listings: directory streams shared by readers and the background lister, bounded in pages,
directories and memory; background listings never repeated by the reader who waits for them."""

from __future__ import annotations

import trio
import trio.testing

from amlfs.backends.base import ObjectInfo
from amlfs.backends.errors import BackendError
from amlfs.fs.budget import MemoryBudget
from amlfs.fs.inodes import ENTRY_BYTES, InodeTable, Timeouts
from amlfs.fs.listings import Listings
from amlfs.fs.stats import Stats


class Store:
    """Directories of `pages` pages of `per_page` files each; every LIST waits for `gate`."""

    def __init__(self, pages: int = 2, per_page: int = 3):
        self.pages = pages
        self.per_page = per_page
        self.calls: list[tuple[str, str | None]] = []
        self.running = self.peak = 0
        self.gate: trio.Event | None = None
        self.fail: set[str] = set()

    async def list_page(self, path: str, token: str | None):
        self.calls.append((path, token))
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await trio.sleep(0)
            if path in self.fail:
                raise BackendError("model: I/O error", path)
            n = int(token or 0)
            page = [ObjectInfo(path=f"{path}/f{n}-{i}", is_dir=False) for i in range(self.per_page)]
            if n == 0:
                page.append(ObjectInfo(path=f"{path}/sub", is_dir=True))
            return page, (str(n + 1) if n + 1 < self.pages else None)
        finally:
            self.running -= 1


def make(store: Store, *, budget=None, **kw) -> tuple[Listings, InodeTable, Stats]:
    table = InodeTable(
        ObjectInfo(path="", is_dir=True), Timeouts(attr=30, listing=30), budget=budget
    )
    stats = Stats()
    return Listings(table, store.list_page, stats, budget=budget, **kw), table, stats


async def read_all(listings: Listings, path: str) -> list[str]:
    stream = listings.open(path)
    while not stream.done:
        stream = await listings.more(stream)
    names = [e.name for e in stream.entries]
    listings.release(stream)
    return names


async def drained(listings: Listings) -> None:
    """Until every background listing queued so far has fetched what it will (no polling)."""
    for path in listings.pending:
        await listings.wait_for(path)


def dirs(n: int) -> list[ObjectInfo]:
    return [ObjectInfo(path=f"d{i}", is_dir=True) for i in range(n)]


def test_background_listings_are_bounded_in_directories_concurrency_and_pages():
    store = Store(pages=3)
    listings, table, stats = make(store, concurrency=2, queue=3, pages_ahead=1)

    async def main():
        assert not listings.prefetch(dirs(6))  # not running: nothing considered
        async with trio.open_nursery() as nursery:
            await nursery.start(listings.run)
            files = [ObjectInfo(path="plain", is_dir=False)]
            assert listings.prefetch(files + dirs(6))
            assert listings.pending == {"d0", "d1", "d2"}  # the queue's bound
            await drained(listings)
            # One page ahead each, no more, and nothing below them (one level only).
            assert sorted(store.calls) == [(f"d{i}", None) for i in range(3)]
            assert table.listing("d0") is None  # incomplete: not cached for lookups
            # A reader of d1 continues the stream from page 2: no page is listed twice.
            names = await read_all(listings, "d1")
            assert len(names) == 3 * 3 + 1
            assert [c for c in store.calls if c[0] == "d1"] == [
                ("d1", None),
                ("d1", "1"),
                ("d1", "2"),
            ]
            assert table.listing("d1") is not None  # complete: cached
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.peak == 2
    assert stats.counters.get("listing_prefetches", 0) == 0  # none completed in the background


def test_a_reader_gets_the_first_page_of_a_background_listing_as_it_arrives():
    store = Store(pages=20)
    listings, _, stats = make(store, concurrency=1, pages_ahead=20)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(listings.run)
            store.gate = trio.Event()
            listings.prefetch(dirs(1))
            await trio.testing.wait_all_tasks_blocked()
            stream = listings.open("d0")
            assert stream.fetching  # the background lister is on page 1
            got: list[int] = []

            async def reader():
                s = await listings.more(stream)
                got.append(len(s.entries))

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # waiting on the background's LIST, not issuing its own
            store.gate.set()
            await trio.testing.wait_all_tasks_blocked()
            # The reader has the first page; the background lister stopped (a reader drives).
            assert got == [4]
            assert store.calls == [("d0", None)]
            assert stats.counters["listing_prefetch_waits"] == 1
            listings.release(stream)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_failed_background_listing_is_listed_again_by_its_reader_who_sees_the_error():
    store = Store(pages=1)
    listings, _, _ = make(store)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(listings.run)
            store.fail = {"d0"}
            listings.prefetch(dirs(1))
            await drained(listings)
            try:
                await read_all(listings, "d0")
            except BackendError as e:
                assert "I/O error" in str(e)
            else:
                raise AssertionError("the reader's own LIST must fail too")
            store.fail = set()
            assert len(await read_all(listings, "d0")) == 4
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert store.calls == [("d0", None)] * 3


def test_entries_are_charged_to_the_budget_and_background_pages_need_room():
    store = Store(pages=2, per_page=100)
    budget = MemoryBudget(10_000 * ENTRY_BYTES)
    listings, table, stats = make(store, budget=budget, pages_ahead=2, concurrency=1)

    async def main():
        async with trio.open_nursery() as nursery:
            await nursery.start(listings.run)
            names = await read_all(listings, "a")
            assert len(names) == 201
            assert budget.used["listings"] == 201 * ENTRY_BYTES  # kept for lookups, charged
            # The budget is nearly full: a background page (up to 5000 entries) does not fit.
            budget.take("cache", budget.capacity - budget.total - 1000 * ENTRY_BYTES)
            listings.prefetch(dirs(1))
            await drained(listings)
            assert ("d0", None) not in store.calls
            assert stats.counters["listing_prefetch_refused"] == 1
            # What a reader waits for is listed anyway; dropping the listing gives it back.
            assert len(await read_all(listings, "d0")) == 201
            table.drop_listing("a")
            table.drop_listing("d0")
            assert budget.used["listings"] == 0
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_a_directory_bigger_than_the_listing_cap_is_streamed_not_kept():
    store = Store(pages=3, per_page=10)
    budget = MemoryBudget(1 << 30)
    listings, table, _ = make(store, budget=budget)
    table.max_listing_entries = 15

    async def main():
        stream = listings.open("big")
        while not stream.done:
            stream = await listings.more(stream)
        assert len(stream.entries) == 31
        assert table.listing("big") is None
        assert budget.used["listings"] == 31 * ENTRY_BYTES  # held for its reader only
        listings.release(stream)
        assert budget.used["listings"] == 0

    trio.run(main)
