"""Download mode (`amlfs stage`): make a local directory hold exactly the files under a datastore
path, as a resumable sync on top of the transfer engine.

A file is skipped when the state (amlfs.stagestate: a snapshot and a journal beside DIR) records
the remote ETag and size that the listing shows now and the local file still has the size and
mtime recorded when it was written. Chunks of large files are journalled as they are written, so
a killed run resumes a large file where it stopped. Claims written without --fsync are trusted
only during the boot that wrote them (see amlfs.stagestate).
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .backends.base import Backend
from .backends.errors import LocalIOError
from .commit import PART_SUFFIX, Committed, part_path, unlink_quiet
from .errors import AmlfsError
from .fetch import Downloader, DownloadJob, chunk_size
from .filters import KEEP_ALL, PathFilter
from .listtable import ListTable
from .outcome import TransferResult, TransferStopped
from .progress import Progress, should_show
from .stagestate import BOOT_ID, JOURNAL_NAME, STATE_NAME, StageState
from .tablejobs import TableJobs
from .transfer import list_remote, safe_mask

log = logging.getLogger(__name__)

__all__ = ["stage"]


def _scan(root: str, on_file: Callable[[str], None] | None = None) -> list[str]:
    """Stray part files under root (relative names); `on_file(name)` for each regular file."""
    parts: list[str] = []
    stack = [("", root)]
    while stack:
        rel, d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    stack.append((r, e.path))
                elif e.name.endswith(PART_SUFFIX) and e.name.startswith("."):
                    parts.append(r)
                elif not rel and e.name in (STATE_NAME, JOURNAL_NAME, STATE_NAME + ".tmp"):
                    continue
                elif on_file is not None and e.is_file(follow_symlinks=False):
                    on_file(r)
    return parts


def _unchanged(path: str, size: int, mtime_ns: int) -> bool:
    """Whether `path` is still the regular file of that size and mtime that stage wrote."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size and st.st_mtime_ns == mtime_ns


# What stage does with each listed file (a byte per listing index).
_OUT, _COPY, _SKIP, _CHECK = 0, 1, 2, 3
#: local files checked against their Content-MD5 (--verify) at a time
_CHECK_BATCH = 256


def _md5_path(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            # 256 KiB reads into one buffer: f.read(n) would allocate n bytes for a small file
            return hashlib.file_digest(f, "md5").digest()
    except OSError:
        return None


def _check_local(
    table: ListTable, plan: bytearray, root: str, workers: int | None, result: TransferResult
) -> None:
    """--verify for the files stage would skip (plan _CHECK): compare each local copy with the
    listing's Content-MD5; a mismatching one is copied again."""
    i = plan.find(_CHECK)
    with ThreadPoolExecutor(max(1, min(workers or 8, 8))) as pool:
        while i >= 0:
            batch = []
            while i >= 0 and len(batch) < _CHECK_BATCH:
                batch.append(i)
                i = plan.find(_CHECK, i + 1)
            dests = [os.path.join(root, table.name(k)) for k in batch]  # type: ignore[arg-type]
            for k, dest, digest in zip(batch, dests, pool.map(_md5_path, dests), strict=True):
                want = table.md5(k)
                plan[k] = _SKIP
                if want is None:
                    result.no_md5 += 1
                elif digest == want:
                    result.verified += 1
                else:
                    log.warning("%s does not match its Content-MD5: fetching it again", dest)
                    plan[k] = _COPY


def _remove_empty_parents(root: str, rel: str) -> None:
    d = os.path.dirname(rel)
    while d:
        try:
            os.rmdir(os.path.join(root, d))
        except OSError:
            return
        d = os.path.dirname(d)


def stage(
    backend: Backend,
    prefix: str | None,
    target_dir: str,
    *,
    delete: bool = False,
    dry_run: bool = False,
    verify: bool = False,
    workers: int | None = None,
    block_size: int | None = None,
    show_progress: bool | None = None,
    durable: bool = False,
    on_plan: Callable[[str, str], None] | None = None,
    path_filter: PathFilter = KEEP_ALL,
) -> TransferResult:
    """Sync the files under the datastore path `prefix` into `target_dir` (see the module doc).

    delete: remove local files that no longer exist remotely. dry_run: change nothing; call
    `on_plan(action, name)` for each "copy"/"delete" it would do and return the would-be counts.
    verify: check Content-MD5 of downloaded files and of the local copies it skips (a mismatching
    local copy is downloaded again). durable: syncfs before publishing and journalling (see
    amlfs.commit); without it, claims are trusted only until the machine restarts. A missing
    `prefix` raises NotFound; a local error writing the state, LocalIOError. path_filter: only
    the files it keeps take part, in the copy and in `delete` (a local file it leaves out is
    never deleted).
    """
    try:
        return _stage(
            backend,
            prefix,
            target_dir,
            delete=delete,
            dry_run=dry_run,
            verify=verify,
            workers=workers,
            block_size=block_size,
            show_progress=show_progress,
            durable=durable,
            on_plan=on_plan,
            path_filter=path_filter,
        )
    except OSError as e:
        raise LocalIOError(e, e.filename or os.path.abspath(target_dir)) from None


def _stage(
    backend: Backend,
    prefix: str | None,
    target_dir: str,
    *,
    delete: bool,
    dry_run: bool,
    verify: bool,
    workers: int | None,
    block_size: int | None,
    show_progress: bool | None,
    durable: bool,
    on_plan: Callable[[str, str], None] | None,
    path_filter: PathFilter,
) -> TransferResult:
    start = time.monotonic()
    root = os.path.abspath(target_dir)
    if os.path.exists(root) and not os.path.isdir(root):
        raise AmlfsError(f"{target_dir} exists and is not a directory")
    # The bar is there from the listing's first (small) page on: it counts the files listed,
    # then the files copied.
    progress = Progress("stage", should_show(show_progress) and not dry_run)
    try:
        table, _ = list_remote(
            backend, prefix, progress.listed if progress.enabled else None, md5=verify
        )
        result = TransferResult()
        # plan[i]: what happens to listed file i; _OUT for unsafe or filtered-out names.
        plan = safe_mask(
            table,
            result,
            lambda rel: rel not in (STATE_NAME, JOURNAL_NAME) and path_filter.keeps(rel),
        )
        if not dry_run:
            os.makedirs(root, exist_ok=True)  # first: where the state goes depends on it
        state = StageState.load(root, table, plan)

        for i in range(len(table)):
            if state.has(i) and _unchanged(
                os.path.join(root, table.name(i)), table.sizes[i], state.mtime_ns(i)
            ):
                plan[i] = _CHECK if verify else _SKIP
        resume: dict[int, frozenset[int]] = {}
        for rel, part in state.parts.items():
            i = table.index_of(rel)
            if (
                i is not None
                and plan[i] == _COPY
                and (part.etag, part.size, part.block_size)
                == (table.etag(i), table.sizes[i], chunk_size(table.sizes[i], block_size))
                and os.path.isfile(part_path(os.path.join(root, rel)))
            ):
                resume[i] = frozenset(part.chunks)

        if verify and _CHECK in plan:
            _check_local(table, plan, root, workers, result)
        result.skipped += plan.count(_SKIP)

        deletions: list[str] = []

        def on_local(rel: str) -> None:
            i = table.index_of(rel)
            if (i is None or plan[i] == _OUT) and path_filter.keeps(rel):
                deletions.append(rel)

        stray_parts = _scan(root, on_local if delete else None) if delete or not dry_run else []
        deletions.sort()
        jobs = TableJobs(table, plan, _COPY, root, resume=resume)
        nfiles = len(jobs)
        nbytes = sum(table.sizes[i] for i in jobs.indices())

        if dry_run:
            if on_plan:
                for i in jobs.indices():
                    on_plan("copy", table.name(i))  # type: ignore[arg-type]
                for rel in deletions:
                    on_plan("delete", rel)
            result.copied = nfiles
            result.bytes = nbytes
            result.deleted = len(deletions)
            result.seconds = time.monotonic() - start
            return result

        durable = durable or BOOT_ID is None
        state.open_journal()
        compacted = False
        try:
            keep_parts = {
                part_path(os.path.join(root, table.name(i)))[len(root) + 1 :]  # type: ignore[arg-type]
                for i in resume
            }
            for rel in stray_parts:
                if rel not in keep_parts:
                    unlink_quiet(os.path.join(root, rel))
            for rel in deletions:
                try:
                    os.unlink(os.path.join(root, rel))
                except FileNotFoundError:
                    pass
                except OSError as e:
                    result.failed.append(
                        (rel, f"cannot delete {os.path.join(root, rel)}: {e.strerror}")
                    )
                    continue
                result.deleted += 1
                _remove_empty_parents(root, rel)
            state.make_durable()
            state.append([{"d": rel} for rel in deletions], durable)

            def on_commit(
                done: list[Committed], chunks: list[tuple[DownloadJob, list[int]]]
            ) -> None:
                at: list[int | None] = [getattr(j, "index", None) for j, _ in chunks]
                at += [getattr(c.job, "index", None) for c in done]
                recs: list[dict] = [
                    {
                        "c": j.key,
                        "e": j.info.etag,
                        "s": j.info.size,
                        "b": chunk_size(j.info.size, block_size),
                        "k": idx,
                    }
                    for j, idx in chunks
                ]
                recs += [
                    {"f": c.job.key, "e": c.job.info.etag, "s": c.size, "m": c.mtime_ns}
                    for c in done
                ]
                state.append(recs, durable, at)

            progress.set_total(nfiles, nbytes)
            engine = Downloader(
                backend,
                root,
                workers=workers,
                block_size=block_size,
                progress=progress,
                verify=verify,
                keep_parts=True,
                durable=durable,
                on_commit=on_commit,
            )
            stopped: TransferStopped | None = None
            try:
                r = engine.run(jobs)
            except TransferStopped as e:
                stopped, r = e, e.result
            finally:
                progress.close()
                state.compact()
                compacted = True
        finally:
            state.close(remove_journal=compacted)
        result.copied = r.copied
        result.bytes = r.bytes
        result.failed += r.failed
        result.verified += r.verified
        result.no_md5 += r.no_md5
        result.unsafe += r.unsafe
        result.seconds = time.monotonic() - start
        if stopped is not None:
            stopped.result = result
            raise stopped
        return result
    finally:
        progress.close()  # closed once: a second close does nothing
