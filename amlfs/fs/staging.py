"""The local staging area of a writable mount: one sparse file per file being written, under
`staging_dir/<pid>/`, all of them within one byte budget (a write past it fails with ENOSPC
instead of blocking or filling the disk).

Each staging file is named after the remote path it stages (percent-quoted), so that what a
crashed daemon left behind can be named: `StagingArea.open` logs, at startup, every file left by
a daemon that is no longer running (the data was never uploaded), and leaves it in place.

Concurrency contract: the trio thread only; no method awaits (staging writes are page-cache
writes of at most one FUSE request, done inline).
"""

from __future__ import annotations

import errno
import logging
import os
from urllib.parse import quote, unquote

from pyfuse3 import FUSEError

log = logging.getLogger(__name__)


def default_staging_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "amlfs", "staging")


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not: it is dead, only not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class StagingFile:
    """One staging file; `extent` is the bytes charged to the budget (its size)."""

    def __init__(self, area: StagingArea, path: str, fd: int, local: str):
        self.area = area
        self.path = path
        self.fd = fd
        self.local = local
        self.extent = 0

    def reserve(self, end: int) -> None:
        """Make room for the file to reach `end` bytes: ENOSPC when the budget cannot."""
        if end > self.extent:
            self.area.charge(end - self.extent)
            self.extent = end

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        self.reserve(offset + len(data))
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(view):
                pos += os.pwrite(self.fd, view[pos:], offset + pos)
        except OSError as e:
            log.warning("staging %r in %s failed: %s", self.path, self.local, e)
            raise FUSEError(e.errno or errno.EIO) from None

    def pread(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def truncate(self, size: int) -> None:
        self.reserve(size)
        os.ftruncate(self.fd, size)
        if size < self.extent:
            self.area.release(self.extent - size)
            self.extent = size

    def close(self) -> None:
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        try:
            os.unlink(self.local)
        except OSError:
            pass
        self.area.release(self.extent)
        self.extent = 0


class StagingArea:
    def __init__(self, directory: str, capacity: int):
        self.root = directory
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self.dir = os.path.join(directory, str(os.getpid()))
        self._n = 0

    def open(self) -> None:
        """Create this daemon's directory; name what dead daemons left behind."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for entry in os.listdir(self.root):
            if not entry.isdigit() or int(entry) == os.getpid() or _alive(int(entry)):
                continue
            left = os.path.join(self.root, entry)
            for name in sorted(os.listdir(left)):
                remote = unquote(name.rpartition(".")[0])
                log.warning(
                    "%r was being written by mount daemon %s, which died before uploading it:"
                    " its staged data is left at %s",
                    remote,
                    entry,
                    os.path.join(left, name),
                )

    def create(self, path: str) -> StagingFile:
        self._n += 1
        local = os.path.join(self.dir, f"{quote(path, safe='')[:200]}.{self._n}")
        try:
            fd = os.open(local, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            log.warning("cannot create a staging file in %s: %s", self.dir, e)
            raise FUSEError(e.errno or errno.EIO) from None
        return StagingFile(self, path, fd, local)

    def charge(self, n: int) -> None:
        if self.used + n > self.capacity:
            raise FUSEError(errno.ENOSPC)
        self.used += n
        self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        self.used -= n

    def close(self) -> None:
        """At unmount: this daemon's directory goes if nothing is left in it."""
        try:
            os.rmdir(self.dir)
        except OSError:
            pass

    def snapshot(self) -> dict[str, int]:
        return {"capacity": self.capacity, "used": self.used, "peak": self.peak}
