"""The persistent disk cache's chunk store: verified block-sized chunks of remote files in one
directory that any number of processes (mount daemons, `amlfs cache`) share without a lock.

Layout: `<cache_dir>/v1/<store>/<hh>/<hash>`, one directory per storage location (`store.json`
in it names the endpoint and container), one file per chunk. A chunk's name is a hash of its key:
(endpoint, container/share/filesystem, path, ETag, offset, length), so a changed object is a new
key and its old chunks are never looked up again (they age out of the LRU).

A chunk file is the data, then a trailer: the key, then magic, version, checksum algorithm, key
length, data length, offset and a checksum (CRC32C, or zlib's CRC-32 where no fast CRC32C is
installed) over the data and the key. Every read checks all of it; a chunk that does not check
is unlinked and reported as corrupt, never served. Chunks are written under a unique temporary
name in their directory and renamed into place, so a crash never leaves a torn chunk under a
real name (a power cut may leave a short one; the checksum catches it).

Sharing: rename is atomic, and an open file survives its unlink, so a reader racing an eviction
(in this process or another) reads a whole chunk or finds none. Nothing is locked across
processes; the only lock is this process's, around its view of the LRU.

Size: `used` is learned by a scan (`rescan`: in the background, and by a writer before its first
write and after every RESCAN_SHARE of the cap it wrote; never before serving) and kept up to date
with this process's writes and evictions; other processes' writes are learned at the next scan.
A write first makes room: it evicts least recently used chunks (mtime, touched by hits) until the
cap and the free-space floor hold with the new chunk.

Concurrency contract: every method may be called from any thread; they block on the disk.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import secrets
import shutil
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

log = logging.getLogger(__name__)

try:  # C, with the CPU's CRC32C instruction: 16 GB/s here, zlib.crc32 0.36 GB/s (8 MiB
    # buffers). It takes any buffer (google-crc32c takes only bytes: a copy of every chunk).
    import crc32c as _crc32c
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c = None

LAYOUT = "v1"
MAGIC = b"AMLFSCK1"
VERSION = 1
ALGO_CRC32C, ALGO_ZLIB = 1, 2
# magic, version, algorithm, key length, data length, offset, checksum
TRAILER = struct.Struct("<8sBBIQQI")
STORE_FILE = "store.json"
TMP_SUFFIX = ".tmp"
#: a temporary file of a live process is left alone this long (a write takes far less)
TMP_GRACE = 600.0
#: eviction goes down to this share of the cap, so that writers do not evict one chunk each
LOW_WATER = 0.9
#: a writer rescans once this process has written this share of the cap since the last scan
RESCAN_SHARE = 0.05
#: a hit touches the chunk's mtime (its LRU position) at most this often
TOUCH_EVERY = 60.0


def checksum(data: bytes | bytearray | memoryview, key: bytes, algo: int) -> int:
    if algo == ALGO_CRC32C:
        assert _crc32c is not None
        return _crc32c.crc32c(key, value=_crc32c.crc32c(data))
    return zlib.crc32(key, zlib.crc32(data))


def best_algo() -> int:
    return ALGO_CRC32C if _crc32c is not None else ALGO_ZLIB


def _hex(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class StoreId:
    """Where objects live: (backend type, endpoint, container/share/filesystem)."""

    kind: str
    endpoint: str
    container: str

    @property
    def dirname(self) -> str:
        return _hex(self.kind, self.endpoint, self.container)[:16]

    def key(self, path: str, etag: str, offset: int, length: int) -> bytes:
        fields = (self.kind, self.endpoint, self.container, path, etag, str(offset), str(length))
        return "\0".join(fields).encode()


class ChunkError(Exception):
    """A chunk file exists but does not check (torn, flipped, or another key's)."""


@dataclass
class Usage:
    chunks: int = 0
    bytes: int = 0


#: chunks hold the datastore's data: readable by the mount's user only, as the mount itself is
#: (without allow_other); daemons of one user share them
CHUNK_MODE = 0o600


class ChunkStore:
    """One cache directory's chunks, for one process."""

    def __init__(self, cache_dir: str, capacity: int, floor: int | None = None):
        self.root = os.path.join(os.path.abspath(cache_dir), LAYOUT)
        self.capacity = capacity
        self._floor = floor
        self.algo = best_algo()
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        # This process's view of the LRU: (mtime, file, size), oldest first, from the last scan
        # plus what this process wrote since.
        self._lru: deque[tuple[float, str, int]] = deque()
        self.used = 0  # bytes in chunks, as far as this process knows
        self.scanned = False  # `used` has been learned by a scan
        self.scanned_at = 0.0
        self.written_since_scan = 0

    # --- names ---------------------------------------------------------------------------------

    def chunk_path(self, store: StoreId, key: bytes) -> str:
        h = hashlib.sha256(key).hexdigest()[:40]
        return os.path.join(self.root, store.dirname, h[:2], h)

    def describe_store(self, store: StoreId, datastore: str) -> None:
        """Write `store.json` if it is missing (what `amlfs cache ls` shows for the directory;
        checked before every write, as `amlfs cache clear` may have removed it)."""
        d = os.path.join(self.root, store.dirname)
        target = os.path.join(d, STORE_FILE)
        if os.path.exists(target):
            return
        os.makedirs(d, exist_ok=True)
        doc = {"kind": store.kind, "endpoint": store.endpoint,
               "container": store.container, "datastore": datastore}  # fmt: skip
        tmp = f"{target}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, CHUNK_MODE)
        with open(fd, "w") as f:
            json.dump(doc, f)
        os.rename(tmp, target)

    # --- reading -------------------------------------------------------------------------------

    def read_into(
        self, store: StoreId, key: bytes, offset: int, buf: memoryview, nowait: bool = False
    ) -> bool:
        """Fill `buf` (the whole chunk's length) from the chunk of `key`: True on a hit, False
        when there is none. ChunkError (after unlinking it) when it does not check; OSError for
        a disk error. With `nowait`: BlockingIOError when the chunk is not all in the page
        cache (the read would wait for the disk)."""
        path = self.chunk_path(store, key)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            tail = bytearray(len(key) + TRAILER.size + 1)  # one byte more: a longer file is bad
            want = len(buf) + len(tail) - 1
            if nowait:
                n = os.preadv(fd, [buf, tail], 0, os.RWF_NOWAIT)
                if n != want and n < os.fstat(fd).st_size:
                    raise BlockingIOError("part of the chunk is not in the page cache")
            else:
                n = os.readv(fd, [buf, tail])
            bad = self._check(buf, tail, n, want, key, offset)
            if bad == "algo":
                return False  # written with a checksum this process cannot compute: a miss
            if bad:
                self._discard(path)
                raise ChunkError(f"chunk {path}: {bad}")
            st = os.fstat(fd)
            if time.time() - st.st_mtime > TOUCH_EVERY:
                os.utime(fd)
        finally:
            os.close(fd)
        return True

    def _check(self, buf, tail: bytearray, n: int, want: int, key: bytes, offset: int) -> str:
        if n != want:
            return f"{n} bytes, not {want}"
        size = len(buf)
        fields = tail[len(key) : len(key) + TRAILER.size]
        magic, version, algo, keylen, datalen, off, crc = TRAILER.unpack(fields)
        if magic != MAGIC or version != VERSION:
            return "not a chunk of this version"
        if keylen != len(key) or datalen != size or off != offset or tail[: len(key)] != key:
            return "another chunk's key"
        if algo == ALGO_CRC32C and _crc32c is None:
            return "algo"
        if algo not in (ALGO_CRC32C, ALGO_ZLIB):
            return "unknown checksum"
        if checksum(buf, key, algo) != crc:
            return "checksum mismatch"
        return ""

    def _discard(self, path: str) -> None:
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return
        with self._lock:
            self.used = max(0, self.used - size)

    def contains(self, store: StoreId, key: bytes) -> bool:
        return os.path.exists(self.chunk_path(store, key))

    # --- writing -------------------------------------------------------------------------------

    def write(self, store: StoreId, key: bytes, offset: int, data: bytes | memoryview) -> bool:
        """Store `data` as the chunk of `key` (temporary file, then rename); False when there is
        no room for it (the cap or the floor cannot be kept). OSError for a disk error."""
        path = self.chunk_path(store, key)
        trailer = key + TRAILER.pack(
            MAGIC, VERSION, self.algo, len(key), len(data), offset, checksum(data, key, self.algo)
        )
        size = len(data) + len(trailer)
        if not self._make_room(size):
            return False
        d = os.path.dirname(path)
        tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, CHUNK_MODE)
        except FileNotFoundError:
            os.makedirs(d, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, CHUNK_MODE)
        try:
            try:
                parts = [memoryview(data), memoryview(trailer)]
                while parts:
                    n = os.writev(fd, parts)
                    while parts and n >= len(parts[0]):
                        n -= len(parts[0])
                        parts.pop(0)
                    if parts:
                        parts[0] = parts[0][n:]
            finally:
                os.close(fd)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        with self._lock:
            self.used += size
            self.written_since_scan += size
            self._lru.append((time.time(), path, size))
        return True

    # --- room ----------------------------------------------------------------------------------

    def floor(self) -> int:
        """Free bytes never to go below on the cache's filesystem."""
        if self._floor is not None:
            return self._floor
        return default_floor(self.root)

    def _make_room(self, size: int) -> bool:
        if not self.scanned or self.written_since_scan > self.capacity * RESCAN_SHARE:
            # Learn what the other processes wrote: the cap holds across processes to within
            # RESCAN_SHARE of it each (and exactly for caches smaller than a chunk per share).
            self.rescan()
        floor = self.floor()
        free = free_bytes(self.root)
        with self._lock:
            need_cap = self.used + size - self.capacity
            need_free = floor + size - free
            if need_cap <= 0 and need_free <= 0:
                return True
            # Evict to the low-water mark, so that the next writers find room.
            goal_cap = self.used + size - int(self.capacity * LOW_WATER) if need_cap > 0 else 0
            goal = max(goal_cap, need_free)
            freed = self._evict_locked(goal)
        if freed >= max(need_cap, need_free):
            return True
        return free_bytes(self.root) - size >= floor and self.used + size <= self.capacity

    def _evict_locked(self, goal: int) -> int:
        """Unlink least recently used chunks until `goal` bytes are freed (the lock is held)."""
        freed = 0
        requeued = 0
        while freed < goal and self._lru:
            mtime, path, size = self._lru.popleft()
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self.used = max(0, self.used - size)  # gone (another process evicted it)
                continue
            if st.st_mtime > mtime + 1 and requeued < len(self._lru) + 1:
                self._lru.append((st.st_mtime, path, st.st_size))  # used since: not the oldest
                requeued += 1
                continue
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            self.used = max(0, self.used - st.st_size)
            freed += st.st_size
        return freed

    def prune(self, target: int) -> int:
        """Evict until at most `target` bytes are cached (after a fresh scan); bytes freed."""
        self.rescan()
        with self._lock:
            return self._evict_locked(self.used - target) if self.used > target else 0

    # --- the background index ------------------------------------------------------------------

    def rescan(self) -> Usage:
        """Learn what is cached (every process's chunks), oldest first; clean up stale temporary
        files; then evict if over the cap. Runs in the background, never before serving."""
        with self._scan_lock:
            return self._rescan()

    def _rescan(self) -> Usage:
        started = time.time()
        entries: list[tuple[float, str, int]] = []
        total = 0
        for path, st in self._walk():
            if path.endswith(TMP_SUFFIX):
                if _stale_tmp(path, st.st_mtime, started):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                continue
            entries.append((st.st_mtime, path, st.st_size))
            total += st.st_size
        entries.sort()
        with self._lock:
            # What this process wrote during the scan is not lost from the LRU.
            recent = [e for e in self._lru if e[0] >= started]
            self._lru = deque(entries)
            seen = {e[1] for e in entries}
            self._lru.extend(e for e in recent if e[1] not in seen)
            self.used = total + sum(e[2] for e in recent if e[1] not in seen)
            self.scanned = True
            self.scanned_at = started
            self.written_since_scan = 0
            over = self.used - self.capacity
            if over > 0:
                self._evict_locked(self.used - int(self.capacity * LOW_WATER))
        return Usage(len(entries), total)

    def _walk(self) -> Iterator[tuple[str, os.stat_result]]:
        try:
            stores = list(os.scandir(self.root))
        except FileNotFoundError:
            return
        for store in stores:
            if not store.is_dir(follow_symlinks=False):
                continue
            for sub in _scandir(store.path):
                if not sub.is_dir(follow_symlinks=False):
                    continue
                for f in _scandir(sub.path):
                    try:
                        st = f.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    yield f.path, st

    # --- what `amlfs cache` shows and does -----------------------------------------------------

    def stores(self) -> list[tuple[str, dict, Usage]]:
        """(directory, store.json, usage) of every storage location with chunks here."""
        out = []
        for store in sorted(_scandir(self.root), key=lambda e: e.name):
            if not store.is_dir(follow_symlinks=False):
                continue
            try:
                with open(os.path.join(store.path, STORE_FILE)) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = {}
            use = Usage()
            for sub in _scandir(store.path):
                if sub.is_dir(follow_symlinks=False):
                    for f in _scandir(sub.path):
                        if not f.name.endswith(TMP_SUFFIX):
                            try:
                                use.bytes += f.stat(follow_symlinks=False).st_size
                                use.chunks += 1
                            except FileNotFoundError:
                                pass
            out.append((store.name, doc, use))
        return out

    def clear(self) -> None:
        """Remove every chunk. Safe beside running daemons: the layout directory is renamed
        away first (their open chunks stay readable), then removed."""
        if not os.path.isdir(self.root):
            return
        trash = f"{self.root}.trash.{os.getpid()}.{secrets.token_hex(4)}"
        os.rename(self.root, trash)
        shutil.rmtree(trash, ignore_errors=True)
        with self._lock:
            self._lru.clear()
            self.used = 0


def _scandir(path: str) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _stale_tmp(path: str, mtime: float, now: float) -> bool:
    """A temporary chunk whose writer is dead, or that is far older than any write takes."""
    if now - mtime > TMP_GRACE:
        return True
    try:
        pid = int(path.rsplit(".", 3)[-3])
    except (ValueError, IndexError):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def free_bytes(path: str) -> int:
    st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def fs_bytes(path: str) -> int:
    st = os.statvfs(_existing(path))
    return st.f_blocks * st.f_frsize


#: the free-space floor: this share of the cache's filesystem, at most FLOOR_MAX
FLOOR_SHARE = 0.05
FLOOR_MAX = 4 << 30
#: the default size: the smaller of this and DEFAULT_SHARE of the cache's filesystem
DEFAULT_MAX = 50 << 30
DEFAULT_SHARE = 0.2


def default_floor(path: str) -> int:
    return min(FLOOR_MAX, int(fs_bytes(path) * FLOOR_SHARE))


def default_size(path: str) -> int:
    return max(0, min(DEFAULT_MAX, int(fs_bytes(path) * DEFAULT_SHARE)))


def default_cache_dir() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = xdg if xdg and os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "amlfs")


#: errors that turn the disk tier off for a while (anything else is a bug and is raised)
DISK_ERRNOS = {errno.EIO, errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM,
               errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE,
               errno.ESTALE, errno.ENOTCONN, errno.EFBIG}  # fmt: skip
