"""pyarrow reading a 1 GiB Parquet dataset from Azurite through fsspec: amlfs (`azureml://`,
amlfs.remotefs) vs adlfs (the Azure fsspec most users have), in one run.

    .venv/bin/pip install adlfs                    # the peer, for this benchmark only
    .venv/bin/python benchmarks/fsspec_read.py     # 8 x 128 MiB files, 3 repetitions
    .venv/bin/python benchmarks/fsspec_read.py --small   # 8 x 8 MiB, for development

Each read runs in a child process (wall time, and its user + system CPU from os.wait4); Azurite's
CPU seconds are read from /proc around each run. Cases: `dataset` (pyarrow.dataset ... to_table:
pyarrow's threads, pre-buffered column chunks) and `scan` (one file after another, one batch at a
time, no threads: a sequential reader, where read-ahead matters). Both tools run with their
defaults; the table shows medians and amlfs's ratios to adlfs (throughput: adlfs wall / amlfs
wall; CPU: amlfs client CPU / adlfs client CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from common import (
    ACCOUNT,
    KEY,
    REPO,
    Timing,
    make_registry,
    save_results,
    start_bench_azurite,
    timed,
)

PREFIX = "parquet/events"
TOOLS = ("amlfs", "adlfs")
CASES = ("dataset", "scan")

CHILD = r"""
import sys, time
import pyarrow.dataset as pds
import json
tool, case, base_url, registry, conn, container, options = sys.argv[1:8]
if tool == "amlfs":
    import fsspec
    opts = json.loads(options)
    fs, base = fsspec.core.url_to_fs(base_url, registry=registry, **opts)
else:
    import adlfs
    fs = adlfs.AzureBlobFileSystem(connection_string=conn)
    base = container + "/" + base_url.split("/paths/", 1)[1]
ds = pds.dataset(base, filesystem=fs, format="parquet")
if case == "dataset":
    t = ds.to_table()
    rows, nbytes = t.num_rows, t.nbytes
else:
    rows = nbytes = 0
    for frag in ds.get_fragments():
        for batch in frag.to_batches(use_threads=False):
            rows += batch.num_rows
            nbytes += batch.nbytes
print(rows, nbytes, flush=True)
# Skip interpreter teardown (adlfs's event-loop thread can abort it, after the work is done).
import os
os._exit(0)
"""


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_dataset(az, container: str, files: int, mib: int, registry: str) -> tuple[int, int]:
    """`files` Parquet files of ~`mib` MiB (4 float64 columns of random values, uncompressed,
    so that the bytes on the wire are the bytes in the table); (rows, bytes on the datastore)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    sys.path.insert(0, str(REPO))
    from amlfs.backends import open_backend
    from amlfs.registry import Registry

    backend = open_backend(Registry.load(registry).get("bench"))
    rows_per_file = mib * (1 << 20) // 32
    rng = np.random.default_rng(14)
    total = 0
    with tempfile.TemporaryDirectory(prefix="amlfs-bench-parquet-") as d:
        for i in range(files):
            table = pa.table({c: rng.random(rows_per_file) for c in "abcd"})
            local = os.path.join(d, f"part-{i:03d}.parquet")
            pq.write_table(table, local, compression="none", row_group_size=1 << 20)
            total += os.path.getsize(local)
            backend.write_file(f"{PREFIX}/part-{i:03d}.parquet", local)
            os.unlink(local)
    backend.close()
    return rows_per_file * files, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="8 x 8 MiB instead of 8 x 128 MiB")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: amlfs,adlfs")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated: dataset,scan")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=INT",
        help="an amlfs storage option (block_size, readahead, max_concurrency); repeatable",
    )
    args = ap.parse_args()
    try:
        import adlfs  # noqa: F401
    except ImportError:
        sys.exit("fsspec_read: the peer is missing: .venv/bin/pip install adlfs")

    tools = [t for t in args.tools.split(",") if t]
    cases = [c for c in args.cases.split(",") if c]
    if not set(tools) <= set(TOOLS) or not set(cases) <= set(CASES):
        sys.exit(f"fsspec_read: --tools from {','.join(TOOLS)}, --cases from {','.join(CASES)}")
    try:
        options = {k: int(v) for k, v in (o.split("=", 1) for o in args.option)}
    except ValueError:
        sys.exit("fsspec_read: --option takes NAME=INT, e.g. block_size=8388608")
    files, mib = (8, 8) if args.small else (8, 128)
    az = start_bench_azurite()
    work = tempfile.mkdtemp(prefix="amlfs-bench-fsspec-")
    try:
        container = "fsspecbench"
        az.service().create_container(container)
        registry = make_registry(os.path.join(work, "datastores.yaml"), az, container)
        t0 = time.monotonic()
        rows, nbytes = make_dataset(az, container, files, mib, registry)
        print(
            f"dataset: {files} files, {nbytes / 2**20:.0f} MiB, {rows} rows, uploaded in"
            f" {time.monotonic() - t0:.1f} s",
            flush=True,
        )
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={az.account_url};"
        )
        base_url = f"azureml://datastores/bench/paths/{PREFIX}"
        timings: list[Timing] = []
        server: dict[tuple[str, str], list[float]] = {}
        for rep in range(args.reps):
            for case in cases:
                for tool in tools if rep % 2 == 0 else tools[::-1]:
                    cmd = [
                        sys.executable,
                        "-c",
                        CHILD,
                        tool,
                        case,
                        base_url,
                        registry,
                        conn,
                        container,
                        json.dumps(options),
                    ]
                    before = cpu_of(az.proc.pid)
                    t = timed(tool, case, cmd)
                    server.setdefault((tool, case), []).append(cpu_of(az.proc.pid) - before)
                    timings.append(t)
                    print(
                        f"rep {rep + 1} {case:<8} {tool:<6} wall {t.wall:6.2f} s  client CPU"
                        f" {t.cpu:6.2f} s  Azurite CPU {server[(tool, case)][-1]:6.2f} s",
                        flush=True,
                    )
        print()
        print(
            f"{'case':<8} {'tool':<6} {'wall s':>7} {'MiB/s':>7} {'client CPU s':>13}"
            f" {'Azurite CPU s':>14} {'vs adlfs: speed':>16} {'CPU':>6}"
        )
        for case in cases:
            med = {
                tool: (
                    statistics.median(t.wall for t in timings if t.tool == tool and t.case == case),
                    statistics.median(t.cpu for t in timings if t.tool == tool and t.case == case),
                    statistics.median(server[(tool, case)]),
                )
                for tool in tools
            }
            peer = med.get("adlfs", med[tools[0]])
            for tool in tools:
                wall, cpu, srv = med[tool]
                speed = peer[0] / wall
                cpu_ratio = cpu / peer[1]
                print(
                    f"{case:<8} {tool:<6} {wall:7.2f} {nbytes / 2**20 / wall:7.0f} {cpu:13.2f}"
                    f" {srv:14.2f} {speed:15.2f}x {cpu_ratio:5.2f}x"
                )
        meta = {
            "files": files,
            "bytes": nbytes,
            "rows": rows,
            "reps": args.reps,
            "amlfs_options": options,
            "azurite_cpu": {f"{t}/{c}": v for (t, c), v in server.items()},
            "load": os.getloadavg(),
        }
        print("results:", save_results("fsspec_read", meta, timings))
    finally:
        az.stop()


if __name__ == "__main__":
    main()
