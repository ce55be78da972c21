"""Download mode (`amlfs stage`): make a local directory hold exactly the files under a datastore
path, as a resumable sync on top of the transfer engine.

State lives beside the data, so that DIR holds exactly the remote files: `.DIR.amlfs-stage.json`
(a snapshot, replaced atomically) and `.DIR.amlfs-stage.journal` (JSON lines appended after each
commit batch of the engine) in DIR's parent -- or inside DIR as `.amlfs-stage.json` and
`.amlfs-stage.journal` when the parent is not writable. A flock on the journal keeps two stages
out of one DIR.

A file is skipped when the state records the remote ETag and size that the listing shows now and
the local file still has the size and mtime recorded when it was written. Chunks of large files
are journalled as they are written, so a killed run resumes a large file where it stopped.

A claim ("this file is complete", "these chunks are written") is journalled only after the data
is in the page cache and renamed; with --fsync only after syncfs. Without --fsync the claim
carries the boot id and is trusted only during that boot: after a crash of the machine, when the
page cache may have been lost, those files are fetched again. Claims become durable (the tag is
dropped) by one syncfs at the start of a later run, when little is left to write back.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .backends.base import Backend
from .errors import AmlfsError
from .fetch import (
    PART_SUFFIX,
    Committed,
    Downloader,
    DownloadJob,
    TransferResult,
    chunk_size,
    part_path,
    syncfs,
)
from .progress import Progress, should_show
from .transfer import list_remote, safe_jobs

log = logging.getLogger(__name__)

STATE_NAME = ".amlfs-stage.json"
JOURNAL_NAME = ".amlfs-stage.journal"
STATE_VERSION = 2

__all__ = ["JOURNAL_NAME", "STATE_NAME", "StageState", "stage", "state_paths"]


def state_paths(root: str) -> tuple[str, str]:
    """(snapshot, journal) paths of the stage state of directory `root` (see the module doc)."""
    root = os.path.abspath(root)
    parent, name = os.path.split(root)
    if name and os.access(parent, os.W_OK):
        return os.path.join(parent, f".{name}{STATE_NAME}"), os.path.join(
            parent, f".{name}{JOURNAL_NAME}"
        )
    return os.path.join(root, STATE_NAME), os.path.join(root, JOURNAL_NAME)


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


#: This boot of the machine. A claim written without syncfs is tagged with it and trusted only
#: during the same boot: after a crash the page cache it relied on may be gone.
BOOT_ID = _boot_id()
#: below this much dirty page cache, making older claims durable (one syncfs) is cheap
CHEAP_SYNC_BYTES = 64 << 20


@dataclass
class FileRecord:
    etag: str | None
    size: int
    mtime_ns: int
    boot: str | None = None  # None: durable; else the boot during which it was written


@dataclass
class PartRecord:
    etag: str | None
    size: int
    block_size: int
    chunks: set[int] = field(default_factory=set)
    boot: str | None = None


def _dirty_bytes() -> int:
    """Page cache waiting to be written back (Dirty + Writeback in /proc/meminfo)."""
    total = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("Dirty:", "Writeback:")):
                    total += int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 1 << 62
    return total


class StageState:
    """What earlier runs completed in DIR: the snapshot plus the journal replayed over it.

    The journal is opened with an exclusive flock, so two stages into one DIR refuse to run.
    """

    def __init__(self, root: str):
        self.root = root
        self.path, self.journal_path = state_paths(root)
        self.files: dict[str, FileRecord] = {}
        self.parts: dict[str, PartRecord] = {}
        self.dropped = 0
        self._journal: int = -1

    @classmethod
    def load(cls, root: str) -> StageState:
        st = cls(root)
        path = st.path
        try:
            with open(path, encoding="utf-8") as f:
                snap = json.load(f)
            if snap.get("version") == STATE_VERSION:
                for k, (etag, size, mtime_ns, boot) in snap.get("files", {}).items():
                    if st._trusted(boot):
                        st.files[k] = FileRecord(etag, size, mtime_ns, boot or None)
                for k, (etag, size, bs, chunks, boot) in snap.get("parts", {}).items():
                    if st._trusted(boot):
                        st.parts[k] = PartRecord(etag, size, bs, set(chunks), boot or None)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            log.warning(
                "ignoring unreadable stage state %s (%s): files will be re-checked", path, e
            )
            st.files.clear()
            st.parts.clear()
        try:
            with open(st.journal_path, "rb") as f:
                for line in f:
                    st._replay(line)
        except FileNotFoundError:
            pass
        if st.dropped:
            log.warning(
                "%d files staged in %s before the machine restarted were not known to be on"
                " disk: fetching them again",
                st.dropped,
                root,
            )
        return st

    def _trusted(self, boot: str | None) -> bool:
        if not boot or boot == BOOT_ID:
            return True
        self.dropped += 1
        return False

    def _replay(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
        except ValueError:
            return  # the torn last line of a killed run
        key = rec.get("f") or rec.get("c")
        boot = rec.get("u")
        if key is not None and not self._trusted(boot):
            # This claim may be lost, and it may have replaced an older file: trust neither.
            self.files.pop(key, None)
            self.parts.pop(key, None)
        elif "f" in rec:
            self.files[rec["f"]] = FileRecord(rec["e"], rec["s"], rec["m"], boot)
            self.parts.pop(rec["f"], None)
        elif "c" in rec:
            p = self.parts.get(rec["c"])
            if p is None or (p.etag, p.size, p.block_size) != (rec["e"], rec["s"], rec["b"]):
                p = self.parts[rec["c"]] = PartRecord(rec["e"], rec["s"], rec["b"])
            p.chunks.update(rec["k"])
            if boot:
                p.boot = boot
        elif "d" in rec:
            self.files.pop(rec["d"], None)
            self.parts.pop(rec["d"], None)

    def open_journal(self) -> None:
        self._journal = os.open(
            self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        try:
            fcntl.flock(self._journal, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(self._journal)
            self._journal = -1
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AmlfsError(f"another amlfs stage is writing into {self.root}") from None
            raise

    def append(self, records: list[dict], durable: bool) -> None:
        """Journal `records` (one write; fdatasync'd when they claim durable data) and apply
        them. Non-durable claims carry the boot id instead ("u")."""
        if not records:
            return
        if not durable:
            for r in records:
                if "f" in r or "c" in r:
                    r["u"] = BOOT_ID
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        os.write(self._journal, data)
        if durable:
            os.fdatasync(self._journal)
        for line in data.splitlines():
            self._replay(line)

    def compact(self, keep: set[str]) -> None:
        """Replace the snapshot atomically with the current state (only keys in `keep`), then
        empty the journal it now contains."""
        snap = {
            "version": STATE_VERSION,
            "files": {
                k: [r.etag, r.size, r.mtime_ns, r.boot or ""]
                for k, r in self.files.items()
                if k in keep
            },
            "parts": {
                k: [p.etag, p.size, p.block_size, sorted(p.chunks), p.boot or ""]
                for k, p in self.parts.items()
                if k in keep
            },
        }
        path = self.path
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(snap, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        if self._journal >= 0:
            os.ftruncate(self._journal, 0)

    def make_durable(self) -> None:
        """Claims of this boot become durable with one syncfs -- done when little is dirty, so
        that a later run (not the benchmark's immediate re-run) costs nothing."""
        pending = [r for r in self.files.values() if r.boot] + [
            p for p in self.parts.values() if p.boot
        ]
        if not pending or _dirty_bytes() > CHEAP_SYNC_BYTES:
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs(fd)
        finally:
            os.close(fd)
        for r in pending:
            r.boot = None

    def close(self, remove_journal: bool = False) -> None:
        if self._journal >= 0:
            if remove_journal:
                # Still under our lock; everything it held is in the snapshot now.
                _remove_quiet(self.journal_path)
            os.close(self._journal)
            self._journal = -1


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
) -> TransferResult:
    """Sync the files under the datastore path `prefix` into `target_dir` (see the module doc).

    delete: remove local files that no longer exist remotely. dry_run: change nothing; call
    `on_plan(action, name)` for each "copy"/"delete" it would do and return the would-be counts.
    verify: check Content-MD5 of downloaded files and of the local copies it skips (a mismatching
    local copy is downloaded again). durable: syncfs before publishing and journalling (see
    amlfs.transfer); without it, claims are trusted only until the machine restarts. A missing
    `prefix` raises NotFound.
    """
    start = time.monotonic()
    root = os.path.abspath(target_dir)
    if os.path.exists(root) and not os.path.isdir(root):
        raise AmlfsError(f"{target_dir} exists and is not a directory")
    files, base = list_remote(backend, prefix)
    result = TransferResult()
    named = [
        (rel, info)
        for rel, info in safe_jobs(files, base, root, result)
        if rel not in (STATE_NAME, JOURNAL_NAME)
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
                    log.warning("%s does not match its Content-MD5: fetching it again", job.dest)
                    jobs.append(job)

    remote_names = {rel for rel, _ in named}
    deletions = sorted(r for r in local if r not in remote_names) if delete else []

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
                _remove_quiet(os.path.join(root, rel))
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

        def on_commit(done: list[Committed], chunks: list[tuple[DownloadJob, list[int]]]) -> None:
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
                {"f": c.job.key, "e": c.job.info.etag, "s": c.size, "m": c.mtime_ns} for c in done
            ]
            state.append(recs, durable)

        progress = Progress(
            "stage",
            should_show(show_progress),
            total_files=len(jobs),
            total_bytes=sum(j.info.size for j in jobs),
        )
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
        try:
            r = engine.run(jobs)
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
    return result


def _remove_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
