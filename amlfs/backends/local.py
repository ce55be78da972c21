"""A local directory as a datastore: the embedded default, and the FUSE-overhead baseline."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
from typing import BinaryIO

from .base import Backend, ObjectInfo, is_safe_name, normpath
from .errors import (
    AlreadyExists,
    BackendError,
    Changed,
    Forbidden,
    IsADirectory,
    NotADirectory,
    NotFound,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 5000


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"'


def _map_oserror(e: OSError, path: str) -> BackendError:
    if e.errno == errno.ENOENT:
        return NotFound(f"no such file or directory: {path!r}", path)
    if e.errno in (errno.EACCES, errno.EPERM):
        return Forbidden(f"permission denied: {path!r}", path)
    if e.errno == errno.ENOTDIR:
        return NotADirectory(f"not a directory: {path!r}", path)
    if e.errno == errno.EISDIR:
        return IsADirectory(f"is a directory: {path!r}", path)
    return BackendError(f"{path!r}: {e.strerror}", path)


def _file_mode(stream: BinaryIO) -> int:
    """The mode of a file written from `stream`: the permission bits of the file behind its
    `fileno()` (an upload's source) without group/other write; 0644 less the umask when the
    stream is not a file."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return 0o644 & ~_umask()
    return mode & 0o777 & ~0o022


def _umask() -> int:
    """The process umask, read without setting it (os.umask would race other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


class LocalBackend(Backend):
    page_size = PAGE_SIZE

    def __init__(self, root: str, create: bool = False):
        self.root = os.path.realpath(os.path.expanduser(root))
        self.description = f"local directory {self.root}"
        if create:
            self.ensure_exists()

    def _abs(self, path: str) -> str:
        rel = normpath(path)
        full = os.path.join(self.root, rel) if rel else self.root
        real = os.path.realpath(full)
        if real != self.root and not real.startswith(self.root + os.sep):
            # A symlink that leads outside the datastore is treated as absent.
            raise NotFound(f"{path!r} leads outside the datastore", path)
        return full

    def _info(self, rel: str, st: os.stat_result) -> ObjectInfo:
        import stat as stmod

        is_dir = stmod.S_ISDIR(st.st_mode)
        return ObjectInfo(
            path=rel,
            is_dir=is_dir,
            size=0 if is_dir else st.st_size,
            etag=None if is_dir else _etag(st),
            mtime=st.st_mtime,
        )

    def ensure_exists(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def check_access(self) -> None:
        if not os.path.isdir(self.root):
            raise NotFound(f"datastore directory {self.root} does not exist", "")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise Forbidden(f"datastore directory {self.root} is not readable", "")

    def stat(self, path: str) -> ObjectInfo:
        rel = normpath(path)
        try:
            return self._info(rel, os.stat(self._abs(rel)))
        except OSError as e:
            raise _map_oserror(e, rel) from None

    def list_page(
        self, path: str, token: str | None = None, page_size: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        rel = normpath(path)
        full = self._abs(rel)
        try:
            names = sorted(os.listdir(full))
        except OSError as e:
            raise _map_oserror(e, rel) from None
        start = int(token) if token else 0
        size = page_size or self.page_size
        out: list[ObjectInfo] = []
        for name in names[start : start + size]:
            if not is_safe_name(name):
                continue
            child = f"{rel}/{name}" if rel else name
            try:
                cfull = os.path.join(full, name)
                real = os.path.realpath(cfull)
                if not real.startswith(self.root + os.sep):
                    log.warning("skipping %r: it leads outside the datastore", child)
                    continue
                out.append(self._info(child, os.stat(cfull)))
            except OSError:
                continue  # vanished or dangling link
        nxt = start + size
        return out, (str(nxt) if nxt < len(names) else None)

    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        rel = normpath(path)
        try:
            fd = os.open(self._abs(rel), os.O_RDONLY)
        except OSError as e:
            raise _map_oserror(e, rel) from None
        try:
            if etag is not None and _etag(os.fstat(fd)) != etag:
                raise Changed(f"{rel!r} changed since it was opened", rel)
            chunks = []
            while length > 0:
                b = os.pread(fd, length, offset)
                if not b:
                    break
                chunks.append(b)
                offset += len(b)
                length -= len(b)
            data = b"".join(chunks)
            if etag is not None and _etag(os.fstat(fd)) != etag:
                raise Changed(f"{rel!r} changed while it was read", rel)
            return data
        except IsADirectory:
            raise
        except OSError as e:
            raise _map_oserror(e, rel) from None
        finally:
            os.close(fd)

    def write_stream(
        self, path: str, stream: BinaryIO, length: int, overwrite: bool = True
    ) -> ObjectInfo:
        rel = normpath(path)
        if not rel:
            raise IsADirectory("cannot write the datastore root", rel)
        full = self._abs(rel)
        if not overwrite and os.path.lexists(full):
            raise AlreadyExists(f"{rel!r} exists", rel)
        try:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(full), prefix=".amlfs-tmp-")
            try:
                os.fchmod(fd, _file_mode(stream))
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(stream, f, 1 << 20)
                os.replace(tmp, full)
            except BaseException:
                os.unlink(tmp)
                raise
            return self._info(rel, os.stat(full))
        except OSError as e:
            raise _map_oserror(e, rel) from None

    def delete(self, path: str) -> None:
        rel = normpath(path)
        try:
            os.unlink(self._abs(rel))
        except OSError as e:
            raise _map_oserror(e, rel) from None
