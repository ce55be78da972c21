"""Client CPU of the lean Blob GET path: 1 GiB read through `BlobBackend.read_range_into` into
one reused 8 MiB buffer, from Azurite on loopback; prints wall time and client CPU seconds
(time.process_time(), so Azurite's CPU is not counted) per GiB.

    .venv/bin/python benchmarks/lean_get.py [--gib 1] [--blob-mib 64] [--sdk] [--progress]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ACCOUNT, KEY, start_bench_azurite  # noqa: E402

from amlfs.backends.blob import BlobBackend  # noqa: E402
from amlfs.credentials import ResolvedCredential  # noqa: E402

MiB = 1 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0, help="bytes read in total, GiB")
    ap.add_argument("--blob-mib", type=int, default=64, help="size of the blob read repeatedly")
    ap.add_argument("--block-mib", type=int, default=8)
    ap.add_argument("--sdk", action="store_true", help="read through the SDK instead (lean=False)")
    ap.add_argument("--progress", action="store_true", help="with a progress callback")
    args = ap.parse_args()
    az = start_bench_azurite()
    try:
        cred = ResolvedCredential("account_key", KEY, "the Azurite key")
        backend = BlobBackend(
            az.account_url, "bench", cred, account_name=ACCOUNT, lean=not args.sdk
        )
        backend.ensure_exists()
        backend.write_bytes("blob", os.urandom(args.blob_mib * MiB))
        block = args.block_mib * MiB
        buf = memoryview(bytearray(block))
        total = int(args.gib * 1024) * MiB
        backend.read_range_into("blob", 0, buf)  # warm the connection
        kw = {"progress": lambda n: None} if args.progress else {}
        done = 0
        wall, cpu = time.perf_counter(), time.process_time()
        while done < total:
            off = done % (args.blob_mib * MiB)
            done += backend.read_range_into("blob", off, buf, **kw)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        gib = done / (1 << 30)
        print(
            f"{'sdk' if args.sdk else 'lean'}{' +progress' if args.progress else ''}: {gib:.2f} GiB in {wall:.2f} s wall, "
            f"{cpu:.2f} CPU-s ({cpu / gib:.2f} CPU-s/GiB, {gib * 1024 / wall:.0f} MiB/s)"
        )
        backend.close()
    finally:
        az.stop()


if __name__ == "__main__":
    main()
