"""Directory listings as they arrive: one `DirStream` per directory being listed, shared by every
reader of it and by the background lister, so a page is never fetched twice and a reader gets the
first page as soon as it is there.

Background listing: when a reader finishes listing a directory (`ls -R`, `find`, os.walk), its
subdirectories are listed ahead, one level only, at most `concurrency` at a time and `queue`
directories waiting, each only `pages_ahead` pages ahead of any reader: a reader who then opens
one continues that stream page by page. A stream nobody reads is dropped with its pages once more
than `queue` such streams wait.

Memory: every entry held (in streams and in the inode table's cached listings) is charged to the
mount's budget ("listings", ENTRY_BYTES each). A background page that does not fit is not
fetched; a page a reader waits for is fetched anyway. A listing of more than
`max_entries` is streamed to its readers but not kept for lookups.

Concurrency contract: every method runs on the mount's trio thread (no locks: each check-then-act
below has no `await` in between). Failures of background listings are logged at debug level:
a reader who waits for such a stream lists the directory itself and sees the error then.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from ..backends.base import ObjectInfo
from ..backends.errors import BackendError
from .budget import MemoryBudget
from .inodes import ENTRY_BYTES, InodeTable
from .stats import Stats

log = logging.getLogger(__name__)

#: one LIST page of a directory, as the kernel may see it: (entries, next token or None)
ListPage = Callable[[str, str | None], Awaitable[tuple[list[ObjectInfo], str | None]]]


class DirStream:
    """One directory's listing, complete or arriving page by page, in the storage's order."""

    __slots__ = (
        "path", "entries", "token", "done", "error", "started", "fetching", "_more", "charged",
        "readers", "shared",
    )  # fmt: skip

    def __init__(self, path: str, started: float):
        self.path = path
        self.entries: list[ObjectInfo] = []
        self.token: str | None = None
        self.done = False
        self.error: BackendError | None = None
        self.started = started  # clock() when its first page was asked for
        self.fetching = False  # a page is being fetched
        self._more = trio.Event()  # set when a fetch ends (a page arrived, or it failed)
        self.charged = 0  # bytes charged to the budget for its entries
        self.readers = 0  # open directory handles reading it
        self.shared = True  # in the Listings' map (findable by other readers)

    @classmethod
    def complete(cls, path: str, entries: list[ObjectInfo], started: float) -> DirStream:
        s = cls(path, started)
        s.entries, s.done, s.shared = entries, True, False
        return s

    def __repr__(self) -> str:
        state = "done" if self.done else "failed" if self.error else "listing"
        return f"<DirStream {self.path!r} {len(self.entries)} entries {state}>"


class Listings:
    def __init__(
        self,
        table: InodeTable,
        list_page: ListPage,
        stats: Stats,
        *,
        budget: MemoryBudget | None = None,
        concurrency: int = 4,
        queue: int = 256,
        pages_ahead: int = 1,
        background_timeout: float = 60.0,
    ):
        self.table = table
        self.stats = stats
        self.budget = budget
        self.concurrency = concurrency
        self.queue = queue
        self.pages_ahead = pages_ahead
        self.background_timeout = background_timeout
        self._list_page = list_page
        self._limiter = trio.CapacityLimiter(max(1, concurrency))
        self._streams: OrderedDict[str, DirStream] = OrderedDict()  # in progress
        self._pending: dict[str, trio.Event] = {}  # queued for, or in, background listing
        self._nursery: trio.Nursery | None = None

    @property
    def pending(self) -> frozenset[str]:
        """The directories queued or being listed in the background."""
        return frozenset(self._pending)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Host the background listings until cancelled: `await nursery.start(l.run)`."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    # --- readers -------------------------------------------------------------------------------

    def open(self, path: str) -> DirStream:
        """The listing of `path` for a new reader: cached and complete, in progress, or new."""
        listing = self.table.listing(path)
        if listing is not None:
            stream = DirStream.complete(path, listing.entries, listing.fetched)
        else:
            stream = self._streams.get(path) or self._new(path)
        stream.readers += 1
        return stream

    def release(self, stream: DirStream) -> None:
        """A reader is done with `stream`."""
        stream.readers -= 1
        if stream.readers <= 0 and not stream.shared:
            self._uncharge(stream)

    async def more(self, stream: DirStream) -> DirStream:
        """One more page of `stream`: fetched here, or awaited from whoever fetches it. Returns
        the stream to go on with: a new one (listing from the start) when the background listing
        it waited for failed. Raises what the storage said when this caller's own fetch fails."""
        if stream.done:
            return stream
        if stream.fetching or stream.error is not None:
            if stream.fetching:
                self.stats.incr("listing_prefetch_waits")
                await stream._more.wait()
            if stream.error is None:
                return stream
            fresh = self._new(stream.path)  # the background listing failed: list it ourselves
            fresh.readers = stream.readers
            stream.readers = 0
            self._uncharge(stream)
            stream = fresh
        await self._fetch_page(stream, background=False)
        return stream

    # --- background ----------------------------------------------------------------------------

    def prefetch(self, entries: Iterable[ObjectInfo]) -> bool:
        """Queue the subdirectories among `entries` (a directory's complete listing) that have no
        listing cached or in progress. One level only: listings made here do not start more.
        False when prefetching is off or not running, and nothing was considered."""
        if self._nursery is None or self.concurrency <= 0 or self.table.timeouts.listing <= 0:
            return False
        for e in entries:
            if len(self._pending) >= self.queue:
                break
            if (
                e.is_dir
                and e.path not in self._pending
                and e.path not in self._streams
                and not self.table.listing(e.path)
            ):
                self._pending[e.path] = trio.Event()
                self._nursery.start_soon(self._list_ahead, e.path)
        return True

    async def wait_for(self, path: str) -> None:
        """Until the background listing of `path` (if any) has fetched what it will."""
        pending = self._pending.get(path)
        if pending is not None:
            await pending.wait()

    async def _list_ahead(self, path: str) -> None:
        try:
            async with self._limiter:
                if self.table.listing(path) is not None:
                    return
                stream = self._streams.get(path) or self._new(path)
                with trio.move_on_after(self.background_timeout):
                    for _ in range(self.pages_ahead):
                        if stream.done or stream.error or stream.readers or stream.fetching:
                            break  # a reader drives it now
                        if not await self._fetch_page(stream, background=True):
                            break
                if stream.done:
                    self.stats.incr("listing_prefetches")
        except BackendError as e:
            log.debug("background listing of %r failed: %s", path, e)
        except Exception:
            log.exception("background listing of %r failed", path)
        finally:
            self._pending.pop(path).set()

    # --- pages ---------------------------------------------------------------------------------

    def _new(self, path: str) -> DirStream:
        stream = DirStream(path, self.table.clock())
        self._streams[path] = stream
        idle = [s for s in self._streams.values() if not s.readers and not s.fetching]
        while len(idle) > self.queue:  # streams listed ahead that nobody came to read
            old = idle.pop(0)
            self._drop(old)
        return stream

    async def _fetch_page(self, stream: DirStream, *, background: bool) -> bool:
        """Fetch the next page of `stream`. In the background, only if the budget has room for
        a full page (False otherwise); a reader's page is fetched regardless."""
        if background and self.budget is not None:
            if self.budget.available() < 5000 * ENTRY_BYTES:
                self.stats.incr("listing_prefetch_refused")
                return False
        stream.fetching = True
        try:
            page, token = await self._list_page(stream.path, stream.token)
        except BaseException as e:
            if isinstance(e, BackendError):
                stream.error = e
            self._drop(stream)
            raise
        finally:
            stream.fetching = False
            ev, stream._more = stream._more, trio.Event()
            ev.set()
        stream.entries.extend(page)
        stream.token = token
        self._charge(stream, len(page) * ENTRY_BYTES)
        if not token:
            stream.done = True
            self._streams.pop(stream.path, None)
            stream.shared = False
            if self.table.store_listing(stream.path, stream.entries, stream.started):
                self._uncharge(stream)  # the table holds (and charges) the entries now
            elif not stream.readers:
                self._uncharge(stream)
        return True

    def _drop(self, stream: DirStream) -> None:
        if self._streams.get(stream.path) is stream:
            del self._streams[stream.path]
        stream.shared = False
        if not stream.readers:
            self._uncharge(stream)

    def _charge(self, stream: DirStream, n: int) -> None:
        if self.budget is not None:
            self.budget.take("listings", n)
        stream.charged += n

    def _uncharge(self, stream: DirStream) -> None:
        if stream.charged and self.budget is not None:
            self.budget.give("listings", stream.charged)
        stream.charged = 0
