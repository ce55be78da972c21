"""The disk cache for every backend that has one (Blob, File share, ADLS Gen2 on the protocol
servers of tests/servers): a restarted mount reads everything from disk with nothing fetched; a
`local` datastore keeps nothing on disk."""

from __future__ import annotations

import time

import pytest

from amlfs.fs import control
from amlfs.fs.diskcache import LAYOUT

from .test_backend_matrix import Cli, store  # noqa: F401 - fixtures
from .test_mount import FUSE_OK, data

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]

FILES = {"d/small": 3000, "d/multi": 3 * 64 * 1024 + 5, "top": 70_000}
CHUNKS = 1 + 4 + 2  # 64 KiB blocks


@pytest.fixture
def cli(tmp_path, store):  # noqa: F811
    c = Cli(tmp_path, store)
    yield c
    c.cleanup()


def _put(store, backend) -> None:  # noqa: F811
    for name, size in FILES.items():
        backend.write_bytes(name, data(name, size))


@pytest.mark.parametrize("store", ["blob", "fileshare", "adls"], indirect=True)
def test_restart_reads_from_disk_on_every_backend(cli, store, tmp_path):  # noqa: F811
    from amlfs.backends import open_backend

    b = open_backend(store.config)
    try:
        _put(store, b)
    finally:
        b.close()
    cli.env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")  # the default cache directory's base
    cache = tmp_path / "xdg" / "amlfs"
    first = cli.mount(f"{store.config.name}:", "one")
    for name, size in FILES.items():
        assert (first / name).read_bytes() == data(name, size)
    deadline = time.monotonic() + 30
    while control.read_facts(str(first))["counters"].get("disk_writes", 0) < CHUNKS:
        assert time.monotonic() < deadline, "the chunks were not stored"
        time.sleep(0.05)
    cli.unmount(first)
    again = cli.mount(f"{store.config.name}:", "two")
    for name, size in FILES.items():
        assert (again / name).read_bytes() == data(name, size)
    c = control.read_facts(str(again))["counters"]
    assert c.get("bytes_fetched", 0) == 0
    assert c["disk_hits"] >= CHUNKS  # (a prefetch given up and redone reads twice)
    assert control.read_facts(str(again))["disk"]["dir"] == str(cache / LAYOUT)


@pytest.mark.parametrize("store", ["local"], indirect=True)
def test_a_local_datastore_keeps_nothing_on_disk(cli, store, tmp_path):  # noqa: F811
    from amlfs.backends import open_backend

    b = open_backend(store.config)
    try:
        _put(store, b)
    finally:
        b.close()
    cli.env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    cache = tmp_path / "xdg" / "amlfs"
    mp = cli.mount(f"{store.config.name}:", "one")
    for name, size in FILES.items():
        assert (mp / name).read_bytes() == data(name, size)
    facts = control.read_facts(str(mp))
    assert facts["disk"] is None
    assert not (cache / LAYOUT).exists()
