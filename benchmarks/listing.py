"""Time to the first entries of a large Blob directory (issue #16's listing goal): one Azurite (in
memory) holding N blobs directly under `big/`, then, interleaved over `--reps` rounds:

- mount: the first `list_page` of the directory (what a directory read waits on), with the small
  first page (FIRST_PAGE entries) and with a full page (5000), and
- stage: the time until `list_remote` first reports files listed (what the progress bar shows),
  with the small first page and with a full first page, and the whole listing's time.

`--memory N` instead measures (no Azurite) the bytes per listed file that a stage holds, on a
synthetic listing of N files (names like ds/d42/file-0001234.bin, an Azure-shaped ETag, an MD5):
with tracemalloc, `list_remote`'s result and the peaks of `stage --dry-run` (and with --verify),
of a real first run, a no-change re-run and a `--dry-run --delete` re-run of `--full` empty
files (default N); and the peak RSS (VmHWM) of a real `amlfs stage --dry-run` CLI process whose
local datastore walks the synthetic listing, minus that of the same command on one file.

Usage: .venv/bin/python benchmarks/listing.py [--files 100000] [--reps 3]
       .venv/bin/python benchmarks/listing.py --memory 200000 [--full N]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amlfs import transfer as transfer_mod  # noqa: E402
from amlfs.backends.base import FIRST_PAGE, ObjectInfo  # noqa: E402
from amlfs.backends.blob import BlobBackend  # noqa: E402
from amlfs.backends.local import LocalBackend  # noqa: E402
from amlfs.registry import BLOB, Credentials, DatastoreConfig  # noqa: E402
from amlfs.stage import stage  # noqa: E402
from amlfs.transfer import list_remote  # noqa: E402
from tests.azurite import ACCOUNT, KEY, start_azurite  # noqa: E402


def fill(backend: BlobBackend, n: int, workers: int = 32) -> float:
    start = time.monotonic()

    def put(i: int) -> None:
        backend.write_stream(f"big/file-{i:07d}.bin", io.BytesIO(b"x"), 1)

    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(put, range(n), chunksize=256):
            pass
    return time.monotonic() - start


def first_report(backend: BlobBackend, first_page: int) -> tuple[float, float]:
    """(seconds to the first on_listed report, seconds for the whole listing)."""
    transfer_mod.FIRST_PAGE = first_page
    start = time.monotonic()
    first: list[float] = []

    def on_listed(files: int, nbytes: int) -> None:
        if not first:
            first.append(time.monotonic() - start)

    files, _ = list_remote(backend, "big", on_listed)
    return first[0], time.monotonic() - start


class SyntheticListing(LocalBackend):
    """A local datastore whose walk of 'ds' yields `n` made-up files (nothing is stored; with
    `size=0` they are empty, so that a real stage can copy them)."""

    def __init__(self, root: str, n: int, size: int | None = None):
        super().__init__(root)
        self.n = n
        self.size = size

    def walk(self, path: str = "", first_page: int | None = None):
        for i in range(self.n):
            yield ObjectInfo(
                f"ds/d{i % 100:02d}/file-{i:07d}.bin",
                False,
                100_000 + i if self.size is None else self.size,
                f'"0x8DC{i:012X}"',  # Azure's shape: 15 hex digits
                1.7e9 + i,
                hashlib.md5(str(i).encode()).digest(),
            )


def _peak(fn) -> tuple[float, object]:
    """(peak traced bytes above what was held before, fn's result)."""
    gc.collect()
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    r = fn()
    return tracemalloc.get_traced_memory()[1] - before, r


def memory(n: int, full: int) -> None:
    root = tempfile.mkdtemp()
    try:
        tracemalloc.start()
        backend = SyntheticListing(root, n)
        files, _ = list_remote(backend, "ds")
        held = tracemalloc.get_traced_memory()[0]
        print(f"listing (list_remote, with MD5s) holds  {held / n:6.1f} B per file ({n} files)")
        del files
        out = os.path.join(root, "out")
        peak, r = _peak(lambda: stage(backend, "ds", out, dry_run=True))
        print(f"stage --dry-run peaks at                {peak / n:6.1f} B per file ({r.copied})")
        peak, r = _peak(lambda: stage(backend, "ds", out, dry_run=True, verify=True))
        print(f"stage --dry-run --verify peaks at       {peak / n:6.1f} B per file ({r.copied})")
        if full:
            empty = SyntheticListing(root, full, size=0)
            t = time.monotonic()
            peak, r = _peak(lambda: stage(empty, "ds", out, show_progress=False))
            print(
                f"stage (first run, empty files) peaks at {peak / full:6.1f} B per file"
                f" ({r.copied} copied, {time.monotonic() - t:.0f} s)"
            )
            peak, r = _peak(lambda: stage(empty, "ds", out, show_progress=False))
            print(
                f"stage no-change re-run peaks at         {peak / full:6.1f} B per file ({r.skipped} skipped)"
            )
            peak, r = _peak(lambda: stage(empty, "ds", out, dry_run=True, delete=True))
            print(
                f"stage --dry-run --delete re-run peaks at {peak / full:5.1f} B per file ({r.copied} to copy)"
            )
        tracemalloc.stop()
        for files_ in (n, 1):
            rss = _cli_rss(root, files_)
            if files_ == 1:
                base_rss = rss
            else:
                big_rss = rss
        print(
            f"`amlfs stage --dry-run` peak RSS         {(big_rss - base_rss) / n:6.1f} B per file"
            f" ({big_rss / 2**20:.1f} MiB for {n} files, {base_rss / 2**20:.1f} MiB for one)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


_CLI_CHILD = """
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks.listing import SyntheticListing
from amlfs.backends import local
local.LocalBackend.walk = lambda self, path="": SyntheticListing.walk(self, path)
local.LocalBackend.n = int(sys.argv[2])
local.LocalBackend.size = None
from amlfs.cli import main
try:
    main(["--registry", sys.argv[3], "stage", "syn:ds", sys.argv[4], "--dry-run"])
except SystemExit:
    pass
with open("/proc/self/status") as f:
    print([ln.split()[1] for ln in f if ln.startswith("VmHWM:")][0], file=sys.stderr)
"""


def _cli_rss(root: str, n: int) -> int:
    """Peak RSS (VmHWM, bytes) of `amlfs stage syn:ds OUT --dry-run` in a child whose local
    datastore `syn` walks a synthetic listing of n files (stdout, the plan, to /dev/null)."""
    reg = os.path.join(root, "reg.yaml")
    with open(reg, "w") as f:
        f.write(f"datastores:\n  - name: syn\n    type: local\n    path: {root}\n")
    repo = str(Path(__file__).resolve().parent.parent)
    p = subprocess.run(
        [sys.executable, "-c", _CLI_CHILD, repo, str(n), reg, os.path.join(root, "cli-out")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=True,
    )
    return int(p.stderr.strip().splitlines()[-1]) * 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--memory", type=int, default=0, metavar="N")
    ap.add_argument(
        "--full", type=int, default=None, metavar="N", help="files of --memory's real run"
    )
    args = ap.parse_args()
    if args.memory:
        memory(args.memory, args.memory if args.full is None else args.full)
        return
    az = start_azurite(in_memory=True)
    try:
        az.service().create_container("listing")
        cfg = DatastoreConfig(
            name="azblob",
            type=BLOB,
            account_name=ACCOUNT,
            container_name="listing",
            account_url=az.account_url,
            protocol="http",
            credentials=Credentials(account_key=KEY),
        )
        backend = BlobBackend.from_config(cfg)
        print(f"uploaded {args.files} blobs in {fill(backend, args.files):.1f} s", flush=True)
        # One flat directory of N entries: the mount reads it, stage lists it.
        rows: dict[str, list[float]] = {}
        for _ in range(args.reps):
            for size in (FIRST_PAGE, 5000):
                t = time.monotonic()
                entries, _ = backend.list_page("big", None, size)
                rows.setdefault(f"mount first page ({size})", []).append(time.monotonic() - t)
            for size in (FIRST_PAGE, 5000):
                f, whole = first_report(backend, size)
                rows.setdefault(f"stage first report (first page {size})", []).append(f)
                rows.setdefault(f"stage whole listing (first page {size})", []).append(whole)
        transfer_mod.FIRST_PAGE = FIRST_PAGE
        for case, values in rows.items():
            print(f"{case:45s} median {statistics.median(values):.3f} s  {values}")
        backend.close()
    finally:
        az.stop()


if __name__ == "__main__":
    main()
