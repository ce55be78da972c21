"""Time to the first entries of a large Blob directory (issue #16's listing goal): one Azurite (in
memory) holding N blobs directly under `big/`, then, interleaved over `--reps` rounds:

- mount: the first `list_page` of the directory (what a directory read waits on), with the small
  first page (FIRST_PAGE entries) and with a full page (5000), and
- stage: the time until `list_remote` first reports files listed (what the progress bar shows),
  with the small first page and with a full first page, and the whole listing's time.

`--memory N` instead measures (tracemalloc, no Azurite) the bytes per listed file that a stage
holds: `list_remote`'s result, and the peak of a `stage --dry-run`'s planning, on a synthetic
listing of N files (names like ds/d42/file-0001234.bin, an ETag, an MD5).

Usage: .venv/bin/python benchmarks/listing.py [--files 100000] [--reps 3] [--memory 200000]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from amlfs.backends import blob as blob_mod  # noqa: E402
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
    blob_mod.FIRST_PAGE = first_page
    start = time.monotonic()
    first: list[float] = []

    def on_listed(files: int, nbytes: int) -> None:
        if not first:
            first.append(time.monotonic() - start)

    files, _ = list_remote(backend, "big", on_listed)
    return first[0], time.monotonic() - start


class SyntheticListing(LocalBackend):
    """A local datastore whose walk of 'ds' yields `n` made-up files (nothing is stored)."""

    def __init__(self, root: str, n: int):
        super().__init__(root)
        self.n = n

    def walk(self, path: str = ""):
        for i in range(self.n):
            yield ObjectInfo(
                f"ds/d{i % 100:02d}/file-{i:07d}.bin",
                False,
                100_000 + i,
                f'"0x8DC{i:013X}"',
                1.7e9 + i,
                hashlib.md5(str(i).encode()).digest(),
            )


def memory(n: int) -> None:
    root = tempfile.mkdtemp()
    backend = SyntheticListing(root, n)
    tracemalloc.start()
    files, _ = list_remote(backend, "ds")
    held = tracemalloc.get_traced_memory()[0]
    print(f"list_remote holds {held / n:.0f} B per listed file ({n} files)")
    del files
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    r = stage(backend, "ds", os.path.join(root, "out"), dry_run=True)
    peak = tracemalloc.get_traced_memory()[1] - before
    print(f"stage --dry-run planning peaks at {peak / n:.0f} B per listed file ({r.copied} files)")
    tracemalloc.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--memory", type=int, default=0, metavar="N")
    args = ap.parse_args()
    if args.memory:
        memory(args.memory)
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
        blob_mod.FIRST_PAGE = FIRST_PAGE
        for case, values in rows.items():
            print(f"{case:45s} median {statistics.median(values):.3f} s  {values}")
        backend.close()
    finally:
        az.stop()


if __name__ == "__main__":
    main()
