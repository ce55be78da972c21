"""Client CPU of the lean GET path: 1 GiB read through `read_range_into` into one reused 8 MiB
buffer, from Azurite on loopback (Blob) or a tests/servers protocol server in a child process
(`--backend fileshare|adls`); prints wall time and client CPU seconds (time.process_time(), so
the server's CPU is not counted) per GiB, and the server's CPU seconds for the protocol servers.

    .venv/bin/python benchmarks/lean_get.py [--backend blob] [--gib 1] [--blob-mib 64] [--sdk]
        [--progress]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ACCOUNT, KEY, ProtocolServer, start_bench_azurite  # noqa: E402

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
    ap.add_argument("--backend", choices=["blob", "fileshare", "adls"], default="blob")
    args = ap.parse_args()
    if args.backend != "blob":
        with ProtocolServer(
            args.backend, "bench", synthetic={"blob": args.blob_mib * MiB}
        ) as server:
            from amlfs.backends.adls import AdlsBackend
            from amlfs.backends.fileshare import FileShareBackend
            from amlfs.schema import parse_datastore

            cls = FileShareBackend if args.backend == "fileshare" else AdlsBackend
            ds = parse_datastore(server.entry, "the benchmark")
            backend = cls.from_config(ds, lean=not args.sdk)
            cpu0 = server.cpu_seconds()
            run(args, backend)
            print(f"  server CPU {server.cpu_seconds() - cpu0:.2f} s")
        return
    az = start_bench_azurite()
    try:
        cred = ResolvedCredential("account_key", KEY, "the Azurite key")
        backend = BlobBackend(
            az.account_url, "bench", cred, account_name=ACCOUNT, lean=not args.sdk
        )
        backend.ensure_exists()
        backend.write_bytes("blob", os.urandom(args.blob_mib * MiB))
        run(args, backend)
    finally:
        az.stop()


def run(args: argparse.Namespace, backend) -> None:
    if True:
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
            f"{args.backend} {'sdk' if args.sdk else 'lean'}{' +progress' if args.progress else ''}:"
            f" {gib:.2f} GiB in {wall:.2f} s wall, "
            f"{cpu:.2f} CPU-s ({cpu / gib:.2f} CPU-s/GiB, {gib * 1024 / wall:.0f} MiB/s)"
        )
        backend.close()


if __name__ == "__main__":
    main()
