"""ReadAhead: property tests of the pure policy over random read sequences.

`Sim` plays the data path: it fetches only the holes of what the policy asks for (split at block
boundaries, or at multiples of the advised piece for prefetches, as DataPath does) and makes a fetch ready `latency` reads after it was issued.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from amlfs.fs.readahead import MAX_REQUEST, RANDOM_MAX, ReadAhead

KiB = 1024
MiB = 1024 * KiB


class Sim:
    def __init__(self, size, block, initial, cap, latency=1, refuse_above=None):
        self.ra = ReadAhead(size, block, initial, cap)
        self.size, self.block, self.cap = size, block, cap
        self.latency = latency
        self.refuse_above = refuse_above  # refuse prefetch past this many outstanding bytes
        self.fetched: list[tuple[int, int, int]] = []  # (start, end, issued at read #)
        self.t = 0
        self.max_outstanding = 0
        self.starved = 0
        self.refusals: list[tuple[int, int]] = []  # window before and after each refusal

    def covered(self, lo, hi, ready_only):
        pos = lo
        for s, e, t in sorted(self.fetched):
            if ready_only and self.t - t < self.latency:
                continue
            if s <= pos < e:
                pos = e
        return pos >= hi

    def holes(self, lo, hi, piece=0):
        out = []
        pos = lo
        for s, e, _ in sorted(self.fetched):
            if e <= pos or s >= hi:
                continue
            if s > pos:
                out.append((pos, s))
            pos = max(pos, e)
        if pos < hi:
            out.append((pos, hi))
        split = []
        step = max(self.block, piece)
        for a, b in out:
            while a < b:
                stop = min(b, (a // step + 1) * step)
                split.append((a, stop))
                a = stop
        return split

    def read(self, off, n):
        self.t += 1
        end = min(self.size, off + n)
        if off < 0:  # invalid: the policy must answer with an empty range
            end = off
        ready = end <= off or self.covered(off, end, ready_only=True)
        adv = self.ra.on_read(off, n, ready)
        new = []
        if end > off:
            assert adv.demand[0] <= off and adv.demand[1] >= end, (adv, off, end)
            if not ready:
                self.starved += 1
                new += self.holes(*adv.demand)
        piece = adv.piece or self.block
        assert piece % self.block == 0 and piece <= max(self.block, MAX_REQUEST)
        for lo, hi in adv.prefetch:
            assert (lo // piece) == ((hi - 1) // piece), "prefetch spans a piece"
            if self.refuse_above is not None and self.ra.outstanding() > self.refuse_above:
                before = self.ra.window
                self.ra.on_refused(lo)
                self.refusals.append((before, self.ra.window))
                break
            new += self.holes(lo, hi, adv.piece)
        for lo, hi in [adv.demand, *adv.prefetch]:
            assert 0 <= lo <= hi <= self.size, (lo, hi, self.size)
        for lo, hi in new:
            assert 0 <= lo < hi <= self.size
            self.fetched.append((lo, hi, self.t))
        self.max_outstanding = max(self.max_outstanding, self.ra.outstanding())
        return adv, new


sizes = st.integers(0, 64 * MiB)
blocks = st.sampled_from([64 * KiB, 1 * MiB, 8 * MiB])
windows = st.sampled_from([64 * KiB, 1 * MiB])
caps = st.sampled_from([1 * MiB, 16 * MiB, 128 * MiB])


@settings(max_examples=200, deadline=None)
@given(
    size=sizes,
    block=blocks,
    initial=windows,
    cap=caps,
    reads=st.lists(st.tuples(st.integers(-10, 70 * MiB), st.integers(0, 2 * MiB)), max_size=60),
)
def test_never_asks_outside_the_file_and_outstanding_stays_under_the_cap(
    size, block, initial, cap, reads
):
    sim = Sim(size, block, initial, cap)
    for off, n in reads:
        sim.read(off, n)
    # Read-ahead stays within its cap; a demand miss may add the rest of one block.
    assert sim.max_outstanding <= max(cap, block) + 2 * MiB


def sequential(size, chunk):
    return [(o, chunk) for o in range(0, size, chunk)]


def reordered(size, chunk, swaps):
    """Sequential reads with some neighbours swapped, as concurrent kernel requests arrive."""
    seq = sequential(size, chunk)
    if len(seq) < 2:
        return seq
    done: set[int] = set()
    for i in swaps:
        i %= len(seq) - 1
        if done & {i - 1, i, i + 1, i + 2}:
            continue
        done.add(i)
        seq[i], seq[i + 1] = seq[i + 1], seq[i]
    return seq


@settings(max_examples=100, deadline=None)
@given(
    nblocks=st.integers(2, 40),
    tail=st.integers(0, 64 * KiB - 1),
    chunk=st.sampled_from([4 * KiB, 128 * KiB, 1 * MiB]),
    swaps=st.lists(st.integers(0, 10_000), max_size=30),
    latency=st.integers(0, 4),
)
def test_sequential_and_reordered_reads_fetch_each_byte_once_in_o_n_over_block_gets(
    nblocks, tail, chunk, swaps, latency
):
    block = 64 * KiB * 4  # 256 KiB
    size = nblocks * block + tail
    sim = Sim(size, block, 64 * KiB, 4 * MiB, latency=latency)
    for off, n in reordered(size, chunk, swaps):
        adv, _ = sim.read(off, n)
        assert not adv.random
    fetched = sorted((s, e) for s, e, _ in sim.fetched)
    assert sum(e - s for s, e in fetched) <= size  # never twice
    assert sim.covered(0, size, ready_only=False)
    assert len(fetched) <= size // block + 3


@settings(max_examples=50, deadline=None)
@given(nblocks=st.integers(8, 64), latency=st.integers(3, 8))
def test_window_grows_on_starvation_up_to_the_cap(nblocks, latency):
    block = 256 * KiB
    cap = 2 * MiB
    sim = Sim(nblocks * block, block, 64 * KiB, cap, latency=latency)
    windows = []
    for off, n in sequential(nblocks * block, 128 * KiB):
        sim.read(off, n)
        windows.append(sim.ra.window)
    assert windows == sorted(windows)  # never shrinks without a refusal
    assert sim.starved > 1  # fetches take 3+ reads: the reader runs dry ...
    assert max(windows) > 64 * KiB  # ... and the window grows
    assert max(windows) <= cap


def test_no_starvation_keeps_the_window():
    sim = Sim(64 * MiB, 1 * MiB, 256 * KiB, 16 * MiB, latency=0)
    for off, n in sequential(64 * MiB, 128 * KiB):
        sim.read(off, n)
    # Each fetch is ready at once: only the first read of the stream waited.
    assert sim.starved == 1
    assert sim.ra.window == 256 * KiB


def test_refusal_halves_the_window_and_prefetch_resumes_later():
    sim = Sim(64 * MiB, 1 * MiB, 256 * KiB, 16 * MiB, latency=40, refuse_above=4 * MiB)
    for off, n in sequential(64 * MiB, 128 * KiB):
        sim.read(off, n)
    assert sim.refusals
    assert all(after == max(256 * KiB, before // 2) for before, after in sim.refusals)
    assert max(before for before, _ in sim.refusals) >= 4 * MiB
    assert sim.max_outstanding <= 4 * MiB + 1 * MiB  # refusals kept it near the budget
    assert sim.covered(0, 64 * MiB, ready_only=False)


SLOT = 20 * MiB  # farther apart than any forward skip the policy still calls sequential


@settings(max_examples=100, deadline=None)
@given(
    slots=st.lists(st.integers(0, 50), min_size=4, max_size=50, unique=True),
    jitter=st.lists(st.integers(0, 1 * MiB), min_size=50, max_size=50),
    block=st.sampled_from([1 * MiB, 8 * MiB]),
)
def test_random_4k_reads_fetch_at_most_1mib_each_and_turn_random(slots, jitter, block):
    size = 51 * SLOT
    sim = Sim(size, block, 1 * MiB, 128 * MiB)
    per_read = []
    for i, slot in enumerate(slots):
        _, new = sim.read(slot * SLOT + jitter[i], 4096)
        per_read.append(sum(e - s for s, e in new))
    assert max(per_read) <= 1 * MiB
    assert sim.ra.random
    assert all(n <= 64 * KiB for n in per_read[3:])  # request-sized once random


@settings(max_examples=100, deadline=None)
@given(
    offsets=st.lists(st.integers(0, 64 * MiB), min_size=1, max_size=60),
    block=st.sampled_from([1 * MiB, 8 * MiB]),
)
def test_any_4k_reads_are_bounded_by_the_window(offsets, block):
    """Near-by 4 KiB reads may look sequential; what they pull stays bounded all the same."""
    sim = Sim(64 * MiB, block, 1 * MiB, 16 * MiB)
    for off in offsets:
        _, new = sim.read(off, 4096)
        assert sum(e - s for s, e in new) <= 16 * MiB + block


def test_random_mode_sizes_to_the_average_run_and_returns_to_sequential():
    size = 512 * MiB
    sim = Sim(size, 8 * MiB, 1 * MiB, 128 * MiB)
    # Records of 256 KiB read as two 128 KiB requests, 32 MiB apart.
    for rec in range(6):
        base = rec * 32 * MiB
        sim.read(base, 128 * KiB)
        sim.read(base + 128 * KiB, 128 * KiB)
    assert sim.ra.random
    assert sim.ra.random_size() == 256 * KiB
    adv, _ = sim.read(300 * MiB, 128 * KiB)
    assert adv.random and adv.demand == (300 * MiB, 300 * MiB + 256 * KiB)
    assert not adv.prefetch
    # A long sequential run: back to sequential with prefetch.
    off = 300 * MiB + 128 * KiB
    while sim.ra.random:
        sim.read(off, 128 * KiB)
        off += 128 * KiB
    assert off - 300 * MiB <= 4 * MiB + 128 * KiB
    prefetched = False
    for _ in range(32):
        adv, _ = sim.read(off, 128 * KiB)
        prefetched |= bool(adv.prefetch)
        off += 128 * KiB
    assert prefetched and not adv.random
    assert RANDOM_MAX == 1 * MiB


def test_first_request_is_small_and_forward_skips_in_the_stream_stay_sequential():
    sim = Sim(256 * MiB, 8 * MiB, 1 * MiB, 128 * MiB, latency=1)
    adv, new = sim.read(0, 128 * KiB)
    assert adv.demand == (0, 1 * MiB) and new == [(0, 1 * MiB)]
    off = 128 * KiB
    while off < 24 * MiB:
        sim.read(off, 128 * KiB)
        off += 128 * KiB
    # A skip forward into what is requested, and a small step back, are not seeks.
    requested = sim.ra.requested
    assert requested > off + 1 * MiB
    sim.read(off + 1 * MiB + 256 * KiB, 128 * KiB)
    sim.read(off + 512 * KiB, 128 * KiB)
    assert sim.ra.seeks == 0
    # A jump past the stream is.
    sim.read(200 * MiB, 128 * KiB)
    assert sim.ra.seeks == 1


def test_small_files_are_fetched_whole():
    ra = ReadAhead(5000, 8 * MiB, 1 * MiB, 128 * MiB)
    adv = ra.on_read(4000, 100, False)
    assert adv.demand == (0, 5000) and adv.prefetch == []
    assert ra.on_read(6000, 100, False).demand == (5000, 5000)  # past EOF: nothing


def test_concurrent_reads_stalled_on_one_fetch_count_as_one_stall():
    ra = ReadAhead(256 * MiB, 8 * MiB, 1 * MiB, 128 * MiB)
    ra.on_read(0, 128 * KiB, False)
    for off in range(128 * KiB, 8 * MiB, 128 * KiB):
        ra.on_read(off, 128 * KiB, True)
    # Eight kernel requests in flight at once, all waiting for block 1.
    for i in range(8):
        ra.on_read(8 * MiB + i * 128 * KiB, 128 * KiB, False)
    assert ra.window == 2 * MiB


@given(latency=st.integers(64, 128), chunk=st.sampled_from([512 * KiB, 1 * MiB]))
@settings(deadline=None, max_examples=30)
def test_a_starved_sequential_read_gets_fewer_larger_gets(latency, chunk):
    """The GET size grows with the window: a 1 GiB sequential read that the storage cannot keep
    up with (each fetch ready `latency` reads later), with a 128 MiB cap, costs far fewer GETs
    than 8 MiB blocks (128), each byte once, none above MAX_REQUEST."""
    block, size = 8 * MiB, 1024 * MiB
    sim = Sim(size, block, 1 * MiB, 128 * MiB, latency=latency)
    for off in range(0, size, chunk):
        sim.read(off, chunk)
    spans = sorted((s, e) for s, e, _ in sim.fetched)
    assert spans[0][0] == 0 and spans[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))  # each byte once
    assert max(e - s for s, e in spans) <= MAX_REQUEST
    assert max(e - s for s, e in spans) >= 4 * block  # grown past one block
    assert len(spans) < size // block // 2, len(spans)
