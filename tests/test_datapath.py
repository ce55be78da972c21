"""DataPath: right bytes, shared fetches, priorities, budget, timeouts and errors.

Policy tests run against `ModelBackend`, an in-memory Backend with a throughput limit, countdown
failures and a call log (as mountpoint-s3 tests its prefetcher against a mock client). Byte-exact
reads then run against the real LocalBackend and the real BlobBackend on Azurite.
"""

from __future__ import annotations

import errno
import hashlib
import threading
import time

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlfs.backends import open_backend
from amlfs.backends.base import Backend, ObjectInfo
from amlfs.backends.bridge import TrioBackend
from amlfs.backends.errors import BackendError, Changed, NotFound, Transient
from amlfs.fs import readahead
from amlfs.fs.blockcache import Extent
from amlfs.fs.datapath import DataPath, DataPathConfig
from amlfs.fs.stats import Stats

KiB = 1024
MiB = 1024 * KiB


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic bytes where every 32-byte run differs (a misplaced slice shows)."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


class ModelBackend(Backend):
    """Files in memory, reads with latency and a throughput limit, failures on request."""

    description = "model backend"

    def __init__(self, files: dict[str, bytes], latency: float = 0.0, rate: float | None = None):
        self.files = dict(files)
        self.versions = dict.fromkeys(files, 1)
        self.latency = latency
        self.rate = rate  # bytes per second per call
        self.calls: list[tuple[float, str, int, int]] = []  # (time, path, offset, length)
        self.transient_failures = 0  # countdown: the next N reads raise Transient
        self.always_transient = False
        self.fail_once_at: set[int] = set()  # offsets whose next read fails with EIO
        self.hang = threading.Event()  # while set, reads block (until released)
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def etag(self, path: str) -> str:
        return f'"v{self.versions[path]}"'

    def info(self, path: str) -> ObjectInfo:
        return ObjectInfo(path, False, len(self.files[path]), self.etag(path))

    def replace(self, path: str, data: bytes) -> None:
        self.files[path] = data
        self.versions[path] += 1

    def stat(self, path: str) -> ObjectInfo:
        if path not in self.files:
            raise NotFound(f"no such file: {path!r}", path)
        return self.info(path)

    def list_page(self, path, token=None, page_size=None):
        return [self.info(p) for p in sorted(self.files)], None

    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        with self._lock:
            self.calls.append((time.monotonic(), path, offset, length))
            fail = self.always_transient or self.transient_failures > 0
            if self.transient_failures > 0:
                self.transient_failures -= 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if fail:
                raise Transient("model: connection reset", path)
            if offset in self.fail_once_at:
                self.fail_once_at.discard(offset)
                raise BackendError("model: I/O error", path)
            if self.hang.is_set():
                self.release.wait(10)
            if path not in self.files:
                raise NotFound(f"no such file: {path!r}", path)
            if etag is not None and etag != self.etag(path):
                raise Changed(f"{path!r} changed", path)
            data = self.files[path][offset : offset + length]
            delay = self.latency + (len(data) / self.rate if self.rate else 0.0)
            if delay:
                time.sleep(delay)
            return data
        finally:
            with self._lock:
                self.active -= 1

    def write_stream(self, path, stream, length, overwrite=True):
        self.files[path] = stream.read(length)
        self.versions[path] = self.versions.get(path, 0) + 1
        return self.info(path)

    def delete(self, path):
        del self.files[path]

    def calls_for(self, path: str) -> list[tuple[int, int]]:
        return [(o, n) for _, p, o, n in self.calls if p == path]


def run_with_datapath(backend: Backend, config: DataPathConfig, fn, stats: Stats | None = None):
    """trio.run `fn(dp)` with a running DataPath, then stop it. Returns fn's result."""
    stats = stats or Stats()

    async def main():
        dp = DataPath(TrioBackend(backend), config, stats)
        async with trio.open_nursery() as nursery:
            await nursery.start(dp.run)
            try:
                return await fn(dp)
            finally:
                nursery.cancel_scope.cancel()

    return trio.run(main)


async def read_all(reader, chunk: int) -> bytes:
    out = bytearray()
    off = 0
    while True:
        b = await reader.read(off, chunk)
        if not b:
            return bytes(out)
        out += b
        off += len(b)


SMALL = DataPathConfig(block_size=64 * KiB, cache_bytes=1 * MiB, initial_window=16 * KiB)


# --- right bytes ---------------------------------------------------------------------------------


reads = st.lists(
    st.tuples(st.integers(0, 300 * KiB), st.integers(0, 100 * KiB)), min_size=1, max_size=25
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 260 * KiB),
    seq=reads,
    cache_kib=st.sampled_from([48, 256, 1024]),
    concurrent=st.booleans(),
)
def test_random_read_sequences_return_the_right_bytes(size, seq, cache_kib, concurrent):
    data = pattern(size, seed=size)
    backend = ModelBackend({"f": data})
    config = DataPathConfig(
        block_size=64 * KiB, cache_bytes=cache_kib * KiB, initial_window=16 * KiB
    )

    async def check(reader, off, n):
        got = await reader.read(off, n)
        assert got == data[off : off + n], (off, n)

    async def body(dp):
        readers = [dp.open("f", backend.info("f")) for _ in range(2)]
        if concurrent:
            async with trio.open_nursery() as n:
                for i, (off, ln) in enumerate(seq):
                    n.start_soon(check, readers[i % 2], off, ln)
        else:
            for i, (off, ln) in enumerate(seq):
                await check(readers[i % 2], off, ln)
        for r in readers:
            r.close()
        await trio.sleep(0)
        # Budget: nothing in flight after close, cache within capacity.
        assert dp.cache.resident <= config.cache_bytes

    run_with_datapath(backend, config, body)


@pytest.mark.parametrize("chunk", [4 * KiB, 128 * KiB, 100_000])
def test_sequential_read_fetches_each_byte_once_in_block_sized_gets(chunk):
    size = 2 * MiB + 123
    data = pattern(size)
    backend = ModelBackend({"f": data}, latency=0.002)
    stats = Stats()

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        assert await read_all(r, chunk) == data
        r.close()
        return r

    r = run_with_datapath(backend, SMALL, body, stats)
    calls = backend.calls_for("f")
    assert sum(n for _, n in calls) == size  # each byte fetched once
    assert len(calls) <= size // SMALL.block_size + 3  # O(N / block)
    assert all(n <= SMALL.block_size for _, n in calls)
    assert stats.counters["prefetch_hits"] > 0
    assert stats.counters["bytes_fetched"] == size
    assert r._readahead.window > SMALL.initial_window  # it starved at least once, then grew


def test_a_long_sequential_read_recycles_the_buffers_it_has_read_past():
    """Past `spent_keep`, the blocks a sequential reader has read give their buffers to its next
    fetches: the right bytes, each fetched once, memory within the budget, and a re-read of a
    recycled block fetches it again (the kernel's page cache serves those on a mount)."""
    size = 3 * MiB + 77
    data = pattern(size, seed=3)
    backend = IntoBackend({"f": data})
    config = DataPathConfig(
        block_size=64 * KiB, cache_bytes=1 * MiB, initial_window=64 * KiB, spent_keep=128 * KiB
    )
    stats = Stats()

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        assert await read_all(r, 32 * KiB) == data
        assert dp.budget.total <= config.cache_bytes
        assert bytes(await r.read(0, 100)) == data[:100]
        r.close()

    run_with_datapath(backend, config, body, stats)
    # (every fetch here is one 64 KiB block, so nearly every one past the first few can reuse
    # a spent buffer; half of them leaves room for a loaded machine's timing)
    assert stats.counters["buffers_recycled"] >= size // config.block_size // 2
    calls = backend.calls_for("f")
    assert sum(n for o, n in calls if o > 0) == size - config.block_size  # once each
    assert [o for o, _ in calls].count(0) == 2  # the first block, recycled, then read again


class IntoBackend(ModelBackend):
    """A backend that receives into the caller's buffer, recording which entry point was used."""

    def __init__(self, files):
        super().__init__(files)
        self.into_calls = 0
        self.bytes_calls = 0

    def read_range(self, path, offset, length, etag=None):
        self.bytes_calls += 1
        return super().read_range(path, offset, length, etag)

    def read_range_into(self, path, offset, buf, etag=None, *, progress=None, abort=None):
        self.into_calls += 1
        data = ModelBackend.read_range(self, path, offset, len(buf), etag)
        buf[: len(data)] = data
        return len(data)


def test_blocks_are_received_in_place_and_served_without_copies():
    size = SMALL.block_size * 2 + 5
    data = pattern(size)
    backend = IntoBackend({"f": data})

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        first = await r.read(0, 4096)
        # A read inside one block is a read-only view of the cached block, not a copy.
        assert isinstance(first, memoryview) and first.readonly
        assert first == data[:4096]
        across = await r.read(SMALL.block_size - 10, 20)  # spans two blocks: joined
        assert bytes(across) == data[SMALL.block_size - 10 : SMALL.block_size + 10]
        assert await read_all(r, 64 * KiB) == data
        r.close()

    run_with_datapath(backend, SMALL, body)
    assert backend.into_calls > 0 and backend.bytes_calls == 0


def test_kernel_like_concurrent_reads_on_one_handle_fetch_each_byte_once():
    """Eight requests in flight on one handle, as the kernel's async read-ahead issues them."""
    size = 6 * MiB + 5
    data = pattern(size)
    backend = ModelBackend({"f": data}, latency=0.003, rate=400 * MiB)
    config = DataPathConfig(block_size=256 * KiB, cache_bytes=16 * MiB, initial_window=64 * KiB)
    chunk = 128 * KiB
    stats = Stats()

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        got: dict[int, bytes] = {}
        offsets = iter(range(0, size, chunk))

        async def worker():
            for off in offsets:
                got[off] = await r.read(off, chunk)

        async with trio.open_nursery() as n:
            for _ in range(8):
                n.start_soon(worker)
        r.close()
        assert b"".join(got[o] for o in sorted(got)) == data
        return r

    r = run_with_datapath(backend, config, body, stats)
    calls = backend.calls_for("f")
    assert sum(n for _, n in calls) == size
    assert len(calls) <= size // config.block_size + 3
    assert r._readahead.seeks == 0 and not r._readahead.random


def test_eof_short_reads_and_empty_file():
    data = pattern(1000)
    backend = ModelBackend({"f": data, "empty": b""})

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        assert await r.read(990, 100) == data[990:]
        assert await r.read(1000, 10) == b""
        assert await r.read(5000, 10) == b""
        assert await r.read(0, 0) == b""
        e = dp.open("empty", backend.info("empty"))
        assert await e.read(0, 4096) == b""
        r.close()
        e.close()

    run_with_datapath(backend, SMALL, body)
    assert backend.calls_for("empty") == []
    assert backend.calls_for("f") == [(0, 1000)]  # a small file is fetched whole


# --- sharing and priorities ----------------------------------------------------------------------


def test_two_concurrent_readers_of_one_block_cause_one_get():
    data = pattern(4 * 64 * KiB)
    backend = ModelBackend({"f": data}, latency=0.2)
    stats = Stats()

    async def body(dp):
        a, b = dp.open("f", backend.info("f")), dp.open("f", backend.info("f"))
        results = {}

        async def rd(name, r):
            results[name] = await r.read(100, 200)

        async with trio.open_nursery() as n:
            n.start_soon(rd, "a", a)
            n.start_soon(rd, "b", b)
        assert results == {"a": data[100:300], "b": data[100:300]}
        a.close()
        b.close()

    run_with_datapath(backend, SMALL, body, stats)
    assert len(backend.calls_for("f")) == 1
    assert stats.counters["cache_misses"] == 2


def test_a_failed_shared_fetch_wakes_every_waiter_and_is_not_cached():
    data = pattern(4 * 64 * KiB)
    backend = ModelBackend({"f": data}, latency=0.1)

    async def body(dp):
        info = backend.info("f")
        a, b = dp.open("f", info), dp.open("f", info)
        backend.replace("f", pattern(len(data), seed=9))  # pinned etag is now stale
        errors = []

        async def rd(r):
            try:
                await r.read(0, 100)
            except BackendError as e:
                errors.append(e)

        async with trio.open_nursery() as n:
            n.start_soon(rd, a)
            n.start_soon(rd, b)
        assert len(errors) == 2 and all(isinstance(e, Changed) for e in errors)
        assert all(e.errno == errno.ESTALE for e in errors)
        assert dp.cache.resident == 0 and dp.budget.used["inflight"] == 0
        # A fresh open with the new etag reads the new object.
        c = dp.open("f", backend.info("f"))
        assert await c.read(0, 100) == backend.files["f"][:100]
        for r in (a, b, c):
            r.close()

    run_with_datapath(backend, SMALL, body)
    assert len(backend.calls_for("f")) == 2  # one shared failed GET, one for the new version


def test_demand_reads_do_not_queue_behind_prefetch(monkeypatch):
    # Block-sized prefetch GETs (not grown with the window), so that several queue up.
    monkeypatch.setattr(readahead, "MAX_REQUEST", 256 * KiB)
    big = pattern(8 * MiB)
    backend = ModelBackend({"big": big, "other": pattern(300 * KiB, 1)}, latency=0.5)
    config = DataPathConfig(
        block_size=256 * KiB,
        cache_bytes=64 * MiB,
        initial_window=256 * KiB,
        max_window=8 * MiB,
        max_inflight=4,
    )

    async def body(dp):
        r = dp.open("big", backend.info("big"))
        await r.read(0, 4096)
        r._readahead.window = 8 * MiB  # as if it had starved a few times: prefetch queues up
        await r.read(128 * KiB, 200 * KiB)
        queued = sum(1 for e in r._owned if e.pending and not e.started)
        assert queued >= 4, queued
        o = dp.open("other", backend.info("other"))
        t0 = time.monotonic()
        assert await o.read(0, 1000) == backend.files["other"][:1000]
        elapsed = time.monotonic() - t0
        r.close()
        o.close()
        return t0, elapsed

    t0, elapsed = run_with_datapath(backend, config, body)
    # Its GET went out at once, well before any in-flight GET (0.5 s each) freed a slot ...
    (issued,) = [t for t, p, _, _ in backend.calls if p == "other"]
    assert issued - t0 < 0.3, issued - t0
    # ... so it took one latency; behind the queued prefetch it would take three or more.
    assert elapsed < 0.5 * 2.5, elapsed
    assert backend.max_active <= config.max_inflight


def test_a_reader_promotes_the_queued_prefetch_it_needs():
    data = pattern(4 * MiB)
    backend = ModelBackend({"f": data}, latency=0.2)
    config = DataPathConfig(
        block_size=256 * KiB, cache_bytes=64 * MiB, initial_window=64 * KiB, max_inflight=3
    )
    stats = Stats()

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        await r.read(0, 4096)
        r._readahead.window = 4 * MiB
        await r.read(40 * KiB, 4096)  # tops up the window: many blocks queue at 1 slot
        far = [e for e in r._owned if e.pending and not e.started and e.start >= 2 * MiB]
        assert far
        t0 = time.monotonic()
        got = await r.read(far[0].start, 1000)
        assert got == data[far[0].start : far[0].start + 1000]
        r.close()
        return time.monotonic() - t0

    elapsed = run_with_datapath(backend, config, body, stats)
    assert elapsed < 1.0, elapsed  # behind the queue (one slot, 0.2 s each) it takes seconds
    assert stats.counters["prefetch_promoted"] >= 1


def test_close_cancels_queued_prefetch_and_returns_the_reservation():
    data = pattern(4 * MiB)
    backend = ModelBackend({"f": data}, latency=0.3)
    config = DataPathConfig(
        block_size=256 * KiB, cache_bytes=64 * MiB, initial_window=64 * KiB, max_inflight=3
    )

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        await r.read(0, 4096)
        r._readahead.window = 4 * MiB
        await r.read(40 * KiB, 4096)
        assert dp.budget.used["inflight"] > 0
        r.close()
        n_calls = len(backend.calls)
        # The fetches in flight were cancelled; their buffers stay charged until their worker
        # threads (which this model backend does not abort) have let go of them.
        assert not r._pinned and not r._owned
        with trio.fail_after(2):
            while dp.budget.used["inflight"]:
                await trio.sleep(0.01)
        assert len(backend.calls) == n_calls  # nothing queued was issued after close

    run_with_datapath(backend, config, body)


def test_fetched_ahead_blocks_a_reader_skips_over_stop_counting_as_owed():
    data = pattern(8 * MiB)
    backend = ModelBackend({"f": data})
    config = DataPathConfig(block_size=256 * KiB, cache_bytes=64 * MiB, initial_window=64 * KiB)

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        await r.read(0, 4096)
        await r.read(40 * KiB, 4096)
        r._readahead.window = 2 * MiB  # as if starved: blocks up to ~2 MiB are fetched ahead
        await r.read(48 * KiB, 4096)
        await trio.sleep(0.2)
        assert sum(e.size for e in r._pinned) > 1 * MiB  # fetched ahead, pinned for the reader
        # Skip forward inside the stream (still sequential) and read on from there.
        off = 1536 * KiB
        for _ in range(12):
            assert await r.read(off, 128 * KiB) == data[off : off + 128 * KiB]
            off += 128 * KiB
        await trio.sleep(0.2)
        assert r._readahead.seeks == 0
        # The skipped blocks, now behind the stream, are no longer pinned: evictable again.
        assert r._pinned and all(e.end > off - 128 * KiB for e in r._pinned), sorted(
            e.start for e in r._pinned
        )
        r.close()
        assert not r._pinned and dp.cache._lru_bytes == dp.cache.resident

    run_with_datapath(backend, config, body)


# --- budget --------------------------------------------------------------------------------------


def test_memory_stays_within_the_budget_under_many_readers():
    files = {f"f{i}": pattern(1 * MiB + i * 4099, seed=i) for i in range(8)}
    backend = ModelBackend(files, latency=0.002, rate=200 * MiB)
    config = DataPathConfig(
        block_size=64 * KiB, cache_bytes=512 * KiB, initial_window=16 * KiB, max_inflight=6
    )
    peak = {"used": 0}
    chunk = 32 * KiB

    async def body(dp):
        done = False

        async def monitor():
            while not done:
                peak["used"] = max(peak["used"], dp.budget.total)
                await trio.sleep(0.0005)

        async def reader(name):
            r = dp.open(name, backend.info(name))
            assert await read_all(r, chunk) == files[name]
            r.close()

        async with trio.open_nursery() as outer:
            outer.start_soon(monitor)
            async with trio.open_nursery() as n:
                for name in files:
                    n.start_soon(reader, name)
            done = True
        assert dp.budget.used["inflight"] == 0

    stats = Stats()
    run_with_datapath(backend, config, body, stats)
    # Prefetch never overdraws; each of the 8 concurrent demand reads may add one block.
    overshoot = len(files) * (config.block_size + chunk)
    assert peak["used"] <= config.cache_bytes + overshoot, peak
    assert stats.counters["prefetch_refused"] > 0  # the budget did push back


def test_random_4k_reads_do_not_pull_whole_blocks():
    size = 32 * MiB
    data = pattern(size)
    backend = ModelBackend({"f": data})
    config = DataPathConfig(block_size=8 * MiB, cache_bytes=256 * MiB)
    rng = __import__("random").Random(7)
    offsets = [rng.randrange(0, size - 4096) for _ in range(200)]

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        for off in offsets:
            assert await r.read(off, 4096) == data[off : off + 4096]
        r.close()

    run_with_datapath(backend, config, body)
    fetched = [n for _, n in backend.calls_for("f")]
    assert max(fetched) <= 1 * MiB
    assert sum(fetched[3:]) / len(fetched[3:]) <= 64 * KiB  # random mode after 3 seeks


# --- errors and timeouts -------------------------------------------------------------------------


def test_a_hung_backend_gives_eio_within_the_timeout():
    backend = ModelBackend({"f": pattern(10 * KiB)})
    backend.hang.set()
    config = DataPathConfig(block_size=64 * KiB, read_timeout=0.5)

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        t0 = time.monotonic()
        with pytest.raises(BackendError) as ei:
            await r.read(0, 100)
        r.close()
        return time.monotonic() - t0, ei.value

    try:
        elapsed, err = run_with_datapath(backend, config, body)
    finally:
        backend.release.set()
    assert 0.45 <= elapsed < 1.5
    assert err.errno == errno.EIO and "timed out after 0.5 s" in str(err)


def test_transient_failures_are_retried_then_time_out():
    backend = ModelBackend({"f": pattern(10 * KiB)})
    backend.always_transient = True
    config = DataPathConfig(block_size=64 * KiB, read_timeout=1.0)

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        t0 = time.monotonic()
        with pytest.raises(BackendError) as ei:
            await r.read(0, 100)
        return time.monotonic() - t0, ei.value

    elapsed, err = run_with_datapath(backend, config, body)
    assert elapsed <= 1.5
    assert err.errno == errno.EIO and "timed out" in str(err) and "connection reset" in str(err)
    assert len(backend.calls) >= 3


def test_countdown_transient_failures_are_retried_transparently():
    data = pattern(300 * KiB)
    backend = ModelBackend({"f": data})
    backend.transient_failures = 3
    stats = Stats()

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        assert await read_all(r, 50 * KiB) == data
        r.close()

    run_with_datapath(backend, SMALL, body, stats)
    assert stats.counters["read_retries"] == 3


def test_a_failed_prefetch_is_swallowed_and_refetched_on_demand():
    data = pattern(1 * MiB)
    backend = ModelBackend({"f": data})
    backend.fail_once_at = {256 * KiB, 512 * KiB}
    stats = Stats()

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        off = 0
        while off < len(data):
            assert await r.read(off, 16 * KiB) == data[off : off + 16 * KiB]
            off += 16 * KiB
            # Let every fetch started so far finish (or fail) before the next read, so that the
            # failures always hit prefetches, never a read that waits (no timing involved).
            for item in dp.cache.cover("f", r.etag, off, len(data)):
                if isinstance(item, Extent):
                    await item.done.wait()
        r.close()

    run_with_datapath(backend, SMALL, body, stats)
    offsets = [o for o, _ in backend.calls_for("f")]
    assert offsets.count(256 * KiB) == 2 and offsets.count(512 * KiB) == 2
    assert stats.counters["prefetch_hits"] > 0


def test_not_found_and_changed_map_to_their_errnos():
    backend = ModelBackend({"f": pattern(200 * KiB), "g": pattern(10)})

    async def body(dp):
        info_g = backend.info("g")
        backend.delete("g")
        with pytest.raises(NotFound) as ei:
            await dp.open("g", info_g).read(0, 10)
        assert ei.value.errno == errno.ENOENT
        r = dp.open("f", backend.info("f"))
        assert await r.read(0, 10) == backend.files["f"][:10]
        backend.replace("f", pattern(200 * KiB, seed=3))
        with pytest.raises(Changed):
            await r.read(150 * KiB, 10)  # beyond what is cached: a new GET, now stale

    run_with_datapath(backend, SMALL, body)


def test_forget_path_drops_cached_blocks():
    data = pattern(100 * KiB)
    backend = ModelBackend({"f": data})

    async def body(dp):
        r = dp.open("f", backend.info("f"))
        await r.read(0, 10)
        with trio.fail_after(2):  # the read returns as its bytes arrive; the block lands next
            while not dp.cache.resident:
                await trio.sleep(0.001)
        dp.forget_path("f")
        assert dp.cache.resident == 0
        assert await r.read(0, 10) == data[:10]

    run_with_datapath(backend, SMALL, body)
    assert len(backend.calls_for("f")) == 2


def test_shutdown_wakes_blocked_readers_with_an_error():
    backend = ModelBackend({"f": pattern(10 * KiB)})
    backend.hang.set()

    async def main():
        dp = DataPath(TrioBackend(backend), SMALL, Stats())
        errors = []

        async def rd():
            with pytest.raises(BackendError) as ei:
                await dp.open("f", backend.info("f")).read(0, 10)
            errors.append(ei.value)

        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as inner:
                await inner.start(dp.run)
                outer.start_soon(rd)
                await trio.sleep(0.1)
                inner.cancel_scope.cancel()
        assert len(errors) == 1

    try:
        trio.run(main)
    finally:
        backend.release.set()


# --- small files ---------------------------------------------------------------------------------


def test_prefetch_files_fetches_small_files_ahead_once():
    files = {f"d/{i:02}": pattern(5000 + i, seed=i) for i in range(30)}
    files["d/big"] = pattern(200 * KiB)
    backend = ModelBackend(files, latency=0.01)
    config = DataPathConfig(
        block_size=64 * KiB, cache_bytes=4 * MiB, initial_window=16 * KiB, small_file_prefetch=8
    )
    stats = Stats()

    async def body(dp):
        infos = [backend.info(p) for p in sorted(files)]
        dp.prefetch_files(infos)
        dp.prefetch_files(infos)  # duplicates are ignored
        assert dp.fetcher.files_pending == 8  # bounded
        await trio.sleep(0.3)
        assert dp.fetcher.files_pending == 0
        for p in sorted(files)[:8]:
            r = dp.open(p, backend.info(p))
            assert await r.read(0, 1 << 20) == files[p]
            r.close()

    run_with_datapath(backend, config, body, stats)
    paths = [p for _, p, _, _ in backend.calls]
    assert sorted(paths) == sorted(files)[:8]  # big one skipped, each small one fetched once
    assert stats.counters["prefetch_hits"] == 8
    assert stats.counters["cache_hits"] == 8


# --- real backends -------------------------------------------------------------------------------

BS = 64 * KiB
EDGE_SIZES = [0, 1, BS - 1, BS, BS + 1, 3 * BS + 7]


async def _exact_reads(dp, backend: Backend, name: str, data: bytes) -> None:
    info = backend.stat(name)
    assert info.size == len(data)
    for chunk in (4096, 100_000):
        r = dp.open(name, info)
        assert await read_all(r, chunk) == data
        r.close()
    r = dp.open(name, info)
    for off, n in [(len(data) // 2, 10), (0, 1), (max(0, len(data) - 3), 10), (BS - 5, 10)]:
        assert await r.read(off, n) == data[off : off + n]
    r.close()


def _check_backend(backend: Backend) -> None:
    blobs = {f"edge/{n}": pattern(n, seed=n) for n in EDGE_SIZES}
    for name, data in blobs.items():
        backend.write_bytes(name, data)
    config = DataPathConfig(block_size=BS, cache_bytes=2 * MiB, initial_window=16 * KiB)

    async def body(dp):
        for name, data in blobs.items():
            await _exact_reads(dp, backend, name, data)
        # A replaced object is ESTALE for a handle that pinned the old ETag.
        name = "stale"
        backend.write_bytes(name, pattern(3 * BS + 7))
        r = dp.open(name, backend.stat(name))
        await r.read(0, 10)
        backend.write_bytes(name, pattern(3 * BS + 7, seed=99))
        with pytest.raises(Changed):
            await r.read(2 * BS, 10)
        r.close()

    run_with_datapath(backend, config, body)


def test_local_backend_byte_exact(local_config):
    _check_backend(open_backend(local_config))


@pytest.mark.azurite
def test_blob_backend_byte_exact(blob_config):
    try:
        backend = open_backend(blob_config)
    except ImportError:
        pytest.skip("amlfs.backends.blob is not there yet")
    try:
        _check_backend(backend)
    finally:
        backend.close()


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        DataPathConfig(block_size=0)
    with pytest.raises(ValueError):
        DataPathConfig(read_timeout=0)
    assert DataPathConfig(cache_bytes=64 * MiB).window_cap == 16 * MiB
