"""Real FUSE mounts: `amlfs mount` starts a daemon (a subprocess), the test reads through the kernel,
and teardown always unmounts. Local backend and Azurite; block size 64 KiB keeps files small."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from amlfs.backends import open_backend
from amlfs.backends.base import Backend
from amlfs.fs import control
from amlfs.registry import BLOB, DatastoreConfig

BLOCK = 64 * 1024
REPO = Path(__file__).resolve().parent.parent
FUSE_OK = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]


def registry_doc(*configs: DatastoreConfig) -> dict:
    entries = []
    for c in configs:
        if c.type == BLOB:
            entries.append(
                {
                    "name": c.name,
                    "type": c.type,
                    "account_name": c.account_name,
                    "container_name": c.container_name,
                    "account_url": c.account_url,
                    "protocol": c.protocol,
                    "credentials": {"account_key": c.credentials.account_key},
                }
            )
        else:
            entries.append({"name": c.name, "type": c.type, "path": c.path})
    return {"default_datastore": configs[0].name, "datastores": entries}


class Mounts:
    """Runs the CLI against one registry; unmounts whatever it mounted, whatever happened."""

    def __init__(self, tmp_path: Path, *configs: DatastoreConfig):
        self.tmp = tmp_path
        self.registry = tmp_path / "registry.yaml"
        self.registry.write_text(yaml.safe_dump(registry_doc(*configs)))
        self.registry.chmod(0o600)
        self.mounted: list[Path] = []
        self.pids: list[int] = []

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "amlfs", "--registry", str(self.registry), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
        )

    def mountpoint(self, name: str = "mnt") -> Path:
        p = self.tmp / name
        p.mkdir(exist_ok=True)
        return p

    def mount(self, spec: str, *opts: str, name: str = "mnt") -> Path:
        mp = self.mountpoint(name)
        args = ["mount", "--block-size", "64K", "--cache-size", "16M"]
        args += ["--log-file", str(self.tmp / f"{name}.log"), *opts, spec, str(mp)]
        self.mounted.append(mp)
        r = self.cli(*args)
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp)
        self.pids.append(self.pid(mp))
        return mp

    def pid(self, mp: Path) -> int:
        return control.read_facts(str(mp))["pid"]

    def cleanup(self) -> None:
        for mp in self.mounted:
            if control.find_mount(str(mp)) is not None:
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        for pid in self.pids:
            _wait_gone(pid, 10)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(params=["local", "blob"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def config(kind, request) -> DatastoreConfig:
    return request.getfixturevalue("local_config" if kind == "local" else "blob_config")


@pytest.fixture
def backend(config) -> Backend:
    b = open_backend(config)
    yield b
    b.close()


@pytest.fixture
def mounts(tmp_path, config):
    m = Mounts(tmp_path, config)
    yield m
    m.cleanup()


@pytest.fixture
def local_mounts(tmp_path, local_config):
    m = Mounts(tmp_path, local_config)
    yield m
    m.cleanup()


def data(name: str, size: int) -> bytes:
    seed = name.encode() * 7 + b"\x00\xff"
    return (seed * (size // len(seed) + 1))[:size]


SIZES = {"zero": 0, "one": 1, "under": BLOCK - 1, "block": BLOCK, "over": BLOCK + 1}
SIZES["multi"] = 5 * BLOCK + 7


# --- reads ---------------------------------------------------------------------------------------


def test_byte_exact_reads_of_many_sizes(mounts, backend, config):
    for name, size in SIZES.items():
        backend.write_bytes(f"d/{name}", data(name, size))
    mp = mounts.mount(f"{config.name}:")
    for name, size in SIZES.items():
        path = mp / "d" / name
        assert path.stat().st_size == size
        assert path.read_bytes() == data(name, size), name
    # Odd, unaligned reads across block boundaries.
    want = data("multi", SIZES["multi"])
    fd = os.open(mp / "d" / "multi", os.O_RDONLY)
    try:
        for off, n in [(BLOCK - 3, 10), (3 * BLOCK + 1, 2 * BLOCK), (len(want) - 5, 100), (0, 1)]:
            assert os.pread(fd, n, off) == want[off : off + n]
    finally:
        os.close(fd)


def test_concurrent_readers_of_one_file_and_of_many(mounts, backend, config):
    big = data("big", 16 * BLOCK + 3)
    backend.write_bytes("big", big)
    small = {f"s/{i:02d}": data(f"s{i}", 3000 + i) for i in range(16)}
    for k, v in small.items():
        backend.write_bytes(k, v)
    mp = mounts.mount(f"{config.name}:")
    with ThreadPoolExecutor(8) as pool:
        assert all(r == big for r in pool.map(lambda _: (mp / "big").read_bytes(), range(8)))
        got = dict(zip(small, pool.map(lambda k: (mp / k).read_bytes(), small), strict=True))
    assert got == small
    facts = control.read_facts(str(mp))
    # In-flight de-duplication: eight readers of one file do not fetch it eight times.
    assert facts["counters"]["bytes_fetched"] < 2 * (len(big) + sum(map(len, small.values())))


def test_nested_listing_and_attributes_from_the_listing(mounts, backend, config):
    files = {"top.txt": 5, "a/one": 10, "a/b/two": 20, "a/b/c/three": 30, "z/four": 0}
    for k, size in files.items():
        backend.write_bytes(k, data(k, size))
    mp = mounts.mount(f"{config.name}:")
    seen = {}
    for root, _dirs, names in os.walk(mp):
        for n in names:
            p = os.path.join(root, n)
            seen[os.path.relpath(p, mp)] = os.lstat(p).st_size
    assert seen == files
    assert sorted(os.listdir(mp / "a")) == ["b", "one"]
    counters = control.read_facts(str(mp))["counters"]
    # Sizes came with the listings: no per-file stat.
    assert counters.get("backend.stat", 0) == 0


def test_directory_larger_than_one_list_page(mounts, backend, config, kind):
    n = 5003  # a small first page (500), then one full page (5000): two LISTs
    names = [f"f{i:05d}" for i in range(n)]
    if kind == "local":
        root = Path(backend.root) / "many"
        root.mkdir()
        for name in names:
            (root / name).touch()
    else:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda name: backend.write_bytes(f"many/{name}", b""), names))
    mp = mounts.mount(f"{config.name}:")
    started = time.monotonic()
    with os.scandir(mp / "many") as it:
        first = next(it)
        first_after = time.monotonic() - started
        # Streamed: the first entries arrive after a small first LIST page (500 entries; the
        # kernel's first getdents buffer may take the second page too), not after the whole
        # listing.
        assert control.read_facts(str(mp))["counters"]["backend.list"] <= 2
        listed = [first.name] + [e.name for e in it]
    assert sorted(listed) == names
    assert control.read_facts(str(mp))["counters"]["backend.list"] == 2
    if kind == "local":
        assert first_after < 1.0
    # Blob: a 5000-entry page costs ~1.2 s here, mostly the SDK deserialising its XML (about
    # 0.2 ms of CPU per entry), so no wall-clock bound on a shared 2-core machine.


def test_prefix_mount(mounts, backend, config):
    backend.write_bytes("outside.txt", b"no")
    backend.write_bytes("data/train/x.bin", b"x" * 100)
    backend.write_bytes("data/val/y.bin", b"y")
    mp = mounts.mount(f"{config.name}:data")
    assert sorted(os.listdir(mp)) == ["train", "val"]
    assert (mp / "train" / "x.bin").read_bytes() == b"x" * 100
    assert not (mp / "outside.txt").exists()
    entry = control.find_mount(str(mp))
    assert entry is not None and entry.source == f"{config.name}:data"


def test_changed_object_mid_read_is_estale(mounts, backend, config):
    size = 64 * BLOCK  # 4 MiB: the far end is beyond the first read-ahead window
    backend.write_bytes("obj", data("v1", size))
    mp = mounts.mount(f"{config.name}:")
    fd = os.open(mp / "obj", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == data("v1", size)[:4096]
        backend.write_bytes("obj", data("v2", size))
        with pytest.raises(OSError) as e:
            os.pread(fd, 4096, size - 4096)
        assert e.value.errno == errno.ESTALE
    finally:
        os.close(fd)


def test_reopen_after_the_timeout_sees_the_new_object(mounts, backend, config):
    backend.write_bytes("f", b"version one")
    mp = mounts.mount(f"{config.name}:", "--attr-timeout", "0.5")
    assert (mp / "f").read_bytes() == b"version one"
    assert (mp / "f").read_bytes() == b"version one"  # warm: kept page cache
    backend.write_bytes("f", b"version two, longer")
    time.sleep(1.0)
    assert (mp / "f").read_bytes() == b"version two, longer"


def test_immutable_mount_serves_what_it_saw(mounts, backend, config):
    backend.write_bytes("f", b"frozen")
    mp = mounts.mount(f"{config.name}:", "--immutable")
    assert (mp / "f").read_bytes() == b"frozen"
    assert control.read_facts(str(mp))["immutable"] is True
    os.listdir(mp)
    stats_before = control.read_facts(str(mp))["counters"].get("backend.stat", 0)
    for _ in range(3):
        (mp / "f").stat()
    assert control.read_facts(str(mp))["counters"].get("backend.stat", 0) == stats_before


def test_missing_names(mounts, backend, config):
    backend.write_bytes("f", b"x")
    mp = mounts.mount(f"{config.name}:")
    for _ in range(2):  # the second miss is answered by the kernel's negative cache
        with pytest.raises(FileNotFoundError):
            (mp / "nope").read_bytes()
    assert control.read_facts(str(mp))["counters"]["negative_lookups"] == 1


# --- names ---------------------------------------------------------------------------------------


def test_hostile_blob_names_never_escape(tmp_path, blob_config):
    b = open_backend(blob_config)
    cc = b._cc if hasattr(b, "_cc") else None
    if cc is None:
        pytest.skip("blob backend exposes no container client")
    hostile = ["a//b", "./dot", "../up", "x/../../etc", "sp ace/ok", "deep/./x", "trail/", "y/.."]
    for name in hostile:
        try:
            cc.upload_blob(name, b"evil", overwrite=True)
        except Exception:  # the service may refuse some names outright
            pass
    b.write_bytes("good/file", b"fine")
    m = Mounts(tmp_path, blob_config)
    try:
        mp = m.mount("azblob:")
        seen = []
        for root, dirs, names in os.walk(mp):
            for n in dirs + names:
                assert n not in ("", ".", "..") and "/" not in n
                p = os.path.realpath(os.path.join(root, n))
                assert p.startswith(str(mp) + os.sep)
                seen.append(os.path.relpath(os.path.join(root, n), mp))
        assert "good/file" in seen
        assert (mp / "good" / "file").read_bytes() == b"fine"
    finally:
        m.cleanup()
        b.close()


# --- lifecycle -----------------------------------------------------------------------------------


def test_sigterm_unmounts_cleanly(local_mounts, local_config):
    Path(local_config.path, "f").write_bytes(b"x")
    mp = local_mounts.mount("loc:")
    pid = local_mounts.pid(mp)
    os.kill(pid, signal.SIGTERM)
    assert _wait_gone(pid, 15)
    assert control.find_mount(str(mp)) is None
    assert os.listdir(mp) == []  # a plain empty directory again, not a dead endpoint
    log = (mp.parent / "mnt.log").read_text()
    assert "SIGTERM: unmounting" in log and "Traceback" not in log


def test_unmount_of_a_dead_daemons_mount(local_mounts, local_config):
    Path(local_config.path, "f").write_bytes(b"x")
    mp = local_mounts.mount("loc:")
    pid = local_mounts.pid(mp)
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid, 10)
    with pytest.raises(OSError) as e:
        os.listdir(mp)
    assert e.value.errno == errno.ENOTCONN
    r = local_mounts.cli("mounts", "--json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    ours = [row for row in rows if row["mountpoint"] == str(mp)]
    assert len(ours) == 1 and {"state": "dead", "pid": None}.items() <= ours[0].items()
    r = local_mounts.cli("stats", str(mp))
    assert r.returncode == 1 and "dead" in r.stderr
    r = local_mounts.cli("mount", "loc:", str(mp))
    assert r.returncode == 2 and "already an amlfs mount" in r.stderr
    r = local_mounts.cli("unmount", str(mp))
    assert r.returncode == 0, r.stderr
    assert control.find_mount(str(mp)) is None and os.listdir(mp) == []


def test_unmount_waits_for_the_daemon_and_mounts_lists(local_mounts, local_config):
    mp = local_mounts.mount("loc:")
    pid = local_mounts.pid(mp)
    r = local_mounts.cli("mounts")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["DATASTORE", "PATH", "MOUNTPOINT", "PID", "STATE", "LOG"]
    row = ["loc", "/", str(mp), str(pid), "live", str(local_mounts.tmp / "mnt.log")]
    assert row in [line.split() for line in lines[1:]]
    r = local_mounts.cli("unmount", str(mp))
    assert r.returncode == 0, r.stderr
    assert not _alive(pid)
    r = local_mounts.cli("unmount", str(mp))
    assert r.returncode == 2 and "not an amlfs mount" in r.stderr


def test_stats_command(local_mounts, local_config):
    Path(local_config.path, "f").write_bytes(b"hello")
    mp = local_mounts.mount("loc:")
    assert (mp / "f").read_bytes() == b"hello"
    r = local_mounts.cli("stats", str(mp))
    assert r.returncode == 0, r.stderr
    values = dict(line.split(None, 1) for line in r.stdout.splitlines() if " " in line.strip())
    assert values["datastore"] == "loc" and int(values["requests.read"]) >= 1
    assert int(values["bytes_fetched"]) == 5
    r = local_mounts.cli("stats", "--json", str(mp))
    doc = json.loads(r.stdout)
    assert doc["counters"]["bytes_read"] == 5 and doc["pid"] == local_mounts.pid(mp)


def test_bad_input_is_one_line_and_exit_2(local_mounts, local_config, tmp_path):
    Path(local_config.path, "file").write_bytes(b"x")
    mp = local_mounts.mountpoint()
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").touch()
    cases = [
        (["nosuch:", str(mp)], "unknown datastore"),
        (["loc:", str(tmp_path / "missing")], "does not exist"),
        (["loc:", str(full / "x")], "not a directory"),
        (["loc:", str(full)], "not empty"),
        (["loc:nope", str(mp)], "does not exist in datastore"),
        (["loc:file", str(mp)], "is a file"),
        (["-o", "bogus", "loc:", str(mp)], "unknown mount option"),
        (["--cache-size", "lots", "loc:", str(mp)], "bad --cache-size"),
        (["--attr-timeout", "-1", "loc:", str(mp)], "bad --attr-timeout"),
        (["-f", "loc:nope", str(mp)], "does not exist in datastore"),
        (["-f", "loc:", str(full)], "not empty"),
        (["--log-file", str(tmp_path / "no" / "x.log"), "loc:", str(mp)], "cannot open log file"),
    ]
    for args, message in cases:
        r = local_mounts.cli("mount", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and r.stderr.startswith("amlfs: error: "), (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert control.find_mount(str(mp)) is None


def test_nonempty_option(local_mounts, local_config, tmp_path):
    Path(local_config.path, "f").write_bytes(b"x")
    mp = local_mounts.mountpoint()
    (mp / "hidden").touch()
    local_mounts.mounted.append(mp)
    r = local_mounts.cli("mount", "-o", "nonempty,noatime", "loc:", str(mp))
    assert r.returncode == 0, r.stderr
    local_mounts.pids.append(local_mounts.pid(mp))
    assert os.listdir(mp) == ["f"]


def test_daemon_error_after_spawn_is_reported(local_mounts, local_config):
    # The parent cannot check what libfuse makes of an option's value: the daemon reports it.
    mp = local_mounts.mountpoint()
    local_mounts.mounted.append(mp)
    r = local_mounts.cli("mount", "-o", "max_read=lots", "loc:", str(mp))
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("amlfs: error: FUSE refused the mount options"), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert control.find_mount(str(mp)) is None


# --- SEMANTICS.md --------------------------------------------------------------------------------


def _semantics_rows() -> list[tuple[str, str]]:
    text = (REPO / "SEMANTICS.md").read_text()
    rows = []
    for line in text.splitlines():
        m = re.match(r"^\|\s*`([^`]+)`\s*\|[^|]*\|\s*(E[A-Z]+|ok)\s*\|", line)
        if m:
            rows.append((m[1], m[2]))
    return rows


def test_closes_cost_no_flush_requests(local_mounts, local_config):
    """A read-only mount answers the first FLUSH with ENOSYS, so the kernel stops sending one per
    close (a data loader's epoch: a quarter of its FUSE requests); every close still succeeds."""
    root = Path(local_config.path)
    for i in range(20):
        (root / f"f{i}").write_bytes(b"x" * (i + 1))
    mp = local_mounts.mount("loc:")
    before = control.read_facts(str(mp))["counters"]  # its open and close flushed once
    for i in range(20):
        fd = os.open(str(mp / f"f{i}"), os.O_RDONLY)
        assert os.read(fd, 100) == b"x" * (i + 1)
        os.close(fd)  # raises on an error from the flush
    after = control.read_facts(str(mp))["counters"]
    assert after.get("requests.flush", 0) - before.get("requests.flush", 0) == 0
    assert after.get("requests.flush", 0) <= 1
    assert after["requests.open"] - before["requests.open"] >= 20
    assert after.get("errors.ENOSYS", 0) == 0  # by design: not counted as an error


def test_semantics_table_matches_a_live_mount(local_mounts, local_config):
    root = Path(local_config.path)
    (root / "dir").mkdir()
    (root / "file").write_bytes(b"content")
    mp = local_mounts.mount("loc:")
    f, d = str(mp / "file"), str(mp / "dir")
    checks = {
        "open(file, O_WRONLY)": lambda: os.open(f, os.O_WRONLY),
        "open(file, O_RDWR)": lambda: os.open(f, os.O_RDWR),
        "open(file, O_TRUNC)": lambda: os.open(f, os.O_RDONLY | os.O_TRUNC),
        "open(new, O_CREAT)": lambda: os.open(str(mp / "new"), os.O_WRONLY | os.O_CREAT),
        "truncate(file)": lambda: os.truncate(f, 0),
        "mkdir(new)": lambda: os.mkdir(str(mp / "new")),
        "rmdir(dir)": lambda: os.rmdir(d),
        "unlink(file)": lambda: os.unlink(f),
        "rename(file, new)": lambda: os.rename(f, str(mp / "new")),
        "symlink(file, new)": lambda: os.symlink(f, str(mp / "new")),
        "link(file, new)": lambda: os.link(f, str(mp / "new")),
        "mkfifo(new)": lambda: os.mkfifo(str(mp / "new")),
        "chmod(file)": lambda: os.chmod(f, 0o644),
        "chown(file)": lambda: os.chown(f, 0, 0),
        "utime(file)": lambda: os.utime(f, (0, 0)),
        "setxattr(file)": lambda: os.setxattr(f, "user.x", b"1"),
        "removexattr(file)": lambda: os.removexattr(f, "user.x"),
        "getxattr(file, unknown)": lambda: os.getxattr(f, "user.nothing"),
        "open(missing)": lambda: os.open(str(mp / "missing"), os.O_RDONLY),
        "listdir(file)": lambda: os.listdir(f),
        "read(dir)": lambda: os.read(os.open(d, os.O_RDONLY), 10),
        "read(file)": lambda: (mp / "file").read_bytes(),
        "listdir(dir)": lambda: os.listdir(d),
        "stat(file)": lambda: os.stat(f),
        "statvfs(mount)": lambda: os.statvfs(mp),
        "read(mount/.__amlfs_stats__)": lambda: (mp / ".__amlfs_stats__").read_bytes(),
        "listxattr(file)": lambda: os.listxattr(f),
    }
    # Rows that need a remote change or a failing storage are tested in test_operations.py and
    # above (ESTALE); they must still name a real errno.
    elsewhere = {"read(file changed remotely)", "any(storage unreachable)", "any(auth refused)"}
    rows = _semantics_rows()
    assert len(rows) >= len(checks)
    for op, expected in rows:
        if op in elsewhere:
            assert hasattr(errno, expected), op
            continue
        assert op in checks, f"SEMANTICS.md row {op!r} has no live check"
        if expected == "ok":
            checks[op]()
            continue
        with pytest.raises(OSError) as e:
            checks[op]()
        assert e.value.errno == getattr(errno, expected), (op, e.value)
    assert {op for op, _ in rows} >= set(checks)
    assert (root / "file").read_bytes() == b"content"  # nothing was written


def test_odd_mountpoint_and_prefix_names_round_trip(local_mounts, local_config):
    # mountinfo escapes spaces and backslashes; libfuse splits options at commas.
    Path(local_config.path, "data dir,x").mkdir()
    Path(local_config.path, "data dir,x", "f").write_bytes(b"odd")
    mp = local_mounts.mount("loc:data dir,x", name="mnt with space,comma\\and")
    assert (mp / "f").read_bytes() == b"odd"
    rows = [json.loads(line) for line in local_mounts.cli("mounts", "--json").stdout.splitlines()]
    # Other amlfs mounts on the machine may be listed too: look at ours.
    assert [(r["datastore"], r["path"]) for r in rows if r["mountpoint"] == str(mp)] == [
        ("loc", "data dir,x")
    ]
    r = local_mounts.cli("unmount", str(mp))
    assert r.returncode == 0, r.stderr
    assert control.find_mount(str(mp)) is None


# --- kernel read-ahead ---------------------------------------------------------------------------


def test_mount_device_reads_the_topmost_escaped_mountinfo_line(tmp_path):
    from amlfs.fs.daemon import mount_device

    info = tmp_path / "mountinfo"
    info.write_bytes(
        b"36 35 0:50 / /mnt/a\\040b\\134c rw - fuse.amlfs loc:x rw\n"
        b"37 36 0:51 / /mnt/a\\040b\\134c rw - fuse.amlfs loc:y rw\n"
        b"38 35 0:52 / /mnt/other rw - tmpfs tmpfs rw\n"
    )
    assert mount_device("/mnt/a b\\c", str(info)) == (0, 51)
    assert mount_device("/mnt/missing", str(info)) is None


def test_set_read_ahead_writes_the_bdi_or_gives_up_quietly(tmp_path):
    from amlfs.fs.daemon import set_read_ahead

    info = tmp_path / "mountinfo"
    info.write_text("36 35 0:50 / /mnt/x rw - fuse.amlfs loc: rw\n")
    bdi = tmp_path / "bdi"
    (bdi / "0:50").mkdir(parents=True)
    (bdi / "0:50" / "read_ahead_kb").write_text("128\n")
    assert set_read_ahead("/mnt/x", 4 << 20, bdi_dir=str(bdi), mountinfo=str(info))
    assert (bdi / "0:50" / "read_ahead_kb").read_text() == "4096"
    # No such bdi (or no permission, or no such mount): False, no exception.
    assert not set_read_ahead("/mnt/x", 4 << 20, bdi_dir=str(tmp_path / "no"), mountinfo=str(info))
    assert not set_read_ahead("/mnt/y", 4 << 20, bdi_dir=str(bdi), mountinfo=str(info))


def _bdi_read_ahead_kb(mp: Path) -> int:
    dev = os.stat(mp).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="setting a bdi's read-ahead needs root")
def test_read_ahead_is_set_on_the_mounts_bdi(local_mounts, local_config):
    Path(local_config.path, "f").write_bytes(b"x" * 100_000)
    mp = local_mounts.mount("loc:", "--read-ahead", "2M")
    assert _bdi_read_ahead_kb(mp) == 2048
    assert control.read_facts(str(mp))["read_ahead"] == 2 << 20
    assert (mp / "f").read_bytes() == b"x" * 100_000
    mp2 = local_mounts.mount("loc:", "-o", "read_ahead=0", name="mnt2")
    assert _bdi_read_ahead_kb(mp2) == 128  # the kernel's FUSE default, untouched
    assert control.read_facts(str(mp2))["read_ahead"] is None
    r = local_mounts.cli("mount", "--read-ahead", "2T", "loc:", str(local_mounts.mountpoint("m3")))
    assert r.returncode == 2 and "bad --read-ahead" in r.stderr


def test_a_changed_file_is_a_new_version_at_the_next_open(local_mounts, local_config):
    """Handles keep their version (or ESTALE); the next open sees the new object at once, not
    after the attribute timeout (60 s here)."""
    root = Path(local_config.path)
    old, new = os.urandom(1 << 20), os.urandom(1 << 20)
    (root / "f.bin").write_bytes(old)
    mp = local_mounts.mount("loc:", "--attr-timeout", "60")
    with open(mp / "f.bin", "rb", buffering=0) as f:
        assert f.read(4096) == old[:4096]
        ino = os.fstat(f.fileno()).st_ino
        (root / "f.tmp").write_bytes(new)
        os.replace(root / "f.tmp", root / "f.bin")
        f.seek(len(old) - 4096)
        with pytest.raises(OSError) as e:
            f.read(4096)  # never the new bytes under the old handle
        assert e.value.errno == errno.ESTALE
    t0 = time.monotonic()
    with open(mp / "f.bin", "rb") as f:
        assert f.read() == new
        assert os.fstat(f.fileno()).st_ino != ino  # an inode is one version
    assert time.monotonic() - t0 < 5


def test_a_vanished_prefix_lists_as_an_empty_directory(local_mounts, local_config):
    sub = Path(local_config.path, "sub")
    sub.mkdir()
    (sub / "f").write_bytes(b"x")
    mp = local_mounts.mount("loc:sub", "--attr-timeout", "0.2", "--list-timeout", "0")
    assert os.listdir(mp) == ["f"]
    (sub / "f").unlink()
    sub.rmdir()
    time.sleep(0.3)  # past the attribute timeout of the root
    assert os.path.isdir(mp) and os.listdir(mp) == []


def test_a_cache_smaller_than_four_blocks_mounts_with_smaller_blocks(local_mounts, local_config):
    Path(local_config.path, "f").write_bytes(b"y" * 100_000)
    mp = local_mounts.mountpoint("small")
    local_mounts.mounted.append(mp)
    r = local_mounts.cli("mount", "--cache-size", "2M", "loc:", str(mp))
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == (
        "amlfs: --cache-size 2MiB holds fewer than 4 blocks of the default block size 8MiB:"
        " using 512KiB blocks"
    )
    facts = control.read_facts(str(mp))
    assert facts["block_size"] == 512 * 1024 and facts["cache_bytes"] == 2 << 20
    assert facts["memory"]["capacity"] == 2 << 20
    assert (mp / "f").read_bytes() == b"y" * 100_000
