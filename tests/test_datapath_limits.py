"""The read path's resource bounds (issue #9): cancelled fetches stop and keep their memory
charged until their thread lets go; a slow link still makes progress (the bound is per request);
the kernel's retry of a failed read is answered without a second wait; many readers share a small
cache without thrashing it; memory stays inside the budget under a seek/close storm."""

from __future__ import annotations

import errno
import random
import threading
import time

import pytest
import trio

from amlfs.backends.errors import Aborted, BackendError
from amlfs.fs.datapath import DataPathConfig
from amlfs.fs.stats import Stats

from .test_datapath import KiB, MiB, ModelBackend, pattern, read_all, run_with_datapath


class StreamingBackend(ModelBackend):
    """Receives into the caller's buffer piece by piece at `rate` bytes/s, reporting progress,
    and stops at once when aborted (as the lean Blob client does)."""

    def __init__(self, files, rate: float, piece: int = 16 * KiB):
        super().__init__(files)
        self.stream_rate = rate
        self.piece = piece
        self.aborted = 0
        self.running = 0
        self.lock = threading.Lock()

    def read_range_into(self, path, offset, buf, etag=None, *, progress=None, abort=None):
        data = self.files[path][offset : offset + len(buf)]
        with self.lock:
            self.calls.append((time.monotonic(), path, offset, len(buf)))
            self.running += 1
        try:
            done = 0
            while done < len(data):
                if abort is not None and abort.cancelled:
                    with self.lock:
                        self.aborted += 1
                    raise Aborted("aborted", path)
                n = min(self.piece, len(data) - done)
                time.sleep(n / self.stream_rate)
                buf[done : done + n] = data[done : done + n]
                done += n
                if progress is not None:
                    progress(done)
            return done
        finally:
            with self.lock:
                self.running -= 1


def test_a_slow_link_still_makes_progress_the_bound_is_per_request():
    """Each 512 KiB block takes ~2.5 s at 200 KiB/s, more than the 1 s timeout; every read's
    own bytes arrive well within it, so the whole file reads without an error."""
    data = pattern(1 * MiB)
    backend = StreamingBackend({"f": data}, rate=200 * KiB)
    config = DataPathConfig(
        block_size=512 * KiB, cache_bytes=8 * MiB, initial_window=64 * KiB, read_timeout=1.0
    )

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        t0 = trio.current_time()
        first = await r.read(0, 4096)
        assert trio.current_time() - t0 < 1.0  # the first bytes, not the whole block (~2.5 s)
        assert first == data[:4096]
        assert await read_all(r, 32 * KiB) == data
        r.close()

    run_with_datapath(backend, config, body)


def test_a_cancelled_fetch_stops_its_download_and_frees_its_memory_only_then():
    data = pattern(8 * MiB)
    # 1 MiB/s: a 1 MiB block takes a second, so no fetch can finish between the moment three
    # are seen running and the close, however loaded the machine (at 4 MiB/s one sometimes did).
    backend = StreamingBackend({"f": data}, rate=1 * MiB)
    config = DataPathConfig(block_size=1 * MiB, cache_bytes=64 * MiB, initial_window=64 * KiB)

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        await r.read(0, 4096)
        r._readahead.window = 8 * MiB
        await r.read(64 * KiB, 4096)  # several 1 MiB blocks in flight ahead
        with trio.fail_after(2):
            while backend.running < 3:
                await trio.sleep(0.005)
        assert dp.budget.used["inflight"] >= 3 * MiB
        r.close()
        # The threads were told to stop: they end within a piece's time, and only then is
        # their buffers' memory given back.
        with trio.fail_after(1):
            while backend.running or dp.budget.used["inflight"]:
                await trio.sleep(0.005)
        assert backend.aborted >= 3
        assert dp.stats.counters["fetches_cancelled"] >= 3

    run_with_datapath(backend, config, body)


def test_the_kernels_retry_of_a_timed_out_read_fails_at_once():
    """The kernel retries a failed read-ahead with a synchronous read of the same pages: that
    retry must not wait a second full timeout."""
    backend = ModelBackend({"f": pattern(256 * KiB)})
    backend.hang.set()
    config = DataPathConfig(block_size=64 * KiB, read_timeout=1.0)

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        t0 = trio.current_time()
        with pytest.raises(BackendError) as e1:
            await r.read(0, 128 * KiB)  # the read-ahead request
        with pytest.raises(BackendError) as e2:
            await r.read(4096, 4096)  # the kernel's retry of one page of it
        elapsed = trio.current_time() - t0
        assert e1.value.errno == e2.value.errno == errno.EIO
        r.close()
        return elapsed

    try:
        elapsed = run_with_datapath(backend, config, body)
    finally:
        backend.release.set()
    assert 0.95 <= elapsed < 1.9, elapsed  # one timeout, not two (a loaded machine adds some)


def test_many_readers_share_a_small_cache_without_refetching():
    """16 sequential readers of 16 files with a cache of 2 MiB (8 blocks): each reader's blocks
    stay until it has read them, so every byte is fetched about once."""
    files = {f"f{i}": pattern(2 * MiB, seed=i) for i in range(16)}
    backend = ModelBackend(files, latency=0.001, rate=400 * MiB)
    config = DataPathConfig(
        block_size=256 * KiB, cache_bytes=2 * MiB, initial_window=64 * KiB, max_inflight=8
    )
    stats = Stats()

    async def body(dp):
        async def reader(name):
            r = dp.open(name, backend.info(name))
            assert await read_all(r, 64 * KiB) == files[name]
            r.close()

        async with trio.open_nursery() as n:
            for name in files:
                n.start_soon(reader, name)

    run_with_datapath(backend, config, body, stats)
    fetched = sum(n for _, _, _, n in backend.calls)
    read = sum(len(v) for v in files.values())
    assert fetched / read <= 1.2, fetched / read
    assert stats.counters["bytes_fetched"] == fetched


def test_memory_stays_inside_the_budget_under_a_seek_and_close_storm():
    files = {f"f{i}": pattern(4 * MiB, seed=i) for i in range(8)}
    backend = StreamingBackend(files, rate=64 * MiB)
    config = DataPathConfig(
        block_size=512 * KiB, cache_bytes=4 * MiB, initial_window=128 * KiB, max_inflight=8
    )
    peak = {"total": 0}
    rng = random.Random(7)

    async def body(dp):
        done = False

        async def monitor():
            while not done:
                peak["total"] = max(peak["total"], dp.budget.total)
                await trio.sleep(0.001)

        async def storm(k):
            for _ in range(12):
                name = f"f{rng.randrange(8)}"
                r = dp.open(name, backend.info(name))
                for _ in range(rng.randrange(1, 4)):
                    off = rng.randrange(0, 4 * MiB - 256 * KiB)
                    got = await r.read(off, 256 * KiB)
                    assert got == files[name][off : off + 256 * KiB]
                r.close()

        async with trio.open_nursery() as outer:
            outer.start_soon(monitor)
            async with trio.open_nursery() as n:
                for k in range(8):
                    n.start_soon(storm, k)
            done = True
        with trio.fail_after(2):
            while backend.running or dp.budget.used["inflight"]:
                await trio.sleep(0.005)

    run_with_datapath(backend, config, body)
    # Within the budget, plus at most the requests the 8 readers were waiting for.
    assert peak["total"] <= config.cache_bytes + 8 * 256 * KiB, peak


def test_a_reader_keeps_no_finished_fetch_and_so_no_buffer_outside_the_budget():
    """A finished fetch refers to its extent's buffer: held by a reader after the cache evicted
    it, that memory would be outside the budget (64 readers reached 820 MB with a 64 MiB one)."""
    data = pattern(4 * MiB)
    backend = ModelBackend({"f": data})
    config = DataPathConfig(block_size=256 * KiB, cache_bytes=1 * MiB, initial_window=64 * KiB)

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        off = 0
        while off < len(data):
            assert await r.read(off, 64 * KiB) == data[off : off + 64 * KiB]
            # At most what the last read started (finished ones are dropped at the next read).
            assert sum(not f.pending for f in r._owned) <= 4 and len(r._owned) <= 8
            off += 64 * KiB
        r.close()
        assert not r._owned

    run_with_datapath(backend, config, body)
