"""The download engine behind download, stage and as_download: parallel across files, large
files in parallel ranged chunks written in place into a preallocated hidden part file, bounded
memory and concurrency. Completed part files are published by amlfs.commit (atomic renames in
batches, durable with --fsync).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass

from .backends.base import Backend, ObjectInfo
from .backends.errors import BackendError, Changed, IsADirectory, LocalIOError, NotFound, Transient
from .bigfile import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_RANGE_WORKERS,
    DEFAULT_WORKERS,
    SMALL_FILE_MAX,
    BigFile,
    chunk_size,
)
from .commit import Committed, Committer, part_path, unlink_quiet
from .outcome import FailureStreak, TransferResult, TransferStopped, error_text
from .progress import Progress
from .throttle import Throttle

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DownloadJob",
    "Downloader",
    "TransferResult",
    "chunk_size",
    "error_text",
]


@dataclass(slots=True)
class DownloadJob:
    """One remote file to fetch to `dest`; `key` names it in results and stage state."""

    info: ObjectInfo
    dest: str
    key: str
    #: chunk indices already durable in the part file (stage resume)
    resume_chunks: frozenset[int] = frozenset()


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if offset is None:
            n = os.write(fd, view[pos:])
        else:
            n = os.pwrite(fd, view[pos:], offset + pos)
        pos += n


class Downloader:
    """Runs download jobs on a bounded thread pool and commits them durably.

    `on_commit(files, chunks)` is called from the committer thread after each durable batch:
    `files` are complete under their real names, `chunks` are (job, chunk indices) durable in part
    files of large files still in flight (stage records them to resume).
    """

    def __init__(
        self,
        backend: Backend,
        root: str,
        *,
        workers: int | None = None,
        block_size: int | None = None,
        progress: Progress | None = None,
        verify: bool = False,
        durable: bool = False,
        keep_parts: bool = False,
        on_commit: Callable[[list[Committed], list[tuple[DownloadJob, list[int]]]], None]
        | None = None,
    ):
        self.backend = backend
        self.root = root
        self.workers = max(1, workers or DEFAULT_WORKERS)
        self.explicit_block = max(64 << 10, block_size) if block_size else None
        self.block_size = self.explicit_block or DEFAULT_BLOCK_SIZE
        self.progress = progress or Progress("download", False)
        self.verify = verify
        self.durable = durable
        self.keep_parts = keep_parts
        self.on_commit = on_commit
        self.result = TransferResult()
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        # At most half the workers on ranges of large files, so small files keep flowing.
        self._local = threading.local()
        self._range_limit = max(1, min(self.workers // 2, DEFAULT_RANGE_WORKERS))
        self._retry: deque = deque()
        self._active = 0
        self._big_active = 0
        self._big_it: Iterator[tuple] | None = None
        self._small_it: Iterator[tuple] | None = None
        self._stop = False
        self._fatal: BaseException | None = None
        self._dirs: set[str] = set()
        self._open_big: set[BigFile] = set()
        self._streak = FailureStreak()
        #: adaptive concurrency of the requests (amlfs.throttle)
        self.throttle = Throttle(self.workers)

    # --- bookkeeping ---------------------------------------------------------------------

    def _fail(self, key: str, message: str, err: BaseException | None = None) -> None:
        """A per-file failure, listed once at the end (by the caller), not logged here; a
        streak of them of one kind stops the run (amlfs.outcome)."""
        log.debug("failed: %s", message)
        with self._lock:
            self.result.failed.append((key, message))
        repeated = self._streak.failure(err)
        if repeated:
            self._stop_run(TransferStopped(err, self.result, repeated))  # type: ignore[arg-type]

    def _stop_run(self, e: BaseException) -> None:
        with self._cv:
            self._fatal = self._fatal or e
            self._stop = True
            self._cv.notify_all()

    def _local_error(self, e: OSError, job: DownloadJob) -> LocalIOError:
        """A local write error, named by the file's real name; stops the run when every
        other file would hit it too (a full or read-only target)."""
        if isinstance(e, LocalIOError):  # named by the part file: name the real one
            e = OSError(e.errno, e.strerror)
        err = LocalIOError(e, job.dest, job.info.path)
        if err.same_for_all:
            self._stop_run(err)
        return err

    def _rename_failed(self, done: Committed, e: OSError) -> None:
        err = self._local_error(e, done.job)
        self._fail(done.job.key, str(err), err)

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.result, k, getattr(self.result, k) + v)

    def _makedirs(self, d: str) -> None:
        if d not in self._dirs:
            os.makedirs(d, exist_ok=True)
            self._dirs.add(d)

    # --- the worker pool -------------------------------------------------------------------

    def _is_small(self, job: DownloadJob) -> bool:
        return job.info.size <= min(SMALL_FILE_MAX, self.block_size) and not job.resume_chunks

    def _big_tasks(self, jobs: Iterable[DownloadJob]) -> Iterator[tuple]:
        for job in jobs:
            if not self._is_small(job):
                bf = BigFile(job, chunk_size(job.info.size, self.explicit_block))
                if not bf.todo:  # every chunk survived from an interrupted run
                    yield (True, self._finish_big, bf)
                for idx in bf.todo:
                    yield (True, self._chunk, bf, idx)

    def _next_task(self) -> tuple | None:
        """The next task: (is_big, fn, *args). Chunks of large files go first but only
        `range_limit` at a time (memory: that x block size); the other workers take small
        files meanwhile instead of queueing behind the limit."""
        with self._cv:
            while True:
                if self._stop:
                    return None
                task = None
                if self._retry and self._big_active < self._range_limit:
                    task = self._retry.popleft()
                elif self._big_it is not None and self._big_active < self._range_limit:
                    task = next(self._big_it, None)
                    if task is None:
                        self._big_it = None
                if task is None and self._small_it is not None:
                    task = next(self._small_it, None)
                    if task is None:
                        self._small_it = None
                if task is not None:
                    self._active += 1
                    self._big_active += task[0]
                    return task
                if (
                    self._active == 0
                    and not self._retry
                    and self._big_it is None
                    and self._small_it is None
                ):
                    self._cv.notify_all()
                    return None
                self._cv.wait()

    def _worker(self) -> None:
        while True:
            task = self._next_task()
            if task is None:
                return
            try:
                task[1](*task[2:])
            except BaseException as e:
                # same_for_all: every other file would fail the same way; stop instead of
                # listing them all. Anything else here is a bug: fail loudly, still clean up.
                if not (isinstance(e, BackendError) and e.same_for_all):
                    log.exception("transfer worker failed")
                self._stop_run(e)
            finally:
                with self._cv:
                    self._active -= 1
                    self._big_active -= task[0]
                    self._cv.notify_all()

    def run(self, jobs: Iterable[DownloadJob]) -> TransferResult:
        start = time.monotonic()
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise TransferStopped(LocalIOError(e, self.root), self.result) from None
        self._committer = Committer(self.root, self.durable, self.on_commit, self._rename_failed)
        if not isinstance(jobs, Collection):  # iterated twice below; a lazy Collection stays lazy
            jobs = list(jobs)
        self._big_it = self._big_tasks(jobs)
        self._small_it = ((False, self._small, j) for j in jobs if self._is_small(j))
        # No more threads than tasks can run at once (a big file's ranges: _range_limit): a
        # no-change stage starts none (32 threads cost ~40 ms of start-up).
        threads = [
            threading.Thread(target=self._worker, name=f"amlfs-dl-{i}", daemon=True)
            for i in range(min(self.workers, len(jobs) * self._range_limit))
        ]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:
            # Ctrl-C / SIGTERM: let in-flight tasks finish, publish what is complete, clean up.
            with self._cv:
                self._stop = True
                self._cv.notify_all()
            for t in threads:
                t.join()
            raise
        finally:
            self._close_open_big()
            self._committer.close()
            self.result.copied = self._committer.committed
            self.result.seconds = time.monotonic() - start
        if isinstance(self._fatal, BackendError):
            raise TransferStopped(self._fatal, self.result)
        if self._fatal is not None:
            raise self._fatal
        return self.result

    def _close_open_big(self) -> None:
        """Files left unfinished by a stop: close them; keep the part only when resumable."""
        for bf in list(self._open_big):
            if bf.fd >= 0:
                os.close(bf.fd)
                bf.fd = -1
            if not self.keep_parts:
                unlink_quiet(bf.tmp)
        self._open_big.clear()

    # --- reading ---------------------------------------------------------------------------

    def _read(self, path: str, off: int, length: int, etag: str | None) -> memoryview:
        """`length` bytes (fewer at the end) in this thread's reused buffer, valid until its
        next read: a fresh buffer per file costs page faults."""
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < length:
            buf = self._local.buf = bytearray(max(length, 256 << 10))
        view = memoryview(buf)[:length]
        # The backend retries a transient failure itself (the one retry layer, ~7 s a
        # request); the throttle waits out a ServerBusy storm beyond that.
        n = self.throttle.call(lambda: self.backend.read_range_into(path, off, view, etag))
        return view[:n]

    def _restat(self, job: DownloadJob) -> ObjectInfo | None:
        """The object's new listing after a Changed; None (and a failure) when it is gone."""
        try:
            info = self.backend.stat(job.info.path)
        except NotFound:
            self._fail(job.key, f"{job.info.path!r} was deleted during the transfer")
            return None
        except BackendError as e:
            if e.same_for_all:
                raise
            self._fail(job.key, str(e), e)
            return None
        if info.is_dir:
            self._fail(job.key, f"{job.info.path!r} became a directory during the transfer")
            return None
        return info

    def _verify(self, job: DownloadJob, digest: bytes | None) -> bool:
        """--verify: compare with the listing's Content-MD5; False (and a failure) on mismatch."""
        want = job.info.content_md5
        if want is None:
            self._count(no_md5=1)
            return True
        if digest != want:
            self._fail(job.key, f"{job.info.path!r}: Content-MD5 mismatch (corrupt transfer)")
            return False
        self._count(verified=1)
        return True

    def _small(self, job: DownloadJob, attempt: int = 0) -> None:
        info = job.info
        tmp = part_path(job.dest)
        try:
            data = self._read(info.path, 0, info.size, info.etag) if info.size else memoryview(b"")
            if len(data) != info.size:
                raise Changed(f"{info.path!r} is shorter than listed", info.path)
        except Changed:
            new = self._restat(job) if attempt == 0 else None
            if attempt > 0:
                self._fail(job.key, f"{info.path!r} kept changing during the transfer")
            if new is not None:
                job.info = new
                self._small(job, attempt + 1)
            return
        except (NotFound, Transient, IsADirectory) as e:
            self._fail(job.key, error_text(e, info.path), e)
            return
        except BackendError as e:
            if e.same_for_all:
                raise
            self._fail(job.key, error_text(e, info.path), e)
            return
        if self.verify and not self._verify(job, hashlib.md5(data).digest()):
            return
        try:
            self._makedirs(os.path.dirname(job.dest))
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                _write_all(fd, data)
                mtime_ns = self._set_mtime(fd, info)
            finally:
                os.close(fd)
        except OSError as e:
            unlink_quiet(tmp)
            err = self._local_error(e, job)
            if not err.same_for_all:
                self._fail(job.key, str(err), err)
            return
        self._streak.success()
        self._count(bytes=info.size)
        self.progress.advance(info.size)
        self.progress.file_done()
        self._committer.add(tmp, Committed(job, info.size, mtime_ns))

    def _set_mtime(self, fd: int, info: ObjectInfo) -> int:
        """Give the local file the remote mtime (as rclone and azcopy do); returns the mtime_ns."""
        if info.mtime:
            ns = int(info.mtime * 1e9)
            os.utime(fd, ns=(ns, ns))
        # What the filesystem stored (it may round), so that a later stat compares equal.
        return os.fstat(fd).st_mtime_ns

    def _open_big_file(self, bf: BigFile) -> None:
        with bf.lock:
            if bf.fd >= 0:
                return
            self._makedirs(os.path.dirname(bf.job.dest))
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | (0 if bf.resumed else os.O_TRUNC)
            bf.fd = os.open(bf.tmp, flags, 0o666)
            with self._lock:
                self._open_big.add(bf)
            if os.fstat(bf.fd).st_size != bf.info.size:
                try:
                    os.posix_fallocate(bf.fd, 0, bf.info.size)
                except OSError:  # e.g. tmpfs without fallocate: a sparse file still works
                    os.ftruncate(bf.fd, bf.info.size)

    def _chunk(self, bf: BigFile, idx: int) -> None:
        if bf.error is None and not self._stop:
            off, length = bf.chunk_range(idx)
            try:
                self._open_big_file(bf)
                n = self.throttle.call(
                    lambda: self.backend.read_range_to_fd(
                        bf.info.path, off, length, bf.fd, off, bf.info.etag
                    )
                )
                if n != length:
                    raise Changed(f"{bf.info.path!r} is shorter than listed", bf.info.path)
                self.progress.advance(length)
                with bf.lock:
                    bf.bytes_done += length
                    bf.fresh_done.append(idx)
            except (BackendError, OSError) as e:
                if isinstance(e, OSError):
                    e = self._local_error(e, bf.job)
                if e.same_for_all:
                    raise e from None
                with bf.lock:
                    bf.error = bf.error or e
        with bf.lock:
            bf.remaining -= 1
            last = bf.remaining == 0
            fresh, bf.fresh_done = bf.fresh_done, []
        if fresh and not last:
            self._committer.add_chunks(bf.job, fresh)
        if last:
            self._finish_big(bf)

    def _finish_big(self, bf: BigFile) -> None:
        job = bf.job
        if self._stop:
            return  # left in _open_big: closed (and kept when resumable) by run()
        if bf.error is None:
            try:
                self._open_big_file(bf)  # when every chunk was resumed
                digest = self._md5_file(bf.fd) if self.verify else None
                if self.verify and not self._verify(job, digest):
                    self._drop_big(bf)
                    return
                mtime_ns = self._set_mtime(bf.fd, bf.info)
                os.close(bf.fd)
                bf.fd = -1
            except OSError as e:
                bf.error = self._local_error(e, job)
            else:
                self._streak.success()
                with self._lock:
                    self._open_big.discard(bf)
                self._count(bytes=bf.info.size - bf.resumed_bytes)
                self.progress.file_done()
                self._committer.add(bf.tmp, Committed(job, bf.info.size, mtime_ns))
                return
        err = bf.error
        if isinstance(err, Changed) and bf.attempt == 0:
            self.progress.advance(-bf.bytes_done)
            new = self._restat(job)
            if new is None:
                self._drop_big(bf)
                return
            # Start again from scratch, pinned to the new ETag.
            job.info = bf.info = new
            bf.attempt, bf.error = 1, None
            with bf.lock:
                if bf.fd >= 0:
                    os.ftruncate(bf.fd, 0)
                    os.posix_fallocate(bf.fd, 0, max(1, new.size))
                    os.ftruncate(bf.fd, new.size)
                bf.reset(frozenset())
            with self._cv:
                self._retry.extend((True, self._chunk, bf, i) for i in bf.todo)
                self._cv.notify_all()
            return
        self._drop_big(bf)
        if isinstance(err, Changed):
            self._fail(job.key, f"{bf.info.path!r} kept changing during the transfer")
        elif isinstance(err, LocalIOError) and err.same_for_all:
            pass  # the run stops with it (_local_error)
        else:
            self._fail(job.key, error_text(err, bf.info.path), err)  # type: ignore[arg-type]

    def _drop_big(self, bf: BigFile) -> None:
        if bf.fd >= 0:
            os.close(bf.fd)
            bf.fd = -1
        unlink_quiet(bf.tmp)
        with self._lock:
            self._open_big.discard(bf)

    @staticmethod
    def _md5_file(fd: int) -> bytes:
        h = hashlib.md5()
        off = 0
        while True:
            b = os.pread(fd, 4 << 20, off)
            if not b:
                return h.digest()
            h.update(b)
            off += len(b)
