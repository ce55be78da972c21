"""The directory handlers of a mount (opendir, readdir, releasedir): a mixin of
operations.Operations, which owns the state they use. A directory is streamed to the kernel one
LIST page at a time (listings.py), and only names safe for the kernel are shown.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass
from typing import Any

import pyfuse3
from pyfuse3 import FUSEError

from ..backends.base import ObjectInfo, is_safe_name
from ..backends.errors import NotFound
from .attrs import STATS_NAME
from .handlers import handler
from .inodes import InodeTable, Node
from .listings import DirStream, Listings

log = logging.getLogger("amlfs.fs.operations")

# Entries 1 and 2 of every directory are '.' and '..'; listing entry i has offset i + 3.
_FIRST_ENTRY = 2


@dataclass(eq=False)
class DirHandle:
    node: Node
    stream: DirStream
    prefetched: bool = False  # its subdirectories were queued for background listing


class DirectoryHandlers:
    """opendir/readdir/releasedir/fsyncdir of `Operations` (which inherits them, and sets
    the attributes below and provides `_node`, `_fh`, `attributes` and `_list_page`)."""

    table: InodeTable
    listings: Listings
    _dirs: dict[int, DirHandle]
    _reported: set[tuple[str, str]]

    @handler("opendir")
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> int:
        node = self._node(inode)
        if not node.info.is_dir:
            raise FUSEError(errno.ENOTDIR)
        fh = self._fh()
        self._dirs[fh] = DirHandle(node, self.listings.open(node.path))
        return fh

    @handler("readdir")
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs.get(fh)
        if handle is None:
            raise FUSEError(errno.EBADF)
        node = handle.node
        if start_id < 1:
            if not pyfuse3.readdir_reply(token, b".", self.attributes(node), 1):
                return
            start_id = 1
        if start_id < _FIRST_ENTRY:
            up = node
            if node is not self.table.root:
                up = self.table.by_path(node.path.rpartition("/")[0]) or self.table.root
            if not pyfuse3.readdir_reply(token, b"..", self.attributes(up), _FIRST_ENTRY):
                return
            start_id = _FIRST_ENTRY
        i = start_id - _FIRST_ENTRY
        while True:
            stream = handle.stream
            if i >= len(stream.entries):
                if stream.done:
                    if not handle.prefetched:
                        handle.prefetched = self.listings.prefetch(stream.entries)
                    return
                # Stream: one LIST page at a time, and reply with it before asking for the next.
                try:
                    handle.stream = await self.listings.more(stream)
                except NotFound:
                    if node is not self.table.root:
                        raise
                    # A prefix that vanished shows as an empty directory, not a broken mount.
                    handle.stream = DirStream.complete(node.path, [], self.table.clock())
                continue
            info = stream.entries[i]
            child = self.table.remember(info, fetched=stream.started)
            if not pyfuse3.readdir_reply(
                token, os.fsencode(info.name), self.attributes(child), i + _FIRST_ENTRY + 1
            ):
                self.table.forget(child.inode, 1)
                return
            i += 1

    async def _list_accepted(
        self, path: str, token: str | None
    ) -> tuple[list[ObjectInfo], str | None]:
        page, token = await self._list_page(path, token)
        return self._accept(path, page), token

    def _accept(self, path: str, page: list[ObjectInfo]) -> list[ObjectInfo]:
        """The entries of one LIST page of `path` that the kernel may see."""
        prefix = f"{path}/" if path else ""
        at_root = path == self.table.root.path
        out = []
        for e in page:
            if at_root and e.name == STATS_NAME:
                self._log_once(("name", e.path), "%r is hidden by the mount's stats file", e.path)
                continue
            # Backends skip unsafe names; this is the last line of defence for the kernel.
            if is_safe_name(e.name) and e.path == prefix + e.name:
                out.append(e)
            else:
                self._log_once(("name", e.path), "skipping entry %r: not a safe name", e.path)
        return out

    def _log_once(self, key: tuple[str, str], msg: str, *args: Any) -> None:
        if key not in self._reported and len(self._reported) < 10_000:
            self._reported.add(key)
            log.warning(msg, *args)

    @handler("releasedir")
    async def releasedir(self, fh: int) -> None:
        handle = self._dirs.pop(fh, None)
        if handle is not None:
            self.listings.release(handle.stream)

    @handler("fsyncdir")
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None
