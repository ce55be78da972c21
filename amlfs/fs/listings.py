"""Directory listings made ahead of a reader: when `ls -R`, `find` or os.walk finishes listing a
directory, its subdirectories are listed in the background, so each next directory it opens is
already in the inode table's listing cache."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio

from ..backends.base import BackendError, ObjectInfo
from .inodes import InodeTable, Listing
from .stats import Stats

log = logging.getLogger(__name__)

#: one LIST page of a directory, as the kernel may see it: (entries, next token or None)
ListPage = Callable[[str, str | None], Awaitable[tuple[list[ObjectInfo], str | None]]]


class ListingPrefetcher:
    """Lists the subdirectories of a directory a reader just listed, one level ahead.

    Concurrency contract: every method is called from the mount's trio thread (no locks; each
    check-then-act below has no `await` in between). The listings run as tasks in the nursery
    that `run()` hosts, at most `concurrency` at a time; at most `queue` directories are queued
    or in flight. A directory is `pending` from the moment it is queued until its listing is
    stored in the inode table or has failed; a reader opening it meanwhile calls `wait_for`
    rather than issuing a second LIST. A listing is stored with the time it started, never
    fresher than what the service said. Failures are logged at debug level and forgotten: the
    reader lists the directory itself and sees the error then. Until `run()` is started (and
    after it is cancelled) nothing is listed ahead.
    """

    def __init__(
        self,
        table: InodeTable,
        list_page: ListPage,
        stats: Stats,
        *,
        concurrency: int,
        queue: int,
        wait_timeout: float,
    ):
        self.table = table
        self.stats = stats
        self.concurrency = concurrency
        self.queue = queue
        self.wait_timeout = wait_timeout
        self._list_page = list_page
        self._limiter = trio.CapacityLimiter(max(1, concurrency))
        self._pending: dict[str, trio.Event] = {}  # set when the listing is stored or failed
        self._nursery: trio.Nursery | None = None

    @property
    def pending(self) -> frozenset[str]:
        """The directories queued or being listed."""
        return frozenset(self._pending)

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Host the background listings until cancelled: `await nursery.start(p.run)`."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None

    def prefetch(self, entries: Iterable[ObjectInfo]) -> bool:
        """Queue the subdirectories among `entries` (a directory's complete listing) that have
        no fresh listing. One level only: listings made here do not start more, so a walk of a
        huge tree is listed at most one level ahead of the reader. False when prefetching is
        off or not running, and nothing was considered."""
        if self._nursery is None or self.concurrency <= 0 or self.table.timeouts.listing <= 0:
            return False
        for e in entries:
            if len(self._pending) >= self.queue:
                break
            if e.is_dir and e.path not in self._pending and not self.table.listing(e.path):
                self._pending[e.path] = trio.Event()
                self._nursery.start_soon(self._list, e.path)
        return True

    async def wait_for(self, path: str) -> Listing | None:
        """If `path` is pending, wait for its listing (at most `wait_timeout` seconds) and return
        it from the table; None when it was not pending (or the listing expired or failed)."""
        pending = self._pending.get(path)
        if pending is None:
            return None
        self.stats.incr("listing_prefetch_waits")
        with trio.move_on_after(self.wait_timeout):
            await pending.wait()
        return self.table.listing(path)

    async def _list(self, path: str) -> None:
        try:
            async with self._limiter:
                if self.table.listing(path) is not None:
                    return
                started = self.table.clock()
                entries: list[ObjectInfo] = []
                token: str | None = None
                while True:
                    page, token = await self._list_page(path, token)
                    entries.extend(page)
                    if not token:
                        break
                self.table.store_listing(path, entries, started)
                self.stats.incr("listing_prefetches")
        except (BackendError, trio.TooSlowError) as e:
            log.debug("background listing of %r failed: %s", path, e)
        except Exception:
            log.exception("background listing of %r failed", path)
        finally:
            self._pending.pop(path).set()
