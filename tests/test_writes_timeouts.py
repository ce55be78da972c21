"""Writable mounts whose commit outlives --commit-timeout (ADLS Gen2 and File share, whose
uploads are temporary files in the target's directory): the fsync fails with EIO at the bound,
the abandoned upload's temporary file is removed once its parts have really ended, and the
file's next commit (close) succeeds. The storage is slowed by the fault proxy."""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import time

import pytest

from amlfs.backends import open_backend

from .faults.proxy import FaultProxy
from .test_mount import FUSE_OK
from .test_writes import RwMounts, rw

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]

#: the request that sends a part's bytes to the temporary file
PART_REQUEST = {
    "adls": ("PATCH", r"action=append"),
    "fileshare": ("PUT", r"comp=range"),
}


@pytest.fixture(params=list(PART_REQUEST))
def kind(request) -> str:
    return request.param


@pytest.fixture
def config(kind, request):
    return request.getfixturevalue(f"{kind}_config")


@pytest.fixture
def backend(config):
    """The storage seen directly, not through the proxy."""
    b = open_backend(config)
    yield b
    b.close()


@pytest.fixture
def proxy(config):
    host, _, port = config.account_url.split("/")[2].partition(":")
    p = FaultProxy((host, int(port)))
    yield p
    p.stop()


@pytest.fixture
def mounts(tmp_path, config, proxy):
    m = RwMounts(tmp_path, dataclasses.replace(config, account_url=proxy.url(config.account_url)))
    yield m
    m.cleanup()


def _names(backend) -> list[str]:
    entries, _ = backend.list_page("")
    return sorted(e.name for e in entries)


def _wait_for_names(backend, want: list[str], bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while (names := _names(backend)) != want:
        assert time.monotonic() < deadline, f"{names} after {bound:.0f} s, not {want}"
        time.sleep(0.05)


def test_commit_past_the_timeout_is_eio_and_leaves_no_temporary_file(
    mounts, config, backend, proxy, kind
):
    mp = rw(mounts, config, "--commit-timeout", "1")
    want = bytearray(os.urandom(100_000))
    fd = os.open(mp / "f.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, want)
        os.pwrite(fd, b"FIRST", 0)  # out of order: staged, uploaded whole at the commit
        want[:5] = b"FIRST"
        method, path = PART_REQUEST[kind]
        proxy.add("latency", method=method, path=path, count=1, seconds=4)
        with pytest.raises(OSError) as e:
            os.fsync(fd)  # its part is held back past the commit timeout
        assert e.value.errno == errno.EIO
        # Once the held-back part has ended, the abandoned upload's temporary file is deleted.
        _wait_for_names(backend, [])
    finally:
        os.close(fd)  # commits (the proxy no longer delays anything)
    assert backend.read_all("f.bin") == want
    assert _names(backend) == ["f.bin"]


def test_a_part_failing_after_its_commit_timed_out_does_not_fail_the_next_commit(
    mounts, config, backend, proxy, kind
):
    # Sockets give up after 1 s (half of --read-timeout) and a part after 4 s (twice it).
    mp = rw(mounts, config, "--read-timeout", "2", "--commit-timeout", "3")
    want = bytearray(os.urandom(50_000))  # one part
    fd = os.open(mp / "f.bin", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, want)
        os.pwrite(fd, b"FIRST", 0)
        want[:5] = b"FIRST"
        method, path = PART_REQUEST[kind]
        proxy.add("stall", method=method, path=path, seconds=30)  # every try of the part
        with pytest.raises(OSError) as e:
            os.fsync(fd)
        assert e.value.errno == errno.EIO
        # The part's next try is refused (403): it fails, after its commit was given up.
        stalled = {x.path.partition("?")[0] for x in proxy.log if x.action == "stall"}
        assert len(stalled) == 1, stalled
        proxy.clear()
        proxy.add("status", method=method, path=re.escape(stalled.pop()), status=403)
    finally:
        os.close(fd)  # its own part is sent; the abandoned upload's failure is not its failure
    assert backend.read_all("f.bin") == want
    _wait_for_names(backend, ["f.bin"])
