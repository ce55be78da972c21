"""Disk cache benchmark (issue #11): amlfs with its disk tier beside `rclone mount
--vfs-cache-mode full`, on the same Azurite data, in one run.

Workloads: a data loader's epoch (2000 x 128 KiB files in shuffled order, 8 reader threads) and
a sequential read of a 1 GiB file (1 MiB reads). Rows, each with wall time, the daemon's CPU
seconds and Azurite's:

- epoch1: a fresh daemon, an empty cache directory (the network);
- epoch2: the same daemon again;
- nextjob: the daemon unmounted, a new one on the same cache directory (the next job on the node);
- amlfs with --no-disk-cache: epoch1 and nextjob (what the disk tier costs and saves);
- staged: `amlfs stage` of the same path to local disk, then the same reads of the local copy;
- preload: `amlfs mount --preload` on an empty cache, the time until `preload.state` is done
  while one epoch is read through the mount meanwhile; beside `amlfs stage` of the same path
  and `amlfs cache warm` (no mount).

The system page cache is never dropped (other work shares the machine), so "from disk" is mostly
from the page cache for every tool alike.

    .venv/bin/python benchmarks/diskcache.py [--small] [--tools amlfs,rclone]

Prints a table and the goals' ratios, and writes JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS,
    amlfs_cmd,
    container_sas_url,
    make_registry,
    rclone_remote,
    start_bench_azurite,
)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
CONTAINER = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Row:
    tool: str
    workload: str  # epoch | seq | preload | stage | warm
    case: str
    wall: float
    cpu: float | None  # the daemon's (or the command's) CPU seconds
    server_cpu: float
    nbytes: int = 0
    note: str = ""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    r = os.times()
    return r.children_user + r.children_system


def is_mounted(mp: str) -> bool:
    mp = os.path.realpath(mp)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mp for line in f)


# --- data and workloads -------------------------------------------------------------------------


def make_data(az, files: int, size: int, big: int) -> None:
    cc = az.service().get_container_client(CONTAINER)
    cc.create_container()

    def put(i: int) -> None:
        cc.upload_blob(f"small/f{i:05d}.bin", os.urandom(size))

    with cf.ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(files)))
    chunk = os.urandom(8 * MiB)

    def blocks():
        for i in range(big // len(chunk)):
            yield i.to_bytes(8, "little") + chunk[8:]

    cc.upload_blob("big/big.bin", b"".join(blocks()), max_concurrency=8)


def read_file(path: str, buf: bytearray) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n


def epoch(root: str, threads: int = 8, seed: int = 1) -> int:
    """Every file of root/small in shuffled order, `threads` readers (a data loader's epoch)."""
    d = os.path.join(root, "small")
    paths = [os.path.join(d, n) for n in os.listdir(d)]
    random.Random(seed).shuffle(paths)
    local = threading.local()

    def one(p: str) -> int:
        if not hasattr(local, "buf"):
            local.buf = bytearray(256 * KiB)
        return read_file(p, local.buf)

    with cf.ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, paths))


def seq(root: str) -> int:
    return read_file(os.path.join(root, "big", "big.bin"), bytearray(1 * MiB))


WORK = {"epoch": epoch, "seq": seq}


# --- mounts -------------------------------------------------------------------------------------


class Mount:
    def __init__(self, tool: str, mp: str, pid: int, proc: subprocess.Popen | None = None):
        self.tool, self.mp, self.pid, self.proc = tool, mp, pid, proc

    def unmount(self) -> None:
        if self.proc is None:
            subprocess.run(amlfs_cmd("unmount", self.mp), check=False, capture_output=True)
            deadline = time.monotonic() + 20
            while os.path.exists(f"/proc/{self.pid}") and time.monotonic() < deadline:
                time.sleep(0.05)
        else:
            subprocess.run(["fusermount3", "-u", self.mp], check=False, capture_output=True)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if is_mounted(self.mp):
            subprocess.run(["fusermount3", "-uz", self.mp], check=False, capture_output=True)

    def stats(self) -> dict:
        with open(os.path.join(self.mp, ".__amlfs_stats__")) as f:
            return json.load(f)


def mount_amlfs(registry: str, mp: str, cache_dir: str, *opts: str) -> Mount:
    cmd = amlfs_cmd("--registry", registry, "mount", "bench:", mp, "--cache-dir", cache_dir, *opts)
    subprocess.run(cmd, check=True, capture_output=True)
    with open(os.path.join(mp, ".__amlfs_stats__")) as f:
        pid = json.load(f)["pid"]
    return Mount("amlfs", mp, pid)


def mount_rclone(sas_url: str, mp: str, cache_dir: str, log: str) -> Mount:
    cmd = ["rclone", "mount", rclone_remote(sas_url) + CONTAINER, mp, "--read-only",
           "--vfs-cache-mode", "full", "--cache-dir", cache_dir, "--log-file", log]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not is_mounted(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"rclone mount did not come up; see {log}")
        time.sleep(0.05)
    return Mount("rclone-full", mp, proc.pid, proc)


# --- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.rows: list[Row] = []
        self.mp = str(work / "mnt")
        os.makedirs(self.mp)
        self.az = start_bench_azurite()
        self.registry = make_registry(str(work / "registry.yaml"), self.az, CONTAINER)

    def close(self) -> None:
        self.az.stop()

    def server(self) -> float:
        return cpu_seconds(self.az.proc.pid)

    def record(self, row: Row) -> Row:
        self.rows.append(row)
        cpu = f"{row.cpu:7.2f}" if row.cpu is not None else "      -"
        print(f"  {row.tool:<18} {row.workload:<8} {row.case:<9} wall={row.wall:7.2f}s"
              f" cpu={cpu}s azurite={row.server_cpu:6.2f}s {row.note}", flush=True)  # fmt: skip
        return row

    def measure(self, m: Mount, workload: str, case: str) -> Row:
        s0, c0, t0 = self.server(), cpu_seconds(m.pid), time.monotonic()
        n = WORK[workload](m.mp)
        wall = time.monotonic() - t0
        row = Row(m.tool, workload, case, wall, cpu_seconds(m.pid) - c0, self.server() - s0, n)
        if m.proc is None:
            c = m.stats()["counters"]
            row.note = (f"fetched={c.get('bytes_fetched', 0) / MiB:.0f}MiB"
                        f" disk_hits={c.get('disk_hits', 0)}")  # fmt: skip
        return self.record(row)

    def three(self, tool: str, mount, workload: str) -> None:
        """epoch1 and epoch2 on one daemon, then nextjob on a new one (same cache dir)."""
        m = mount()
        try:
            self.measure(m, workload, "epoch1")
            if tool != "amlfs-nodisk":
                self.measure(m, workload, "epoch2")
        finally:
            m.unmount()
        m = mount()
        try:
            self.measure(m, workload, "nextjob")
        finally:
            m.unmount()

    def fresh_dir(self, name: str) -> str:
        d = self.work / name
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return str(d)

    def run(self) -> None:
        for workload in ("epoch", "seq"):
            print(f"{workload}:", flush=True)
            self.rows_of(workload)
        if "amlfs" in self.args.tools:
            self.preload()

    def rows_of(self, workload: str) -> None:
        if "amlfs" in self.args.tools:
            cache = self.fresh_dir("amlfs-cache")
            self.three("amlfs", lambda: mount_amlfs(self.registry, self.mp, cache), workload)
            nodisk = self.fresh_dir("amlfs-nodisk")

            def mount_nodisk() -> Mount:
                m = mount_amlfs(self.registry, self.mp, nodisk, "--no-disk-cache")
                m.tool = "amlfs-nodisk"
                return m

            self.three("amlfs-nodisk", mount_nodisk, workload)
        if "rclone" in self.args.tools:
            rcache = self.fresh_dir("rclone-cache")
            sas = container_sas_url(self.az, CONTAINER)
            log = str(self.work / "rclone.log")
            self.three("rclone-full", lambda: mount_rclone(sas, self.mp, rcache, log), workload)
        self.staged(workload)

    def timed_cmd(self, tool: str, workload: str, case: str, cmd: list[str]) -> Row:
        s0, c0, t0 = self.server(), children_cpu(), time.monotonic()
        subprocess.run(cmd, check=True, capture_output=True)
        wall = time.monotonic() - t0
        return self.record(Row(tool, workload, case, wall, children_cpu() - c0,
                               self.server() - s0))  # fmt: skip

    def staged(self, workload: str) -> None:
        dest = self.fresh_dir("staged")
        sub = "small" if workload == "epoch" else "big"
        self.timed_cmd("amlfs-stage", workload, "stage",
                       amlfs_cmd("--registry", self.registry, "stage", f"bench:{sub}",
                                 os.path.join(dest, sub)))  # fmt: skip
        s0, t0 = self.server(), time.monotonic()
        n = WORK[workload](dest)
        self.record(Row("staged-local", workload, "read", time.monotonic() - t0, None,
                        self.server() - s0, n))  # fmt: skip

    def preload(self) -> None:
        print("preload (the small files):", flush=True)
        self.timed_cmd("amlfs-stage", "preload", "stage",
                       amlfs_cmd("--registry", self.registry, "stage", "bench:small",
                                 self.fresh_dir("staged2")))  # fmt: skip
        self.timed_cmd("amlfs-warm", "preload", "warm",
                       amlfs_cmd("--registry", self.registry, "cache", "warm", "bench:small",
                                 "--cache-dir", self.fresh_dir("warm-cache")))  # fmt: skip
        cache = self.fresh_dir("preload-cache")
        s0, t0 = self.server(), time.monotonic()
        cmd = amlfs_cmd("--registry", self.registry, "mount", "bench:small", self.mp,
                        "--cache-dir", cache, "--preload")  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True)
        m = Mount("amlfs-preload", self.mp, 0)
        m.pid = m.stats()["pid"]
        c0 = cpu_seconds(m.pid)
        try:
            # A reader meanwhile: the epoch over the same files (its reads go first).
            reader = threading.Thread(target=self._epoch_flat, args=(m.mp,))
            reader.start()
            while (p := m.stats()["preload"])["state"] not in ("done",) and not str(
                p["state"]
            ).startswith("failed"):
                if time.monotonic() - t0 > 600:
                    break
                time.sleep(0.05)
            wall = time.monotonic() - t0
            reader.join()
            self.record(Row("amlfs-preload", "preload", "mount", wall, cpu_seconds(m.pid) - c0,
                            self.server() - s0, p["bytes_done"],
                            note=f"{p['files_done']}/{p['files_total']} files,"
                                 f" epoch meanwhile {self._epoch_wall:.2f}s"))  # fmt: skip
        finally:
            m.unmount()

    _epoch_wall = 0.0

    def _epoch_flat(self, root: str) -> None:
        t0 = time.monotonic()
        paths = [os.path.join(root, n) for n in os.listdir(root)]
        random.Random(2).shuffle(paths)
        with cf.ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: read_file(p, bytearray(256 * KiB)), paths))
        self._epoch_wall = time.monotonic() - t0

    def goals(self) -> dict:
        def get(tool: str, workload: str, case: str) -> Row | None:
            return next((r for r in self.rows if (r.tool, r.workload, r.case) ==
                         (tool, workload, case)), None)  # fmt: skip

        out = {}
        for w in ("epoch", "seq"):
            a, r = get("amlfs", w, "nextjob"), get("rclone-full", w, "nextjob")
            s, e1, n1 = get("staged-local", w, "read"), get("amlfs", w, "epoch1"), None
            n1 = get("amlfs-nodisk", w, "epoch1")
            if a and r:
                out[f"{w}: rclone nextjob / amlfs nextjob (goal >= 3)"] = r.wall / a.wall
                if a.cpu and r.cpu:
                    gib = a.nbytes / GiB
                    out[f"{w}: amlfs daemon CPU s/GiB from disk"] = a.cpu / gib
                    out[f"{w}: rclone daemon CPU s/GiB from disk"] = r.cpu / gib
                    out[f"{w}: amlfs / rclone CPU per GiB (goal <= 0.3)"] = a.cpu / r.cpu
            if a and s:
                out[f"{w}: amlfs nextjob / staged read (goal <= 2)"] = a.wall / s.wall
            if e1 and n1:
                out[f"{w}: epoch1 disk tier on / off (goal <= 1.05)"] = e1.wall / n1.wall
        p, st = get("amlfs-preload", "preload", "mount"), get("amlfs-stage", "preload", "stage")
        if p and st:
            out["preload (serving reads) / stage (goal <= 1.2)"] = p.wall / st.wall
        wm = get("amlfs-warm", "preload", "warm")
        if wm and st:
            out["cache warm / stage"] = wm.wall / st.wall
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="200 files, 128 MiB: a quick check")
    ap.add_argument("--tools", default="amlfs,rclone")
    args = ap.parse_args()
    args.tools = args.tools.split(",")
    files, big = (200, 128 * MiB) if args.small else (2000, 1 * GiB)
    work = Path(tempfile.mkdtemp(prefix="amlfs-diskcache-bench-"))
    bench = Bench(args, work)
    try:
        print(f"data: {files} x 128 KiB, {big // MiB} MiB; work in {work}", flush=True)
        make_data(bench.az, files, 128 * KiB, big)
        bench.run()
        goals = bench.goals()
        print("goals:")
        for k, v in goals.items():
            print(f"  {k:<58} {v:6.2f}")
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"diskcache-{time.strftime('%Y%m%d-%H%M%S')}.json"
        doc = {"files": files, "big": big, "cpus": os.cpu_count(),
               "rows": [asdict(r) for r in bench.rows], "goals": goals}  # fmt: skip
        out.write_text(json.dumps(doc, indent=2))
        print(f"wrote {out}")
    finally:
        if is_mounted(bench.mp):
            subprocess.run(["fusermount3", "-uz", bench.mp], capture_output=True)
        bench.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
