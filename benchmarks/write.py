"""Write benchmark (issue #12): writing through `amlfs mount --rw` beside `rclone mount
--vfs-cache-mode writes` and `amlfs upload` of the same data, on one Azurite, in one run.

    .venv/bin/python benchmarks/write.py [--small] [--tools amlfs,rclone,upload]

Cases: one 1 GiB file written sequentially (1 MiB writes), and 2000 files of 128 KiB (`--small`:
64 MiB and 200 files). A mount case is timed from the first write until every object is
committed remotely: close returned and the object is listed at its full size (rclone uploads
after close, in the background: its time includes that). Reported beside wall time: the daemon's
CPU (utime + stime of its process), Azurite's CPU, and the daemon's peak RSS (VmHWM; a fresh
daemon per case). Results go to benchmarks/results/write-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from common import (
    Azurite,
    amlfs_cmd,
    container_sas_url,
    drop_dir,
    make_registry,
    rclone_remote,
    save_results,
    scratch_dir,
    start_bench_azurite,
)
from mount import cpu_seconds, is_mounted, vm_hwm

MiB = 1 << 20
CONTAINER = "bench"
WRITE = 1 * MiB
WRITE_BUFFER = "256MiB"
CACHE = "256MiB"


@dataclass
class Result:
    tool: str
    case: str
    wall: float
    cpu: float  # the daemon's (mounts) or the command's (upload)
    server_cpu: float  # Azurite's
    rss_peak: int
    bytes: int

    @property
    def gib_s(self) -> float:
        return self.bytes / self.wall / (1 << 30) if self.wall else 0.0


def make_data(root: Path, big: int, n_small: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    piece = os.urandom(8 * MiB)
    with open(root / "big.bin", "wb") as f:
        for off in range(0, big, len(piece)):
            f.write(piece[: min(len(piece), big - off)])
            piece = piece[1:] + piece[:1]  # distinct blocks, cheaply
    small = root / "small"
    small.mkdir(exist_ok=True)
    for i in range(n_small):
        (small / f"f{i:05d}.bin").write_bytes(os.urandom(128 * 1024))


def container_client(az: Azurite):
    from azure.storage.blob import ContainerClient

    return ContainerClient.from_connection_string(az.connection_string, CONTAINER)


def listed(cc, prefix: str) -> dict[str, int]:
    return {b.name: b.size for b in cc.list_blobs(name_starts_with=prefix)}


def wait_listed(cc, prefix: str, want: dict[str, int], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = listed(cc, prefix)
        if all(got.get(k) == v for k, v in want.items()):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{prefix}: not all objects committed within {timeout} s")


def copy_through(src: Path, dst: Path) -> None:
    """What a training job does: open, write in 1 MiB pieces, close."""
    with open(src, "rb", buffering=0) as f, open(dst, "wb", buffering=0) as g:
        while chunk := f.read(WRITE):
            g.write(chunk)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work = args, work
        self.az = start_bench_azurite()
        self.cc = container_client(self.az)
        self.cc.create_container()
        self.registry = make_registry(str(work / "registry.yaml"), self.az, CONTAINER)
        self.sas = container_sas_url(self.az, CONTAINER)
        self.results: list[Result] = []

    def mount(self, tool: str, mp: str) -> tuple[int, subprocess.Popen | None]:
        os.makedirs(mp, exist_ok=True)
        if tool == "amlfs":
            cmd = amlfs_cmd(
                "--registry", self.registry, "mount", "--rw", "bench:", mp,
                "--cache-size", CACHE, "--write-buffer-size", WRITE_BUFFER,
                "--staging-dir", str(self.work / "staging"),
            )  # fmt: skip
            subprocess.run(cmd, check=True, capture_output=True)
            with open(os.path.join(mp, ".__amlfs_stats__")) as f:
                return json.load(f)["pid"], None
        cmd = [
            "rclone", "mount", rclone_remote(self.sas) + CONTAINER, mp,
            "--vfs-cache-mode", "writes", "--cache-dir", str(self.work / "rclone-cache"),
            "--log-file", str(self.work / "rclone.log"),
        ]  # fmt: skip
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not is_mounted(mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("rclone mount did not come up")
            time.sleep(0.05)
        return proc.pid, proc

    def unmount(self, tool: str, mp: str, proc: subprocess.Popen | None) -> None:
        if tool == "amlfs":
            subprocess.run(amlfs_cmd("unmount", mp), check=False, capture_output=True)
        else:
            subprocess.run(["fusermount3", "-u", mp], check=False, capture_output=True)
            if proc is not None:
                proc.wait(30)
        if is_mounted(mp):
            subprocess.run(["fusermount3", "-uz", mp], check=False, capture_output=True)

    def run_mount_case(self, tool: str, case: str, data: Path) -> None:
        mp = str(self.work / f"mnt-{tool}-{case}")
        prefix = f"{tool}-{case}"
        pid, proc = self.mount(tool, mp)
        try:
            os.makedirs(os.path.join(mp, prefix), exist_ok=True)
            cpu0, srv0 = cpu_seconds(pid), cpu_seconds(self.az.proc.pid)
            start = time.monotonic()
            if case == "big":
                copy_through(data / "big.bin", Path(mp, prefix, "big.bin"))
                want = {f"{prefix}/big.bin": (data / "big.bin").stat().st_size}
            else:
                want = {}
                for p in sorted((data / "small").iterdir()):
                    copy_through(p, Path(mp, prefix, p.name))
                    want[f"{prefix}/{p.name}"] = p.stat().st_size
            wait_listed(self.cc, prefix + "/", want)
            wall = time.monotonic() - start
            r = Result(
                tool,
                case,
                wall,
                cpu_seconds(pid) - cpu0,
                cpu_seconds(self.az.proc.pid) - srv0,
                vm_hwm(pid),
                sum(want.values()),
            )
        finally:
            self.unmount(tool, mp, proc)
        self.record(r)

    def run_upload_case(self, case: str, data: Path) -> None:
        src = data / ("big.bin" if case == "big" else "small")
        prefix = f"upload-{case}"
        srv0 = cpu_seconds(self.az.proc.pid)
        start = time.monotonic()
        proc = subprocess.Popen(
            amlfs_cmd("--registry", self.registry, "upload", str(src), f"bench:{prefix}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        err = proc.stderr.read()  # type: ignore[union-attr]
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.monotonic() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"amlfs upload failed: {err.decode()[-2000:]}")
        size = sum(listed(self.cc, prefix + "/").values())
        self.record(
            Result(
                "upload",
                case,
                wall,
                ru.ru_utime + ru.ru_stime,
                cpu_seconds(self.az.proc.pid) - srv0,
                ru.ru_maxrss * 1024,
                size,
            )
        )

    def record(self, r: Result) -> None:
        self.results.append(r)
        print(
            f"  {r.tool:<7} {r.case:<6} wall={r.wall:7.2f}s cpu={r.cpu:6.2f}s"
            f" azurite={r.server_cpu:6.2f}s rss={r.rss_peak / MiB:6.0f}MiB"
            f" {r.gib_s * 1024:7.1f} MiB/s",
            flush=True,
        )

    def close(self) -> None:
        self.az.stop()


def table(results: list[Result]) -> list[str]:
    by = {(r.tool, r.case): r for r in results}
    lines = [
        f"{'case':<6} {'amlfs wall':>10} {'rclone wall':>11} {'upload wall':>11}"
        f" {'rclone/amlfs':>12} {'amlfs/upload':>12} {'CPU rclone/amlfs':>16}"
    ]
    for case in ("big", "small"):
        a, rc, up = by.get(("amlfs", case)), by.get(("rclone", case)), by.get(("upload", case))

        def w(r: Result | None) -> str:
            return f"{r.wall:.2f}" if r else "-"

        ratio = f"{rc.wall / a.wall:.2f}x" if a and rc else "-"
        vs_up = f"{a.wall / up.wall:.2f}x" if a and up else "-"
        cpu = f"{rc.cpu / a.cpu:.2f}x" if a and rc and a.cpu else "-"
        lines.append(
            f"{case:<6} {w(a):>10} {w(rc):>11} {w(up):>11} {ratio:>12} {vs_up:>12} {cpu:>16}"
        )
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="64 MiB and 200 files")
    ap.add_argument("--tools", default="amlfs,rclone,upload")
    args = ap.parse_args()
    tools = args.tools.split(",")
    big, n_small = (64 * MiB, 200) if args.small else (1024 * MiB, 2000)
    work = Path(scratch_dir("amlfs-bench-write-"))
    data = work / "data"
    print(f"data: {big // MiB} MiB file, {n_small} x 128 KiB files in {data}", flush=True)
    make_data(data, big, n_small)
    bench = Bench(args, work)
    try:
        for case in ("big", "small"):
            for tool in tools:
                if tool == "upload":
                    bench.run_upload_case(case, data)
                else:
                    bench.run_mount_case(tool, case, data)
    finally:
        bench.close()
    for line in table(bench.results):
        print(line)
    out = save_results(
        "write",
        {"big_bytes": big, "small_files": n_small, "write_buffer": WRITE_BUFFER},
        [],  # results in the same document below
    )
    doc = json.loads(out.read_text())
    doc["results"] = [asdict(r) for r in bench.results]
    out.write_text(json.dumps(doc, indent=2))
    print(f"results: {out}")
    drop_dir(str(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
