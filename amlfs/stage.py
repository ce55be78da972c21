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
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from .backends.base import Backend, LocalIOError
from .commit import PART_SUFFIX, Committed, part_path, unlink_quiet
from .errors import AmlfsError
from .fetch import Downloader, DownloadJob, chunk_size
from .filters import KEEP_ALL, PathFilter
from .outcome import TransferResult, TransferStopped
from .progress import Progress, should_show
from .stagestate import BOOT_ID, JOURNAL_NAME, STATE_NAME, StageState
from .transfer import list_remote, safe_jobs

log = logging.getLogger(__name__)

__all__ = ["stage"]


def _scan(root: str) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Local regular files (relative name -> (size, mtime_ns)) and stray part files under root."""
    files: dict[str, tuple[int, int]] = {}
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
                elif e.is_file(follow_symlinks=False):
                    st = e.stat(follow_symlinks=False)
                    files[r] = (st.st_size, st.st_mtime_ns)
    return files, parts


def _md5_path(path: str) -> bytes | None:
    h = hashlib.md5()
    try:
        with open(path, "rb") as f:
            while b := f.read(4 << 20):
                h.update(b)
    except OSError:
        return None
    return h.digest()


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
        files, base = list_remote(backend, prefix, progress.listed if progress.enabled else None)
        result = TransferResult()
        named = [
            (rel, info)
            for rel, info in safe_jobs(files, base, root, result)
            if rel not in (STATE_NAME, JOURNAL_NAME) and path_filter.keeps(rel)
        ]
        if not dry_run:
            os.makedirs(root, exist_ok=True)  # first: where the state goes depends on it
        state = StageState.load(root)
        local, stray_parts = _scan(root)

        jobs: list[DownloadJob] = []
        check: list[tuple[str, DownloadJob]] = []
        for rel, info in named:
            dest = os.path.join(root, rel)
            job = DownloadJob(info, dest, rel)
            rec, have = state.files.get(rel), local.get(rel)
            if (
                rec is not None
                and have is not None
                and (rec.etag, rec.size) == (info.etag, info.size)
                and have == (rec.size, rec.mtime_ns)
            ):
                if verify:
                    check.append((rel, job))
                else:
                    result.skipped += 1
                continue
            part = state.parts.get(rel)
            if (
                part is not None
                and (part.etag, part.size, part.block_size)
                == (info.etag, info.size, chunk_size(info.size, block_size))
                and part_path(dest)[len(root) + 1 :] in stray_parts
            ):
                job.resume_chunks = frozenset(part.chunks)
            jobs.append(job)

        if check:
            with ThreadPoolExecutor(max(1, min(workers or 8, 8))) as pool:
                digests = pool.map(lambda c: _md5_path(c[1].dest), check)
                for (_, job), digest in zip(check, digests, strict=True):
                    if job.info.content_md5 is None:
                        result.no_md5 += 1
                        result.skipped += 1
                    elif digest == job.info.content_md5:
                        result.verified += 1
                        result.skipped += 1
                    else:
                        log.warning(
                            "%s does not match its Content-MD5: fetching it again", job.dest
                        )
                        jobs.append(job)

        remote_names = {rel for rel, _ in named}
        deletions = (
            sorted(r for r in local if r not in remote_names and path_filter.keeps(r))
            if delete
            else []
        )

        if dry_run:
            for job in jobs:
                if on_plan:
                    on_plan("copy", job.key)
            for rel in deletions:
                if on_plan:
                    on_plan("delete", rel)
            result.copied = len(jobs)
            result.bytes = sum(j.info.size for j in jobs)
            result.deleted = len(deletions)
            result.seconds = time.monotonic() - start
            return result

        durable = durable or BOOT_ID is None
        state.open_journal()
        compacted = False
        try:
            keep_parts = {part_path(j.dest)[len(root) + 1 :] for j in jobs if j.resume_chunks}
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
                state.append(recs, durable)

            progress.set_total(len(jobs), sum(j.info.size for j in jobs))
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
                state.compact(remote_names)
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
