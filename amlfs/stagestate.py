"""The persistent state of `amlfs stage`: which files (and which chunks of large files) earlier
runs completed in a directory, as a snapshot plus a journal of the engine's commit batches.

State lives beside the data, so that DIR holds exactly the remote files: `.DIR.amlfs-stage.json`
(a snapshot, replaced atomically) and `.DIR.amlfs-stage.journal` (JSON lines appended after each
commit batch of the engine) in DIR's parent -- or inside DIR as `.amlfs-stage.json` and
`.amlfs-stage.journal` when the parent is not writable. A flock on the journal keeps two stages
out of one DIR.

A claim ("this file is complete", "these chunks are written") is journalled only after the data
is in the page cache and renamed; with --fsync only after syncfs. Without --fsync the claim
carries the boot id and is trusted only during that boot: after a crash of the machine, when the
page cache may have been lost, those files are fetched again. Claims become durable (the tag is
dropped) by one syncfs at the start of a later run, when little is left to write back.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
from dataclasses import dataclass, field

from .commit import syncfs, unlink_quiet
from .errors import AmlfsError

log = logging.getLogger(__name__)

__all__ = [
    "BOOT_ID",
    "JOURNAL_NAME",
    "STATE_NAME",
    "FileRecord",
    "PartRecord",
    "StageState",
    "state_paths",
]

STATE_NAME = ".amlfs-stage.json"
JOURNAL_NAME = ".amlfs-stage.journal"
STATE_VERSION = 2


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
                unlink_quiet(self.journal_path)
            os.close(self._journal)
            self._journal = -1
