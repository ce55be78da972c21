"""Writable mounts (`amlfs mount --rw`) on local and Blob (Azurite): every row of SEMANTICS.md's
"Writable mounts" section against a live mount, checked remotely through the backend."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from amlfs.backends import open_backend
from amlfs.backends.errors import NotFound
from amlfs.registry import BLOB, datastore_to_dict

from .test_mount import FUSE_OK, Mounts, data

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]


KINDS = {
    "local": "local_config",
    "blob": "blob_config",
    "adls": "adls_config",
    "fileshare": "fileshare_config",
}


class RwMounts(Mounts):
    """Mounts whose registry can name any datastore type (the ADLS server's too)."""

    def __init__(self, tmp_path: Path, config):
        super().__init__(tmp_path, config)
        doc = {"default_datastore": config.name, "datastores": [datastore_to_dict(config)]}
        self.registry.write_text(yaml.safe_dump(doc))


@pytest.fixture(params=list(KINDS))
def kind(request) -> str:
    return request.param


@pytest.fixture
def config(kind, request):
    return request.getfixturevalue(KINDS[kind])


@pytest.fixture
def backend(config):
    b = open_backend(config)
    yield b
    b.close()


@pytest.fixture
def mounts(tmp_path, config):
    m = RwMounts(tmp_path, config)
    yield m
    m.cleanup()


SLOW = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("AMLFS_SLOW"), reason="slow: set AMLFS_SLOW=1"),
]


def rw(mounts: Mounts, config, *opts: str, name: str = "mnt") -> Path:
    staging = mounts.tmp / "staging"  # shared: a later daemon sees what an earlier one left
    return mounts.mount(f"{config.name}:", "--rw", "--staging-dir", str(staging), *opts, name=name)


def remote(backend, path: str) -> bytes:
    return backend.read_all(path)


def test_new_file_is_invisible_until_close_then_byte_exact(mounts, backend, config):
    mp = rw(mounts, config)
    want = data("new", 5 * 64 * 1024 + 17)
    with open(mp / "new.bin", "wb") as f:
        f.write(want[:100_000])
        f.flush()
        with pytest.raises(NotFound):
            backend.stat("new.bin")
        f.write(want[100_000:])
    info = backend.stat("new.bin")
    assert info.size == len(want)
    assert remote(backend, "new.bin") == want
    if config.type == BLOB:
        assert info.content_md5 == hashlib.md5(want).digest()
    assert (mp / "new.bin").read_bytes() == want


def test_checkpoint_writer_temp_fsync_replace(mounts, backend, config):
    backend.write_bytes("ckpt/model.pt", b"old checkpoint")
    mp = rw(mounts, config)
    want = os.urandom(300_000)
    tmp = mp / "ckpt" / ".model.pt.tmp"
    with open(tmp, "wb") as f:
        f.write(want)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, mp / "ckpt" / "model.pt")
    assert remote(backend, "ckpt/model.pt") == want
    with pytest.raises(NotFound):
        backend.stat("ckpt/.model.pt.tmp")
    assert (mp / "ckpt" / "model.pt").read_bytes() == want
    assert sorted(os.listdir(mp / "ckpt")) == ["model.pt"]


def test_overwrite_with_o_trunc_and_append(mounts, backend, config):
    backend.write_bytes("log.txt", b"line 0\n")
    backend.write_bytes("over.bin", b"x" * 100_000)
    mp = rw(mounts, config)
    with open(mp / "over.bin", "wb") as f:
        f.write(b"short")
    assert remote(backend, "over.bin") == b"short"
    for i in range(1, 4):
        with open(mp / "log.txt", "a") as f:
            f.write(f"line {i}\n")
    assert remote(backend, "log.txt") == b"".join(f"line {i}\n".encode() for i in range(4))
    # A big append: more than one block, after content made by a single Put.
    extra = data("extra", 3 * 64 * 1024 + 5)
    with open(mp / "log.txt", "ab") as f:
        f.write(extra)
    assert remote(backend, "log.txt").endswith(extra)


def test_writer_reads_back_and_random_writes_and_truncate(mounts, backend, config):
    mp = rw(mounts, config)
    model = bytearray(data("rand", 200_000))
    fd = os.open(mp / "r.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, model)
        assert os.pread(fd, 1000, 70_000) == bytes(model[70_000:71_000])
        os.pwrite(fd, b"PATCH", 10)  # out of order: staged
        model[10:15] = b"PATCH"
        os.pwrite(fd, b"END", 250_000)  # past the end: a hole of zeros
        model += bytes(250_000 - len(model)) + b"END"
        assert os.pread(fd, 20, 5) == bytes(model[5:25])
        os.ftruncate(fd, 150_000)
        del model[150_000:]
        os.fsync(fd)
        assert remote(backend, "r.bin") == bytes(model)
        os.pwrite(fd, b"again", 0)
        model[0:5] = b"again"
    finally:
        os.close(fd)
    assert remote(backend, "r.bin") == bytes(model)
    os.truncate(mp / "r.bin", 7)  # truncate of a closed file
    assert remote(backend, "r.bin") == bytes(model[:7])


def test_mkdir_rmdir_unlink_rename(mounts, backend, config, kind):
    backend.write_bytes("a/f", b"f")
    mp = rw(mounts, config)
    os.mkdir(mp / "d")
    assert backend.stat("d").is_dir
    assert (mp / "d").is_dir()
    with pytest.raises(FileExistsError):
        os.mkdir(mp / "d")
    (mp / "d" / "x").write_bytes(b"x")
    with pytest.raises(OSError) as e:
        os.rmdir(mp / "d")
    assert e.value.errno == errno.ENOTEMPTY
    os.unlink(mp / "d" / "x")
    with pytest.raises(NotFound):
        backend.stat("d/x")
    os.rmdir(mp / "d")
    with pytest.raises(NotFound):
        backend.stat("d")
    os.rename(mp / "a" / "f", mp / "a" / "g")
    assert remote(backend, "a/g") == b"f"
    with pytest.raises(NotFound):
        backend.stat("a/f")
    assert (mp / "a" / "g").read_bytes() == b"f"
    if kind == "blob":
        with pytest.raises(OSError) as e:
            os.rename(mp / "a", mp / "b")
        assert e.value.errno == errno.EXDEV
    else:
        os.rename(mp / "a", mp / "b")
        assert remote(backend, "b/g") == b"f"


def test_chmod_chown_utime_accepted(mounts, backend, config):
    mp = rw(mounts, config)
    p = mp / "f"
    p.write_bytes(b"data")
    os.chmod(p, 0o600)
    os.chown(p, os.getuid(), os.getgid())
    os.utime(p, (1_000_000, 1_000_000))
    assert remote(backend, "f") == b"data"


def test_two_writers_of_one_name_one_gets_estale(mounts, backend, config):
    a = rw(mounts, config, name="a")
    b = rw(mounts, config, name="b")
    fa = open(a / "same", "wb")
    fb = open(b / "same", "wb")
    fa.write(b"from a")
    fb.write(b"from b")
    fa.close()
    with pytest.raises(OSError) as e:
        fb.close()
    assert e.value.errno == errno.ESTALE
    assert remote(backend, "same") == b"from a"


def test_read_only_mount_still_refuses_writes(mounts, backend, config):
    mp = mounts.mount(f"{config.name}:")
    with pytest.raises(OSError) as e:
        (mp / "f").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    with pytest.raises(OSError) as e:
        os.mkdir(mp / "d")
    assert e.value.errno == errno.EROFS


def test_cp_r_rsync_a_tar_x_into_the_mount(mounts, backend, config, tmp_path):
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    files = {"a.txt": b"alpha", "sub/b.bin": os.urandom(70_000), "sub/deep/c": b""}
    for k, v in files.items():
        (src / k).write_bytes(v)
    mp = rw(mounts, config)
    r = subprocess.run(["cp", "-rp", str(src), str(mp / "cp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if shutil.which("rsync"):
        r = subprocess.run(
            ["rsync", "-a", f"{src}/", str(mp / "rs")], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
    tarball = tmp_path / "t.tar"
    with tarfile.open(tarball, "w") as t:
        t.add(src, arcname="tx")
    r = subprocess.run(["tar", "xf", str(tarball), "-C", str(mp)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for top in ["cp", "tx"] + (["rs"] if shutil.which("rsync") else []):
        for k, v in files.items():
            assert remote(backend, f"{top}/{k}") == v, (top, k)


def _facts(mp: Path) -> dict:
    return json.loads((mp / ".__amlfs_stats__").read_bytes())


def _write_big(path: Path, size: int, piece: int = 1 << 20) -> bytes:
    """Write `size` pseudo-random bytes sequentially; their MD5."""
    md5 = hashlib.md5()
    chunk = os.urandom(piece)
    with open(path, "wb", buffering=0) as f:
        done = 0
        while done < size:
            n = min(piece, size - done)
            b = chunk[:n] if done % (3 * piece) else os.urandom(n)
            f.write(b)
            md5.update(b)
            done += n
    return md5.digest()


def _remote_md5(backend, path: str, size: int) -> bytes:
    md5 = hashlib.md5()
    for off in range(0, size, 8 << 20):
        md5.update(backend.read_range(path, off, min(8 << 20, size - off)))
    return md5.digest()


@pytest.mark.parametrize("size", [256 << 20, pytest.param(2 << 30, marks=SLOW, id="2GiB")])
def test_large_sequential_file_within_a_small_write_budget(mounts, backend, config, size):
    budget = 16 << 20 if size <= 256 << 20 else 64 << 20
    mp = rw(
        mounts,
        config,
        "--block-size",
        "4M",
        "--cache-size",
        "64M",
        "--write-buffer-size",
        str(budget),
        "--staging-size",
        "8M",  # sequential writes need no staging: a small staging budget changes nothing
    )
    digest = _write_big(mp / "big.bin", size)
    facts = _facts(mp)["writes"]
    assert 0 < facts["buffers"]["peak"] <= budget
    assert facts["buffers"]["used"] == 0
    info = backend.stat("big.bin")
    assert info.size == size
    if config.type == BLOB:
        assert info.content_md5 == digest  # the service checked it against every block's MD5
    assert _remote_md5(backend, "big.bin", size) == digest


def test_log_appended_while_another_process_tails_it(mounts, backend, config):
    mp = rw(mounts, config, name="w")
    reader = mounts.mount(f"{config.name}:", "--attr-timeout", "0", name="r")
    lines = [f"step {i} loss {1 / (i + 1):.4f}\n" for i in range(20)]
    tail = subprocess.Popen(
        [sys.executable, "-c", TAILER, str(reader / "train.log"), str(len(lines))],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with open(mp / "train.log", "a") as f:
            for line in lines:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())  # each line committed: visible to readers elsewhere
        out, _ = tail.communicate(timeout=60)
    finally:
        tail.kill()
    assert out == "".join(lines)
    assert remote(backend, "train.log") == "".join(lines).encode()


# Follows a file through a read-only mount of the same storage until it has `n` lines.
TAILER = """
import errno, os, sys, time
path, want = sys.argv[1], int(sys.argv[2])
deadline = time.monotonic() + 50
seen = b""
while seen.count(b"\\n") < want and time.monotonic() < deadline:
    try:
        with open(path, "rb") as f:
            f.seek(len(seen))
            seen += f.read()
    except FileNotFoundError:
        pass
    except OSError as e:  # opened just as a new version landed: look it up again (tail -F)
        if e.errno != errno.ESTALE:
            raise
    time.sleep(0.05)
sys.stdout.write(seen.decode())
"""


def test_kill_9_mid_write_leaves_the_old_object_or_nothing(mounts, backend, config):
    backend.write_bytes("model.pt", b"old model")
    mp = rw(mounts, config, "--block-size", "64K")
    pid = mounts.pids[-1]
    f_old = open(mp / "model.pt", "wb")
    f_new = open(mp / "fresh.pt", "wb")
    for f in (f_old, f_new):
        f.write(os.urandom(5 * 64 * 1024 + 3))  # some parts already sent as blocks
        f.flush()
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone_pid(pid, 10)
    for f in (f_old, f_new):
        with pytest.raises(OSError):
            f.close()
    assert remote(backend, "model.pt") == b"old model"
    with pytest.raises(NotFound):
        backend.stat("fresh.pt")
    subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
    # The next daemon names what the dead one staged and never uploaded.
    mp2 = rw(mounts, config, name="again")
    assert mp2.is_dir()
    log = (mounts.tmp / "again.log").read_text()
    assert "'fresh.pt' was being written by mount daemon" in log
    assert "'model.pt' was being written by mount daemon" in log


def _wait_gone_pid(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_full_staging_budget_is_enospc(mounts, backend, config):
    mp = rw(mounts, config, "--staging-size", "1M", "--block-size", "64K")
    fd = os.open(mp / "s.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"a" * (3 << 20))  # sequential: streamed, the budget is not needed
        with pytest.raises(OSError) as e:
            os.pwrite(fd, b"b", 0)  # out of order: needs the whole file staged
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert remote(backend, "s.bin") == b"a" * (3 << 20)  # what was written sequentially stands
    # A file that fits is staged and uploaded.
    fd = os.open(mp / "fits.bin", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 1000)
    os.pwrite(fd, b"y", 0)
    os.close(fd)
    assert remote(backend, "fits.bin") == b"y" + b"x" * 999


def test_sigterm_commits_files_still_open(mounts, backend, config):
    mp = rw(mounts, config, "--unmount-timeout", "30")
    pid = mounts.pids[-1]
    f = open(mp / "open.bin", "wb")
    f.write(b"still open at SIGTERM")
    f.flush()
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone_pid(pid, 40)
    try:
        f.close()
    except OSError:
        pass  # the mount is gone; the daemon committed on its way out
    assert remote(backend, "open.bin") == b"still open at SIGTERM"


def test_semantics_rows_name_live_tests():
    """Every row of SEMANTICS.md's writable-mount table names a test that exists."""
    import re

    from . import test_writes_model, test_writes_timeouts

    text = (Path(__file__).resolve().parent.parent / "SEMANTICS.md").read_text()
    rows = re.findall(r"^\| rw: .*\| `(test_\w+)` \|$", text, re.M)
    assert len(rows) >= 15
    for name in rows:
        found = globals().get(name) or getattr(test_writes_model, name, None)
        assert callable(found or getattr(test_writes_timeouts, name, None)), name


# The writer of a MAP_SHARED map, in a process of its own: CPython's mmap.flush() holds the GIL
# through msync(2) (measured on 3.11: another thread of the caller runs only once it returns), so
# a writer in this process would stop the in-process ADLS and File share test servers from
# answering the commit its msync waits for -- a stall of the test, not of the mount.
_MMAP_WRITER = """
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
os.write(fd, b"a" * 10_000)
m = mmap.mmap(fd, 10_000, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
for off, patch in ((5, b"MMAPW"), (0, b"XYZ")):
    m[off : off + len(patch)] = patch
    m.flush()  # msync: the pages are written back, then committed (fsync)
    print("synced", flush=True)
    sys.stdin.readline()  # the test checks the storage while the map is still open
m.close()
os.close(fd)
"""


def test_mmap_writes_are_staged_and_committed(mounts, backend, config):
    mp = rw(mounts, config, "--commit-timeout", "60")
    want = bytearray(b"a" * 10_000)
    proc = subprocess.Popen(
        [sys.executable, "-c", _MMAP_WRITER, str(mp / "m.bin")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for off, patch in ((5, b"MMAPW"), (0, b"XYZ")):
            assert proc.stdout.readline() == "synced\n", proc.stderr.read()
            want[off : off + len(patch)] = patch
            assert remote(backend, "m.bin") == want  # committed by the msync, before close
            proc.stdin.write("\n")
            proc.stdin.flush()
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        proc.kill()
        proc.wait()
    assert remote(backend, "m.bin") == want
    assert (mp / "m.bin").read_bytes() == want
