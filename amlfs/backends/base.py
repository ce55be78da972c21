"""The Backend interface every storage kind implements and its data types (its typed errors
are errors.py's).

Concurrency contract: a Backend is synchronous and thread-safe. One instance may be called from
many threads at once (the transfer engine's pool, the FUSE daemon's worker threads). Trio code
never calls it directly: it goes through `TrioBackend` (bridge.py), which runs each call in a worker thread
under one `CapacityLimiter` -- the single place where blocking SDK calls meet trio.

A blocking call can be cancelled from another thread through an `Abort`: its `cancel()` runs the
closers the call attached (the lean HTTP client shuts its socket down), and the call raises
`Aborted` promptly instead of retrying. `TrioBackend.call` cancels the abort when its trio task
is cancelled, and tells the caller (`on_exit`, on the trio thread) when the worker thread has
really finished, so that memory the thread writes into is given back only then.

Paths are datastore-relative, '/'-separated, without a leading or trailing slash; '' is the root.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

from .errors import (
    Aborted,
    InvalidName,
    IsADirectory,
    LocalIOError,
    Transient,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: entries of the first page of a listing that someone waits on (the mount's directory reads,
#: walk): the first entries arrive after a small response; later pages are full (the service's
#: largest, 5000 for Blob).
FIRST_PAGE = 500


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One entry of a datastore: a file (blob) or a directory."""

    path: str
    is_dir: bool
    size: int = 0
    etag: str | None = None
    mtime: float = 0.0
    content_md5: bytes | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


# --- names ---------------------------------------------------------------------------------------


def normpath(path: str | None) -> str:
    """Normalise a user-given datastore path: strip slashes, drop '.' and empty segments.

    Refuses '..' so that no caller can address anything outside the datastore root.
    """
    if not path:
        return ""
    parts = []
    for seg in path.split("/"):
        if seg in ("", "."):
            continue
        if seg == "..":
            raise InvalidName(f"path {path!r} may not contain '..'", path)
        parts.append(seg)
    return "/".join(parts)


def is_safe_name(name: str) -> bool:
    """A single path segment that can be a file name on Linux without escaping its directory."""
    return (
        name not in ("", ".", "..")
        and "/" not in name
        and "\0" not in name
        and len(name.encode("utf-8", "surrogateescape")) <= 255
    )


def is_safe_relpath(path: str) -> bool:
    """A remote relative path whose every segment is safe (no empty segment, '.', '..')."""
    return bool(path) and all(is_safe_name(seg) for seg in path.split("/"))


def file_path_checked(path: str) -> str:
    """`normpath(path)` of an entry to create, delete or rename: never the root, every segment a
    safe name (InvalidName otherwise), so no write leaves the datastore."""
    rel = normpath(path)
    if not is_safe_relpath(rel):
        raise InvalidName(f"{path!r} is not a valid name to write", path)
    return rel


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


# --- cancelling a blocking call from another thread ---------------------------------------------


class Abort:
    """Cancels one blocking backend call from another thread (thread-safe, idempotent).

    The call attaches closers (e.g. a socket shutdown) while it blocks and detaches them before
    it lets go of what they close; `cancel()` marks the abort and runs every attached closer
    once. Closers run under the abort's lock, so once `detach` returns the closer is not running
    and never will: a closer may not call back into its Abort, and must be quick (no I/O wait).
    """

    __slots__ = ("cancelled", "_closers", "_lock", "_event")

    def __init__(self) -> None:
        self.cancelled = False
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._event = threading.Event()

    def cancel(self) -> None:
        """Mark cancelled and run every attached closer once (later cancels do nothing)."""
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            self._event.set()
            closers, self._closers = self._closers, []
            for closer in closers:
                _run_closer(closer)

    def attach(self, closer: Callable[[], None]) -> None:
        """Run `closer` on cancel; at once if already cancelled."""
        with self._lock:
            if self.cancelled:
                _run_closer(closer)
            else:
                self._closers.append(closer)

    def detach(self, closer: Callable[[], None]) -> None:
        """Forget `closer` (no error if it is not attached, or already ran)."""
        with self._lock:
            try:
                self._closers.remove(closer)
            except ValueError:
                pass

    def sleep(self, seconds: float) -> None:
        """time.sleep that ends early on cancel (a retry's backoff)."""
        self._event.wait(seconds)

    def check(self, path: str | None = None) -> None:
        """Raise Aborted if cancelled."""
        if self.cancelled:
            raise Aborted("the call was cancelled", path)


def _run_closer(closer: Callable[[], None]) -> None:
    try:
        closer()
    except Exception:  # a closer that fails has nothing left to close
        log.debug("abort closer %r failed", closer, exc_info=True)


# --- retry ---------------------------------------------------------------------------------------


def retry(
    fn: Callable[[], T],
    *,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    deadline: float | None = None,
) -> T:
    """Call `fn`, retrying `Transient` failures with jittered exponential backoff.

    `deadline` (a time.monotonic() value) bounds the total time: no retry starts after it.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except Transient:
            if attempt == attempts - 1:
                raise
            delay = min(max_delay, base_delay * 2**attempt) * (0.5 + random.random() / 2)
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


# --- the interface -------------------------------------------------------------------------------


class Backend(ABC):
    """A datastore's storage, seen as a tree of directories and files.

    Flat namespaces (Blob) synthesise directories from prefixes and folder markers; hierarchical
    ones (File share, ADLS Gen2, local) have real directories. Implementations raise only
    `BackendError` subclasses for storage failures.
    """

    #: a human name for messages: "blob container 'data' at http://127.0.0.1:10000/devstoreaccount1"
    description: str = "backend"

    @abstractmethod
    def stat(self, path: str) -> ObjectInfo:
        """The entry at `path` (file or directory); '' is the root. NotFound if neither."""

    @abstractmethod
    def list_page(
        self, path: str, token: str | None = None, page_size: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        """One page of the direct children of directory `path`, and the token of the next page.
        `page_size`: at most that many entries (None: the service's largest page); a reader who
        waits for the first entries asks for a small first page.

        Entries carry size, ETag and mtime so that no per-entry stat is needed. A name that is
        both a file and a directory is reported once, as the directory. Names that cannot be
        safe path segments are left out (and logged once by the implementation). NotFound when
        `path` is not a directory (for flat namespaces: when nothing lies under the prefix and
        no folder marker exists, except for the root, which always exists).
        """

    @abstractmethod
    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        """Up to `length` bytes from `offset` (fewer only at the end of the object).

        With `etag`, the read is conditional (If-Match) and raises Changed when the object's
        ETag differs.
        """

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
        """`read_range` of len(buf) bytes into `buf`; the number of bytes read (fewer only at
        the end of the object). Backends that can receive straight into the buffer override it:
        the transfer engine reuses one buffer per thread, saving an allocation and a copy.

        `progress(n)` is called from the calling thread with the cumulative number of bytes
        already in `buf` (monotonic; streaming backends call it at least every ~256 KiB and once
        at the end). `abort` cancels the call from another thread: it raises Aborted and is
        never retried. This default (SDK backends) can only check `abort` before and after the
        whole request, and reports progress once, at the end.
        """
        if abort is not None:
            abort.check(path)
        data = self.read_range(path, offset, len(buf), etag)
        if abort is not None:
            abort.check(path)
        buf[: len(data)] = data
        if progress is not None:
            progress(len(data))
        return len(data)

    def read_range_to_fd(
        self,
        path: str,
        offset: int,
        length: int,
        fd: int,
        fd_offset: int,
        etag: str | None = None,
    ) -> int:
        """`read_range`, written with pwrite to file descriptor `fd` at `fd_offset`; the number
        of bytes (fewer only at the end of the object). Backends that stream override it:
        writing each piece while it is still in the CPU cache halves the memory traffic of
        large downloads, and no multi-MiB buffer is needed."""
        view = memoryview(self.read_range(path, offset, length, etag))
        pos = 0
        try:
            while pos < len(view):
                pos += os.pwrite(fd, view[pos:], fd_offset + pos)
        except OSError as e:
            raise LocalIOError.for_fd(e, fd) from None
        return len(view)

    @abstractmethod
    def write_stream(
        self, path: str, stream: BinaryIO, length: int, overwrite: bool = True
    ) -> ObjectInfo:
        """Upload `length` bytes from `stream` as the file `path`, creating parent directories
        where the storage has them. AlreadyExists when the file exists and not `overwrite`."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Delete the file `path`. NotFound when missing."""

    def walk(self, path: str = "", first_page: int | None = None) -> Iterator[ObjectInfo]:
        """Every file (not directory) below `path`, recursively, in no promised order.

        The default walks `list_page` level by level; flat namespaces override it with a single
        flat listing. `first_page` (e.g. FIRST_PAGE, for a caller that shows the first entries
        as they come): the walk's first request asks for that many entries, so that they come
        sooner; the rest, and every request without it, are full pages (one request fewer:
        a service may spend as long on a small page as on a full one).
        """
        stack = [path]
        first = first_page
        while stack:
            d = stack.pop()
            token: str | None = None
            while True:
                entries, token = self.list_page(d, token, first)
                first = None
                for e in entries:
                    if e.is_dir:
                        stack.append(e.path)
                    else:
                        yield e
                if not token:
                    break

    def list_dir(self, path: str) -> Iterator[ObjectInfo]:
        """All direct children of `path`, page by page."""
        token: str | None = None
        while True:
            entries, token = self.list_page(path, token)
            yield from entries
            if not token:
                return

    def read_all(self, path: str, etag: str | None = None) -> bytes:
        info = self.stat(path)
        if info.is_dir:
            raise IsADirectory(f"{path!r} is a directory", path)
        return self.read_range(path, 0, info.size, etag=etag or info.etag) if info.size else b""

    def write_file(self, path: str, local_path: str, overwrite: bool = True) -> ObjectInfo:
        import os

        with open(local_path, "rb") as f:
            return self.write_stream(path, f, os.fstat(f.fileno()).st_size, overwrite=overwrite)

    def write_bytes(self, path: str, data: bytes, overwrite: bool = True) -> ObjectInfo:
        import io

        return self.write_stream(path, io.BytesIO(data), len(data), overwrite=overwrite)

    def ensure_exists(self) -> None:  # noqa: B027 - optional hook: nothing to create by default
        """Create the container / share / filesystem / directory (create_if_not_exists)."""

    def check_access(self) -> None:
        """Raise NotFound/Forbidden if the container or root cannot be reached."""
        self.list_page("")

    def close(self) -> None:  # noqa: B027 - optional hook: nothing to release by default
        """Release connections."""


# --- writing through a mount ---------------------------------------------------------------------


class Upload(ABC):
    """One object being written through a writable mount: parts staged as they come, then
    committed at once (nothing is visible under the name before `commit`).

    Concurrency contract: `stage` of different parts may run in different threads at once;
    `commit` and `discard` run when no `stage` is in flight. A commit may be repeated after more
    parts were staged (fsync, then more writes): each commit is conditional on the version the
    previous one made (or on the one opened), and a lost race raises Changed (ESTALE).
    """

    path: str

    @abstractmethod
    def stage(self, index: int, offset: int, data: bytes | memoryview) -> None:
        """Part `index` holds `data`, bytes [offset, offset + len(data)) of the object. The
        service checks each part's checksum (Content-MD5) where it can."""

    @abstractmethod
    def commit(self, parts: list[int], size: int, md5: bytes | None = None) -> ObjectInfo:
        """Make the object the kept content (if any) followed by `parts` in this order, `size`
        bytes in all; `md5` (of the whole object) is stored and checked where the service can.
        Raises Changed when the name was taken (new file) or the object changed (overwrite)."""

    def put(self, data: bytes, md5: bytes) -> ObjectInfo:
        """The whole object in one request, when nothing was staged or kept (a small file):
        conditional like `commit`. This default stages one part and commits it."""
        self.stage(0, 0, data)
        return self.commit([0], len(data), md5)

    def discard(self) -> None:  # noqa: B027 - optional: staged parts the service drops itself
        """Forget what was staged (the name keeps what it had)."""


class Writer(ABC):
    """The write side of a Backend, for writable mounts (see backends/writers.py for which
    backends have one). Thread-safe like the Backend it wraps. Paths as for Backend."""

    #: directory rename is native (ADLS, File share, local) or refused (flat Blob)
    renames_directories: bool = False

    @abstractmethod
    def open_upload(self, path: str, *, etag: str | None, keep: ObjectInfo | None = None) -> Upload:
        """An upload of file `path`: a new name (`etag` None: committed only if still free) or
        an overwrite of the version `etag` (committed only if still that version). `keep`: the
        existing object (of ETag `etag`) whose content comes first (append)."""

    @abstractmethod
    def mkdir(self, path: str) -> ObjectInfo:
        """Create directory `path` (AlreadyExists if the name is taken)."""

    @abstractmethod
    def rmdir(self, path: str) -> None:
        """Remove the empty directory `path` (NotEmpty when it has children)."""

    @abstractmethod
    def unlink(self, path: str) -> None:
        """Delete file `path` (NotFound if missing)."""

    @abstractmethod
    def rename(self, src: ObjectInfo, dst: str) -> ObjectInfo:
        """Move file `src` (at its ETag) to `dst`, replacing a file there; the new entry."""
