"""The write side of an ADLS Gen2 filesystem for writable mounts: a new file or an overwrite is
appended to a temporary name in the target's directory (Append, with each piece's Content-MD5),
flushed, then renamed into place conditionally (If-None-Match: * for a new name, If-Match for an
overwrite); an append goes straight to the file (the service's append) and becomes visible at
the conditional Flush. Directories are real; rename is the service's, atomic, directories too.

Concurrency contract: thread-safe like the AdlsBackend it wraps; one Upload as base.Upload says.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.storage.filedatalake import ContentSettings

from .adls import AdlsBackend
from .azure import temp_name, timestamp
from .base import ObjectInfo, Upload, Writer, file_path_checked
from .errors import AlreadyExists, Changed

log = logging.getLogger(__name__)


class AdlsUpload(Upload):
    def __init__(self, w: AdlsWriter, rel: str, etag: str | None, keep: ObjectInfo | None):
        self.w = w
        self.path = rel
        self.etag = etag
        self.target = w.fs.get_file_client(rel)
        # Parts of an append go to the file itself; others to a temporary name first.
        self.direct = keep is not None and keep.size > 0
        self.tmp: Any = None
        self._lock = threading.Lock()

    def _client(self) -> Any:
        if self.direct:
            return self.target
        with self._lock:
            if self.tmp is None:
                tmp = self.w.fs.get_file_client(temp_name(self.path))
                self.w.call(self.path, tmp.create_file)
                self.tmp = tmp
            return self.tmp

    def stage(self, index: int, offset: int, data: bytes | memoryview) -> None:
        client = self._client()
        body = bytes(data)
        self.w.call(
            self.path,
            lambda: client.append_data(body, offset, len(body), validate_content=True),
        )

    def commit(self, parts: list[int], size: int, md5: bytes | None = None) -> ObjectInfo:
        settings = ContentSettings(content_md5=bytearray(md5)) if md5 else None
        extra: dict[str, Any] = {"content_settings": settings} if settings else {}
        try:
            if self.direct:
                resp = self.w.call(
                    self.path,
                    lambda: self.target.flush_data(
                        size, etag=self.etag, match_condition=MatchConditions.IfNotModified, **extra
                    ),
                )
                self.etag = resp.get("etag")
                return ObjectInfo(
                    self.path, False, size, self.etag, timestamp(resp.get("last_modified")), md5
                )
            tmp = self._client()
            self.w.call(self.path, lambda: tmp.flush_data(size, **extra))
            if self.etag is None:
                cond: dict[str, Any] = {"match_condition": MatchConditions.IfMissing}
            else:
                cond = {"etag": self.etag, "match_condition": MatchConditions.IfNotModified}
            self.w.call(
                self.path,
                lambda: tmp.rename_file(f"{self.w.fs.file_system_name}/{self.path}", **cond),
            )
        except (AlreadyExists, Changed):
            self.discard()
            raise Changed(
                f"{self.path!r} changed remotely since it was opened", self.path
            ) from None
        self.tmp = None
        self.direct = True  # what follows is appended to the file now
        info = self.w.backend.stat(self.path)
        self.etag = info.etag
        return ObjectInfo(self.path, False, size, info.etag, info.mtime or time.time(), md5)

    def discard(self) -> None:
        tmp, self.tmp = self.tmp, None
        if tmp is not None:
            try:
                tmp.delete_file()
            except AzureError as e:
                log.warning(
                    "%r: could not delete the temporary %r: %s", self.path, tmp.path_name, e
                )


class AdlsWriter(Writer):
    renames_directories = True

    def __init__(self, backend: AdlsBackend):
        self.backend = backend
        self.fs = backend.fs

    def call(self, rel: str, fn: Any) -> Any:
        return self.backend._call(rel, fn)

    def open_upload(
        self, path: str, *, etag: str | None, keep: ObjectInfo | None = None
    ) -> AdlsUpload:
        return AdlsUpload(self, file_path_checked(path), etag, keep)

    def mkdir(self, path: str) -> ObjectInfo:
        rel = file_path_checked(path)
        dc = self.fs.get_directory_client(rel)
        try:
            self.call(rel, lambda: dc.create_directory(match_condition=MatchConditions.IfMissing))
        except Changed:
            raise AlreadyExists(f"{rel!r} exists", rel) from None
        return ObjectInfo(rel, True, mtime=time.time())

    def rmdir(self, path: str) -> None:
        rel = file_path_checked(path)
        # A path delete without recursive=true: the service refuses a non-empty directory.
        # (409 DirectoryNotEmpty is NotEmpty: azure.classify)
        self.call(rel, self.fs.get_file_client(rel).delete_file)

    def unlink(self, path: str) -> None:
        self.backend.delete(file_path_checked(path))

    def rename(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        s, d = file_path_checked(src.path), file_path_checked(dst)
        cond: dict[str, Any] = {}
        if src.etag:
            cond = {
                "source_etag": src.etag,
                "source_match_condition": MatchConditions.IfNotModified,
            }
        new = f"{self.fs.file_system_name}/{d}"
        if src.is_dir:
            dc = self.fs.get_directory_client(s)
            self.call(s, lambda: dc.rename_directory(new, **cond))
        else:
            fc = self.fs.get_file_client(s)
            self.call(s, lambda: fc.rename_file(new, **cond))
        return self.backend.stat(d)
