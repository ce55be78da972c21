"""The mount's metadata state: inode numbers <-> datastore paths with kernel lookup counts,
attribute freshness and cached directory listings.

Plain data structures, no I/O and no awaits: every method runs to completion on the trio thread,
so a caller that does not await between two calls sees them as one atomic step.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from pyfuse3 import ROOT_INODE

from ..backends.base import ObjectInfo
from ..units import FOREVER
from .budget import MemoryBudget

log = logging.getLogger(__name__)

#: what one listed entry costs in memory (its ObjectInfo, name, path and list slot), measured with
#: tracemalloc over 100,000 entries of 20-byte names: ~310 bytes
ENTRY_BYTES = 320


@dataclass(frozen=True)
class Timeouts:
    """How long metadata is trusted, in seconds (the kernel is told the same figures).

    attr: a file's or directory's attributes (size, ETag, mtime) and the kernel's dentry cache;
    listing: a directory's cached listing; negative: a name found missing.
    """

    attr: float = 60.0
    listing: float = 60.0
    negative: float = 5.0

    @classmethod
    def immutable(cls) -> Timeouts:
        """The dataset never changes while mounted: cache everything forever."""
        return cls(attr=FOREVER, listing=FOREVER, negative=FOREVER)

    @property
    def is_immutable(self) -> bool:
        return self.attr >= FOREVER and self.listing >= FOREVER


@dataclass(eq=False, slots=True)
class Node:
    """One inode the kernel knows about (or the root, which it always knows)."""

    inode: int
    info: ObjectInfo  # info.path is the datastore path, mount prefix included
    fetched: float  # clock() when `info` was last confirmed by the storage
    lookups: int = 0

    @property
    def path(self) -> str:
        return self.info.path


@dataclass(eq=False)
class Listing:
    """A directory's complete listing, in the storage's order (by name)."""

    entries: list[ObjectInfo]
    fetched: float
    _positions: dict[str, int] | None = field(default=None, repr=False)

    def position(self, name: str) -> int | None:
        if self._positions is None:
            self._positions = {e.name: i for i, e in enumerate(self.entries)}
        return self._positions.get(name)

    def get(self, name: str) -> ObjectInfo | None:
        i = self.position(name)
        return None if i is None else self.entries[i]


class InodeTable:
    """Inode numbers are handed out once and never reused; a path keeps its number while the
    kernel holds a lookup count on it. When a path changes kind (file <-> directory) it gets a
    new number, because the kernel must never see an inode change type."""

    def __init__(
        self,
        root: ObjectInfo,
        timeouts: Timeouts,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_changed: Callable[[Node], None] | None = None,
        max_listing_entries: int = 1_000_000,
        first_inode: int = ROOT_INODE + 1,
        budget: MemoryBudget | None = None,
    ):
        self.timeouts = timeouts
        self.clock = clock
        self._on_changed = on_changed  # told the old node of a file whose ETag changed
        self._next_inode = first_inode
        self.root = Node(ROOT_INODE, root, clock(), lookups=1)
        self._by_inode: dict[int, Node] = {ROOT_INODE: self.root}
        self._by_path: dict[str, Node] = {root.path: self.root}
        self._listings: OrderedDict[str, Listing] = OrderedDict()
        self._listing_entries = 0
        self.max_listing_entries = max_listing_entries
        self.budget = budget  # cached listings are charged to it ("listings") and evictable
        if budget is not None:
            budget.add_evictor(self._evict_listings, lambda: self._listing_entries * ENTRY_BYTES)

    def __len__(self) -> int:
        return len(self._by_inode)

    # --- inodes ----------------------------------------------------------------------------------

    def get(self, inode: int) -> Node | None:
        return self._by_inode.get(inode)

    def by_path(self, path: str) -> Node | None:
        return self._by_path.get(path)

    def is_fresh(self, node: Node) -> bool:
        return self.clock() - node.fetched < self.timeouts.attr

    def remember(self, info: ObjectInfo, *, fetched: float | None = None) -> Node:
        """The node for `info.path` with its attributes refreshed and one more lookup count."""
        node = self.update(info, fetched=fetched)
        node.lookups += 1
        return node

    def update(self, info: ObjectInfo, *, fetched: float | None = None) -> Node:
        """Record fresh attributes for `info.path` without touching lookup counts.

        Returns the node now mapped to the path (a new one, not yet counted, if none was). A
        file whose ETag changed gets a new node too: an inode is one version of a file, so the
        kernel's page cache of one version can never serve another's handles. The old node
        stays valid, for the handles open on it, until the kernel forgets it."""
        now = self.clock() if fetched is None else fetched
        node = self._by_path.get(info.path)
        if node is not None and node is not self.root and now >= node.fetched:
            old = node.info
            if old.is_dir != info.is_dir:
                # Changed kind: the old number stays valid (as the old kind) until forgotten.
                log.info("%r changed from %s", info.path, "directory" if old.is_dir else "file")
                del self._by_path[info.path]
                node = None
            elif not info.is_dir and old.etag is not None and old.etag != info.etag:
                log.debug("%r changed (ETag %s -> %s)", info.path, old.etag, info.etag)
                del self._by_path[info.path]
                if self._on_changed is not None:
                    self._on_changed(node)
                node = None
        if node is None:
            node = Node(self._next_inode, info, now)
            self._next_inode += 1
            self._by_inode[node.inode] = node
            self._by_path[info.path] = node
            return node
        if node is self.root and not info.is_dir:
            return node  # the mount root stays a directory whatever happens remotely
        if now >= node.fetched:
            node.info = info
            node.fetched = now
        return node

    def set_info(self, node: Node, info: ObjectInfo) -> None:
        """This mount itself made `info` (a commit, a mkdir): the node keeps its number (an
        inode is one version of a file, and this version is the one its writer made)."""
        node.info = info
        node.fetched = self.clock()
        if self._by_path.get(info.path) is not node:
            self._by_path[info.path] = node
        self.patch_listing(info.path, info)

    def patch_listing(self, path: str, info: ObjectInfo | None) -> None:
        """This mount created or replaced (`info`) or removed (None) `path`: patch its parent's
        cached listing, so lookups of the names it makes need no request. Copy on write: a
        directory stream reading the old list keeps it unchanged."""
        parent, _, name = path.rpartition("/")
        lst = self._listings.get(parent)
        if lst is None:
            return
        entries = [e for e in lst.entries if e.name != name]
        if info is not None:
            bisect.insort(entries, info, key=lambda e: e.name)
        delta = len(entries) - len(lst.entries)
        lst.entries = entries
        lst._positions = None
        self._listing_entries += delta
        if self.budget is not None and delta > 0:
            self.budget.take("listings", delta * ENTRY_BYTES)
        elif self.budget is not None and delta < 0:
            self.budget.give("listings", -delta * ENTRY_BYTES)

    def move(self, node: Node, info: ObjectInfo) -> None:
        """A rename made by this mount: `node` keeps its number at `info.path` (the kernel moved
        its dentry), what was there is unmapped, and a directory's known descendants follow."""
        old = node.path
        self.patch_listing(old, None)
        if self._by_path.get(old) is node:
            del self._by_path[old]
        self.set_info(node, info)
        if info.is_dir:
            prefix = old + "/"
            for path, child in list(self._by_path.items()):
                if path.startswith(prefix):
                    del self._by_path[path]
                    moved = info.path + path[len(old) :]
                    child.info = replace(child.info, path=moved)
                    child.fetched = float("-inf")
                    self._by_path[moved] = child
            for path in [p for p in self._listings if p == old or p.startswith(prefix)]:
                self._drop_listing(path)

    def mark_stale(self, node: Node) -> None:
        """Its attributes must be confirmed by the storage before they are used again."""
        node.fetched = float("-inf")
        parent = node.path.rpartition("/")[0]
        self._drop_listing(parent)

    def forget(self, inode: int, nlookup: int) -> None:
        node = self._by_inode.get(inode)
        if node is None or node is self.root:
            return
        node.lookups -= nlookup
        if node.lookups > 0:
            return
        if node.lookups < 0:
            log.warning("inode %d forgotten more often than looked up", inode)
        del self._by_inode[inode]
        if self._by_path.get(node.path) is node:
            del self._by_path[node.path]

    def forget_all(self) -> None:
        """After the kernel connection ends: release every inode but the root."""
        for node in list(self._by_inode.values()):
            if node is not self.root:
                self.forget(node.inode, node.lookups)

    def drop(self, node: Node) -> None:
        """Unmap a path found missing; its number stays valid until the kernel forgets it."""
        if node is not self.root and self._by_path.get(node.path) is node:
            del self._by_path[node.path]

    # --- listings --------------------------------------------------------------------------------

    def listing(self, path: str) -> Listing | None:
        """The cached complete listing of directory `path`, if still fresh."""
        lst = self._listings.get(path)
        if lst is None:
            return None
        if self.clock() - lst.fetched >= self.timeouts.listing:
            self._drop_listing(path)
            return None
        self._listings.move_to_end(path)
        return lst

    def store_listing(self, path: str, entries: list[ObjectInfo], fetched: float) -> bool:
        """Remember a complete listing that started at `fetched` (clock time); False when it is
        not kept (listings off, or more entries than may be cached)."""
        if self.timeouts.listing <= 0 or len(entries) > self.max_listing_entries:
            return False
        self._drop_listing(path)
        self._listings[path] = Listing(entries, fetched)
        self._listing_entries += len(entries)
        if self.budget is not None:
            self.budget.take("listings", len(entries) * ENTRY_BYTES)
        while self._listing_entries > self.max_listing_entries:
            oldest = next(iter(self._listings))
            self._drop_listing(oldest)
        return path in self._listings

    def drop_listing(self, path: str) -> None:
        """Forget the cached listing of `path` (it changed)."""
        self._drop_listing(path)

    def _drop_listing(self, path: str) -> None:
        lst = self._listings.pop(path, None)
        if lst is not None:
            self._listing_entries -= len(lst.entries)
            if self.budget is not None:
                self.budget.give("listings", len(lst.entries) * ENTRY_BYTES)

    def _evict_listings(self, n: int) -> int:
        """Drop the least recently used listings until `n` bytes are freed (budget evictor)."""
        freed = 0
        while freed < n and self._listings:
            oldest = next(iter(self._listings))
            freed += len(self._listings[oldest].entries) * ENTRY_BYTES
            self._drop_listing(oldest)
        return freed
