"""The attributes the kernel is told: of a file or directory (one node), of a name found
missing, and of the mount's stats file. Plain functions of their inputs."""

from __future__ import annotations

import stat
import time

import pyfuse3

from .inodes import Node

# What stat(2) reports as the preferred I/O size: big enough for few round trips through FUSE,
# small enough that buffered readers (Python's io uses it) do not allocate megabytes per file.
BLKSIZE = 128 * 1024

#: the mount's stats file: an unlisted file at the root, served with a reserved inode
STATS_NAME = ".__amlfs_stats__"
STATS_INODE = pyfuse3.ROOT_INODE + 1  # reserved; the inode table starts after it


def entry(
    node: Node,
    timeout: float,
    uid: int,
    gid: int,
    default_mtime_ns: int,
    writable: bool = False,
    size: int | None = None,
):
    """Files are 0444, directories 0555 (0644 and 0755 on a writable mount), owned by the
    daemon's user; `default_mtime_ns` for what has no mtime of its own (prefix directories);
    `size`: a file being written reports its writer's size."""
    info = node.info
    w = 0o200 if writable else 0
    a = pyfuse3.EntryAttributes()
    a.st_ino = node.inode
    a.generation = 0
    a.entry_timeout = timeout
    a.attr_timeout = timeout
    if info.is_dir:
        a.st_mode = stat.S_IFDIR | 0o555 | w
        a.st_size = 0
    else:
        a.st_mode = stat.S_IFREG | 0o444 | w
        a.st_size = info.size if size is None else size
    # 1 means "not counted": tools must not infer the number of subdirectories from it.
    a.st_nlink = 1
    a.st_uid = uid
    a.st_gid = gid
    a.st_blksize = BLKSIZE
    a.st_blocks = (a.st_size + 511) // 512
    mtime = int(info.mtime * 1e9) if info.mtime else default_mtime_ns
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mtime
    return a


def negative(timeout: float):
    """A name found missing: st_ino = 0 lets the kernel cache the miss for `timeout`."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = 0
    a.entry_timeout = timeout
    a.attr_timeout = timeout
    return a


def stats_file(inode: int, uid: int, gid: int):
    """The mount's stats file: never cached, so every read is live."""
    a = pyfuse3.EntryAttributes()
    a.st_ino = inode
    a.entry_timeout = a.attr_timeout = 0
    a.st_mode = stat.S_IFREG | 0o444
    a.st_nlink = 1
    a.st_uid, a.st_gid = uid, gid
    a.st_blksize = BLKSIZE
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = time.time_ns()
    return a
