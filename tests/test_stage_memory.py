"""`amlfs stage` at scale: what it holds per listed file stays bounded (tracemalloc over a
synthetic listing), and its state, written one record a line in listing order, reads back in
any order and from the single-document layout of older amlfs versions."""

from __future__ import annotations

import gc
import hashlib
import json
import tracemalloc
from pathlib import Path

from amlfs import commit
from amlfs.backends import open_backend
from amlfs.backends.base import ObjectInfo
from amlfs.backends.local import LocalBackend
from amlfs.stage import stage
from amlfs.stagestate import state_paths
from amlfs.transfer import download

from .test_transfer import put_tree

#: bytes per listed file a stage may hold (issue #16's goal is 100; tracemalloc counts a little
#: allocator slack, and CI may run an older or newer Python)
PER_FILE = 150
#: what a stage holds whatever the listing's length: its threads' state, the files in flight (at
#: most amlfs.commit.MAX_PENDING of them queued for renaming: 64 here), --verify's 8 readers'
#: 256 KiB buffers
IN_FLIGHT = 4 << 20


class Synthetic(LocalBackend):
    """A local datastore whose walk of 'ds' yields n made-up files of `size` bytes (empty ones
    can really be staged: nothing is read; their MD5 is the empty file's)."""

    def __init__(self, root: str, n: int, size: int | None = None):
        super().__init__(root)
        self.n, self.size = n, size

    def walk(self, path: str = "", first_page: int | None = None):
        for i in range(self.n):
            yield ObjectInfo(
                f"ds/d{i % 100:02d}/file-{i:07d}.bin",
                False,
                1000 + i if self.size is None else self.size,
                f'"0x8DC{i:012X}"',
                1.7e9 + i,
                hashlib.md5(b"" if self.size == 0 else str(i).encode()).digest(),
            )


def _peak(fn):
    gc.collect()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    r = fn()
    return tracemalloc.get_traced_memory()[1] - before, r


def _peaks(*runs):
    """(peak bytes allocated, result) of each of `runs`, one after the other."""
    tracemalloc.start()
    try:
        return [_peak(run) for run in runs]
    finally:
        tracemalloc.stop()


def test_dry_run_holds_little_per_listed_file(tmp_path):
    n = 50_000
    backend = Synthetic(str(tmp_path / "store"), n)
    tracemalloc.start()
    try:
        plain, r = _peak(lambda: stage(backend, "ds", tmp_path / "out", dry_run=True))
        verify, r2 = _peak(
            lambda: stage(backend, "ds", tmp_path / "out", dry_run=True, verify=True)
        )
    finally:
        tracemalloc.stop()
    assert r.copied == r2.copied == n
    assert r.bytes == sum(1000 + i for i in range(n))
    assert plain / n <= PER_FILE, plain / n
    assert verify / n <= PER_FILE, verify / n


def test_full_run_and_rerun_hold_little_per_listed_file(tmp_path, monkeypatch):
    monkeypatch.setattr(commit, "MAX_PENDING", 64)
    n = 10_000
    backend = Synthetic(str(tmp_path / "store"), n, size=0)
    out = tmp_path / "out"
    (first, r1), (again, r2), (checked, r3) = _peaks(
        lambda: stage(backend, "ds", out, show_progress=False),
        lambda: stage(backend, "ds", out, show_progress=False),
        lambda: stage(backend, "ds", out, show_progress=False, verify=True),
    )
    assert (r1.copied, r1.failed) == (n, [])
    assert (r2.copied, r2.skipped) == (0, n)
    assert first <= PER_FILE * n + IN_FLIGHT, first / n
    assert again <= PER_FILE * n + IN_FLIGHT, again / n
    assert (r3.copied, r3.skipped, r3.verified, r3.failed) == (0, n, n, [])
    assert checked <= PER_FILE * n + IN_FLIGHT, checked / n
    assert len(list(out.rglob("*.bin"))) == n


def test_download_holds_little_per_listed_file(tmp_path, monkeypatch):
    """`amlfs download` plans from the same packed listing: no object per file either, a run
    that copies everything and one that skips everything (files already there)."""
    monkeypatch.setattr(commit, "MAX_PENDING", 64)
    n = 10_000
    backend = Synthetic(str(tmp_path / "store"), n, size=0)
    out = tmp_path / "out"
    (first, r1), (again, r2) = _peaks(
        lambda: download(backend, out, "ds", show_progress=False),
        lambda: download(backend, out, "ds", show_progress=False),
    )
    assert (r1.copied, r1.failed) == (n, [])
    assert (r2.copied, r2.skipped) == (0, n)
    assert first <= PER_FILE * n + IN_FLIGHT, first / n
    assert again <= PER_FILE * n + IN_FLIGHT, again / n
    assert len(list((out / "ds").rglob("*.bin"))) == n  # keep_prefix: under its full path


def _staged(local_config, tmp_path) -> tuple[object, Path, Path]:
    backend = open_backend(local_config)
    put_tree(backend, {f"d/{i:03d}/ü {i}": str(i).encode() for i in range(60)})
    out = tmp_path / "out"
    assert stage(backend, "d", out).copied == 60
    return backend, out, Path(state_paths(out)[0])


def test_snapshot_is_one_record_a_line_in_listing_order(local_config, tmp_path):
    backend, out, snapshot = _staged(local_config, tmp_path)
    lines = snapshot.read_text().splitlines()
    assert lines[0] == '{"version":2,"files":{' and lines[-2:] == ['},"parts":{', "}}"]
    assert len(lines) == 60 + 3
    doc = json.loads(snapshot.read_text())  # still one JSON document
    assert sorted(doc["files"]) == sorted(f"{i:03d}/ü {i}" for i in range(60))
    assert stage(backend, "d", out).skipped == 60


def test_snapshot_in_another_order_or_older_layout_is_read(local_config, tmp_path):
    backend, out, snapshot = _staged(local_config, tmp_path)
    doc = json.loads(snapshot.read_text())
    # Records in reverse order, as one line (the layout of older amlfs versions).
    doc["files"] = dict(reversed(list(doc["files"].items())))
    snapshot.write_text(json.dumps(doc))
    r = stage(backend, "d", out)
    assert (r.copied, r.skipped) == (0, 60)
    # A record whose ETag is not the listing's any more does not let the file be skipped.
    doc = json.loads(snapshot.read_text())
    doc["files"]["007/ü 7"][0] = '"0x8DC0000000000000"'
    snapshot.write_text(json.dumps(doc))
    r = stage(backend, "d", out)
    assert (r.copied, r.skipped) == (1, 59)


def test_damaged_snapshot_means_checking_again(local_config, tmp_path, caplog):
    backend, out, snapshot = _staged(local_config, tmp_path)
    lines = snapshot.read_text().splitlines()
    snapshot.write_text("\n".join(lines[:30]) + "\n")  # cut off: no closing lines
    r = stage(backend, "d", out)
    assert (r.copied, r.skipped, r.failed) == (60, 0, [])
    assert "ignoring unreadable stage state" in caplog.text
    assert stage(backend, "d", out).skipped == 60
