"""Operations called directly under trio (no kernel): the real local backend and data path.

`pyfuse3.readdir_reply` needs the kernel's reply buffer, so `Kernel` stands in for that buffer:
it accepts a fixed number of entries per readdir call, as a full buffer would.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Awaitable, Callable

import pyfuse3
import pytest
import trio
import trio.testing
from pyfuse3 import FUSEError

from amlfs.backends.base import ObjectInfo
from amlfs.backends.bridge import TrioBackend
from amlfs.backends.errors import BackendError
from amlfs.backends.local import LocalBackend
from amlfs.fs import operations as ops_mod
from amlfs.fs.attrs import STATS_INODE, STATS_NAME
from amlfs.fs.datapath import DataPath, DataPathConfig
from amlfs.fs.inodes import Timeouts
from amlfs.fs.operations import Operations, OperationsConfig
from amlfs.fs.stats import Stats

ROOT = pyfuse3.ROOT_INODE
BLOCK = 64 * 1024


class Kernel:
    """The readdir reply buffer: `room` entries per readdir call."""

    def __init__(self, room: int = 1_000_000):
        self.room = room
        self.entries: list[tuple[bytes, pyfuse3.EntryAttributes, int]] = []
        self._left = 0

    def reply(self, token, name: bytes, attr, next_id: int) -> bool:
        if self._left == 0:
            return False
        self._left -= 1
        self.entries.append((name, attr, next_id))
        return True

    async def readdir(self, ops: Operations, fh: int, start: int = 0) -> list[bytes]:
        """A whole directory, as the kernel reads it: calls until one returns nothing."""
        got: list[bytes] = []
        while True:
            self._left, before = self.room, len(self.entries)
            await ops.readdir(fh, start, None)
            new = self.entries[before:]
            if not new:
                return got
            got += [name for name, _, _ in new]
            start = new[-1][2]


@pytest.fixture
def kernel(monkeypatch) -> Kernel:
    k = Kernel()
    monkeypatch.setattr(ops_mod.pyfuse3, "readdir_reply", k.reply)
    return k


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"hello a")
    (root / "sub" / "b.bin").write_bytes(os.urandom(3 * BLOCK + 5))
    (root / "sub" / "deeper" / "c").write_bytes(b"")
    return root


def run(
    store,
    test: Callable[[Operations], Awaitable[None]],
    *,
    root: str = "",
    backend: LocalBackend | None = None,
    timeouts: Timeouts | None = None,
    request_timeout: float = 10.0,
    walk_prefetch: int = 4,
    listing_prefetch: int = 0,
) -> Operations:
    """Run `test(ops)` with a live data path; returns the Operations for post-mortem checks."""
    backend = backend or LocalBackend(str(store))
    tb = TrioBackend(backend, max_threads=4)
    stats = Stats()
    result: list[Operations] = []

    async def main() -> None:
        dp = DataPath(tb, DataPathConfig(block_size=BLOCK, cache_bytes=4 << 20), stats)
        ops = Operations(
            tb,
            dp,
            ObjectInfo(path=root, is_dir=True),
            stats,
            OperationsConfig(
                timeouts=timeouts or Timeouts(attr=30, listing=30, negative=2),
                request_timeout=request_timeout,
                small_file_size=BLOCK,
                walk_prefetch=walk_prefetch,
                listing_prefetch=listing_prefetch,
            ),
            describe=lambda: {"pid": os.getpid()},
        )
        result.append(ops)
        async with trio.open_nursery() as nursery:
            await nursery.start(dp.run)
            await nursery.start(ops.run)
            await test(ops)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result[0]


async def lookup(ops: Operations, path: str) -> pyfuse3.EntryAttributes:
    inode = ROOT
    attr = None
    for name in path.split("/"):
        attr = await ops.lookup(inode, name.encode())
        inode = attr.st_ino
    return attr


async def read_all(ops: Operations, inode: int, chunk: int = 4096) -> bytes:
    fi = await ops.open(inode, os.O_RDONLY)
    out = bytearray()
    try:
        while True:
            data = await ops.read(fi.fh, len(out), chunk)
            if not data:
                return bytes(out)
            out += data
    finally:
        await ops.release(fi.fh)


def errno_of(excinfo) -> int:
    return excinfo.value.errno


# --- metadata ------------------------------------------------------------------------------------


def test_lookup_and_getattr_fill_attributes(store):
    async def t(ops: Operations):
        a = await lookup(ops, "a.txt")
        assert a.st_ino > ROOT and a.st_size == 7 and a.st_mode == 0o100444
        assert a.entry_timeout == 30 and a.attr_timeout == 30
        assert abs(a.st_mtime_ns / 1e9 - os.stat(store / "a.txt").st_mtime) < 1e-3
        sub = await lookup(ops, "sub")
        assert sub.st_mode == 0o40555
        again = await ops.getattr(a.st_ino)
        assert again.st_ino == a.st_ino and again.st_size == 7
        root = await ops.getattr(ROOT)
        assert root.st_mode == 0o40555

    run(store, t)


def test_inode_numbers_stay_while_looked_up_and_go_after_forget(store):
    async def t(ops: Operations):
        first = await lookup(ops, "a.txt")
        second = await lookup(ops, "a.txt")
        assert first.st_ino == second.st_ino
        await ops.forget([(first.st_ino, 1)])
        assert (await ops.getattr(first.st_ino)).st_ino == first.st_ino
        await ops.forget([(first.st_ino, 1)])
        with pytest.raises(FUSEError) as e:
            await ops.getattr(first.st_ino)
        assert errno_of(e) == errno.ESTALE
        assert (await lookup(ops, "a.txt")).st_ino != first.st_ino

    run(store, t)


def test_negative_lookup_is_cacheable(store):
    async def t(ops: Operations):
        miss = await ops.lookup(ROOT, b"nope")
        assert miss.st_ino == 0 and miss.entry_timeout == 2
        # Names that cannot be a path segment never reach the storage.
        with pytest.raises(FUSEError) as e:
            await ops.lookup(ROOT, b"a/b")
        assert errno_of(e) == errno.ENOENT

    ops = run(store, t)
    assert ops.stats.counters["negative_lookups"] == 1


def test_dot_and_dotdot_lookups(store):
    async def t(ops: Operations):
        sub = await lookup(ops, "sub")
        assert (await ops.lookup(sub.st_ino, b".")).st_ino == sub.st_ino
        assert (await ops.lookup(sub.st_ino, b"..")).st_ino == ROOT
        assert (await ops.lookup(ROOT, b"..")).st_ino == ROOT

    run(store, t)


def test_readdir_streams_pages_with_stable_offsets(store, kernel, monkeypatch):
    monkeypatch.setattr(LocalBackend, "page_size", 7)
    monkeypatch.setattr(ops_mod, "FIRST_PAGE", 7)
    big = store / "big"
    big.mkdir()
    names = sorted(f"f{i:03d}" for i in range(40))
    for n in names:
        (big / n).write_bytes(n.encode())
    kernel.room = 3  # a small reply buffer: many readdir calls per LIST page

    async def t(ops: Operations):
        d = await lookup(ops, "big")
        fh = await ops.opendir(d.st_ino)
        got = await kernel.readdir(ops, fh)
        assert got == [b".", b".."] + [n.encode() for n in names]
        offsets = [next_id for _, _, next_id in kernel.entries]
        assert offsets == list(range(1, len(offsets) + 1))
        # Restarting from a remembered offset (seekdir) resumes exactly there.
        kernel.entries.clear()
        assert (await kernel.readdir(ops, fh, start=10))[0] == names[8].encode()
        await ops.releasedir(fh)
        assert ops.stats.counters["backend.list"] == 6  # 40 entries / 7 per page, listed once

    ops = run(store, t)
    # Every entry the kernel accepted counts a lookup; '.' and '..' do not.
    assert ops.table.by_path("big/f000").lookups == 1
    assert ops.table.by_path("big/f008").lookups == 2  # listed twice: from 0 and from offset 10


def test_readdir_stops_when_the_buffer_is_full(store, kernel):
    kernel.room = 0

    async def t(ops: Operations):
        fh = await ops.opendir(ROOT)
        kernel._left = 0
        await ops.readdir(fh, 0, None)
        assert kernel.entries == []
        assert len(ops.table) == 1  # nothing remembered for entries the kernel refused

    run(store, t)


def test_listing_answers_lookups_and_getattr_without_requests(store, kernel):
    async def t(ops: Operations):
        sub = await lookup(ops, "sub")
        fh = await ops.opendir(sub.st_ino)
        await kernel.readdir(ops, fh)
        await ops.releasedir(fh)
        stats_before = ops.stats.counters["backend.stat"]
        attrs = {name: attr for name, attr, _ in kernel.entries}
        assert attrs[b"b.bin"].st_size == 3 * BLOCK + 5
        for name in (b"b.bin", b"deeper", b"missing"):
            await ops.lookup(sub.st_ino, name)
        fh = await ops.opendir(sub.st_ino)  # a second listing comes from the cache
        await kernel.readdir(ops, fh)
        assert ops.stats.counters["backend.stat"] == stats_before
        assert ops.stats.counters["backend.list"] == 1

    run(store, t)


def test_prefix_root(store, kernel):
    async def t(ops: Operations):
        fh = await ops.opendir(ROOT)
        assert sorted(await kernel.readdir(ops, fh)) == [b".", b"..", b"b.bin", b"deeper"]
        c = await lookup(ops, "deeper/c")
        assert c.st_size == 0
        assert (await lookup(ops, "deeper/..")).st_ino == ROOT
        miss = await ops.lookup(ROOT, b"a.txt")  # outside the prefix
        assert miss.st_ino == 0

    run(store, t, root="sub")


def test_hostile_local_names(tmp_path, kernel):
    store = tmp_path / "s"
    store.mkdir()
    odd = [b"new\nline", b"\xff\xfebytes", b" lead", b"-dash", "ünï".encode()]
    for name in odd:
        with open(os.path.join(os.fsencode(store), name), "wb") as f:
            f.write(name)

    async def t(ops: Operations):
        fh = await ops.opendir(ROOT)
        assert sorted(await kernel.readdir(ops, fh)) == sorted([b".", b"..", *odd])
        for name in odd:
            attr = await ops.lookup(ROOT, name)
            assert await read_all(ops, attr.st_ino) == name

    run(store, t)


# --- reads ---------------------------------------------------------------------------------------


def test_reads_are_byte_exact(store):
    async def t(ops: Operations):
        b = await lookup(ops, "sub/b.bin")
        assert await read_all(ops, b.st_ino, chunk=5000) == (store / "sub/b.bin").read_bytes()
        c = await lookup(ops, "sub/deeper/c")
        assert await read_all(ops, c.st_ino) == b""

    ops = run(store, t)
    assert ops.stats.counters["bytes_read"] == 3 * BLOCK + 5


def test_a_new_version_is_a_new_inode_with_its_own_page_cache(store):
    invalidated = []

    async def t(ops: Operations):
        ops.invalidate_entry = lambda parent, name: invalidated.append((parent, name))
        a = await lookup(ops, "a.txt")
        fi = await ops.open(a.st_ino, os.O_RDONLY)
        assert fi.keep_cache  # an inode is one version: its pages stay valid while it lives
        old_fh = fi.fh
        tmp = store / "a.new"
        tmp.write_bytes(b"changed!")
        os.replace(tmp, store / "a.txt")
        await trio.sleep(0.3)  # past the attribute timeout: open revalidates
        with pytest.raises(FUSEError) as e:
            await ops.open(a.st_ino, os.O_RDONLY)  # the kernel then looks the name up again
        assert errno_of(e) == errno.ESTALE
        assert invalidated == [(ROOT, b"a.txt")]
        b = await ops.lookup(ROOT, b"a.txt")
        assert b.st_ino != a.st_ino and b.st_size == 8
        fi = await ops.open(b.st_ino, os.O_RDONLY)
        assert fi.keep_cache
        assert await ops.read(fi.fh, 0, 100) == b"changed!"
        # The old inode still describes its own version, for the handles open on it.
        assert (await ops.getattr(a.st_ino)).st_size == len(b"hello a")
        assert (await ops.getattr(b.st_ino)).st_size == 8
        await ops.release(fi.fh)
        await ops.release(old_fh)

    run(store, t, timeouts=Timeouts(attr=0.2, listing=0.2, negative=0.2))


def test_a_read_refused_as_changed_makes_the_next_lookup_see_the_new_version(store):
    size = 4 << 20
    (store / "big.bin").write_bytes(os.urandom(size))
    invalidated = []

    async def t(ops: Operations):
        ops.invalidate_entry = lambda parent, name: invalidated.append((parent, name))
        b = await lookup(ops, "big.bin")
        fi = await ops.open(b.st_ino, os.O_RDONLY)
        await ops.read(fi.fh, 0, 4096)
        new = os.urandom(size)
        tmp = store / "big.new"
        tmp.write_bytes(new)
        os.replace(tmp, store / "big.bin")
        with pytest.raises(FUSEError) as e:
            await ops.read(fi.fh, size - 4096, 4096)
        assert errno_of(e) == errno.ESTALE
        # Long before the attribute timeout (30 s), the name is revalidated: no ESTALE loop.
        assert invalidated == [(ROOT, b"big.bin")]
        c = await ops.lookup(ROOT, b"big.bin")
        assert c.st_ino != b.st_ino
        fi2 = await ops.open(c.st_ino, os.O_RDONLY)
        assert await ops.read(fi2.fh, size - 4096, 4096) == new[-4096:]
        await ops.release(fi.fh)
        await ops.release(fi2.fh)

    run(store, t)


def test_changed_object_mid_read_is_estale(store):
    size = 4 << 20  # beyond the first read-ahead window, so the far end is not fetched yet
    original = os.urandom(size)
    (store / "big.bin").write_bytes(original)

    async def t(ops: Operations):
        b = await lookup(ops, "big.bin")
        fi = await ops.open(b.st_ino, os.O_RDONLY)
        assert await ops.read(fi.fh, 0, 4096) == original[:4096]
        tmp = store / "big.new"
        tmp.write_bytes(os.urandom(size))
        os.replace(tmp, store / "big.bin")
        # Whatever was fetched before the change is the old version; the rest is refused.
        assert await ops.read(fi.fh, 4096, 4096) == original[4096:8192]
        with pytest.raises(FUSEError) as e:
            await ops.read(fi.fh, size - 4096, 4096)
        assert errno_of(e) == errno.ESTALE
        await ops.release(fi.fh)

    ops = run(store, t)
    assert ops.stats.counters["errors.ESTALE"] == 1


def test_walk_in_listing_order_prefetches_the_next_files(tmp_path, kernel):
    store = tmp_path / "imgs"
    store.mkdir()
    files = {f"{i:03d}.jpg": os.urandom(1000 + i) for i in range(20)}
    for name, data in files.items():
        (store / name).write_bytes(data)

    async def t(ops: Operations):
        fh = await ops.opendir(ROOT)
        await kernel.readdir(ops, fh)
        await ops.releasedir(fh)
        inodes = {name.decode(): attr.st_ino for name, attr, _ in kernel.entries[2:]}
        for name in sorted(files)[:3]:
            assert await read_all(ops, inodes[name]) == files[name]
        await trio.sleep(0.3)  # let the prefetches land
        misses = ops.stats.counters["cache_misses"]
        for name in sorted(files)[3:6]:
            assert await read_all(ops, inodes[name]) == files[name]
        assert ops.stats.counters["cache_misses"] == misses  # served from prefetched data

    ops = run(store, t, walk_prefetch=4)
    assert ops.stats.counters["walk_prefetch_files"] >= 4


# --- refusals and failures -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda o: o.setattr(ROOT, pyfuse3.EntryAttributes(), pyfuse3.SetattrFields(), None, None),
        lambda o: o.setxattr(ROOT, b"user.x", b"1", None),
        lambda o: o.removexattr(ROOT, b"user.x", None),
        lambda o: o.mknod(ROOT, b"n", 0o100644, 0, None),
        lambda o: o.mkdir(ROOT, b"d", 0o755, None),
        lambda o: o.unlink(ROOT, b"a.txt", None),
        lambda o: o.rmdir(ROOT, b"sub", None),
        lambda o: o.symlink(ROOT, b"l", b"a.txt", None),
        lambda o: o.rename(ROOT, b"a.txt", ROOT, b"b", 0, None),
        lambda o: o.link(2, ROOT, b"l", None),
        lambda o: o.create(ROOT, b"new", 0o644, os.O_WRONLY, None),
        lambda o: o.write(1, 0, b"x"),
    ],
)
def test_everything_that_writes_is_erofs(store, call):
    async def t(ops: Operations):
        with pytest.raises(FUSEError) as e:
            await call(ops)
        assert errno_of(e) == errno.EROFS

    ops = run(store, t)
    assert ops.stats.counters["errors.EROFS"] == 1


def test_open_for_writing_and_kind_mismatches(store):
    async def t(ops: Operations):
        a = await lookup(ops, "a.txt")
        for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC, os.O_WRONLY | os.O_APPEND):
            with pytest.raises(FUSEError) as e:
                await ops.open(a.st_ino, flags)
            assert errno_of(e) == errno.EROFS
        fi = await ops.open(a.st_ino, os.O_RDONLY | os.O_APPEND)  # allowed, as on any ro fs
        await ops.release(fi.fh)
        with pytest.raises(FUSEError) as e:
            await ops.opendir(a.st_ino)
        assert errno_of(e) == errno.ENOTDIR
        sub = await lookup(ops, "sub")
        with pytest.raises(FUSEError) as e:
            await ops.open(sub.st_ino, os.O_RDONLY)
        assert errno_of(e) == errno.EISDIR
        with pytest.raises(FUSEError) as e:
            await ops.read(999, 0, 10)
        assert errno_of(e) == errno.EBADF

    run(store, t)


def test_stats_file_xattrs_and_statfs(store, kernel):
    (store / STATS_NAME).write_bytes(b"a real object by that name is hidden")

    async def t(ops: Operations):
        attr = await ops.lookup(ROOT, STATS_NAME.encode())
        assert attr.st_ino == STATS_INODE and attr.entry_timeout == 0
        assert (await ops.getattr(STATS_INODE)).st_mode == 0o100444
        fi = await ops.open(STATS_INODE, os.O_RDONLY)
        assert fi.direct_io
        raw = b""
        while chunk := await ops.read(fi.fh, len(raw), 7):
            raw += chunk
        await ops.release(fi.fh)
        doc = json.loads(raw)
        assert doc["pid"] == os.getpid() and doc["counters"]["requests.open"] == 1
        fh = await ops.opendir(ROOT)
        assert STATS_NAME.encode() not in await kernel.readdir(ops, fh)
        sub = await lookup(ops, "sub")
        assert (await ops.lookup(sub.st_ino, STATS_NAME.encode())).st_ino == 0  # root only
        for call in (ops.getxattr(ROOT, b"user.x"), ops.listxattr(ROOT)):
            with pytest.raises(FUSEError) as e:
                await call
            assert errno_of(e) == errno.ENOSYS  # the kernel stops asking
        # By design, not a failure: a healthy mount's stats show no errors for it.
        assert not any(k.startswith("errors.") for k in ops.stats.counters)
        s = await ops.statfs(None)
        assert s.f_namemax == 255 and s.f_bavail == 0 and s.f_files >= 2

    run(store, t)


class BrokenBackend(LocalBackend):
    def stat(self, path: str) -> ObjectInfo:
        if path.endswith("boom"):
            raise RuntimeError("a bug")
        if path.endswith("slow"):
            time.sleep(3.0)
        return super().stat(path)


def test_unexpected_errors_and_timeouts_become_eio(store, caplog):
    async def t(ops: Operations):
        for _ in range(2):
            with pytest.raises(FUSEError) as e:
                await ops.lookup(ROOT, b"boom")
            assert errno_of(e) == errno.EIO
        started = time.monotonic()
        with pytest.raises(FUSEError) as e:
            await ops.lookup(ROOT, b"slow")
        assert errno_of(e) == errno.EIO
        assert time.monotonic() - started < 2.0  # the 0.3 s bound, not the 3 s stall
        assert (await lookup(ops, "a.txt")).st_size == 7  # still serving

    ops = run(store, t, backend=BrokenBackend(str(store)), request_timeout=0.3)
    assert ops.stats.counters["errors.EIO"] == 3
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1  # logged with a traceback once


def test_kind_change_is_seen_after_the_timeout(store):
    async def t(ops: Operations):
        a = await lookup(ops, "a.txt")
        os.unlink(store / "a.txt")
        (store / "a.txt").mkdir()
        await trio.sleep(0.3)
        with pytest.raises(FUSEError) as e:
            await ops.getattr(a.st_ino)
        assert errno_of(e) == errno.ESTALE
        again = await ops.lookup(ROOT, b"a.txt")
        assert again.st_ino != a.st_ino and again.st_mode == 0o40555
        os.rmdir(store / "a.txt")
        await trio.sleep(0.3)
        with pytest.raises(FUSEError) as e:
            await ops.getattr(again.st_ino)
        assert errno_of(e) == errno.ENOENT

    run(store, t, timeouts=Timeouts(attr=0.2, listing=0.2, negative=0.2))


def test_close_releases_everything(store):
    async def t(ops: Operations):
        a = await lookup(ops, "a.txt")
        await ops.open(a.st_ino, os.O_RDONLY)

    ops = run(store, t)
    ops.close()
    assert len(ops.table) == 1 and not ops._files


def _tree(root, dirs: int, files: int) -> None:
    for d in range(dirs):
        sub = root / "tree" / f"d{d:02d}" / "inner"
        sub.mkdir(parents=True)
        for i in range(files):
            (sub.parent / f"f{i}").write_bytes(b"x" * i)


def test_a_completed_listing_lists_its_subdirectories_in_the_background(tmp_path, kernel):
    _tree(tmp_path, dirs=6, files=3)

    async def t(ops: Operations):
        tree = await lookup(ops, "tree")
        stats = ops.stats.counters.get("backend.stat", 0)
        fh = await ops.opendir(tree.st_ino)
        await kernel.readdir(ops, fh)
        await ops.releasedir(fh)
        # Queued as the listing completed; they run while the reader is elsewhere.
        assert ops.listings.pending == {f"tree/d{d:02d}" for d in range(6)}
        for path in ops.listings.pending:
            await ops.listings.wait_for(path)
        assert ops.stats.counters["listing_prefetches"] == 6
        lists = ops.stats.counters["backend.list"]
        # One level only: the background listings did not list their own subdirectories.
        assert ops.table.listing("tree/d00") is not None
        assert ops.table.listing("tree/d00/inner") is None
        # ls -lR: every directory, its entries' attributes and lookups, without a request.
        for d in range(6):
            attr = await ops.lookup(tree.st_ino, f"d{d:02d}".encode())
            fh = await ops.opendir(attr.st_ino)
            kernel.entries.clear()
            names = await kernel.readdir(ops, fh)
            await ops.releasedir(fh)
            assert names == [b".", b"..", b"f0", b"f1", b"f2", b"inner"]
            sizes = {n: a.st_size for n, a, _ in kernel.entries}
            assert sizes[b"f2"] == 2
            f2 = await ops.lookup(attr.st_ino, b"f2")
            assert (await ops.getattr(f2.st_ino)).st_size == 2
        for path in ops.listings.pending:
            await ops.listings.wait_for(path)
        assert ops.stats.counters["backend.list"] == lists + 6  # inner/: one level ahead again
        assert ops.stats.counters.get("backend.stat", 0) == stats

    run(tmp_path, t, listing_prefetch=2)


def test_a_reader_waits_for_a_background_listing_in_flight(tmp_path, kernel, monkeypatch):
    _tree(tmp_path, dirs=2, files=2)
    gate = threading.Event()
    real = LocalBackend.list_page

    def slow_list(self, path, token=None, page_size=None):
        if path.startswith("tree/d"):
            gate.wait(10)
        return real(self, path, token, page_size)

    monkeypatch.setattr(LocalBackend, "list_page", slow_list)

    async def t(ops: Operations):
        tree = await lookup(ops, "tree")
        fh = await ops.opendir(tree.st_ino)
        await kernel.readdir(ops, fh)
        await ops.releasedir(fh)
        await trio.testing.wait_all_tasks_blocked()  # the background LISTs are in flight
        d0 = await ops.lookup(tree.st_ino, b"d00")
        fh = await ops.opendir(d0.st_ino)
        kernel.entries.clear()
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []

            async def reader() -> None:
                got.extend(await kernel.readdir(ops, fh))

            nursery.start_soon(reader)
            await trio.sleep(0.05)
            assert not got  # waiting on the background LIST, not issuing its own
            gate.set()
        assert got == [b".", b"..", b"f0", b"f1", b"inner"]
        assert ops.stats.counters["listing_prefetch_waits"] == 1
        assert ops.stats.counters["backend.list"] == 3  # tree, d00, d01: nothing twice

    run(tmp_path, t, listing_prefetch=4)


def test_background_listing_failures_are_quiet_and_the_reader_lists_itself(tmp_path, kernel):
    _tree(tmp_path, dirs=2, files=1)
    backend = LocalBackend(str(tmp_path))
    real = backend.list_page
    failed: list[str] = []

    def flaky(path, token=None, page_size=None):
        if path.startswith("tree/d") and path not in failed:
            failed.append(path)
            raise BackendError("model: I/O error", path)
        return real(path, token, page_size)

    backend.list_page = flaky  # type: ignore[method-assign]

    async def t(ops: Operations):
        tree = await lookup(ops, "tree")
        fh = await ops.opendir(tree.st_ino)
        await kernel.readdir(ops, fh)
        for path in ops.listings.pending:
            await ops.listings.wait_for(path)
        d1 = await ops.lookup(tree.st_ino, b"d01")
        fh = await ops.opendir(d1.st_ino)
        kernel.entries.clear()
        assert await kernel.readdir(ops, fh) == [b".", b"..", b"f0", b"inner"]
        assert ops.stats.counters.get("listing_prefetches", 0) == 0

    run(tmp_path, t, backend=backend, listing_prefetch=4)


def test_a_listing_starts_with_a_small_page_then_full_pages(store, kernel, monkeypatch):
    monkeypatch.setattr(ops_mod, "FIRST_PAGE", 5)
    big = store / "big"
    big.mkdir()
    for i in range(30):
        (big / f"f{i:02d}").touch()
    sizes = []
    real = LocalBackend.list_page

    def watched(self, path, token=None, page_size=None):
        entries, token = real(self, path, token, page_size)
        sizes.append(len(entries))
        return entries, token

    monkeypatch.setattr(LocalBackend, "list_page", watched)

    async def t(ops: Operations):
        d = await lookup(ops, "big")
        fh = await ops.opendir(d.st_ino)
        assert len(await kernel.readdir(ops, fh)) == 32
        await ops.releasedir(fh)

    run(store, t)
    assert sizes[-2:] == [5, 25]  # the first page small, the rest in one full page
