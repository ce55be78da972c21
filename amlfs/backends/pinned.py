"""A read-only view of a backend that shows exactly a recorded set of files at their recorded
ETags (a run manifest's input): listings and stats come from the record, never from the
service; every read is conditional on the recorded ETag, so a file that changed since is
refused (`NotAsPinned`) and its new bytes never reach a reader. Files added since are not shown.

Thread-safe as the wrapped backend is: the record is read-only after construction.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable
from typing import BinaryIO

from .base import Abort, Backend, ObjectInfo
from .errors import BackendError, Changed, IsADirectory, NotADirectory, NotFound


class NotAsPinned(BackendError):
    """A pinned file changed or disappeared since its manifest was recorded (ESTALE on a mount).
    Not a `Changed`: a reader must not look the file up again and take its new version."""

    errno = errno.ESTALE


class ReadOnly(BackendError):
    errno = errno.EROFS
    same_for_all = True
    hint = "a datastore pinned to a manifest is read-only"


class PinnedBackend(Backend):
    """`inner` restricted to `files` (full datastore paths, each with its recorded ETag).

    `source` names the record in messages ("manifest run.json, input 'train'").
    """

    def __init__(self, inner: Backend, files: Iterable[ObjectInfo], source: str, root: str = ""):
        self.inner = inner
        self.source = source
        self.description = f"{inner.description} pinned to {source}"
        self._files: dict[str, ObjectInfo] = {}
        self._children: dict[str, dict[str, ObjectInfo]] = {"": {}}
        if root:
            self._add(ObjectInfo(root, True))
        for info in files:
            if not info.is_dir:
                self._files[info.path] = info
                self._add(info)
        # a name both a file and a directory is shown as the directory, as listings do
        for d in self._children:
            self._files.pop(d, None)

    def _add(self, entry: ObjectInfo) -> None:
        parent = entry.path.rpartition("/")[0]
        siblings = self._children.get(parent)
        if siblings is None:
            siblings = self._children[parent] = {}
            self._add(ObjectInfo(parent, True))
        if entry.path not in siblings or entry.is_dir:
            siblings[entry.path] = entry

    # --- metadata from the record ------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo:
        if path in self._children:
            return ObjectInfo(path, True)
        info = self._files.get(path)
        if info is None:
            raise NotFound(f"{path!r} is not in {self.source}", path)
        return info

    def list_page(
        self, path: str, token: str | None = None, page_size: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        children = self._children.get(path)
        if children is None:
            if path in self._files:
                raise NotADirectory(f"{path!r} is a file", path)
            raise NotFound(f"{path!r} is not in {self.source}", path)
        entries = sorted(children.values(), key=lambda i: i.path)
        start = int(token or 0)
        end = len(entries) if page_size is None else start + page_size
        return entries[start:end], (str(end) if end < len(entries) else None)

    def check_access(self) -> None:
        """Nothing to ask the service: the record is the listing."""

    # --- reads, each conditional on the recorded ETag ----------------------------------------

    def _pin(self, path: str) -> str | None:
        info = self.stat(path)
        if info.is_dir:
            raise IsADirectory(f"{path!r} is a directory", path)
        return info.etag

    def _guard(self, path: str, read: Callable[[str | None], int | bytes]):
        etag = self._pin(path)
        try:
            return read(etag)
        except Changed:
            # a conditional read of a deleted object may answer 412 as well: say which it is
            try:
                self.inner.stat(path)
            except NotFound:
                raise self._deleted(path) from None
            except BackendError:
                pass
            raise NotAsPinned(
                f"{path!r} changed since {self.source} was recorded (ETag {etag}): refusing to"
                " read the new version",
                path,
            ) from None
        except NotFound:
            raise self._deleted(path) from None

    def _deleted(self, path: str) -> NotAsPinned:
        return NotAsPinned(f"{path!r} was deleted since {self.source} was recorded", path)

    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        return self._guard(path, lambda e: self.inner.read_range(path, offset, length, e))

    def read_range_into(
        self,
        path: str,
        offset: int,
        buf: memoryview,
        etag: str | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        abort: Abort | None = None,
    ) -> int:
        return self._guard(
            path,
            lambda e: self.inner.read_range_into(
                path, offset, buf, e, progress=progress, abort=abort
            ),
        )

    def read_range_to_fd(
        self,
        path: str,
        offset: int,
        length: int,
        fd: int,
        fd_offset: int,
        etag: str | None = None,
    ) -> int:
        return self._guard(
            path, lambda e: self.inner.read_range_to_fd(path, offset, length, fd, fd_offset, e)
        )

    # --- no writes ---------------------------------------------------------------------------

    def write_stream(
        self, path: str, stream: BinaryIO, length: int, overwrite: bool = True
    ) -> ObjectInfo:
        raise ReadOnly(f"cannot write {path!r}: {self.description} is read-only", path)

    def delete(self, path: str) -> None:
        raise ReadOnly(f"cannot delete {path!r}: {self.description} is read-only", path)

    def close(self) -> None:
        self.inner.close()
