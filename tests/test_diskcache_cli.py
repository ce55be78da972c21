"""`amlfs cache`: warm a cache without a mount, then a mount reads it with nothing fetched; ls,
du, prune and clear on a real cache directory (Azurite)."""

from __future__ import annotations

import json

import pytest

from amlfs.fs import control
from amlfs.fs.diskcache import LAYOUT

from .test_diskcache_mount import (
    FILES,
    backend,  # noqa: F401 - fixtures
    cache,  # noqa: F401
    cached_bytes,
    chunk_files,
    chunks_of,
    counters,
    mounts,  # noqa: F401
    put_files,
    read_all,
)
from .test_mount import BLOCK, FUSE_OK

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]


def test_warm_then_a_mount_fetches_nothing(mounts, backend, blob_config, cache):  # noqa: F811
    put_files(backend)
    n = sum(chunks_of(s) for s in FILES.values())
    r = mounts.cli("cache", "warm", f"{blob_config.name}:", "--cache-dir", str(cache),
                   "--block-size", "64K")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"cached {len(FILES)} files, {sum(FILES.values())} bytes" in r.stdout
    assert len(chunk_files(cache)) == n
    # Again: nothing left to fetch.
    r = mounts.cli("cache", "warm", f"{blob_config.name}:", "--cache-dir", str(cache),
                   "--block-size", "64K")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "(0 fetched" in r.stdout
    mp = mounts.mount(f"{blob_config.name}:", "--cache-dir", str(cache))
    read_all(mp)
    c = counters(mp)
    assert c.get("bytes_fetched", 0) == 0 and c["disk_hits"] >= n
    assert control.read_facts(str(mp))["disk"]["dir"] == str(cache / LAYOUT)


def test_warm_refuses_a_missing_path(mounts, blob_config, cache):  # noqa: F811
    r = mounts.cli("cache", "warm", f"{blob_config.name}:nope", "--cache-dir", str(cache))
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_ls_du_prune_clear(mounts, backend, blob_config, cache):  # noqa: F811
    put_files(backend)
    r = mounts.cli("cache", "warm", f"{blob_config.name}:", "--cache-dir", str(cache),
                   "--block-size", "64K")  # fmt: skip
    assert r.returncode == 0, r.stderr
    total = cached_bytes(cache)
    r = mounts.cli("cache", "ls", "--json", "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 1
    assert rows[0]["datastore"] == blob_config.name
    assert rows[0]["container"] == blob_config.container_name
    assert rows[0]["chunks"] == len(chunk_files(cache)) and rows[0]["bytes"] == total
    r = mounts.cli("cache", "ls", "--cache-dir", str(cache))
    assert blob_config.name in r.stdout and blob_config.container_name in r.stdout
    r = mounts.cli("cache", "du", "-b", "--cache-dir", str(cache))
    assert r.stdout.split()[0] == str(total)
    # Prune to about half: the least recently used go first.
    r = mounts.cli("cache", "prune", str(total // 2), "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    assert total // 2 - BLOCK - 200 <= cached_bytes(cache) <= total // 2
    r = mounts.cli("cache", "prune", "lots", "--cache-dir", str(cache))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = mounts.cli("cache", "clear", "--cache-dir", str(cache))
    assert r.returncode == 0, r.stderr
    assert cached_bytes(cache) == 0
    r = mounts.cli("cache", "du", "-b", "--cache-dir", str(cache))
    assert r.stdout.split()[0] == "0"


def test_warm_refuses_a_local_datastore(tmp_path, local_config, cache):  # noqa: F811
    from .test_mount import Mounts

    m = Mounts(tmp_path, local_config)
    r = m.cli("cache", "warm", f"{local_config.name}:", "--cache-dir", str(cache))
    assert r.returncode == 2 and "never cached on disk" in r.stderr
