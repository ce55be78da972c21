"""The persistent state of `amlfs stage`: which files (and which chunks of large files) earlier
runs completed in a directory, as a snapshot plus a journal of the engine's commit batches.

State lives beside the data, so that DIR holds exactly the remote files: `.DIR.amlfs-stage.json`
(a snapshot, replaced atomically) and `.DIR.amlfs-stage.journal` (JSON lines appended after each
commit batch of the engine) in DIR's parent -- or inside DIR as `.amlfs-stage.json` and
`.amlfs-stage.journal` when the parent is not writable. A flock on the journal keeps two stages
out of one DIR. The snapshot is one JSON document written one record a line, in listing order,
so that it is read record by record (a million-file state is never one parsed document) and
matched against the listing without a lookup; a snapshot of another layout is read whole.

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
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from typing import IO

from .commit import syncfs, unlink_quiet
from .errors import AmlfsError
from .listtable import ListTable

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


_HAS = 1  # a record: the listed ETag and size, the mtime_ns in _mtimes
_BOOT = 2  # ... written during this boot without syncfs (not yet durable)
#: the first line of a snapshot written by compact(): one record a line follows
_HEAD = '{"version":' + str(STATE_VERSION) + ',"files":{'
_PARTS = '},"parts":{'
_str = encode_basestring_ascii  # a JSON string (json.dumps' own, in C)


def _str_or_null(s: str | None) -> str:
    return "null" if s is None else _str(s)


class StageState:
    """What earlier runs completed in DIR, matched against this run's listing: the snapshot
    plus the journal replayed over it, packed by listing index (9 bytes per listed file).

    Only records of the files `wanted` (a byte per listing index, non-zero: takes part) are
    kept; a record whose ETag or size differs from the listing's is dropped when loaded, as
    it could never let a file be skipped. The journal is opened with an exclusive flock, so two
    stages into one DIR refuse to run.
    """

    def __init__(self, root: str, table: ListTable, wanted: bytearray | None = None):
        self.root = root
        self.path, self.journal_path = state_paths(root)
        self.table = table
        n = len(table)
        self.wanted = wanted if wanted is not None else bytearray(b"\x01") * n
        self._flags = bytearray(n)
        self._mtimes = array("q", [0]) * n
        #: records of listed files whose ETag or size is not the listing's (the file changed
        #: during this run and was fetched again at its new ETag)
        self._other: dict[int, FileRecord] = {}
        self.parts: dict[str, PartRecord] = {}
        self.dropped = 0
        self._journal: int = -1
        self._next = 0  # where the next record of a snapshot in listing order should be
        #: the snapshot on disk already says exactly what compact() would write (every record
        #: matched the listing, no journal, no parts, nothing appended since): a no-change
        #: re-run then rewrites nothing
        self._clean = False

    # --- reading ---------------------------------------------------------------------------

    def has(self, i: int) -> bool:
        """Whether a completed file matching listing entry `i` was recorded."""
        return bool(self._flags[i] & _HAS)

    def mtime_ns(self, i: int) -> int:
        return self._mtimes[i]

    def _find(self, name: str) -> int | None:
        """The listing index of `name` when it takes part. A snapshot written in listing order
        matches record by record, without the hash index."""
        t = self.table
        i = self._next
        if not (i < len(t) and t.name(i) == name):
            i = t.index_of(name)
            if i is None:
                return None
        self._next = i + 1
        return i if self.wanted[i] else None

    def _set(self, i: int, etag: str | None, size: int, mtime_ns: int, boot: str | None) -> None:
        self._other.pop(i, None)
        if size == self.table.sizes[i] and self.table.etag_is(i, etag):
            self._flags[i] = _HAS | (_BOOT if boot else 0)
            self._mtimes[i] = mtime_ns
        else:
            self._flags[i] = 0
            self._other[i] = FileRecord(etag, size, mtime_ns, boot)

    def _clear(self, i: int) -> None:
        self._flags[i] = 0
        self._other.pop(i, None)

    @classmethod
    def load(cls, root: str, table: ListTable, wanted: bytearray | None = None) -> StageState:
        st = cls(root, table, wanted)
        path = st.path
        try:
            with open(path, encoding="utf-8") as f:
                st._load_snapshot(f)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, TypeError) as e:
            log.warning(
                "ignoring unreadable stage state %s (%s): files will be re-checked", path, e
            )
            st._flags = bytearray(len(table))
            st._other.clear()
            st.parts.clear()
        st._other.clear()  # only this run's commits go there
        try:
            with open(st.journal_path, "rb") as f:
                for line in f:
                    st._clean = False
                    st._replay_line(line)
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

    def _load_snapshot(self, f: IO[str]) -> None:
        first = f.readline()
        current = first.rstrip("\n") == _HEAD
        if current:
            files, parts = self._snapshot_lines(f)
        else:  # one JSON document of another layout (an older amlfs): read it whole
            snap = json.loads(first + f.read())
            if snap.get("version") != STATE_VERSION:
                return
            files, parts = iter(snap.get("files", {}).items()), snap.get("parts", {}).items()
        clean = current
        for k, (etag, size, mtime_ns, boot) in files:
            i = self._find(k) if self._trusted(boot) else None
            if i is None or self._flags[i] & _HAS:  # gone, not wanted, untrusted or twice
                clean = False
            else:
                self._set(i, etag, size, mtime_ns, boot or None)
                clean = clean and bool(self._flags[i] & _HAS)
        for k, (etag, size, bs, chunks, boot) in parts:
            clean = False
            if self._trusted(boot):
                self.parts[k] = PartRecord(etag, size, bs, set(chunks), boot or None)
        self._clean = clean

    @staticmethod
    def _snapshot_lines(f: IO[str]) -> tuple[Iterator[tuple[str, list]], list[tuple[str, list]]]:
        """The records of a snapshot written by compact(), one line each, streamed."""
        parts: list[tuple[str, list]] = []

        def records() -> Iterator[tuple[str, list]]:
            section = None
            for line in f:
                line = line.rstrip("\n").rstrip(",")
                if line == _PARTS:
                    section = parts
                    continue
                if line == "}}":
                    return
                ((k, rec),) = json.loads("{" + line + "}").items()
                if section is None:
                    yield k, rec
                else:
                    section.append((k, rec))
            raise ValueError("truncated snapshot")

        it = records()
        return it, parts

    def _trusted(self, boot: str | None) -> bool:
        if not boot or boot == BOOT_ID:
            return True
        self.dropped += 1
        return False

    def _replay_line(self, line: bytes) -> None:
        try:
            rec = json.loads(line)
        except ValueError:
            return  # the torn last line of a killed run
        self._replay(rec, None)

    def _replay(self, rec: dict, i: int | None) -> None:
        key = rec.get("f") or rec.get("c")
        boot = rec.get("u")
        if key is not None and not self._trusted(boot):
            # This claim may be lost, and it may have replaced an older file: trust neither.
            if (i := self._find(key) if i is None else i) is not None:
                self._clear(i)
            self.parts.pop(key, None)
        elif "f" in rec:
            if (i := self._find(rec["f"]) if i is None else i) is not None:
                self._set(i, rec["e"], rec["s"], rec["m"], boot)
            self.parts.pop(rec["f"], None)
        elif "c" in rec:
            p = self.parts.get(rec["c"])
            if p is None or (p.etag, p.size, p.block_size) != (rec["e"], rec["s"], rec["b"]):
                p = self.parts[rec["c"]] = PartRecord(rec["e"], rec["s"], rec["b"])
            p.chunks.update(rec["k"])
            if boot:
                p.boot = boot
        elif "d" in rec:
            if (i := self._find(rec["d"]) if i is None else i) is not None:
                self._clear(i)
            self.parts.pop(rec["d"], None)

    # --- writing ---------------------------------------------------------------------------

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

    def append(
        self, records: list[dict], durable: bool, at: list[int | None] | None = None
    ) -> None:
        """Journal `records` (one write; fdatasync'd when they claim durable data) and apply
        them; `at`: their listing indices, when known. Non-durable claims carry the boot id
        instead ("u")."""
        if not records:
            return
        self._clean = False
        if not durable:
            for r in records:
                if "f" in r or "c" in r:
                    r["u"] = BOOT_ID
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        os.write(self._journal, data)
        if durable:
            os.fdatasync(self._journal)
        for r, i in zip(records, at or [None] * len(records), strict=True):
            self._replay(r, i)

    def _snapshot_records(self) -> Iterator[str]:
        t, flags, mtimes, other, wanted = (
            self.table,
            self._flags,
            self._mtimes,
            self._other,
            self.wanted,
        )
        tags = ('""', _str(BOOT_ID or ""))  # durable, this boot
        for i in range(len(t)):
            f = flags[i]
            if f & _HAS and wanted[i]:
                yield (
                    f"{_str(t.name(i))}:[{_str_or_null(t.etag(i))},{t.sizes[i]},{mtimes[i]},"
                    f"{tags[f >> 1]}]"
                )
            elif i in other and wanted[i]:
                r = other[i]
                rec = [r.etag, r.size, r.mtime_ns, r.boot or ""]
                yield _str(t.name(i)) + ":" + json.dumps(rec, separators=(",", ":"))

    def compact(self) -> None:
        """Replace the snapshot atomically with the current state (the files that take part, one
        record a line, in listing order), then empty the journal it now contains. Nothing to do
        when the snapshot already holds that state (a no-change re-run)."""
        if self._clean:
            return
        path = self.path
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(_HEAD)
            sep = "\n"
            for line in self._snapshot_records():
                f.write(sep + line)
                sep = ",\n"
            f.write("\n" + _PARTS)
            sep = "\n"
            for k, p in self.parts.items():
                i = self.table.index_of(k)
                if i is None or not self.wanted[i]:
                    continue
                rec = [p.etag, p.size, p.block_size, sorted(p.chunks), p.boot or ""]
                f.write(sep + json.dumps(k) + ":" + json.dumps(rec, separators=(",", ":")))
                sep = ",\n"
            f.write("\n}}\n")
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
        pending = (
            (_HAS | _BOOT) in self._flags
            or any(r.boot for r in self._other.values())
            or any(p.boot for p in self.parts.values())
        )
        if not pending or _dirty_bytes() > CHEAP_SYNC_BYTES:
            return
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            syncfs(fd)
        finally:
            os.close(fd)
        self._clean = False
        self._flags = self._flags.translate(bytes.maketrans(bytes([_HAS | _BOOT]), bytes([_HAS])))
        for r in self._other.values():
            r.boot = None
        for p in self.parts.values():
            p.boot = None

    def close(self, remove_journal: bool = False) -> None:
        if self._journal >= 0:
            if remove_journal:
                # Still under our lock; everything it held is in the snapshot now.
                unlink_quiet(self.journal_path)
            os.close(self._journal)
            self._journal = -1
