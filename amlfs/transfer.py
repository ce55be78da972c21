"""Upload and download (Azure ML v1 `ds.upload`, `ds.upload_files`, `ds.download`): planning
(which remote files, which local names; unsafe names skipped) on top of the engine in
amlfs.fetch, and parallel uploads through `Backend.write_stream`."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .backends.base import FIRST_PAGE, Backend, ObjectInfo, is_safe_relpath, join, normpath
from .backends.errors import AlreadyExists, BackendError, NotADirectory, NotFound
from .errors import AmlfsError
from .fetch import DEFAULT_BLOCK_SIZE, DEFAULT_WORKERS, Downloader
from .filters import KEEP_ALL, PathFilter
from .listtable import ListTable
from .outcome import FailureStreak, TransferResult, TransferStopped, error_text
from .progress import Progress, should_show
from .tablejobs import TableJobs
from .throttle import Throttle

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "TransferResult",
    "TransferStopped",
    "download",
    "list_remote",
    "relative_name",
    "safe_mask",
    "upload_dir",
    "upload_files",
]


# --- planning ------------------------------------------------------------------------------


#: seconds between two `on_listed` reports while a listing runs
LISTED_EVERY = 0.1


def _counted(
    files: Iterator[ObjectInfo], table: ListTable, on_listed: Callable[[int, int], None]
) -> ListTable:
    """`files` appended to `table`, calling `on_listed(files so far, their bytes)` at the first
    entry, then at most every LISTED_EVERY seconds, and once at the end."""
    nbytes = 0
    due = 0.0
    for info in files:
        table.append(info)
        nbytes += info.size
        if (now := time.monotonic()) >= due:
            due = now + LISTED_EVERY
            on_listed(len(table), nbytes)
    on_listed(len(table), nbytes)
    return table


def list_remote(
    backend: Backend,
    prefix: str | None,
    on_listed: Callable[[int, int], None] | None = None,
    *,
    md5: bool = True,
) -> tuple[ListTable, str]:
    """Every file under the path `prefix`, and the base its relative names start from.

    `prefix` is a path, not a raw string prefix: a directory (everything below it) or a single
    file (base = its parent). The root ('' or None) is always a directory. NotFound when the
    path is neither. `on_listed(files, bytes)`: the running count of files listed so far (from
    the walk's first, small page on; a listing started again counts from 0 again). The files
    come as a packed ListTable (a sequence of ObjectInfo); `md5=False` leaves Content-MD5s out.
    """
    p = normpath(prefix)

    def walk() -> ListTable:
        table = ListTable(p, md5=md5)
        if on_listed is None:
            for info in backend.walk(p):
                table.append(info)
            return table
        # Someone watches: a small first page, so that the first report comes soon.
        return _counted(backend.walk(p, FIRST_PAGE), table, on_listed)

    try:
        # Each page is retried by the backend (the one retry layer); a listing is never
        # started again from the top, which would repeat every page before the failed one.
        files = walk()
    except (NotFound, NotADirectory) as e:
        if not p or e.same_for_all:  # the root, or the container itself, is missing
            raise
        files = ListTable(p, md5=md5)
    if files or not p:
        return files, p
    try:
        info = backend.stat(p)
    except NotFound:
        raise NotFound(f"no such file or directory {p!r} in {backend.description}", p) from None
    if info.is_dir:
        return files, p
    base = p.rpartition("/")[0]
    return ListTable(base, md5=md5, items=[info]), base


def relative_name(path: str, base: str) -> str:
    return path[len(base) + 1 :] if base else path


def safe_mask(
    table: ListTable, result: TransferResult, keep: Callable[[str], bool] | None = None
) -> bytearray:
    """Which files of a packed listing can be written locally: a byte per entry, 1 when the
    file takes part: a safe local name below the table's base (no `..`, absolute or empty
    segment), no directory of the same name (Blob allows both `a` and `a/b`; the directory
    wins, as in the mount), and `keep(name)`. The others are logged, and counted in
    `result.unsafe` (not those `keep` leaves out)."""
    mask = bytearray(len(table))
    dirs: set[str] = set()
    for i in range(len(table)):
        rel = table.name(i)
        if rel is None or not is_safe_relpath(rel):
            log.warning("skipping %r: its name cannot be a safe local path", table.path(i))
            result.unsafe += 1
            continue
        mask[i] = 1
        d = rel.rpartition("/")[0]
        while d and d not in dirs:
            dirs.add(d)
            d = d.rpartition("/")[0]
    for i in range(len(table)) if dirs or keep is not None else ():
        if mask[i]:
            rel = table.name(i)
            if dirs and rel in dirs:
                log.warning("skipping file %r: a directory of the same name exists", table.path(i))
                result.unsafe += 1
                mask[i] = 0
            elif keep is not None and not keep(rel):  # type: ignore[arg-type]
                mask[i] = 0
    return mask


def download(
    backend: Backend,
    target_dir: str,
    prefix: str | None = None,
    overwrite: bool = False,
    show_progress: bool | None = True,
    keep_prefix: bool = True,
    workers: int | None = None,
    block_size: int | None = None,
    durable: bool = False,
    path_filter: PathFilter = KEEP_ALL,
) -> TransferResult:
    """Download the files under the path `prefix` (a directory or one file; not a raw string
    prefix) into `target_dir`.

    keep_prefix=True (Azure ML v1 `ds.download`): a file lands at target_dir/<its full path>.
    keep_prefix=False (`amlfs download DS:PATH DIR`): target_dir holds the contents of PATH.
    overwrite=False skips files that already exist locally (counted in `skipped`).
    durable=True: the files are on disk (syncfs) before their names appear and before returning.
    path_filter: only the files it keeps (by their path relative to `prefix`).
    """
    start = time.monotonic()
    target_dir = os.path.abspath(target_dir)
    # The bar counts the files listed from the listing's first (small) page on, then the copy.
    progress = Progress("download", should_show(show_progress))
    try:
        return _download(
            backend,
            prefix,
            target_dir,
            progress,
            start,
            keep_prefix,
            overwrite,
            workers,
            block_size,
            durable,
            path_filter,
        )
    finally:
        progress.close()  # closed once: a second close does nothing


def _download(
    backend: Backend,
    prefix: str | None,
    target_dir: str,
    progress: Progress,
    start: float,
    keep_prefix: bool,
    overwrite: bool,
    workers: int | None,
    block_size: int | None,
    durable: bool,
    path_filter: PathFilter,
) -> TransferResult:
    # Packed, as stage's: the listing (no Content-MD5s: download does not verify), a byte of
    # plan per file, jobs made as the engine takes them.
    files, base = list_remote(
        backend, prefix, progress.listed if progress.enabled else None, md5=False
    )
    result = TransferResult()
    plan = safe_mask(files, result, path_filter.keeps if path_filter else None)
    jobs = TableJobs(files, plan, 1, target_dir, f"{base}/" if keep_prefix and base else "")
    if not overwrite:
        for i in jobs.indices():  # (clearing the current entry: the scan goes on after it)
            if os.path.lexists(jobs.dest(i)):
                plan[i] = 0
                result.skipped += 1
    progress.set_total(len(jobs), sum(files.sizes[i] for i in jobs.indices()))
    dl = Downloader(
        backend,
        target_dir,
        workers=workers,
        block_size=block_size,
        progress=progress,
        durable=durable,
    )
    stopped: TransferStopped | None = None
    try:
        r = dl.run(jobs)
    except TransferStopped as e:
        stopped, r = e, e.result
    finally:
        progress.close()
    r.skipped += result.skipped
    r.unsafe += result.unsafe
    r.seconds = time.monotonic() - start
    if stopped is not None:
        raise stopped
    return r


# --- upload ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _Upload:
    local: str
    remote: str
    key: str


def _plan_dir(src_dir: str, target: str) -> list[_Upload]:
    src = os.path.abspath(src_dir)
    if not os.path.isdir(src):
        raise AmlfsError(f"no such directory: {src_dir}")
    out = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, src).replace(os.sep, "/")
            out.append(_Upload(full, join(target, rel), rel))
    return out


def _plan_files(files: Iterable[str], relative_root: str | None, target: str) -> list[_Upload]:
    out = []
    for f in files:
        f = os.fspath(f)
        if relative_root is not None:
            rel = os.path.relpath(os.path.abspath(f), os.path.abspath(relative_root))
            if rel == ".." or rel.startswith(".." + os.sep):
                raise AmlfsError(f"{f} is not under relative_root {relative_root}")
            rel = rel.replace(os.sep, "/")
        else:
            rel = os.path.basename(f)
        out.append(_Upload(f, join(target, rel), rel))
    return out


class _CountingReader:
    """A file object that reports bytes read to the progress bar (the SDK may seek and re-read
    a block on retry; the bar then overcounts slightly, the result never does)."""

    def __init__(self, f, progress: Progress):
        self._f = f
        self._progress = progress
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self.count += len(b)
        self._progress.advance(len(b))
        return b

    def readinto(self, buf) -> int:
        n = self._f.readinto(buf) or 0
        self.count += n
        self._progress.advance(n)
        return n

    def __getattr__(self, name: str):
        return getattr(self._f, name)


def _run_uploads(
    backend: Backend,
    plan: list[_Upload],
    overwrite: bool,
    show: bool,
    workers: int | None,
    stop: threading.Event | None = None,
) -> TransferResult:
    from concurrent.futures import ThreadPoolExecutor

    start = time.monotonic()
    result = TransferResult()
    lock = threading.Lock()
    fatal: list[BaseException] = []
    todo = []
    for u in plan:
        if not is_safe_relpath(u.remote):
            result.unsafe += 1
            log.warning("skipping %s: %r is not a valid remote name", u.local, u.remote)
        else:
            try:
                u.remote.encode("utf-8")
                todo.append(u)
            except UnicodeEncodeError:
                result.failed.append((u.key, f"{u.local}: the name is not valid UTF-8"))
    sizes = {}
    for u in todo:
        try:
            sizes[u.local] = os.path.getsize(u.local)
        except OSError:
            sizes[u.local] = 0
    progress = Progress("upload", show, len(todo), sum(sizes.values()))
    streak = FailureStreak()
    throttle = Throttle(max(1, workers or DEFAULT_WORKERS))

    def one(u: _Upload) -> None:
        if fatal or (stop is not None and stop.is_set()):
            return
        try:
            with open(u.local, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                reader = _CountingReader(f, progress)

                def send() -> None:
                    # Again from the start after a throttled attempt (amlfs.throttle).
                    f.seek(0)
                    progress.advance(-reader.count)
                    reader.count = 0
                    backend.write_stream(u.remote, reader, size, overwrite)

                throttle.call(send)
        except AlreadyExists:
            with lock:
                result.skipped += 1
            progress.advance(-reader.count)
            progress.add_total(files=-1, nbytes=-sizes.get(u.local, 0))
            return
        except (BackendError, OSError) as e:
            if isinstance(e, BackendError) and e.same_for_all:
                fatal.append(e)
                return
            # Listed once at the end by the caller; a streak of one kind stops the run.
            log.debug("failed: %s", error_text(e, u.local))
            with lock:
                result.failed.append((u.key, error_text(e, u.local)))
            repeated = streak.failure(e)
            if repeated:
                fatal.append(TransferStopped(e, result, repeated))
            return
        streak.success()
        with lock:
            result.copied += 1
            result.bytes += size
        progress.file_done()

    try:
        with ThreadPoolExecutor(max(1, workers or DEFAULT_WORKERS), "amlfs-up") as pool:
            for _ in pool.map(one, todo):
                pass
    finally:
        progress.close()
    result.seconds = time.monotonic() - start
    if stop is not None and stop.is_set() and not fatal:
        fatal.append(TransferStopped(AmlfsError("interrupted"), result))
    if fatal:
        raise (
            fatal[0] if isinstance(fatal[0], TransferStopped) else TransferStopped(fatal[0], result)
        )
    return result


def upload_dir(
    backend: Backend,
    src_dir: str,
    target_path: str | None = "",
    overwrite: bool = False,
    show_progress: bool | None = True,
    workers: int | None = None,
    path_filter: PathFilter = KEEP_ALL,
    stop: threading.Event | None = None,
) -> TransferResult:
    """Upload the tree `src_dir` to `target_path` (Azure ML v1 `ds.upload`).

    overwrite=False skips remote files that already exist (counted in `skipped`).
    path_filter: only the files it keeps (by their path relative to `src_dir`).
    stop: once set, no further file starts (those in flight finish); TransferStopped then.
    """
    plan = path_filter.select(_plan_dir(src_dir, normpath(target_path)), lambda u: u.key)
    return _run_uploads(backend, plan, overwrite, should_show(show_progress), workers, stop)


def upload_files(
    backend: Backend,
    files: Iterable[str],
    relative_root: str | None = None,
    target_path: str | None = "",
    overwrite: bool = False,
    show_progress: bool | None = True,
    workers: int | None = None,
    path_filter: PathFilter = KEEP_ALL,
) -> TransferResult:
    """Upload single files (Azure ML v1 `ds.upload_files`): with `relative_root` the remote name
    is target_path/relpath(file, relative_root), else target_path/basename(file)."""
    plan = path_filter.select(
        _plan_files(files, relative_root, normpath(target_path)), lambda u: u.key
    )
    return _run_uploads(backend, plan, overwrite, should_show(show_progress), workers)
