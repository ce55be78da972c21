"""The write side of a local directory for writable mounts: an upload is an unnamed file
(O_TMPFILE) in the target's directory, linked under its name on commit, so nothing is visible
before then; a new name is taken with link(2) (fails if taken), an overwrite with rename(2)
after checking the ETag (a check-then-act race with other local writers, documented).

Concurrency contract: thread-safe; one Upload as base.Upload says.
"""

from __future__ import annotations

import errno
import os
import uuid

from .base import ObjectInfo, Upload, Writer, file_path_checked
from .errors import AlreadyExists, Changed, NotEmpty
from .local import LocalBackend, _etag, _map_oserror


def _link(fd: int, directory: str, name: str) -> None:
    """Give the unnamed file `fd` the name `directory/name` (FileExistsError if taken).
    linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N: what needs no privilege (AT_EMPTY_PATH does)."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dfd, follow_symlinks=True)
    finally:
        os.close(dfd)


def _copy(src: int, dst: int, size: int) -> None:
    off = 0
    while off < size:
        n = os.copy_file_range(src, dst, size - off, off, off)
        if n == 0:
            break
        off += n


class LocalUpload(Upload):
    def __init__(self, w: LocalWriter, rel: str, etag: str | None, keep: ObjectInfo | None):
        self.w = w
        self.path = rel
        self.etag = etag
        self.full = w.backend._abs(rel)
        self.dir = os.path.dirname(self.full)
        self.fd = self._tmpfile()
        if keep is not None and keep.size:
            try:
                src = os.open(self.full, os.O_RDONLY)
            except OSError as e:
                raise _map_oserror(e, rel) from None
            try:
                if _etag(os.fstat(src)) != etag:
                    raise Changed(f"{rel!r} changed since it was opened", rel)
                _copy(src, self.fd, keep.size)
            finally:
                os.close(src)

    def _tmpfile(self) -> int:
        try:
            return os.open(self.dir, os.O_TMPFILE | os.O_RDWR, 0o644)
        except OSError as e:
            raise _map_oserror(e, self.path) from None

    def stage(self, index: int, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        pos = 0
        try:
            while pos < len(view):
                pos += os.pwrite(self.fd, view[pos:], offset + pos)
        except OSError as e:
            raise _map_oserror(e, self.path) from None

    def commit(self, parts: list[int], size: int, md5: bytes | None = None) -> ObjectInfo:
        rel = self.path
        try:
            os.ftruncate(self.fd, size)
            os.fsync(self.fd)
            name = os.path.basename(self.full)
            if self.etag is None:
                try:
                    _link(self.fd, self.dir, name)
                except FileExistsError:
                    raise Changed(f"{rel!r} was created by someone else meanwhile", rel) from None
            else:
                try:
                    current = _etag(os.stat(self.full))
                except FileNotFoundError:
                    current = None
                if current != self.etag:
                    raise Changed(f"{rel!r} changed since it was opened", rel)
                tmpname = f".amlfs-commit-{uuid.uuid4().hex}"
                tmp = os.path.join(self.dir, tmpname)
                _link(self.fd, self.dir, tmpname)
                try:
                    os.replace(tmp, self.full)
                except BaseException:
                    os.unlink(tmp)
                    raise
            st = os.fstat(self.fd)
            self.etag = _etag(st)
            # What follows must not change the committed file: go on in a copy of it.
            old, self.fd = self.fd, self._tmpfile()
            _copy(old, self.fd, size)
            os.close(old)
        except OSError as e:
            raise _map_oserror(e, rel) from None
        return ObjectInfo(rel, False, size, self.etag, st.st_mtime, md5)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalWriter(Writer):
    renames_directories = True

    def __init__(self, backend: LocalBackend):
        self.backend = backend

    def open_upload(
        self, path: str, *, etag: str | None, keep: ObjectInfo | None = None
    ) -> LocalUpload:
        return LocalUpload(self, file_path_checked(path), etag, keep)

    def mkdir(self, path: str) -> ObjectInfo:
        rel = file_path_checked(path)
        full = self.backend._abs(rel)
        try:
            os.mkdir(full, 0o755)
        except FileExistsError:
            raise AlreadyExists(f"{rel!r} exists", rel) from None
        except OSError as e:
            raise _map_oserror(e, rel) from None
        return self.backend.stat(rel)

    def rmdir(self, path: str) -> None:
        rel = file_path_checked(path)
        try:
            os.rmdir(self.backend._abs(rel))
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise NotEmpty(f"directory not empty: {rel!r}", rel) from None
            raise _map_oserror(e, rel) from None

    def unlink(self, path: str) -> None:
        self.backend.delete(file_path_checked(path))

    def rename(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        s, d = file_path_checked(src.path), file_path_checked(dst)
        sf, df = self.backend._abs(s), self.backend._abs(d)
        try:
            if src.etag is not None and _etag(os.stat(sf)) != src.etag:
                raise Changed(f"{s!r} changed since it was looked up", s)
            os.rename(sf, df)
        except OSError as e:
            if e.errno == errno.ENOTEMPTY:
                raise NotEmpty(f"directory not empty: {d!r}", d) from None
            raise _map_oserror(e, s) from None
        return self.backend.stat(d)
