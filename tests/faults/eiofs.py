"""A tiny in-memory FUSE filesystem whose file writes fail with EIO (a failing disk, for the
disk-fault tests: device-mapper's `error` target is not available in this kernel).

Directories, creates, renames, unlinks and attributes work; `write` (and fallocate) return EIO.
Run: `python -m tests.faults.eiofs MOUNTPOINT` (foreground; unmount with fusermount3 -u).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import sys
import time

import pyfuse3
import trio

log = logging.getLogger(__name__)


class _Node:
    def __init__(self, ino: int, mode: int):
        self.ino = ino
        self.mode = mode
        self.size = 0
        self.children: dict[bytes, int] = {}
        self.mtime_ns = time.time_ns()


class EioFs(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.nodes = {pyfuse3.ROOT_INODE: _Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o777)}
        self.next_ino = pyfuse3.ROOT_INODE + 1

    def _attr(self, node: _Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = 1
        a.st_size = node.size
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        a.st_uid, a.st_gid = os.getuid(), os.getgid()
        a.attr_timeout = a.entry_timeout = 0
        return a

    def _dir(self, ino: int) -> _Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        if not stat.S_ISDIR(node.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return node

    def _new(self, parent: int, name: bytes, mode: int) -> pyfuse3.EntryAttributes:
        d = self._dir(parent)
        if name in d.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        node = _Node(self.next_ino, mode)
        self.next_ino += 1
        self.nodes[node.ino] = node
        d.children[name] = node.ino
        return self._attr(node)

    async def lookup(self, parent_inode, name, ctx=None):
        ino = self._dir(parent_inode).children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.nodes[ino])

    async def getattr(self, inode, ctx=None):
        if inode not in self.nodes:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.nodes[inode])

    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.nodes[inode]
        if fields.update_size:
            node.size = attr.st_size
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        if fields.update_mode:
            node.mode = (node.mode & ~0o7777) | (attr.st_mode & 0o7777)
        return self._attr(node)

    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._new(parent_inode, name, stat.S_IFDIR | (mode & 0o7777))

    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = self._new(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        return pyfuse3.FileInfo(fh=attr.st_ino), attr

    async def open(self, inode, flags, ctx):
        return pyfuse3.FileInfo(fh=inode)

    async def read(self, fh, off, size):
        return b"\0" * max(0, min(size, self.nodes[fh].size - off))

    async def write(self, fh, off, buf):
        raise pyfuse3.FUSEError(errno.EIO)

    async def release(self, fh):
        pass

    async def flush(self, fh):
        pass

    async def fsync(self, fh, datasync):
        raise pyfuse3.FUSEError(errno.EIO)

    async def unlink(self, parent_inode, name, ctx):
        d = self._dir(parent_inode)
        if d.children.pop(name, None) is None:
            raise pyfuse3.FUSEError(errno.ENOENT)

    async def rmdir(self, parent_inode, name, ctx):
        await self.unlink(parent_inode, name, ctx)

    async def rename(self, parent_old, name_old, parent_new, name_new, flags, ctx):
        src, dst = self._dir(parent_old), self._dir(parent_new)
        ino = src.children.pop(name_old, None)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        dst.children[name_new] = ino

    async def opendir(self, inode, ctx):
        self._dir(inode)
        return inode

    async def readdir(self, fh, start_id, token):
        items = sorted(self._dir(fh).children.items())
        for i, (name, ino) in enumerate(items[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._attr(self.nodes[ino]), i):
                return

    async def releasedir(self, fh):
        pass

    async def statfs(self, ctx):
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 20
        s.f_files = s.f_ffree = s.f_favail = 1 << 16
        s.f_namemax = 255
        return s


def main(mountpoint: str) -> None:
    pyfuse3.init(EioFs(), mountpoint, {"fsname=amlfs-eiofs", "default_permissions"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main(sys.argv[1])
