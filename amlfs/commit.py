"""Publishing downloaded files: part files, and the committer thread that renames them into
place in batches, durably when asked.

Atomicity: a file is never visible under its real name before it is complete. The engine in
amlfs.fetch writes whole files (or chunks) to `.<name>.amlfs-part`; the committer renames
completed files in batches and then calls `on_commit` (stage journals its state only there).

Durability (`durable=True`, the CLI's --fsync): each batch is `syncfs` (data on disk) -> rename
all -> `syncfs` (renames on disk) -> `on_commit`: one syncfs per batch costs far less than one
fsync per file. Without it (the default, as rclone and azcopy do) the kernel writes back when it
likes, which saves ~2 s per GiB on this machine's disk; process kills lose nothing either way (the
page cache survives them), and stage tags such claims with the boot id so that after a crash of
the machine it fetches those files again instead of trusting them.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fetch import DownloadJob

log = logging.getLogger(__name__)

__all__ = ["PART_SUFFIX", "Committed", "Committer", "part_path", "syncfs", "unlink_quiet"]

PART_SUFFIX = ".amlfs-part"
COMMIT_INTERVAL = 0.5
COMMIT_BATCH = 512
#: completed files queued at most: a worker that would queue more waits for the committer (each
#: queued file holds its job; without a bound a fast disk and slow renames queue thousands)
MAX_PENDING = 2 * COMMIT_BATCH


@dataclass(slots=True)
class Committed:
    """A file now complete under its real name, with the local stat stage records."""

    job: DownloadJob
    size: int
    mtime_ns: int


def part_path(dest: str) -> str:
    """The hidden temp name beside `dest` (hashed when `.NAME.amlfs-part` would be too long)."""
    d, name = os.path.split(dest)
    part = f".{name}{PART_SUFFIX}"
    if len(part.encode("utf-8", "surrogateescape")) > 255:
        part = f".{hashlib.sha1(name.encode('utf-8', 'surrogateescape')).hexdigest()}{PART_SUFFIX}"
    return os.path.join(d, part)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding `fd` (Linux syncfs; os.sync where it is missing)."""
    fn = getattr(_libc, "syncfs", None)
    if fn is None or fn(fd) != 0:
        os.sync()


def unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class Committer:
    """Publishes completed part files in batches on its own thread (see the module docstring).

    `on_commit(files, chunks)` runs on that thread after each batch: `files` are complete under
    their real names, `chunks` are (job, chunk indices) written to part files still in flight.
    `fail(committed, error)` reports a rename that failed; its part file is then removed.
    """

    def __init__(
        self,
        root: str,
        durable: bool,
        on_commit: Callable[[list[Committed], list[tuple[DownloadJob, list[int]]]], None] | None,
        fail: Callable[[Committed, OSError], None],
    ):
        self.durable = durable
        self.on_commit = on_commit
        self.fail = fail
        self.committed = 0
        self._fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY) if durable else -1
        self._pending: list[tuple[str, Committed]] = []
        self._chunks: list[tuple[DownloadJob, list[int]]] = []
        lock = threading.Lock()
        self._cv = threading.Condition(lock)
        self._room = threading.Condition(lock)  # the queue went below MAX_PENDING
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="amlfs-commit", daemon=True)
        self._thread.start()

    def add(self, tmp: str, done: Committed) -> None:
        """Queue the complete part file `tmp` for renaming to `done.job.dest`."""
        with self._cv:
            self._pending.append((tmp, done))
            if len(self._pending) >= min(COMMIT_BATCH, MAX_PENDING):
                self._cv.notify()
            # Bounded waits: a committer that failed or stopped never holds a worker.
            while (
                len(self._pending) >= MAX_PENDING
                and self._error is None
                and self._thread.is_alive()
            ):
                self._room.wait(COMMIT_INTERVAL)

    def add_chunks(self, job: DownloadJob, indices: list[int]) -> None:
        """Report chunks written to `job`'s part file with the next batch (for stage resume)."""
        if self.on_commit is not None and indices:
            with self._cv:
                self._chunks.append((job, indices))

    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._closing and len(self._pending) < min(COMMIT_BATCH, MAX_PENDING):
                    self._cv.wait(COMMIT_INTERVAL)
                closing = self._closing
            try:
                self.commit()
            except BaseException as e:  # reported by close(); the run must not claim success
                self._error = e
                return
            if closing:
                return

    def commit(self) -> None:
        with self._cv:
            pending, self._pending = self._pending, []
            chunks, self._chunks = self._chunks, []
            self._room.notify_all()
        if not pending and not chunks:
            return
        if self.durable:
            syncfs(self._fd)
        done: list[Committed] = []
        for tmp, c in pending:
            try:
                os.replace(tmp, c.job.dest)
                done.append(c)
            except OSError as e:
                self.fail(c, e)
                unlink_quiet(tmp)
        if self.durable and done:
            syncfs(self._fd)
        self.committed += len(done)
        if self.on_commit is not None:
            self.on_commit(done, chunks)

    def close(self) -> None:
        """Publish what is queued, stop the thread, and raise what made it fail, if anything."""
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        if self._fd >= 0:
            os.close(self._fd)
        if self._error is not None:
            raise self._error
