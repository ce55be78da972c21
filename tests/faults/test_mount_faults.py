"""The mount under faults: reads, lookups, listings and opens of changed objects through the
fault proxy. Each read returns the right bytes or EIO within `--read-timeout` plus slack,
measured from the read call (the reader runs in a subprocess: never left in D state past the
bound); the daemon serves again once the fault ends; `amlfs run` with a mounted input."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time

import pytest

from .conftest import SMALL, Cli
from .mounts import FUSE_OK, Mounts, start_read

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]

log = logging.getLogger(__name__)

READ_TIMEOUT = 4.0
SLACK = 4.0  # generous: a 2-core machine shared by several test runs


@pytest.fixture
def mounts(cli: Cli, tmp_path):
    m = Mounts(cli, tmp_path)
    yield m
    m.cleanup()


@pytest.fixture
def mnt(mounts, seeded):
    return mounts.mount("faulty:d", "--read-timeout", str(int(READ_TIMEOUT)), "--attr-timeout", "1")


@pytest.fixture
def patient_mnt(mounts, seeded):
    """A mount whose retry budget (the read timeout) absorbs a few transient faults even on a
    loaded machine: one retried request costs up to ~2 s of backoff plus the retry itself."""
    return mounts.mount("faulty:d", "--read-timeout", "20", "--attr-timeout", "1")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_all_ok(mnt, seeded, bound: float, proxy=None) -> None:
    readers = {name: start_read(mnt / name[2:]) for name in seeded}
    for name, reading in readers.items():
        out = reading.result(bound)
        seen = [e for e in proxy.log if name[2:] in e.path] if proxy is not None else []
        assert out["ok"], (name, out, seen)
        assert out["sha"] == _sha(seeded[name]), name


TRANSIENT = {
    "http-500": dict(action="status", status=500, code="InternalError", path="/d/", count=2),
    "503-server-busy": dict(
        action="status", status=503, code="ServerBusy", retry_after=1, path="/d/", count=2
    ),
    "reset": dict(action="reset", path="/d/", count=2),
    "reset-mid-body": dict(action="reset_body", after=60_000, path="big/", count=2),
    "body-cut": dict(action="cut", after=60_000, path="big/", count=2),
    "latency": dict(action="latency", seconds=0.2, method="GET"),
    "bandwidth-cap": dict(action="bandwidth", rate=4e6, path="big/"),
}


@pytest.mark.parametrize("fault", sorted(TRANSIENT))
def test_reads_through_transient_faults_are_byte_exact(patient_mnt, proxy, seeded, fault):
    rule = proxy.add(**TRANSIENT[fault])
    _read_all_ok(patient_mnt, seeded, bound=60, proxy=proxy)
    assert rule.hits > 0


@pytest.mark.parametrize("where", ["before-headers", "mid-body"])
def test_stalled_read_is_eio_within_the_read_timeout_then_serves(mnt, proxy, seeded, where):
    if where == "before-headers":
        proxy.add("stall", method="GET", path=r"l0\.bin", seconds=120)
    else:
        proxy.add("stall_body", method="GET", path=r"l0\.bin", after=30_000, seconds=120)
    out = start_read(mnt / "big" / "l0.bin").result(READ_TIMEOUT + SLACK)
    log.warning("stall %s: %s after %.1f s", where, out.get("errno"), out["secs"])
    assert not out["ok"] and out["errno"] == "EIO", out
    assert out["secs"] <= READ_TIMEOUT + SLACK
    proxy.clear()
    proxy.reset_open()
    _read_all_ok(mnt, seeded, bound=60)


def test_persistent_500_is_eio_within_the_bound_then_serves(mnt, proxy, seeded):
    proxy.add("status", status=500, code="InternalError", method="GET", path=r"s07\.bin")
    out = start_read(mnt / "s07.bin").result(READ_TIMEOUT + SLACK)
    log.warning("persistent 500: %s after %.1f s", out.get("errno"), out["secs"])
    assert not out["ok"] and out["errno"] == "EIO", out
    proxy.clear()
    _read_all_ok(mnt, seeded, bound=60)


def test_lookups_and_listings_in_a_503_storm_fail_within_seconds_then_serve(
    mnt, proxy, seeded, direct
):
    """Metadata calls give up after ~5 s of 503s (EIO), then serve once the storm ends."""
    direct.write_bytes("d/new/n.bin", b"n" * 1000)
    proxy.add("status", status=503, code="ServerBusy", retry_after=1)
    t0 = time.monotonic()
    with pytest.raises(OSError):
        os.listdir(mnt / "new")
    log.warning("503 storm: listdir failed after %.1f s", time.monotonic() - t0)
    assert time.monotonic() - t0 <= 5 + SLACK
    t0 = time.monotonic()
    with pytest.raises(OSError):
        os.stat(mnt / "new2")
    log.warning("503 storm: lookup failed after %.1f s", time.monotonic() - t0)
    assert time.monotonic() - t0 <= 5 + SLACK
    proxy.clear()
    assert os.listdir(mnt / "new") == ["n.bin"]
    assert (mnt / "new" / "n.bin").read_bytes() == b"n" * 1000


def test_listing_through_reset_and_500_is_complete(mnt, proxy, seeded):
    proxy.add("reset", path="comp=list", count=1)
    proxy.add("status", status=500, path="comp=list", count=1)
    names = sorted(os.listdir(mnt))
    assert names == sorted({"big", *(n[2:] for n in SMALL)})


def test_open_of_a_changed_object_sees_the_new_one(mnt, proxy, seeded, direct):
    assert (mnt / "s01.bin").read_bytes() == seeded["d/s01.bin"]
    direct.write_bytes("d/s01.bin", b"changed" * 1000)
    deadline = time.monotonic() + 15
    while (mnt / "s01.bin").read_bytes() != b"changed" * 1000:
        assert time.monotonic() < deadline, "the new object never showed"
        time.sleep(0.3)


def test_object_deleted_then_read_is_enoent_or_eio(mnt, proxy, seeded, direct):
    with open(mnt / "big" / "l1.bin", "rb") as f:
        first = f.read(1000)
        direct.delete("d/big/l1.bin")
        try:
            rest = f.read()
        except OSError as e:  # documented: ENOENT/ESTALE/EIO for an object gone mid-read
            assert e.errno in (2, 5, 116), e
        else:  # served from what was already cached: must be the old bytes
            assert first + rest == seeded["d/big/l1.bin"][: len(first) + len(rest)]


def test_amlfs_run_with_a_mounted_input_under_faults(cli: Cli, proxy, seeded, tmp_path):
    proxy.add("status", status=500, code="InternalError", path="/d/", count=3)
    proxy.add("reset", path="/d/", count=3)
    proxy.add("latency", seconds=0.1, method="GET")
    script = (
        "import hashlib, os, sys\n"
        "root = sys.argv[1]\n"
        "for dp, dn, fn in sorted(os.walk(root)):\n"
        "    for n in sorted(fn):\n"
        "        p = os.path.join(dp, n)\n"
        "        print(os.path.relpath(p, root), hashlib.sha256(open(p, 'rb').read()).hexdigest())\n"
    )
    r, secs = cli.run(
        "run",
        "--workdir",
        str(tmp_path / "wd"),
        "-i",
        "data=faulty:d",
        "--",
        sys.executable,
        "-c",
        script,
        "{data}",
    )
    assert r.returncode == 0, r.stderr
    got = dict(line.split() for line in r.stdout.splitlines())
    assert got == {k[2:]: _sha(v) for k, v in seeded.items()}
    assert secs < 120
    assert str(tmp_path) not in open("/proc/mounts").read()  # the input mount is undone
