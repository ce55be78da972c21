"""`amlfs upload` under faults: a large file's blocks and its block-list commit refused, reset or
cut; the remote object is always the old one or the complete new one, never a part. And many
files at once without "Connection pool is full" (pools sized to the engine's concurrency)."""

from __future__ import annotations

import os

import pytest

from amlfs.backends import open_backend

from ..servers.fixtures import make_adls_config, make_fileshare_config
from .conftest import Cli, payload, write_registry

BOUND = 90.0
BIG = (10 << 20) + 4321  # over the 8 MiB single-put size: staged blocks + a block-list commit


@pytest.fixture
def old_and_new(direct, tmp_path):
    old = payload("old", 3 << 20)
    direct.write_bytes("up/big.bin", old)
    src = tmp_path / "src"
    src.mkdir()
    new = payload("new", BIG)
    (src / "big.bin").write_bytes(new)
    return old, new, src / "big.bin"


def test_failed_block_list_commit_leaves_the_old_object(cli: Cli, proxy, direct, old_and_new):
    old, new, src = old_and_new
    commit = proxy.add("status", method="PUT", path="comp=blocklist", status=500)
    r, secs = cli.run("upload", str(src), "faulty:up", "--overwrite", "--no-progress")
    assert r.returncode == 1, r.stderr
    assert commit.hits >= 1
    assert secs < BOUND
    assert "big.bin" in r.stderr
    assert direct.read_all("up/big.bin") == old
    # The fault ends: the same upload replaces it whole.
    proxy.clear()
    r, _ = cli.run("upload", str(src), "faulty:up", "--overwrite", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert direct.read_all("up/big.bin") == new


@pytest.mark.parametrize(
    "fault",
    [
        dict(action="reset", method="PUT", path="comp=block&", count=2),
        dict(
            action="status",
            method="PUT",
            path="comp=block&",
            status=503,
            code="ServerBusy",
            retry_after=1,
            count=2,
        ),
        dict(action="reset", method="PUT", path="comp=blocklist", count=1),
        dict(action="latency", method="PUT", seconds=0.5),
    ],
    ids=["reset-put-block", "503-put-block", "reset-commit", "latency"],
)
def test_transient_upload_faults_give_the_complete_new_object(
    cli: Cli, proxy, direct, old_and_new, fault
):
    old, new, src = old_and_new
    rule = proxy.add(**fault)
    r, secs = cli.run("upload", str(src), "faulty:up", "--overwrite", "--no-progress")
    assert rule.hits >= 1
    assert secs < BOUND
    got = direct.read_all("up/big.bin")
    # A reset commit may have been applied before the reset: then the retry finds it done or
    # commits again; either way the object is whole.
    assert got in (old, new)
    if r.returncode == 0:
        assert got == new
    else:
        assert fault["path"] == "comp=blocklist", r.stderr


def test_upload_of_many_files_without_pool_warnings(cli: Cli, proxy, direct, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(64):
        (src / f"f{i:02d}").write_bytes(os.urandom(50_000))
    proxy.add("latency", seconds=0.05, method="PUT")
    r, _ = cli.run("upload", str(src), "faulty:many", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "Connection pool is full" not in r.stderr
    assert len(list(direct.walk("many"))) == 64


@pytest.mark.parametrize("kind", ["fileshare", "adls"])
def test_upload_of_many_files_to_file_and_dfs_without_pool_warnings(
    fileshare_server, adls_server, tmp_path, kind
):
    ds = (
        make_fileshare_config(fileshare_server)
        if kind == "fileshare"
        else make_adls_config(adls_server)
    )
    src = tmp_path / "many"
    src.mkdir()
    for i in range(64):
        (src / f"f{i:02d}").write_bytes(os.urandom(20_000))
    cli = Cli(write_registry(tmp_path / "reg.yaml", ds), tmp_path)
    r, _ = cli.run("upload", str(src), f"{ds.name}:many", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "Connection pool is full" not in r.stderr
    b = open_backend(ds)
    try:
        assert len(list(b.walk("many"))) == 64
    finally:
        b.close()


def test_upload_waits_out_a_503_storm_longer_than_the_sdk_retries(
    cli: Cli, proxy, direct, tmp_path
):
    """More 503 ServerBusy than the SDK's own retries absorb: the engine's throttle (AIMD,
    Retry-After) tries the file again; every file arrives whole."""
    src = tmp_path / "busy"
    src.mkdir()
    files = {f"b{i}": os.urandom(30_000 + i) for i in range(4)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    storm = proxy.add(
        "status", method="PUT", status=503, code="ServerBusy", retry_after=1, count=14
    )
    r, secs = cli.run("upload", str(src), "faulty:busy", "--no-progress", "--workers", "4")
    assert r.returncode == 0, r.stderr
    assert storm.hits == 14
    assert secs < BOUND
    for name, data in files.items():
        assert direct.read_all(f"busy/{name}") == data
