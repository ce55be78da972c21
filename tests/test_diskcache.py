"""The chunk store (amlfs/fs/diskcache.py) on real files: the format and its checks, atomic
writes, the cap and the LRU, stale temporary files, what `amlfs cache` reads."""

from __future__ import annotations

import os
import threading
import time

import pytest

from amlfs.fs import diskcache
from amlfs.fs.diskcache import ChunkError, ChunkStore, StoreId

SID = StoreId("azure_blob", "http://127.0.0.1:1/acct", "box")
OTHER = StoreId("azure_blob", "http://127.0.0.1:1/acct", "other")


def key(path: str, etag: str = '"e1"', offset: int = 0, n: int = 1000) -> bytes:
    return SID.key(path, etag, offset, n)


def put(store: ChunkStore, path: str, data: bytes, offset: int = 0, etag: str = '"e1"') -> bytes:
    k = SID.key(path, etag, offset, len(data))
    assert store.write(SID, k, offset, data)
    return k


def get(store: ChunkStore, k: bytes, offset: int, n: int) -> bytes | None:
    buf = bytearray(n)
    return bytes(buf) if store.read_into(SID, k, offset, memoryview(buf)) else None


def test_round_trip_and_a_miss(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    data = os.urandom(1000)
    k = put(store, "a/b", data, offset=4096)
    assert get(store, k, 4096, 1000) == data
    assert get(store, key("a/b", etag='"e2"', offset=4096), 4096, 1000) is None  # another ETag
    assert store.used == len(data) + len(k) + diskcache.TRAILER.size
    # Keys of different stores never share a file.
    assert store.chunk_path(SID, k) != store.chunk_path(OTHER, OTHER.key("a/b", '"e1"', 4096, 1000))


def test_chunks_and_store_files_are_private_to_the_mounts_user(tmp_path):
    """The mount is its user's alone (no allow_other): so is what it keeps on disk."""
    old = os.umask(0o022)
    try:
        store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
        k = put(store, "a/b", b"secret data")
        store.describe_store(SID, "ds")
    finally:
        os.umask(old)
    chunk = store.chunk_path(SID, k)
    assert os.stat(chunk).st_mode & 0o777 == 0o600
    meta = os.path.join(os.path.dirname(os.path.dirname(chunk)), diskcache.STORE_FILE)
    assert os.stat(meta).st_mode & 0o777 == 0o600


@pytest.mark.parametrize("damage", ["flip_data", "flip_key", "truncate", "append", "empty"])
def test_a_damaged_chunk_is_unlinked_and_never_served(tmp_path, damage):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    data = os.urandom(5000)
    k = put(store, "f", data)
    path = store.chunk_path(SID, k)
    raw = bytearray(open(path, "rb").read())
    if damage == "flip_data":
        raw[17] ^= 0x80
    elif damage == "flip_key":
        raw[len(data) + 3] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-1]
    elif damage == "append":
        raw += b"\0"
    else:
        raw = bytearray()
    open(path, "wb").write(raw)
    with pytest.raises(ChunkError):
        get(store, k, 0, len(data))
    assert not os.path.exists(path)
    assert get(store, k, 0, len(data)) is None


def test_a_chunk_under_another_keys_name_is_refused(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    a = put(store, "a", b"x" * 100)
    b = put(store, "b", b"y" * 100)
    os.replace(store.chunk_path(SID, a), store.chunk_path(SID, b))
    with pytest.raises(ChunkError, match="key"):
        get(store, b, 0, 100)


def test_the_cap_evicts_least_recently_used_first(tmp_path):
    one = 1000 + len(key("c/0000")) + diskcache.TRAILER.size
    store = ChunkStore(str(tmp_path), 10 * one, floor=0)
    keys = []
    for i in range(10):
        keys.append(put(store, f"c/{i:04d}", bytes([i]) * 1000))
    # The first chunk is used (its mtime refreshed), so the second is the oldest.
    p0 = store.chunk_path(SID, keys[0])
    os.utime(p0, (time.time() + 5, time.time() + 5))
    put(store, "c/0010", b"z" * 1000)
    assert store.used <= 10 * one
    assert os.path.exists(p0)
    assert not os.path.exists(store.chunk_path(SID, keys[1]))
    total = sum(os.path.getsize(store.chunk_path(SID, k)) for k in keys
                if os.path.exists(store.chunk_path(SID, k)))  # fmt: skip
    assert total + one <= 10 * one


def test_no_room_under_the_floor_means_not_stored(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=diskcache.free_bytes(str(tmp_path)) + 1)
    k = SID.key("f", '"e"', 0, 10)
    assert store.write(SID, k, 0, b"0123456789") is False
    assert not os.path.exists(store.chunk_path(SID, k))


def test_concurrent_writers_of_one_chunk_leave_one_whole_chunk(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    data = os.urandom(1 << 20)
    k = SID.key("same", '"e"', 0, len(data))
    errors = []

    def write():
        try:
            for _ in range(20):
                store.write(SID, k, 0, data)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=write) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert get(store, k, 0, len(data)) == data
    d = os.path.dirname(store.chunk_path(SID, k))
    assert os.listdir(d) == [os.path.basename(store.chunk_path(SID, k))]  # no temporary left


def test_rescan_learns_the_size_and_removes_dead_writers_temporaries(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    k = put(store, "f", b"a" * 300)
    path = store.chunk_path(SID, k)
    dead = subprocess_pid_that_exited()
    stale = f"{path}.{dead}.0000.tmp"
    live = f"{path}.{os.getpid()}.1111.tmp"
    for p in (stale, live):
        open(p, "wb").write(b"partial")
    fresh = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    use = fresh.rescan()
    assert use.chunks == 1 and use.bytes == os.path.getsize(path)
    assert fresh.used == use.bytes
    assert not os.path.exists(stale)
    assert os.path.exists(live)  # a live writer's, young: left alone
    old = time.time() - diskcache.TMP_GRACE - 10
    os.utime(live, (old, old))
    fresh.rescan()
    assert not os.path.exists(live)


def subprocess_pid_that_exited() -> int:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return int(p.stdout)


def test_stores_prune_and_clear(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    store.describe_store(SID, "mydata")
    for i in range(6):
        put(store, f"p/{i}", bytes([i]) * 2000)
    [(name, doc, use)] = store.stores()
    assert name == SID.dirname
    assert doc["datastore"] == "mydata" and doc["container"] == "box"
    assert use.chunks == 6
    freed = store.prune(use.bytes // 2)
    assert freed >= use.bytes - use.bytes // 2
    assert store.stores()[0][2].bytes <= use.bytes // 2
    store.clear()
    assert store.stores() == []
    assert store.used == 0


def test_zlib_fallback_chunks_are_verified_too(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    store.algo = diskcache.ALGO_ZLIB
    data = os.urandom(3000)
    k = put(store, "z", data)
    assert get(store, k, 0, len(data)) == data
    path = store.chunk_path(SID, k)
    raw = bytearray(open(path, "rb").read())
    raw[5] ^= 1
    open(path, "wb").write(raw)
    with pytest.raises(ChunkError, match="checksum"):
        get(store, k, 0, len(data))


def test_a_read_that_must_not_wait_serves_a_cached_chunk_and_checks_it(tmp_path):
    store = ChunkStore(str(tmp_path), 1 << 30, floor=0)
    data = os.urandom(64 * 1024)
    k = put(store, "nw", data)
    buf = bytearray(len(data))
    assert store.read_into(SID, k, 0, memoryview(buf), nowait=True)  # just written: cached
    assert buf == data
    path = store.chunk_path(SID, k)
    raw = bytearray(open(path, "rb").read())
    raw[100] ^= 4
    open(path, "wb").write(raw)
    with pytest.raises(ChunkError):
        store.read_into(SID, k, 0, memoryview(buf), nowait=True)
    assert store.read_into(SID, k, 0, memoryview(buf), nowait=True) is False


def test_the_inline_gate_closes_on_a_run_of_slow_reads_not_on_one():
    """One inline read slower than INLINE_SLOW (the trio thread preempted on a busy node) keeps
    reads inline; INLINE_SLOW_RUN in a row (a cold chunk directory) send them to threads for
    INLINE_PAUSE seconds, after which they are tried inline again."""
    from amlfs.fs.disktier import INLINE_PAUSE, INLINE_SLOW, INLINE_SLOW_RUN, InlineGate

    slow, fast = INLINE_SLOW * 5, INLINE_SLOW / 10
    gate = InlineGate()
    assert gate.open(0.0)
    for _ in range(5):  # isolated slow reads, each followed by a fast one
        for _ in range(INLINE_SLOW_RUN - 1):
            assert gate.record(slow, 1.0) is False
        assert gate.record(fast, 1.0) is False
        assert gate.open(1.0)
    closed = [gate.record(slow, 2.0) for _ in range(INLINE_SLOW_RUN)]
    assert closed == [False] * (INLINE_SLOW_RUN - 1) + [True]
    assert not gate.open(2.0) and not gate.open(2.0 + INLINE_PAUSE - 0.01)
    assert gate.open(2.0 + INLINE_PAUSE)
    assert gate.record(slow, 20.0) is False  # the run starts again from zero
    gate.close_for_good()
    assert not gate.open(1e12)
