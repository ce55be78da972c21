"""Mount benchmark (issue #3): amlfs beside `rclone mount` on the same Azurite data, in one run.

Cases: cold sequential read of one large blob (a fresh mount, i.e. a new daemon, per cold case;
the system page cache is never dropped), warm re-read on the same mount, many 128 KiB files read
serially and with 8 readers, `ls -lR` of a 10,000-file tree, fio 4 KiB random reads, and the
daemon's peak RSS. Every case reports wall time and the daemon's CPU seconds (utime + stime of
/proc/PID/stat before and after). References: parallel ranged GETs straight from Azurite (the
ceiling), single-threaded 4 KiB ranged GETs through the SDK (the random-read reference), and a
mount of a `local` datastore beside reading its directory directly (the daemon's own overhead).

    .venv/bin/python benchmarks/mount.py [--small] [--cases a,b] [--tools amlfs,rclone]
                                         [--backends blob,fileshare,adls]
                                         [--repeat N] [--disk-cache]

`--repeat N` runs the amlfs and rclone cases N times, interleaved, and reports medians (the
machine is shared: compare the ratios). `--disk-cache` adds amlfs with its disk tier on (as at
its defaults; every other amlfs row runs with --no-disk-cache).

`--backends` adds amlfs-only rows (no peer reaches these servers) for an Azure File share and an
ADLS Gen2 filesystem served by the protocol-level test servers of tests/servers, each in a child
process (so that its CPU seconds are measured apart and it never shares a GIL with the reader):
cold sequential read of a 256 MiB file, and the small files read serially. The default is blob
only; without `blob` neither Azurite nor rclone runs.

Prints a table and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    ACCOUNT,
    KEY,
    PROTOCOL_BACKENDS,
    RESULTS,
    Azurite,
    ProtocolServer,
    amlfs_cmd,
    container_sas_url,
    rclone_remote,
    restart_azurite,
    start_bench_azurite,
    write_protocol_registry,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CONTAINER = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CASES = ("cold_seq", "warm_seq", "small_serial", "small_par8", "ls_lR", "fio_rand")
BACKENDS = ("blob", *PROTOCOL_BACKENDS)
PROTOCOL_CASES = ("cold_seq", "small_serial")
PROTOCOL_BIG = 256 * MiB


@dataclass
class Sizes:
    big: int
    small_count: int
    small_size: int
    tree_dirs: int
    tree_files: int
    fio_runtime: int

    @classmethod
    def pick(cls, small: bool) -> Sizes:
        if small:
            return cls(128 * MiB, 200, 128 * KiB, 10, 100, 5)
        return cls(1 * GiB, 2000, 128 * KiB, 100, 100, 20)


@dataclass
class Result:
    tool: str  # amlfs | rclone | amlfs-local | direct | sdk | backend
    case: str
    wall: float  # seconds
    cpu: float | None  # the daemon's (or, for references, this process's) CPU seconds
    nbytes: int = 0
    ops: int = 0  # requests served (fio reads, files read)
    rss_peak: int | None = None  # the daemon's VmHWM in bytes, read at the end of the case
    note: str = ""
    server_cpu: float | None = None  # Azurite's CPU seconds during the case
    load: float | None = None  # the 1-minute load average at the end (other work on the host)
    extra: dict = field(default_factory=dict)

    @property
    def rate(self) -> float | None:
        return self.ops / self.wall if self.ops and self.wall else None


# --- data --------------------------------------------------------------------------------------


def make_data(root: Path, s: Sizes) -> None:
    """The data set on local disk: uploaded to Azurite, and the `local` datastore's directory."""
    (root / "big").mkdir(parents=True)
    (root / "small").mkdir()
    rnd = random.Random(7)
    chunk = os.urandom(8 * MiB)
    with open(root / "big" / "big.bin", "wb") as f:
        for i in range(s.big // len(chunk)):
            # Distinct blocks (a cache keyed on content could not cheat), fast to make.
            f.write(i.to_bytes(8, "little") + chunk[8:])
    for i in range(s.small_count):
        (root / "small" / f"f{i:05d}.bin").write_bytes(rnd.randbytes(s.small_size))
    for d in range(s.tree_dirs):
        sub = root / "tree" / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(s.tree_files):
            (sub / f"f{i:03d}.txt").write_bytes(b"x" * (i % 97))


def upload(az: Azurite, root: Path, cases: set[str]) -> None:
    """Upload the data set (only `big/` when the cases read nothing else)."""
    svc = az.service()
    cc = svc.get_container_client(CONTAINER)
    if not cc.exists():
        cc.create_container()
    top = root / "big" if cases <= {"cold_seq", "warm_seq"} else root
    files = [p for p in top.rglob("*") if p.is_file()]

    def put(p: Path) -> None:
        with open(p, "rb") as f:
            cc.upload_blob(
                p.relative_to(root).as_posix(),
                f,
                length=p.stat().st_size,
                overwrite=True,
                max_concurrency=4,
            )

    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, files))


# --- processes -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (whole thread group)


def vm_hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def settle_disk_writes(mp: str, timeout: float = 20.0) -> None:
    """Until the daemon's count of chunks stored (or given up) stops growing for 0.5 s."""
    last, since, deadline = None, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(os.path.join(mp, ".__amlfs_stats__")) as f:
            c = json.load(f).get("counters", {})
        now = sum(c.get(k, 0) for k in ("disk_writes", "disk_write_behind", "disk_write_skipped"))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= 0.5:
            return
        time.sleep(0.1)


def is_mounted(mp: str) -> bool:
    mp = os.path.realpath(mp)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mp for line in f)


class Mount:
    """One live mount of one tool; `pid` is its daemon."""

    def __init__(self, tool: str, mp: str, pid: int, proc: subprocess.Popen | None = None):
        self.tool, self.mp, self.pid, self.proc = tool, mp, pid, proc

    def unmount(self) -> None:
        if self.tool.startswith("amlfs"):
            subprocess.run(amlfs_cmd("unmount", self.mp), check=False, capture_output=True)
        else:
            subprocess.run(["fusermount3", "-u", self.mp], check=False, capture_output=True)
            if self.proc is not None:
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        if is_mounted(self.mp):
            subprocess.run(["fusermount3", "-uz", self.mp], check=False, capture_output=True)


def mount_amlfs(
    tool: str, registry: str, source: str, mp: str, cache: str, disk_dir: str | None = None
) -> Mount:
    # --no-disk-cache: every case measures the network path (a fresh mount would read what the
    # previous case left in the disk cache; benchmarks/diskcache.py measures that). With
    # `disk_dir` (tool amlfs-disk): the disk tier on, in that directory emptied first, so a
    # cold read also stores every chunk, as at amlfs's defaults.
    disk = ["--no-disk-cache"]
    if disk_dir is not None:
        shutil.rmtree(disk_dir, ignore_errors=True)
        disk = ["--cache-dir", disk_dir]
    cmd = amlfs_cmd("--registry", registry, "mount", source, mp, "--cache-size", cache, *disk)
    subprocess.run(cmd, check=True, capture_output=True)
    with open(os.path.join(mp, ".__amlfs_stats__")) as f:
        pid = json.load(f)["pid"]
    return Mount(tool, mp, pid)


def mount_rclone(sas_url: str, mp: str, log: str) -> Mount:
    # rclone's defaults, plus --read-only and a log file; nothing else is needed against Azurite.
    cmd = [
        "rclone",
        "mount",
        rclone_remote(sas_url) + CONTAINER,
        mp,
        "--read-only",
        "--log-file",
        log,
    ]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not is_mounted(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"rclone mount did not come up; see {log}")
        time.sleep(0.05)
    return Mount("rclone", mp, proc.pid, proc)


# --- workloads (the client side runs in this process or in fio/ls) ------------------------------


def read_file(path: str, buf: bytearray) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n


def read_seq(path: str) -> int:
    return read_file(path, bytearray(1 * MiB))


def read_many(directory: str, threads: int) -> tuple[int, int]:
    """List `directory` and read every file in name order, with `threads` readers."""
    names = sorted(os.listdir(directory))
    paths = [os.path.join(directory, n) for n in names]
    local = threading.local()

    def one(p: str) -> int:
        if not hasattr(local, "buf"):
            local.buf = bytearray(256 * KiB)
        return read_file(p, local.buf)

    if threads == 1:
        return sum(map(one, paths)), len(paths)
    with cf.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, paths)), len(paths)


def run_fio(path: str, size: int, runtime: int, timeout: float) -> tuple[float, int, str]:
    """fio 4 KiB buffered random reads for `runtime` s: (reads/s, reads, note)."""
    cmd = ["fio", "--name=r", "--rw=randread", "--bs=4k", f"--size={size}", "--readonly",
           f"--runtime={runtime}", "--time_based", "--ioengine=psync", "--invalidate=0",
           f"--filename={path}", "--output-format=json"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        return 0.0, 0, f"hung: killed after {timeout:.0f} s"
    if proc.returncode != 0:
        return 0.0, 0, f"fio failed: {err.decode()[-300:]}"
    job = json.loads(out)["jobs"][0]["read"]
    return float(job["iops"]), int(job["total_ios"]), ""


def run_ls(directory: str) -> int:
    out = subprocess.run(["ls", "-lR", directory], check=True, capture_output=True).stdout
    return out.count(b"\n")


# --- cases ----------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, s: Sizes, work: Path):
        self.args, self.s, self.work = args, s, work
        self.results: list[Result] = []
        self.az: Azurite | None = None
        self.registry = str(work / "registry.yaml")
        self.mp = str(work / "mnt")
        os.makedirs(self.mp, exist_ok=True)

    def record(self, r: Result) -> None:
        r.load = os.getloadavg()[0]
        self.results.append(r)
        rate = f" {r.rate:9.1f}/s" if r.rate else ""
        rss = f" rss={r.rss_peak / MiB:.0f}MiB" if r.rss_peak else ""
        cpu = f"{r.cpu:7.2f}" if r.cpu is not None else "      -"
        who = "server" if r.tool in PROTOCOL_TOOLS else "azurite"
        srv = f" {who}={r.server_cpu:.2f}s" if r.server_cpu is not None else ""
        print(
            f"  {r.tool:<12} {r.case:<14} wall={r.wall:7.2f}s cpu={cpu}s{srv}{rate}{rss}"
            f" load={r.load:.1f} {r.note}"
        )

    def mount(self, tool: str) -> Mount:
        if tool == "amlfs":
            return mount_amlfs(tool, self.registry, "bench:", self.mp, self.args.cache_size)
        if tool == "amlfs-local":
            return mount_amlfs(tool, self.registry, "data:", self.mp, self.args.cache_size)
        if tool == "amlfs-disk":
            return mount_amlfs(tool, self.registry, "bench:", self.mp, self.args.cache_size,
                               str(self.work / "diskcache"))  # fmt: skip
        assert self.az is not None
        sas = container_sas_url(self.az, CONTAINER)
        return mount_rclone(sas, self.mp, str(self.work / "rclone.log"))

    def server_cpu(self, pid: int | None = None) -> float:
        if pid is not None:
            return cpu_seconds(pid)
        return cpu_seconds(self.az.proc.pid) if self.az is not None else 0.0

    def measure(self, m: Mount, case: str, fn, server_pid: int | None = None) -> Result:
        s0, c0, t0 = self.server_cpu(server_pid), cpu_seconds(m.pid), time.monotonic()
        out = fn()
        wall = time.monotonic() - t0
        if m.tool == "amlfs-disk":
            settle_disk_writes(m.mp)  # the chunks still being stored cost CPU too
        cpu = cpu_seconds(m.pid) - c0
        nbytes, ops = out if isinstance(out, tuple) else (out, 0)
        r = Result(m.tool, case, wall, cpu, nbytes, ops, vm_hwm(m.pid))
        if not m.tool.endswith("local"):
            r.server_cpu = self.server_cpu(server_pid) - s0
        if m.tool.startswith("amlfs"):
            try:
                with open(os.path.join(m.mp, ".__amlfs_stats__")) as f:
                    r.extra = json.load(f).get("counters", {})
            except OSError:
                pass
        self.record(r)
        return r

    def fresh(self, tool: str, case: str, fn) -> Result:
        m = self.mount(tool)
        try:
            return self.measure(m, case, fn)
        finally:
            m.unmount()

    def tool_cases(self, tool: str, root: str) -> None:
        cases, s = self.args.cases, self.s
        if "cold_seq" in cases or "warm_seq" in cases:
            m = self.mount(tool)
            try:
                self.measure(m, "cold_seq", lambda: read_seq(os.path.join(m.mp, "big/big.bin")))
                if "warm_seq" in cases:
                    self.measure(m, "warm_seq", lambda: read_seq(os.path.join(m.mp, "big/big.bin")))
            finally:
                m.unmount()
        if "small_serial" in cases:
            self.fresh(tool, "small_serial", lambda: read_many(self.mp + "/small", 1))
        if "small_par8" in cases:
            self.fresh(tool, "small_par8", lambda: read_many(self.mp + "/small", 8))
        if "ls_lR" in cases and tool != "amlfs-local":
            self.fresh(tool, "ls_lR", lambda: (0, run_ls(self.mp + "/tree")))
        if "fio_rand" in cases and tool != "amlfs-local":
            timeout = s.fio_runtime + 60

            def fio():
                iops, n, note = run_fio(self.mp + "/big/big.bin", s.big, s.fio_runtime,
                                        timeout)  # fmt: skip
                self._fio_note = note
                return n * 4 * KiB, n

            self._fio_note = ""
            r = self.fresh(tool, "fio_rand", fio)
            r.note = self._fio_note
            if tool == "rclone":
                # rclone aborts a long ranged GET per random read; Azurite leaks a descriptor per
                # abort and may stop answering. Restart it so later runs start clean.
                assert self.az is not None
                self.az = restart_azurite(self.az)

    def protocol_cases(self, kind: str, data: Path) -> None:
        """amlfs on a File share or ADLS Gen2 test server (a child process): cold sequential read
        of a 256 MiB file, then the small files read serially, each on a fresh mount."""
        tool = f"amlfs-{kind}"
        print(f"start the {kind} server and load its data ...", flush=True)
        small = [(f"small/{p.name}", str(p)) for p in sorted((data / "small").iterdir())]
        big = {"big/big.bin": PROTOCOL_BIG}
        with ProtocolServer(kind, CONTAINER, files=small, synthetic=big) as srv:
            registry = str(self.work / f"registry-{kind}.yaml")
            write_protocol_registry(registry, srv.entry)
            want = {
                "cold_seq": PROTOCOL_BIG,
                "small_serial": self.s.small_count * self.s.small_size,
            }
            work = {
                "cold_seq": lambda: read_seq(os.path.join(self.mp, "big/big.bin")),
                "small_serial": lambda: read_many(os.path.join(self.mp, "small"), 1),
            }
            for case in PROTOCOL_CASES:
                if case not in self.args.cases:
                    continue
                m = mount_amlfs(tool, registry, f"{kind}:", self.mp, self.args.cache_size)
                try:
                    r = self.measure(m, case, work[case], server_pid=srv.pid)
                finally:
                    m.unmount()
                if r.nbytes != want[case]:  # a short read is a broken run, not a result
                    r.note = f"BROKEN: read {r.nbytes} of {want[case]} bytes"

    # --- references ------------------------------------------------------------------------

    def backend(self):
        from amlfs.backends import open_backend
        from amlfs.registry import BLOB, Credentials, DatastoreConfig

        assert self.az is not None
        ds = DatastoreConfig(name="bench", type=BLOB, account_name=ACCOUNT,
                             container_name=CONTAINER, account_url=self.az.account_url,
                             protocol="http", credentials=Credentials(account_key=KEY))  # fmt: skip
        return open_backend(ds)

    def ceiling(self) -> None:
        """Parallel 8 MiB ranged GETs of the big blob straight from Azurite (16 at a time)."""
        b = self.backend()
        try:
            size = self.s.big
            offs = range(0, size, 8 * MiB)
            s0, c0, t0 = self.server_cpu(), time.process_time(), time.monotonic()
            with cf.ThreadPoolExecutor(16) as pool:
                n = sum(pool.map(lambda o: len(b.read_range("big/big.bin", o, 8 * MiB)), offs))
            self.record(Result("backend", "ceiling_seq", time.monotonic() - t0,
                               time.process_time() - c0, n, note="16 x 8 MiB GETs",
                               server_cpu=self.server_cpu() - s0))  # fmt: skip
            names = [f"small/f{i:05d}.bin" for i in range(self.s.small_count)]
            for threads in (1, 8, 16):
                s0, c0, t0 = self.server_cpu(), time.process_time(), time.monotonic()
                with cf.ThreadPoolExecutor(threads) as pool:
                    n = sum(pool.map(lambda p: len(b.read_range(p, 0, self.s.small_size)), names))
                r = Result("backend", f"ceiling_small{threads}", time.monotonic() - t0,
                           time.process_time() - c0, n, len(names), note=f"{threads} threads",
                           server_cpu=self.server_cpu() - s0)  # fmt: skip
                self.record(r)
        finally:
            b.close()

    def sdk_random(self) -> None:
        """4 KiB ranged GETs at random offsets, one at a time (fio's iodepth 1), via the SDK."""
        b = self.backend()
        try:
            bc = b._cc.get_blob_client("big/big.bin")
            rnd = random.Random(1)
            blocks = self.s.big // (4 * KiB)
            duration = min(10, self.s.fio_runtime)
            for tool, get in (
                ("sdk", lambda o: bc.download_blob(offset=o, length=4096).readall()),
                ("backend", lambda o: b.read_range("big/big.bin", o, 4096)),
            ):
                n, c0, t0 = 0, time.process_time(), time.monotonic()
                while time.monotonic() - t0 < duration:
                    get(rnd.randrange(blocks) * 4096)
                    n += 1
                self.record(Result(tool, "random_4k", time.monotonic() - t0,
                                   time.process_time() - c0, n * 4096, n))  # fmt: skip
        finally:
            b.close()

    def direct(self, data: Path) -> None:
        """The local data read straight from its directory (page cache: it was just written)."""
        for case, fn in (
            ("cold_seq", lambda: read_seq(str(data / "big/big.bin"))),
            ("small_serial", lambda: read_many(str(data / "small"), 1)),
            ("small_par8", lambda: read_many(str(data / "small"), 8)),
        ):
            if case not in self.args.cases and not (
                case == "cold_seq" and "warm_seq" in self.args.cases
            ):
                continue
            c0, t0 = time.process_time(), time.monotonic()
            out = fn()
            nbytes, ops = out if isinstance(out, tuple) else (out, 0)
            self.record(Result("direct", case, time.monotonic() - t0,
                               time.process_time() - c0, nbytes, ops))  # fmt: skip


# --- File share and ADLS Gen2 on the protocol-level test servers ---------------------------------

PROTOCOL_TOOLS = tuple(f"amlfs-{k}" for k in PROTOCOL_BACKENDS)

# --- report -------------------------------------------------------------------------------------


def _find(results: list[Result], tool: str, case: str) -> Result | None:
    """The result of `tool` on `case`; with --repeat, the medians of its runs (wall, CPU and
    server CPU each)."""
    runs = [r for r in results if r.tool == tool and r.case == case]
    if len(runs) <= 1:
        return runs[0] if runs else None

    def med(xs: list) -> float | None:
        xs = sorted(x for x in xs if x is not None)
        return statistics.median(xs) if xs else None

    m = Result(**{**asdict(runs[0]), "extra": {}})
    m.wall = med([r.wall for r in runs]) or 0.0
    m.cpu = med([r.cpu for r in runs])
    m.server_cpu = med([r.server_cpu for r in runs])
    m.note = f"median of {len(runs)}"
    return m


def table(results: list[Result], cache_bytes: int) -> list[str]:
    """case | amlfs wall | amlfs CPU | rclone wall | rclone CPU | ratio (rclone / amlfs)."""
    head = (
        f"{'case':<14} {'amlfs wall':>11} {'amlfs CPU':>10} {'rclone wall':>12} "
        f"{'rclone CPU':>11} {'wall ratio':>11} {'CPU ratio':>10}  note"
    )
    lines = [head, "-" * len(head)]

    def f(x: float | None, unit: str = "s") -> str:
        return "-" if x is None else f"{x:.2f}{unit}"

    for case in CASES:
        a, r = _find(results, "amlfs", case), _find(results, "rclone", case)
        if a is None and r is None:
            continue
        note = ""
        if case == "fio_rand":
            # Fixed runtime: compare reads per second (higher is better).
            wa, wr = (a.rate if a else None), (r.rate if r else None)
            ratio = f"{wa / wr:.2f}x" if wa and wr else "-"
            ref = _find(results, "sdk", "random_4k")
            note = (
                f"reads/s; SDK direct 4 KiB GETs: {ref.rate:.0f}/s"
                if ref and ref.rate
                else "reads/s"
            )
            if ref and ref.rate and wa:
                note += f" (amlfs = {wa / ref.rate:.2f}x SDK)"
            if r and r.note:
                note += f"; rclone {r.note}"
            lines.append(f"{case:<14} {f(wa, '/s'):>11} {f(a.cpu if a else None):>10} "
                         f"{f(wr, '/s'):>12} {f(r.cpu if r else None):>11} {ratio:>11} "
                         f"{_cpu_ratio(a, r):>10}  {note}")  # fmt: skip
            continue
        ratio = f"{r.wall / a.wall:.2f}x" if a and r and a.wall else "-"
        if a and a.nbytes:
            note = f"amlfs {a.nbytes / MiB / a.wall:.0f} MiB/s"
            if r and r.nbytes:
                note += f", rclone {r.nbytes / MiB / r.wall:.0f} MiB/s"
        if case == "cold_seq" and a and r and a.cpu and r.cpu:
            note += (f"; CPU/GiB amlfs {a.cpu / (a.nbytes / GiB):.2f}s, "
                     f"rclone {r.cpu / (r.nbytes / GiB):.2f}s")  # fmt: skip
            if a.server_cpu is not None and r.server_cpu is not None:
                note += f"; Azurite CPU {a.server_cpu:.2f}s vs {r.server_cpu:.2f}s"
        if a and a.note.startswith("median"):
            note += f" ({a.note})"
        lines.append(f"{case:<14} {f(a.wall if a else None):>11} {f(a.cpu if a else None):>10} "
                     f"{f(r.wall if r else None):>12} {f(r.cpu if r else None):>11} {ratio:>11} "
                     f"{_cpu_ratio(a, r):>10}  {note}")  # fmt: skip
    for case in CASES:
        d, r = _find(results, "amlfs-disk", case), _find(results, "rclone", case)
        if d is None:
            continue
        ratio = f"{r.wall / d.wall:.2f}x" if r and d.wall else "-"
        lines.append(f"{case + ' (disk)':<14} {f(d.wall):>11} {f(d.cpu):>10} "
                     f"{f(r.wall if r else None):>12} {f(r.cpu if r else None):>11} {ratio:>11} "
                     f"{_cpu_ratio(d, r):>10}  amlfs with its disk tier on (stores every chunk)"
                     f"{'; ' + d.note if d.note else ''}")  # fmt: skip
    rss = [x.rss_peak for x in results if x.tool == "amlfs" and x.rss_peak]
    rrss = [x.rss_peak for x in results if x.tool == "rclone" and x.rss_peak]
    if rss:
        lines.append(f"{'peak RSS':<14} {max(rss) / MiB:>9.0f}Mi {'':>10} "
                     f"{(max(rrss) / MiB if rrss else 0):>10.0f}Mi {'':>11} {'':>10}  "
                     f"budget {cache_bytes / MiB:.0f} MiB + 150 MiB")  # fmt: skip
    proto = [r for r in results if r.tool in PROTOCOL_TOOLS]
    if proto:
        lines.append("")
        lines.append("other backends, amlfs only (tests/servers in a child process; daemon CPU, "
                     "server CPU):")  # fmt: skip
        for r in proto:
            speed = f"{r.nbytes / MiB / r.wall:6.0f} MiB/s" if r.nbytes and r.wall else ""
            if r.case == "small_serial" and r.rate:
                speed += f" {r.rate:6.0f} files/s"
            lines.append(f"  {r.tool:<16} {r.case:<14} {r.wall:7.2f}s cpu {f(r.cpu):>6} "
                         f"server {f(r.server_cpu):>6}  {speed} {r.note}")  # fmt: skip
    lines.append("")
    lines.append("references (wall, CPU of the reading process):")
    for r in results:
        if r.tool in ("amlfs", "amlfs-disk", "rclone", *PROTOCOL_TOOLS):
            continue
        extra = f"{r.nbytes / MiB / r.wall:8.0f} MiB/s" if r.nbytes and not r.ops else ""
        if r.rate:
            extra = f"{r.rate:8.0f} ops/s"
        srv = f"azurite CPU {r.server_cpu:.2f}s" if r.server_cpu is not None else ""
        lines.append(
            f"  {r.tool:<12} {r.case:<16} {r.wall:7.2f}s {f(r.cpu):>7} {extra} {srv} {r.note}"
        )
    return lines


def _cpu_ratio(a: Result | None, r: Result | None) -> str:
    if not (a and r and a.cpu is not None and r.cpu):
        return "-"
    # Per byte served, so that fixed-runtime cases compare fairly.
    pa = a.cpu / max(1, a.nbytes)
    pr = r.cpu / max(1, r.nbytes)
    return f"{pa / pr:.2f}x"


def write_registry(path: str, az: Azurite, data: Path) -> None:
    import yaml

    doc = {
        "default_datastore": "bench",
        "datastores": [
            {"name": "bench", "type": "azure_blob", "account_name": ACCOUNT,
             "container_name": CONTAINER, "account_url": az.account_url, "protocol": "http",
             "credentials": {"account_key": KEY}},
            {"name": "data", "type": "local", "path": str(data)},
        ],
    }  # fmt: skip
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a quick development run")
    p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset")
    p.add_argument("--tools", default="amlfs,rclone,local,refs", help="comma-separated subset")
    p.add_argument("--cache-size", default="1GiB", help="amlfs --cache-size (default 1GiB)")
    p.add_argument(
        "--backends",
        default="blob",
        help="comma-separated subset of blob,fileshare,adls (default blob; fileshare and adls "
        "are amlfs-only rows on the tests/servers protocol servers)",
    )
    p.add_argument("--workdir", help="keep data here (default: a fresh temp directory)")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the amlfs and rclone cases this many times, interleaved (the table shows "
        "medians; meant with --cases cold_seq on a busy machine)",
    )
    p.add_argument(
        "--disk-cache",
        action="store_true",
        help="also run amlfs with its disk tier on (a fresh cache directory per mount), as at "
        "its defaults: a cold read then stores every chunk",
    )
    args = p.parse_args()
    args.cases = set(args.cases.split(","))
    tools = set(args.tools.split(","))
    if unknown := args.cases - set(CASES):
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    backends = [b for b in args.backends.split(",") if b]
    if not backends:
        p.error("--backends: name at least one of " + ",".join(BACKENDS))
    if unknown := set(backends) - set(BACKENDS):
        p.error(f"unknown backends: {', '.join(sorted(unknown))}")
    s = Sizes.pick(args.small)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="amlfs-mountbench-"))
    work.mkdir(parents=True, exist_ok=True)
    data = work / "data"
    bench = Bench(args, s, work)
    t0 = time.monotonic()
    try:
        print(f"data in {data} ...", flush=True)
        if not data.exists():
            make_data(data, s)
        if "blob" in backends:
            # On disk, not in memory: a 1 GiB blob in node's heap would distort Azurite (and RSS).
            bench.az = start_bench_azurite()
            write_registry(bench.registry, bench.az, data)
            print(f"upload to Azurite on port {bench.az.port} ...", flush=True)
            upload(bench.az, data, args.cases)
            print(f"ready after {time.monotonic() - t0:.0f} s", flush=True)
            if "refs" in tools:
                bench.ceiling()
                if "fio_rand" in args.cases:
                    bench.sdk_random()
                bench.direct(data)
            if "local" in tools:
                bench.tool_cases("amlfs-local", str(data))
            order = [t for t in ("amlfs", "rclone") if t in tools]
            if args.disk_cache and "amlfs" in tools:
                order.insert(1, "amlfs-disk")
            for i in range(max(1, args.repeat)):
                if args.repeat > 1:
                    print(f"round {i + 1} of {args.repeat}", flush=True)
                for tool in order:
                    bench.tool_cases(tool, str(data))
        for kind in PROTOCOL_BACKENDS:
            if kind in backends:
                bench.protocol_cases(kind, data)
    finally:
        if is_mounted(bench.mp):
            subprocess.run(["fusermount3", "-uz", bench.mp], check=False)
        if bench.az is not None:
            bench.az.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    cache_bytes = _bytes(args.cache_size)
    lines = table(bench.results, cache_bytes)
    print()
    print("\n".join(lines))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"mount-{'small-' if args.small else ''}{stamp}.json"
    doc = {
        "when": stamp,
        "sizes": asdict(s),
        "cache_bytes": cache_bytes,
        "azurite": "on-disk persistence (--location), ulimit -n raised to the hard limit",
        "rclone": subprocess.run(
            ["rclone", "version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "rclone_options": "defaults + --read-only --log-file",
        "host_cpus": os.cpu_count(),
        "backends": backends,
        "protocol_servers": "tests/servers (in memory, one child process each, ThreadingHTTPServer)"
        if set(backends) & set(PROTOCOL_BACKENDS)
        else None,
        "results": [asdict(r) for r in bench.results],
        "table": lines,
    }
    out.write_text(json.dumps(doc, indent=2))
    print(f"\nwritten {out}")
    return 0


def _bytes(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = {"k": KiB, "m": MiB, "g": GiB}.get(t[-1:], 1)
    return int(t.rstrip("kmg")) * mult


if __name__ == "__main__":
    sys.exit(main())
