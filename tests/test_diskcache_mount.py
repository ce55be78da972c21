"""The persistent disk cache through real FUSE mounts on Azurite: restarts, sharing, corruption,
torn chunks, a full or read-only cache filesystem, the size cap, changed objects, eviction under
a reader. Every claim is checked with the mount's own counters (`amlfs stats`)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from amlfs.backends import open_backend
from amlfs.fs import control
from amlfs.fs.diskcache import LAYOUT, ChunkStore

from .faults.mounts import eio_filesystem
from .test_mount import BLOCK, FUSE_OK, Mounts, _wait_gone, data

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]

#: name -> size: small files, one exactly a block, multi-block files with a short last block
FILES = {
    "a/small": 3000,
    "a/block": BLOCK,
    "a/multi": 5 * BLOCK + 7,
    "b/c/deep": 2 * BLOCK + 1,
    "b/tiny": 1,
}


def chunks_of(size: int) -> int:
    return -(-size // BLOCK)


def counters(mp: Path) -> dict:
    return control.read_facts(str(mp))["counters"]


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_written(mp: Path, n: int) -> dict:
    """Until the daemon has stored `n` chunks (writes follow the reads, in the background)."""
    return wait_for(lambda: (c := counters(mp)).get("disk_writes", 0) >= n and c, what="writes")


def chunk_files(cache: Path) -> list[Path]:
    root = cache / LAYOUT
    return sorted(p for p in root.glob("*/*/*") if not p.name.endswith(".tmp"))


def tmp_files(cache: Path) -> list[Path]:
    return sorted((cache / LAYOUT).glob("*/*/*.tmp"))


def cached_bytes(cache: Path) -> int:
    total = 0
    for p in (cache / LAYOUT).glob("*/*/*"):
        if not p.name.endswith(".tmp"):
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass  # evicted meanwhile
    return total


@pytest.fixture
def backend(blob_config):
    b = open_backend(blob_config)
    yield b
    b.close()


@pytest.fixture
def mounts(tmp_path, blob_config):
    m = Mounts(tmp_path, blob_config)
    yield m
    m.cleanup()


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "diskcache"


def put_files(backend, files=FILES) -> None:
    for name, size in files.items():
        backend.write_bytes(name, data(name, size))


def read_all(mp: Path, files=FILES) -> None:
    for name, size in files.items():
        assert (mp / name).read_bytes() == data(name, size), name


def unmount(mounts: Mounts, mp: Path) -> None:
    pid = mounts.pid(mp)
    r = mounts.cli("unmount", str(mp))
    assert r.returncode == 0, r.stderr
    assert _wait_gone(pid, 15)


def dc(cache: Path, *more: str) -> tuple[str, ...]:
    return ("--cache-dir", str(cache), *more)


# --- restart and sharing -------------------------------------------------------------------------


def test_restart_reads_everything_from_disk_with_nothing_fetched(
    mounts, backend, blob_config, cache
):
    put_files(backend)
    n = sum(chunks_of(s) for s in FILES.values())
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache))
    read_all(mp)
    first = wait_written(mp, n)
    assert first["bytes_fetched"] >= sum(FILES.values())
    assert first.get("disk_hits", 0) == 0
    facts = control.read_facts(str(mp))
    assert facts["disk"]["dir"] == str(cache / LAYOUT)
    unmount(mounts, mp)
    assert len(chunk_files(cache)) == n

    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="again")
    read_all(mp)
    c = counters(mp)
    assert c.get("bytes_fetched", 0) == 0
    assert c.get("backend.read_range", 0) == 0
    assert c["disk_hits"] >= n
    assert c["disk_bytes_read"] >= sum(FILES.values())  # (a prefetch given up may be redone)
    assert c.get("disk_corrupt", 0) == 0
    # every chunk read is counted where it ran: inline on the trio thread, or in a thread
    assert c.get("disk_reads_inline", 0) + c.get("disk_reads_thread", 0) >= c["disk_hits"]
    shown = mounts.cli("stats", str(mp))
    assert shown.returncode == 0, shown.stderr
    assert f"disk_cache               {cache / LAYOUT}" in shown.stdout
    assert "disk_hits" in shown.stdout


def test_a_long_sequential_read_with_grown_requests_is_stored_and_served_from_disk(
    mounts, backend, blob_config, cache
):
    """The read-ahead's GETs grow past a block (readahead.request_size): such an extent spans
    several chunks, each stored on its own, and the next daemon serves them all from disk."""
    name, size = "long/seq", 96 * BLOCK + 5
    put_files(backend, {name: size})
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache))
    with open(mp / name, "rb") as f:
        got = b"".join(iter(lambda: f.read(256 * 1024), b""))
    assert got == data(name, size)
    first = wait_written(mp, chunks_of(size))
    # fewer GETs than blocks: the requests grew (else this test does not test what it says)
    assert first["backend.read_range"] < chunks_of(size), first
    unmount(mounts, mp)
    assert len(chunk_files(cache)) == chunks_of(size)

    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="again")
    read_all(mp, {name: size})
    c = counters(mp)
    assert c.get("bytes_fetched", 0) == 0 and c.get("backend.read_range", 0) == 0, c
    assert c["disk_bytes_read"] >= size


def test_no_disk_cache_keeps_nothing(mounts, backend, blob_config, cache):
    put_files(backend)
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache, "--no-disk-cache"))
    read_all(mp)
    c = counters(mp)
    assert c.get("disk_misses", 0) == 0 and c.get("disk_writes", 0) == 0
    assert control.read_facts(str(mp))["disk"] is None
    assert not (cache / LAYOUT).exists()


def test_two_daemons_fill_the_same_chunks_concurrently(mounts, backend, blob_config, cache):
    files = {f"s/{i:02d}": 20_000 + 997 * i for i in range(24)}
    files["big"] = 12 * BLOCK + 5
    put_files(backend, files)
    n = sum(chunks_of(s) for s in files.values())
    one = mounts.mount(f"{blob_config.name}:", *dc(cache), name="one")
    two = mounts.mount(f"{blob_config.name}:", *dc(cache), name="two")
    names = list(files) * 2
    with ThreadPoolExecutor(8) as pool:
        jobs = [pool.submit(lambda mp, k: (mp / k).read_bytes(), mp, k)
                for k in names for mp in (one, two)]  # fmt: skip
        got = [j.result() for j in jobs]
    i = 0
    for k in names:
        for _ in (one, two):
            assert got[i] == data(k, files[k]), k
            i += 1
    # Both wrote (some chunks twice: the same bytes renamed over each other), none torn.
    wait_for(
        lambda: counters(one).get("disk_writes", 0) + counters(two).get("disk_writes", 0) >= n,
        what="both daemons' writes",
    )
    unmount(mounts, one)
    unmount(mounts, two)
    assert len(chunk_files(cache)) == n
    assert tmp_files(cache) == []
    three = mounts.mount(f"{blob_config.name}:", *dc(cache), name="three")
    read_all(three, files)
    c = counters(three)
    assert c.get("bytes_fetched", 0) == 0 and c.get("disk_corrupt", 0) == 0
    assert c["disk_hits"] >= n


# --- verification --------------------------------------------------------------------------------


def fill(mounts, blob_config, cache, files=FILES) -> None:
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="fill")
    read_all(mp, files)
    wait_written(mp, sum(chunks_of(s) for s in files.values()))
    unmount(mounts, mp)


def test_a_flipped_byte_is_detected_refetched_and_counted(mounts, backend, blob_config, cache):
    put_files(backend)
    fill(mounts, blob_config, cache)
    victims = [p for p in chunk_files(cache) if p.stat().st_size > BLOCK]  # a whole-block chunk
    victim = victims[0]
    raw = bytearray(victim.read_bytes())
    raw[1234] ^= 0x01
    victim.write_bytes(raw)
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="check")
    read_all(mp)
    c = counters(mp)
    assert c["disk_corrupt"] == 1
    assert c["bytes_fetched"] == BLOCK  # that chunk only, from the storage
    # ... and stored again, good this time.
    wait_written(mp, 1)
    unmount(mounts, mp)
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="after")
    read_all(mp)
    c = counters(mp)
    assert c.get("bytes_fetched", 0) == 0 and c.get("disk_corrupt", 0) == 0


def test_a_short_or_foreign_chunk_is_never_served(mounts, backend, blob_config, cache):
    put_files(backend)
    fill(mounts, blob_config, cache)
    files = chunk_files(cache)
    short, foreign = files[0], files[1]
    # What a power cut can leave under a real name: a short file.
    raw = short.read_bytes()
    short.write_bytes(raw[: len(raw) // 2])
    # Another chunk's (valid) content under this name.
    foreign.write_bytes(files[2].read_bytes())
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="check")
    read_all(mp)
    assert counters(mp)["disk_corrupt"] == 2


def test_kill_9_mid_write_leaves_no_torn_chunk(mounts, backend, blob_config, cache):
    files = {f"k/{i:03d}": 3 * BLOCK + i for i in range(40)}
    put_files(backend, files)
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="victim")
    pid = mounts.pid(mp)
    reader = threading.Thread(target=lambda: [_try_read(mp / k) for k in files], daemon=True)
    reader.start()
    wait_for(lambda: counters(mp).get("disk_writes", 0) >= 10, what="some writes")
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid, 10)
    reader.join(30)
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    # A temporary file of a dead writer, as a kill -9 mid-write leaves it.
    some = chunk_files(cache)[0]
    left = some.parent / f"{some.name}.{pid}.deadbeef.tmp"
    left.write_bytes(b"torn")
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="next")
    read_all(mp, files)
    c = counters(mp)
    assert c.get("disk_corrupt", 0) == 0  # nothing torn was ever under a real name
    assert c["disk_hits"] >= 10
    wait_for(lambda: not left.exists(), what="the stale temporary file's removal")


def _try_read(path: Path) -> None:
    try:
        path.read_bytes()
    except OSError:
        pass  # the daemon was killed under us


def test_a_changed_object_is_never_served_from_old_chunks(mounts, backend, blob_config, cache):
    put_files(backend)
    fill(mounts, blob_config, cache)
    backend.write_bytes("a/multi", data("changed", FILES["a/multi"]))
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache), name="after")
    assert (mp / "a" / "multi").read_bytes() == data("changed", FILES["a/multi"])
    c = counters(mp)
    assert c["bytes_fetched"] == FILES["a/multi"]
    assert c.get("disk_hits", 0) == 0


# --- room ----------------------------------------------------------------------------------------


def test_the_size_cap_holds_under_churn(mounts, backend, blob_config, cache):
    cap = 1 << 20
    files = {f"churn/{i:03d}": 3 * BLOCK - i for i in range(30)}  # ~5.6 MiB through a 1 MiB cap
    put_files(backend, files)
    one = mounts.mount(f"{blob_config.name}:", *dc(cache, "--disk-cache-size", "1M"), name="one")
    two = mounts.mount(f"{blob_config.name}:", *dc(cache, "--disk-cache-size", "1M"), name="two")
    chunk = BLOCK + 200  # a chunk file: the data and its trailer
    for i, (name, size) in enumerate(files.items()):
        mp = one if i % 2 else two
        assert (mp / name).read_bytes() == data(name, size)
        # Two writers, each at most one chunk over, briefly.
        assert cached_bytes(cache) <= cap + 2 * chunk
    for mp in (one, two):
        wait_for(lambda mp=mp: counters(mp).get("disk_writes", 0) > 0, what="writes")
    assert cached_bytes(cache) <= cap + 2 * chunk


@pytest.fixture
def tmpfs(tmp_path):
    where = tmp_path / "smallfs"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_cache_filesystem_keeps_the_mount_serving(mounts, backend, blob_config, tmpfs):
    files = {f"full/{i:02d}": 4 * BLOCK + i for i in range(16)}  # 4 MiB through a 2 MiB tmpfs
    later = {f"later/{i:02d}": 2 * BLOCK + i for i in range(4)}
    put_files(backend, files | later)
    cache = tmpfs / "cache"
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache, "--disk-cache-size", "64M"))
    read_all(mp, files)
    wait_for(lambda: counters(mp).get("disk_writes", 0) > 0, what="writes")
    st = os.statvfs(tmpfs)
    floor = int(st.f_blocks * st.f_frsize * 0.05)
    assert st.f_bavail * st.f_frsize >= floor  # the free-space floor was never crossed
    # Filled to the floor, the tier evicts its oldest chunks to make room; still serving.
    read_all(mp, files)
    # Now another tenant takes the rest and the filesystem turns read-only: the tier turns
    # off (EROFS), logged once, and reads still come from the storage.
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:
        try:
            f.write(b"\0" * (4 << 20))
        except OSError:
            pass
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    read_all(mp, later)
    facts = control.read_facts(str(mp))
    assert facts["counters"]["disk_errors"] >= 1
    assert facts["disk"]["state"].startswith("off")
    log = (mounts.tmp / "mnt.log").read_text()
    assert log.count("disk cache off") == 1


@pytest.fixture
def eio_dir(tmp_path):
    """A filesystem whose every write fails with EIO (tests/faults/eiofs.py)."""
    p = tmp_path / "eio"
    p.mkdir()
    with eio_filesystem(p):
        yield p


def test_eio_on_every_cache_write_turns_the_tier_off_and_the_mount_serves(
    mounts, backend, blob_config, eio_dir
):
    put_files(backend)
    mp = mounts.mount(f"{blob_config.name}:", *dc(eio_dir / "cache"))
    read_all(mp)
    wait_for(lambda: counters(mp).get("disk_errors", 0) >= 1, what="a disk error")
    read_all(mp)  # served from memory and the storage, right bytes
    facts = control.read_facts(str(mp))
    assert facts["disk"]["state"].startswith("off")
    assert "Input/output error" in facts["disk"]["last_error"]
    assert facts["counters"].get("disk_writes", 0) == 0
    assert (mounts.tmp / "mnt.log").read_text().count("disk cache off") == 1


# --- eviction under a reader ---------------------------------------------------------------------


def test_eviction_under_a_reader_is_safe(mounts, backend, blob_config, cache):
    files = {f"ev/{i:02d}": 6 * BLOCK + i for i in range(8)}
    put_files(backend, files)
    fill(mounts, blob_config, cache, files)
    mp = mounts.mount(f"{blob_config.name}:", *dc(cache, "--cache-size", "1M"), name="reader")
    store = ChunkStore(str(cache), 1 << 30)
    stop = threading.Event()
    errors: list[BaseException] = []

    def evict() -> None:
        try:
            while not stop.is_set():
                store.prune(0)  # another process's eviction, as `amlfs cache prune 0` does
                time.sleep(0.01)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=evict)
    t.start()
    try:
        for _ in range(3):
            read_all(mp, files)
    finally:
        stop.set()
        t.join()
    assert errors == []
    assert counters(mp).get("disk_corrupt", 0) == 0


# --- preload -------------------------------------------------------------------------------------


def test_preload_finishes_then_serves_with_zero_network_reads(mounts, backend, blob_config, cache):
    put_files(backend)
    backend.write_bytes("outside", b"not under the mounted path")
    under = {k.removeprefix("a/"): v for k, v in FILES.items() if k.startswith("a/")}
    mp = mounts.mount(f"{blob_config.name}:a", *dc(cache, "--preload"))
    done = wait_for(
        lambda: (p := control.read_facts(str(mp))["preload"])["state"] == "done" and p,
        what="the preload",
    )
    assert done["files_total"] == done["files_done"] == len(under)
    assert done["bytes_total"] == done["bytes_done"] == sum(under.values())
    assert done["files_failed"] == 0
    before = counters(mp)
    assert before.get("disk_writes", 0) == sum(chunks_of(s) for s in under.values())
    for name, size in under.items():
        assert (mp / name).read_bytes() == data("a/" + name, size)
    after = counters(mp)
    assert after["bytes_fetched"] == before["bytes_fetched"]  # not one byte from the network
    assert after.get("backend.read_range") == before.get("backend.read_range")
    assert after["disk_hits"] >= sum(chunks_of(s) for s in under.values())
    shown = mounts.cli("stats", str(mp)).stdout
    assert "preload.files_done" in shown
