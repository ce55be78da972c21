"""Mount limits benchmark (issue #9): amlfs beside `rclone mount` on the same Azurite data, in one
run, for the edges of resource control rather than throughput.

Cases, each on a fresh mount (a new daemon):
- first_entry: `ls` of a directory, then the time to the first entry of its 100,000-entry
  subdirectory (goal < 0.5 s on Azurite); the time to list it whole is noted beside it.
- seek_storm: fio random 1 MiB reads over 16 files by 4 jobs holding 4 files open each (so files
  are closed and reopened all the time; fio drops a file's page cache at each open, so reads
  reach the daemon): peak daemon RSS (goal <= cache + 150 MiB) and bytes
  fetched / bytes read (goal <= 1.1).
- many_readers: 64 readers of 64 files at once with `--cache-size 64M`: bytes fetched / bytes
  read (goal <= 1.2).
- first_4k: cold time to the first 4 KiB of a large file, beside one 4 KiB ranged GET straight
  from the service on a fresh connection (goal <= 1.5x).

Bytes fetched and read are the daemon's counters (`amlfs stats --json`: bytes_fetched,
bytes_read); rclone has no such counters, so its rows show time, CPU and RSS only.

    .venv/bin/python benchmarks/mount_limits.py [--quick] [--cases a,b] [--tools amlfs,rclone]

Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mount as mb  # noqa: E402
from common import RESULTS, container_sas_url, start_bench_azurite  # noqa: E402

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CONTAINER = mb.CONTAINER
CASES = ("first_entry", "seek_storm", "many_readers", "first_4k")
GOALS = {
    "first_entry": "< 0.5 s",
    "seek_storm": "fetched/read <= 1.1, RSS <= cache + 150 MiB",
    "many_readers": "fetched/read <= 1.2",
    "first_4k": "<= 1.5x one ranged GET",
}


@dataclass
class Sizes:
    wide: int  # entries of the wide directory
    storm_size: int  # each of the 16 files of the seek storm
    storm_runtime: int  # seconds
    reader_size: int  # each of the 64 readers' files
    big: int  # the large file of first_4k

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            return cls(2_000, 8 * MiB, 3, 1 * MiB, 64 * MiB)
        return cls(100_000, 64 * MiB, 20, 32 * MiB, 1 * GiB)


STORM_FILES = 16
READERS = 64


# --- data --------------------------------------------------------------------------------------


def upload(az, s: Sizes) -> None:
    """lim/wide/ (empty blobs), lim/storm/, lim/readers/ and lim/big.bin, each block distinct."""
    cc = az.service().get_container_client(CONTAINER)
    if not cc.exists():
        cc.create_container()
    chunk = os.urandom(8 * MiB)

    def content(tag: int, size: int) -> bytes:
        parts, i = [], 0
        while sum(map(len, parts)) < size:
            parts.append(tag.to_bytes(4, "little") + i.to_bytes(4, "little") + chunk[8:])
            i += 1
        return b"".join(parts)[:size]

    jobs: list[tuple[str, int, int]] = [(f"lim/wide/e{i:06d}", 0, 0) for i in range(s.wide)]
    jobs += [(f"lim/other{i}", 1, 10) for i in range(5)]
    jobs += [(f"lim/storm/f{i:02d}.bin", 100 + i, s.storm_size) for i in range(STORM_FILES)]
    jobs += [(f"lim/readers/r{i:02d}.bin", 200 + i, s.reader_size) for i in range(READERS)]
    jobs.append(("lim/big.bin", 999, s.big))

    def put(job: tuple[str, int, int]) -> None:
        name, tag, size = job
        cc.upload_blob(name, content(tag, size) if size else b"", overwrite=True, max_concurrency=4)

    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, jobs))


# --- cases -------------------------------------------------------------------------------------


@dataclass
class Row:
    tool: str
    case: str
    wall: float  # the case's measure (seconds): see `note`
    cpu: float | None  # the daemon's CPU seconds over the case
    rss_peak: int | None = None
    fetched: int | None = None
    read: int | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.fetched / self.read if self.fetched is not None and self.read else None


class Limits:
    def __init__(self, args: argparse.Namespace, s: Sizes, work: Path):
        self.args, self.s, self.work = args, s, work
        self.rows: list[Row] = []
        self.az = None
        self.registry = str(work / "registry.yaml")
        self.mp = str(work / "mnt")
        os.makedirs(self.mp, exist_ok=True)

    def record(self, row: Row) -> None:
        self.rows.append(row)
        extra = f" rss={row.rss_peak / MiB:.0f}MiB" if row.rss_peak else ""
        if row.ratio is not None:
            extra += f" fetched/read={row.ratio:.2f}"
        cpu = f"{row.cpu:.2f}s" if row.cpu is not None else "-"
        print(f"  {row.tool:<8} {row.case:<13} {row.wall:8.3f}s cpu={cpu}{extra} {row.note}")

    def mount(self, tool: str, cache: str | None = None) -> mb.Mount:
        if tool == "amlfs":
            cache = cache or self.args.cache_size
            return mb.mount_amlfs(tool, self.registry, "bench:", self.mp, cache)
        sas = container_sas_url(self.az, CONTAINER)
        return mb.mount_rclone(sas, self.mp, str(self.work / "rclone.log"))

    def run(self, tool: str, case: str, fn, cache: str | None = None) -> Row:
        """`fn(mountpoint) -> (seconds, note)` on a fresh mount; daemon CPU, RSS and counters."""
        m = self.mount(tool, cache)
        try:
            c0 = mb.cpu_seconds(m.pid)
            seconds, note = fn(m.mp)
            row = Row(tool, case, seconds, mb.cpu_seconds(m.pid) - c0, mb.vm_hwm(m.pid), note=note)
            if tool == "amlfs":
                counters = self.counters(m.mp)
                row.fetched = counters.get("bytes_fetched", 0)
                row.read = counters.get("bytes_read", 0)
        finally:
            m.unmount()
        self.record(row)
        return row

    @staticmethod
    def counters(mp: str) -> dict:
        out = subprocess.run(
            mb.amlfs_cmd("stats", "--json", mp), capture_output=True, text=True, check=True
        ).stdout
        return json.loads(out).get("counters", {})

    # --- the workloads ----------------------------------------------------------------------

    def first_entry(self, mp: str) -> tuple[float, str]:
        os.listdir(os.path.join(mp, "lim"))  # `ls` of the parent
        t0 = time.monotonic()
        with os.scandir(os.path.join(mp, "lim", "wide")) as it:
            next(it)
            first = time.monotonic() - t0
            n = 1 + sum(1 for _ in it)
        whole = time.monotonic() - t0
        broken = "" if n == self.s.wide else f"BROKEN: {n} of {self.s.wide} entries; "
        return first, f"{broken}first entry; all {n} in {whole:.2f} s"

    def seek_storm(self, mp: str) -> tuple[float, str]:
        names = ":".join(f"f{i:02d}.bin" for i in range(STORM_FILES))
        cmd = ["fio", "--name=storm", "--rw=randread", "--bs=1m", "--ioengine=psync",
               f"--directory={mp}/lim/storm", f"--filename={names}", "--numjobs=4",
               "--openfiles=4", "--file_service_type=random", "--readonly", "--invalidate=1",
               f"--size={STORM_FILES * self.s.storm_size}", "--time_based",
               f"--runtime={self.s.storm_runtime}", "--output-format=json"]  # fmt: skip
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=self.s.storm_runtime + 120)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return time.monotonic() - t0, "BROKEN: fio hung, killed"
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            return wall, f"BROKEN: fio failed: {err.decode()[-200:]}"
        jobs = json.loads(out)["jobs"]
        ios = sum(j["read"]["total_ios"] for j in jobs)
        return wall, f"{ios} reads of 1 MiB, {ios / max(wall, 1e-9):.0f}/s"

    def many_readers(self, mp: str) -> tuple[float, str]:
        paths = [os.path.join(mp, "lim", "readers", f"r{i:02d}.bin") for i in range(READERS)]
        local = threading.local()

        def one(p: str) -> int:
            if not hasattr(local, "buf"):
                local.buf = bytearray(1 * MiB)
            return mb.read_file(p, local.buf)

        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(READERS) as pool:
            n = sum(pool.map(one, paths))
        wall = time.monotonic() - t0
        want = READERS * self.s.reader_size
        broken = "" if n == want else f"BROKEN: read {n} of {want} bytes; "
        return wall, f"{broken}{n / MiB / wall:.0f} MiB/s, cache 64M"

    def first_4k(self, mp: str) -> tuple[float, str]:
        """The read's own latency (the data path's first bytes), timed apart from the lookups
        and the open, which are metadata round trips of their own."""
        t0 = time.monotonic()
        with open(os.path.join(mp, "lim", "big.bin"), "rb", buffering=0) as f:
            t1 = time.monotonic()
            n = len(f.read(4096))
            t2 = time.monotonic()
        note = f"first {n} bytes of a {self.s.big / MiB:.0f} MiB file; lookups+open {t1 - t0:.3f} s"
        return t2 - t1, note

    def direct_4k(self) -> Row:
        """One 4 KiB ranged GET on a fresh backend (a new connection), median of 5."""
        times = []
        for _ in range(5):
            b = self.backend()
            try:
                t0 = time.monotonic()
                b.read_range("lim/big.bin", 0, 4096)
                times.append(time.monotonic() - t0)
            finally:
                b.close()
        row = Row("direct", "first_4k", statistics.median(times), None,
                  note="one 4 KiB ranged GET, fresh connection, median of 5")  # fmt: skip
        self.record(row)
        return row

    def backend(self):
        from amlfs.backends import open_backend
        from amlfs.registry import BLOB, Credentials, DatastoreConfig

        ds = DatastoreConfig(name="bench", type=BLOB, account_name=mb.ACCOUNT,
                             container_name=CONTAINER, account_url=self.az.account_url,
                             protocol="http", credentials=Credentials(account_key=mb.KEY))  # fmt: skip
        return open_backend(ds)

    def tool_cases(self, tool: str) -> None:
        cases = self.args.cases
        if "first_entry" in cases:
            self.run(tool, "first_entry", self.first_entry)
        if "seek_storm" in cases:
            self.run(tool, "seek_storm", self.seek_storm)
            if tool == "rclone":  # aborted GETs leak Azurite descriptors (see mount.py)
                self.az = mb.restart_azurite(self.az)
        if "many_readers" in cases:
            self.run(tool, "many_readers", self.many_readers, cache="64M")
        if "first_4k" in cases:
            self.run(tool, "first_4k", self.first_4k)


# --- report -------------------------------------------------------------------------------------


def table(rows: list[Row], cache_bytes: int) -> list[str]:
    head = (
        f"{'case':<13} {'tool':<7} {'time':>9} {'CPU':>7} {'peak RSS':>9} {'fetch/read':>10}  note"
    )
    lines = [head, "-" * len(head)]
    for case in CASES:
        if not any(r.case == case for r in rows):
            continue
        for r in (r for r in rows if r.case == case):
            cpu = f"{r.cpu:.2f}s" if r.cpu is not None else "-"
            rss = f"{r.rss_peak / MiB:.0f}Mi" if r.rss_peak else "-"
            ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
            lines.append(f"{case:<13} {r.tool:<7} {r.wall:8.3f}s {cpu:>7} {rss:>9} {ratio:>10}"
                         f"  {r.note}")  # fmt: skip
        a = next((r for r in rows if r.case == case and r.tool == "amlfs"), None)
        d = next((r for r in rows if r.case == case and r.tool == "direct"), None)
        goal = GOALS[case]
        if case == "first_4k" and a and d and d.wall:
            goal += f"; amlfs = {a.wall / d.wall:.2f}x"
        if case == "seek_storm":
            goal += f" (cache {cache_bytes / MiB:.0f} MiB)"
        lines.append(f"{'':<13} goal: {goal}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    p.add_argument("--tools", default="amlfs,rclone", help="comma-separated subset")
    p.add_argument("--cache-size", default="1GiB", help="amlfs --cache-size except many_readers")
    p.add_argument("--workdir", help="scratch directory (default: a fresh temp directory)")
    p.add_argument(
        "--wide",
        type=int,
        help="entries of the wide directory (default 100,000; Azurite on disk uploads ~60/s)",
    )
    args = p.parse_args()
    args.cases = set(args.cases.split(","))
    tools = [t for t in args.tools.split(",") if t]
    if unknown := args.cases - set(CASES):
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    if unknown := set(tools) - {"amlfs", "rclone"}:
        p.error(f"unknown tools: {', '.join(sorted(unknown))}")
    s = Sizes.pick(args.quick)
    if args.wide:
        s.wide = args.wide
    work = Path(args.workdir or tempfile.mkdtemp(prefix="amlfs-limits-"))
    work.mkdir(parents=True, exist_ok=True)
    bench = Limits(args, s, work)
    t0 = time.monotonic()
    try:
        bench.az = start_bench_azurite()
        mb.write_registry(bench.registry, bench.az, work)
        print(f"upload to Azurite on port {bench.az.port} ...", flush=True)
        upload(bench.az, s)
        print(f"ready after {time.monotonic() - t0:.0f} s", flush=True)
        if "first_4k" in args.cases:
            bench.direct_4k()
        for tool in tools:
            bench.tool_cases(tool)
    finally:
        if mb.is_mounted(bench.mp):
            subprocess.run(["fusermount3", "-uz", bench.mp], check=False)
        if bench.az is not None:
            bench.az.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cache_bytes = mb._bytes(args.cache_size)
    lines = table(bench.rows, cache_bytes)
    print()
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"mount-limits-{'quick-' if args.quick else ''}{stamp}.json"
    doc = {
        "when": stamp,
        "sizes": asdict(s),
        "cache_bytes": cache_bytes,
        "host_cpus": os.cpu_count(),
        "rows": [asdict(r) for r in bench.rows],
        "table": lines,
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwritten {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
