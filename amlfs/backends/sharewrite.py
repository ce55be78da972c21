"""The write side of an Azure Files share for writable mounts: a file is written to a temporary
name in the target's directory (Create File, then Put Range in pieces of at most 4 MiB, each with
its Content-MD5, the file grown with Set File Properties as parts arrive) and renamed into place
at commit: a new name with replace-if-exists=false (the service refuses a taken name), an
overwrite after checking the target's ETag (Azure Files has no conditional rename: a
check-then-act race with other writers, documented). An append copies the kept content into the
temporary file first (Azure Files has no commit step that would hide appended bytes).
Directories are real; rename is the service's, for directories too.

Concurrency contract: thread-safe like the FileShareBackend it wraps; one Upload as base.Upload
says.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from azure.core.exceptions import AzureError

from .azure import temp_name
from .base import ObjectInfo, Upload, Writer, file_path_checked
from .errors import AlreadyExists, Changed, NotFound
from .fileshare import FileShareBackend

log = logging.getLogger(__name__)

#: the largest Put Range
MAX_RANGE = 4 * 1024 * 1024
#: kept content is copied in pieces of this size
COPY_PIECE = 4 * 1024 * 1024


class ShareUpload(Upload):
    def __init__(self, w: ShareWriter, rel: str, etag: str | None, keep: ObjectInfo | None):
        self.w = w
        self.path = rel
        self.etag = etag
        self.keep = keep if keep is not None and keep.size else None
        self.tmp: Any = None
        self._size = 0  # the temporary file's size now
        self._lock = threading.Lock()

    def _client(self) -> Any:
        with self._lock:
            if self.tmp is None:
                tmp = self.w.share.get_file_client(temp_name(self.path))
                self.w.call(self.path, lambda: tmp.create_file(0))
                self.tmp, self._size = tmp, 0
                if self.keep is not None:
                    self._copy_kept(tmp, self.keep)
            return self.tmp

    def _grow(self, tmp: Any, end: int) -> None:
        with self._lock:
            if end > self._size:
                self.w.call(self.path, lambda: tmp.resize_file(end))
                self._size = end

    def _copy_kept(self, tmp: Any, keep: ObjectInfo) -> None:
        """The kept content (append) into the temporary file (the lock is held)."""
        self.w.call(self.path, lambda: tmp.resize_file(keep.size))
        self._size = keep.size
        for off in range(0, keep.size, COPY_PIECE):
            n = min(COPY_PIECE, keep.size - off)
            data = self.w.backend.read_range(self.path, off, n, etag=keep.etag)
            if len(data) != n:
                raise Changed(f"{self.path!r} changed while it was appended to", self.path)
            self.w.call(
                self.path,
                lambda d=data, o=off: tmp.upload_range(d, o, len(d), validate_content=True),
            )

    def stage(self, index: int, offset: int, data: bytes | memoryview) -> None:
        tmp = self._client()
        self._grow(tmp, offset + len(data))
        view = memoryview(data)
        for pos in range(0, len(view), MAX_RANGE):
            piece = bytes(view[pos : pos + MAX_RANGE])
            self.w.call(
                self.path,
                lambda p=piece, o=offset + pos: tmp.upload_range(
                    p, o, len(p), validate_content=True
                ),
            )

    def commit(self, parts: list[int], size: int, md5: bytes | None = None) -> ObjectInfo:
        tmp = self._client()
        if self._size != size:
            with self._lock:
                self.w.call(self.path, lambda: tmp.resize_file(size))
                self._size = size
        if self.etag is not None:
            try:
                now = self.w.backend.stat(self.path)
            except NotFound:
                now = None
            if now is None or now.etag != self.etag:
                self.discard()
                raise Changed(f"{self.path!r} changed remotely since it was opened", self.path)
        try:
            self.w.call(
                self.path, lambda: tmp.rename_file(self.path, overwrite=self.etag is not None)
            )
        except (AlreadyExists, Changed):
            self.discard()
            raise Changed(
                f"{self.path!r} was created by someone else meanwhile", self.path
            ) from None
        info = self.w.backend.stat(self.path)
        self.etag = info.etag
        # Later writes start from what this commit made.
        self.tmp = None
        self.keep = info if info.size else None
        return ObjectInfo(self.path, False, size, info.etag, info.mtime or time.time(), md5)

    def discard(self) -> None:
        tmp, self.tmp = self.tmp, None
        if tmp is not None:
            try:
                tmp.delete_file()
            except AzureError as e:
                log.warning("%r: could not delete a temporary file: %s", self.path, e)


class ShareWriter(Writer):
    renames_directories = True

    def __init__(self, backend: FileShareBackend):
        self.backend = backend
        self.share = backend.share

    def call(self, rel: str, fn: Any) -> Any:
        try:
            return fn()
        except AzureError as e:
            raise self.backend._file_error(e, rel) from None

    def open_upload(
        self, path: str, *, etag: str | None, keep: ObjectInfo | None = None
    ) -> ShareUpload:
        return ShareUpload(self, file_path_checked(path), etag, keep)

    def mkdir(self, path: str) -> ObjectInfo:
        rel = file_path_checked(path)
        dc = self.share.get_directory_client(rel)
        self.call(rel, dc.create_directory)
        return ObjectInfo(rel, True, mtime=time.time())

    def rmdir(self, path: str) -> None:
        rel = file_path_checked(path)
        # (409 DirectoryNotEmpty is NotEmpty: azure.classify)
        self.backend._call(rel, self.share.get_directory_client(rel).delete_directory)

    def unlink(self, path: str) -> None:
        self.backend.delete(file_path_checked(path))

    def rename(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        s, d = file_path_checked(src.path), file_path_checked(dst)
        if src.is_dir:
            dc = self.share.get_directory_client(s)
            self.call(s, lambda: dc.rename_directory(d, overwrite=False))
        else:
            if src.etag is not None and self.backend.stat(s).etag != src.etag:
                raise Changed(f"{s!r} changed since it was looked up", s)
            fc = self.share.get_file_client(s)
            self.call(s, lambda: fc.rename_file(d, overwrite=True))
        return self.backend.stat(d)
