"""The CLI (upload, download, stage, mount) and the Python registration API over every backend:
local, Blob on Azurite, File share and ADLS Gen2 on the protocol-level servers (tests/servers),
and ADLS Gen2 with a service principal over TLS. Each case registers its datastore in a registry
file and runs the real `amlfs` in a subprocess; mounts are real FUSE mounts, always unmounted."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from amlfs.backends import open_backend
from amlfs.backends.base import Backend
from amlfs.fs import control
from amlfs.registry import DatastoreConfig, Registry, datastore_to_dict
from amlfs.workspace import Datastore, Workspace

from .servers.fixtures import CLIENT_ID, CLIENT_SECRET, make_adls_config, unique

KINDS = ["local", "blob", "fileshare", "adls", "adls_sp"]
# Every kind, or every kind but the service principal (the same ADLS code with a token) where
# the case adds nothing for it: the suite stays fast.
all_kinds = pytest.mark.parametrize("store", KINDS, indirect=True)
keyed_kinds = pytest.mark.parametrize("store", KINDS[:4], indirect=True)
FUSE_OK = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None
needs_fuse = pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3")
BLOCK = 64 * 1024  # the smallest block size: "big" spans blocks with a few KiB of data
NAME = "ds"  # the datastore's name in every registry here


def data_for(name: str, size: int) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


# Spaces, unicode, '+' and '%' (legal on every service; File shares refuse `"\/:|<>*?`).
TREE = {
    "plain.txt": data_for("plain", 100),
    "with space.bin": data_for("space", 3000),
    "ünï cødé/日本 語.txt": data_for("unicode", 777),
    "a+b/c+d %20.dat": data_for("plus", 1500),
    "deep/er/x y+z.bin": data_for("deep", 10),
    "empty": b"",
    "big.bin": data_for("big", 3 * BLOCK + 5),
}


def write_tree(root: Path, tree: dict[str, bytes]) -> None:
    for name, content in tree.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)


def read_tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            out[p.relative_to(root).as_posix()] = p.read_bytes()
    return out


# --- one datastore of each kind, and the CLI run against its registry -----------------------------


@dataclass
class Store:
    kind: str
    config: DatastoreConfig
    env: dict[str, str] = field(default_factory=dict)  # what the CLI and its daemon also need


def registry_entry(cfg: DatastoreConfig) -> dict:
    entry = datastore_to_dict(cfg)
    if cfg.protocol is not None and cfg.type != "local":
        entry["protocol"] = cfg.protocol  # written out even when it is the default https
    return entry


@pytest.fixture
def store(request) -> Store:
    kind = request.param
    if kind == "local":
        cfg = request.getfixturevalue("local_config")
        s = Store(kind, cfg)
    elif kind == "blob":
        s = Store(kind, request.getfixturevalue("blob_config"))
    elif kind == "fileshare":
        s = Store(kind, request.getfixturevalue("fileshare_config"))
    elif kind == "adls":
        s = Store(kind, request.getfixturevalue("adls_config"))
    else:
        tls = request.getfixturevalue("sp_env")
        s = Store(
            kind, make_adls_config(tls.server, auth="sp"), env={"REQUESTS_CA_BUNDLE": tls.tls.cert}
        )
    s.config.name = NAME
    return s


@pytest.fixture
def backend(store) -> Backend:
    b = open_backend(store.config)
    yield b
    b.close()


class Cli:
    """`amlfs --registry FILE ...` in a subprocess; unmounts whatever it mounted, always."""

    def __init__(self, tmp_path: Path, store: Store):
        self.tmp = tmp_path
        self.store = store
        self.registry = tmp_path / "registry.yaml"
        doc = {"default_datastore": NAME, "datastores": [registry_entry(store.config)]}
        fd = os.open(self.registry, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f, allow_unicode=True)
        self.env = {**os.environ, **store.env}
        self.mounted: list[Path] = []
        self.pids: list[int] = []

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "amlfs", "--registry", str(self.registry), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
            env=self.env,
        )

    def mount(self, spec: str, name: str) -> Path:
        mp = self.tmp / name
        mp.mkdir()
        self.mounted.append(mp)
        r = self("mount", "--block-size", "64K", "--cache-size", "16M",
                 "--log-file", str(self.tmp / f"{name}.log"), spec, str(mp))  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp)
        self.pids.append(control.read_facts(str(mp))["pid"])
        return mp

    def unmount(self, mp: Path) -> None:
        r = self("unmount", str(mp))
        assert r.returncode == 0, r.stderr
        assert not os.path.ismount(mp)

    def cleanup(self) -> None:
        for mp in self.mounted:
            if control.find_mount(str(mp)) is not None:
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        for pid in self.pids:
            deadline = time.monotonic() + 10
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.fixture
def cli(tmp_path, store):
    c = Cli(tmp_path, store)
    yield c
    c.cleanup()


def put_tree(backend: Backend, prefix: str, tree: dict[str, bytes]) -> None:
    for name, content in tree.items():
        backend.write_bytes(f"{prefix}/{name}", content)


def assert_clean_error(r: subprocess.CompletedProcess, *secrets: str | None, code: int = 1) -> str:
    """Exit `code`, one `amlfs: error:` line, no traceback, no secret; returns the line."""
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for s in secrets:
        if s:
            assert s not in r.stderr
    return lines[0]


# --- transfer and stage through the CLI -----------------------------------------------------------


@all_kinds
def test_upload_then_download_round_trip(cli, store, backend, tmp_path):
    src = tmp_path / "src"
    write_tree(src, TREE)
    r = cli("upload", str(src), f"{NAME}:up")
    assert r.returncode == 0, r.stderr
    assert f"uploaded {len(TREE)}, skipped 0, failed 0" in r.stderr
    assert sorted(o.path for o in backend.walk("up")) == sorted(f"up/{n}" for n in TREE)
    assert backend.read_all("up/big.bin") == TREE["big.bin"]

    r = cli("upload", str(src), f"{NAME}:up")  # everything is there already
    assert r.returncode == 0 and f"uploaded 0, skipped {len(TREE)}" in r.stderr, r.stderr

    out = tmp_path / "out"
    r = cli("download", "--block-size", "64K", f"{NAME}:up", str(out))
    assert r.returncode == 0, r.stderr
    assert f"downloaded {len(TREE)}" in r.stderr
    assert read_tree(out) == TREE
    assert not [p for p in out.rglob("*") if ".part" in p.name or p.name.startswith(".amlfs")]


@keyed_kinds
def test_stage_then_a_rerun_copies_nothing_and_a_missing_path_fails(cli, store, backend, tmp_path):
    put_tree(backend, "ds/set", TREE)
    backend.write_bytes("ds/outside.txt", b"not staged")
    out = tmp_path / "staged"
    r = cli("stage", "--block-size", "64K", f"{NAME}:ds/set", str(out))
    assert r.returncode == 0, r.stderr
    assert f"copied {len(TREE)}," in r.stderr
    assert read_tree(out) == TREE
    r = cli("stage", f"{NAME}:ds/set", str(out))
    assert r.returncode == 0, r.stderr
    assert f"copied 0, skipped {len(TREE)}" in r.stderr
    assert read_tree(out) == TREE
    r = cli("stage", f"{NAME}:no/such/dir", str(tmp_path / "missing"))
    # A path that does not exist is bad usage (exit 2), as for every command.
    assert "no/such/dir" in assert_clean_error(r, store.config.credentials.account_key, code=2)


# --- mount ----------------------------------------------------------------------------------------


def ls_sizes(directory: Path) -> dict[str, int]:
    """name -> size as `ls -l` prints them (one directory)."""
    out = subprocess.run(
        ["ls", "-ln", "--quoting-style=literal", "--time-style=+%s", str(directory)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    sizes = {}
    for line in out.splitlines()[1:]:  # the first line is "total N"
        _mode, _links, _uid, _gid, size, _mtime, name = line.split(None, 6)
        sizes[name] = int(size)
    return sizes


@pytest.mark.fuse
@needs_fuse
@all_kinds
def test_mount_reads_every_file_byte_exact(cli, backend):
    put_tree(backend, "set", TREE)
    backend.write_bytes("other/x.txt", b"outside the prefix")
    mp = cli.mount(f"{NAME}:", "mnt")
    assert read_tree(mp / "set") == TREE
    assert (mp / "other" / "x.txt").read_bytes() == b"outside the prefix"
    # `ls -l` sizes, directory by directory, and no per-file stat behind them.
    before = control.read_facts(str(mp))["counters"].get("backend.stat", 0)
    for dirpath, dirs, names in os.walk(mp / "set"):
        rel = Path(dirpath).relative_to(mp / "set")
        sizes = ls_sizes(Path(dirpath))
        for n in names:
            assert sizes[n] == len(TREE[(rel / n).as_posix()]), (rel, n)
        assert set(sizes) == set(dirs) | set(names)
    assert control.read_facts(str(mp))["counters"].get("backend.stat", 0) == before
    # Read-only: creating, rewriting and removing all give EROFS.
    for attempt in (
        lambda: open(mp / "set" / "new.txt", "wb"),
        lambda: open(mp / "set" / "plain.txt", "r+b"),
        lambda: os.unlink(mp / "set" / "plain.txt"),
        lambda: os.mkdir(mp / "set" / "newdir"),
    ):
        with pytest.raises(OSError) as ei:
            attempt()
        assert ei.value.errno == errno.EROFS
    cli.unmount(mp)


@pytest.mark.fuse
@needs_fuse
@keyed_kinds
def test_prefix_mount_sees_only_its_subtree(cli, backend):
    put_tree(backend, "set", TREE)
    mp = cli.mount(f"{NAME}:set/a+b", "sub")
    assert os.listdir(mp) == ["c+d %20.dat"]
    assert (mp / "c+d %20.dat").read_bytes() == TREE["a+b/c+d %20.dat"]
    assert ls_sizes(mp) == {"c+d %20.dat": len(TREE["a+b/c+d %20.dat"])}
    assert not (mp / "plain.txt").exists() and not (mp / "set").exists()
    entry = control.find_mount(str(mp))
    assert entry is not None and entry.source == f"{NAME}:set/a+b"
    cli.unmount(mp)


@pytest.mark.fuse
@needs_fuse
@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_prefix_mount_of_a_unicode_directory(cli, backend):
    put_tree(backend, "set", TREE)
    mp = cli.mount(f"{NAME}:set/ünï cødé", "sub")
    assert os.listdir(mp) == ["日本 語.txt"]
    assert (mp / "日本 語.txt").read_bytes() == TREE["ünï cødé/日本 語.txt"]
    entry = control.find_mount(str(mp))
    assert entry is not None and entry.source == f"{NAME}:set/ünï cødé"
    cli.unmount(mp)


# --- ADLS Gen2: permission denied by an ACL -------------------------------------------------------


@pytest.fixture
def denied(tmp_path, sp_env):
    """An ADLS datastore authenticated as a service principal, with `secret/` denied by ACL."""
    store = Store(
        "adls_sp",
        make_adls_config(sp_env.server, auth="sp"),
        env={"REQUESTS_CA_BUNDLE": sp_env.tls.cert},
    )
    store.config.name = NAME
    b = open_backend(store.config)
    b.write_bytes("open/f.txt", b"readable")
    b.write_bytes("secret/f.txt", b"hidden")
    b.close()
    sp_env.server.deny(store.config.filesystem, "secret")
    c = Cli(tmp_path, store)
    yield c
    c.cleanup()


def test_acl_denied_download_is_one_clear_line(denied, tmp_path):
    r = denied("download", f"{NAME}:secret", str(tmp_path / "out"))
    line = assert_clean_error(r, CLIENT_SECRET)
    assert "secret" in line and "permission denied" in line.lower(), line
    assert "service principal" in line, line
    # A tree with an unreadable subtree is refused as a whole: its contents cannot be known.
    r = denied("download", f"{NAME}:", str(tmp_path / "all"))
    assert "'secret'" in assert_clean_error(r, CLIENT_SECRET)
    r = denied("download", f"{NAME}:open", str(tmp_path / "out2"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out2" / "f.txt").read_bytes() == b"readable"


@pytest.mark.fuse
@needs_fuse
def test_acl_denied_path_is_eacces_in_the_mount(denied):
    mp = denied.mount(f"{NAME}:", "mnt")
    assert sorted(os.listdir(mp)) == ["open", "secret"]  # the parent still lists it
    assert (mp / "open" / "f.txt").read_bytes() == b"readable"
    for attempt in (
        lambda: os.listdir(mp / "secret"),
        lambda: (mp / "secret" / "f.txt").read_bytes(),
    ):
        with pytest.raises(OSError) as ei:
            attempt()
        assert ei.value.errno == errno.EACCES
    denied.unmount(mp)
    log = (denied.tmp / "mnt.log").read_text()
    assert CLIENT_SECRET not in log and "Traceback" not in log


# --- the Python API: register, upload, download ---------------------------------------------------


def _workspace(tmp_path: Path) -> Workspace:
    return Workspace(Registry.load(str(tmp_path / "ws.yaml")))


def _round_trip(ws: Workspace, ds: Datastore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, TREE)
    result = ds.upload(str(src), target_path="up", show_progress=False)
    assert result.copied == len(TREE) and not result.failed
    # Registered for good: a fresh load of the registry file finds it, and it downloads.
    again = Workspace.from_config(str(ws.registry.path)).datastores[ds.name]
    n = again.download(str(tmp_path / "out"), prefix="up", show_progress=False)
    assert n == len(TREE)
    assert read_tree(tmp_path / "out" / "up") == TREE  # v1 keeps the prefix
    assert oct(os.stat(ws.registry.path).st_mode & 0o777) == "0o600"


def test_register_azure_file_share_end_to_end(fileshare_server, tmp_path):
    ws = _workspace(tmp_path)
    share = unique("newshare")  # does not exist yet: create_if_not_exists makes it
    ds = Datastore.register_azure_file_share(
        workspace=ws,
        datastore_name="files",
        file_share_name=share,
        account_name=fileshare_server.account,
        account_key=fileshare_server.key,
        protocol="http",
        account_url=fileshare_server.account_url,
        create_if_not_exists=True,
    )
    assert ds.datastore_type == "AzureFile"
    assert share in fileshare_server.shares
    assert fileshare_server.key not in repr(ds)
    _round_trip(ws, ds, tmp_path)


def test_register_azure_data_lake_gen2_with_a_key(adls_server, tmp_path):
    ws = _workspace(tmp_path)
    filesystem = unique("newfs")
    ds = Datastore.register_azure_data_lake_gen2(
        workspace=ws,
        datastore_name="lake",
        filesystem=filesystem,
        account_name=adls_server.account,
        account_key=adls_server.key,
        protocol="http",
        account_url=adls_server.account_url,
        create_if_not_exists=True,
    )
    assert ds.datastore_type == "AzureDataLakeGen2"
    assert filesystem in adls_server.filesystems
    _round_trip(ws, ds, tmp_path)


def test_register_azure_data_lake_gen2_with_a_service_principal(sp_env, tmp_path):
    server = sp_env.server
    ws = _workspace(tmp_path)
    filesystem = unique("newfs")
    ds = Datastore.register_azure_data_lake_gen2(
        workspace=ws,
        datastore_name="lake",
        filesystem=filesystem,
        account_name=server.account,
        tenant_id=server.aad.tenant_id,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        authority_url=server.base_url,
        account_url=server.account_url,
        create_if_not_exists=True,
    )
    assert filesystem in server.filesystems
    assert CLIENT_SECRET not in repr(ds) and CLIENT_SECRET not in repr(ds.config)
    _round_trip(ws, ds, tmp_path)
