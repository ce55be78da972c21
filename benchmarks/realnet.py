"""The "real network" profile: upload and download through a loopback proxy that adds 20 ms per
request and caps each connection at ~60 MB/s (benchmarks/netproxy.py), the shape of a storage
account seen from a VM. There the concurrency design decides, not the client's CPU per request.

amlfs, `rclone copy` (defaults, and tuned: `--transfers 32 --checkers 32 --multi-thread-streams
16`) and `azcopy copy` (defaults) move the same data (N x 128 KiB files and one big file)
through the same proxy to the same Azurite, interleaved within each repetition; medians of
--reps. Beside wall time: the tool's CPU seconds (os.wait4), Azurite's and the proxy's CPU
seconds over the run (/proc). Every output tree is checked (file count, bytes).

    .venv/bin/python benchmarks/realnet.py                     # 2000 x 128 KiB + 1 GiB, 3 reps
    .venv/bin/python benchmarks/realnet.py --small --reps 1    # 200 files + 64 MiB
    .venv/bin/python benchmarks/realnet.py --delay-ms 20 --mbps 60 --cases download
    .venv/bin/python benchmarks/realnet.py --cases upload --parts big   # the 1 GiB upload only
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    ACCOUNT,
    KEY,
    Timing,
    amlfs_cmd,
    azcopy_binary,
    azcopy_env,
    container_sas_url,
    drop_dir,
    rclone_remote,
    save_results,
    scratch_dir,
    start_bench_azurite,
    timed,
)
from benchmarks.netproxy import NetProxy, proc_cpu  # noqa: E402
from benchmarks.transfer import RCLONE_TUNED, SMALL_SIZE, check_tree, make_source, settle  # noqa: E402

TOOLS = ("amlfs", "rclone", "azcopy", "rclone-tuned")


@dataclass
class NetTiming(Timing):
    azurite_cpu: float = 0.0
    proxy_cpu: float = 0.0


def write_registry(path: str, url: str, containers: list[str]) -> str:
    import yaml

    doc = {
        "default_datastore": containers[0].replace("-", "_"),
        "datastores": [
            {
                "name": c.replace("-", "_"),
                "type": "azure_blob",
                "account_name": ACCOUNT,
                "container_name": c,
                "account_url": url,
                "protocol": "http",
                "credentials": {"account_key": KEY},
            }
            for c in containers
        ],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="200 files + 64 MiB (development)")
    ap.add_argument("--files", type=int, help="number of 128 KiB files (default 2000)")
    ap.add_argument("--big-mib", type=int, help="size of the big file in MiB (default 1024)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="added per request (ms)")
    ap.add_argument("--mbps", type=float, default=60.0, help="cap per connection (MB/s)")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--cases", default="download,upload", help="download, upload")
    ap.add_argument("--parts", default="small,big", help="small (the N files), big (one file)")
    args = ap.parse_args()
    parts = [p for p in ("small", "big") if p in args.parts.split(",")]
    tools = [t for t in args.tools.split(",") if t]
    cases = [c for c in args.cases.split(",") if c]
    n_small = args.files or (200 if args.small else 2000)
    big_mib = args.big_mib or (64 if args.small else 1024)

    work = scratch_dir("amlfs-realnet-")
    src = Path(work) / "src"
    print(f"source: {n_small} x 128 KiB + {big_mib} MiB; proxy +{args.delay_ms:g} ms/request,"
          f" {args.mbps:g} MB/s per connection", flush=True)  # fmt: skip
    timings: list[NetTiming] = []
    load_before = os.getloadavg()
    az = None
    try:
        make_source(src, n_small, big_mib << 20)
        want = {"small": (n_small, n_small * SMALL_SIZE), "big": (1, big_mib << 20)}
        az = start_bench_azurite()
        azcopy = azcopy_binary(work)
        azenv = azcopy_env(work)
        containers = ["data"]
        az.service().create_container("data")
        direct = write_registry(os.path.join(work, "direct.yaml"), az.account_url, containers)
        for part in parts if "download" in cases else ():  # the download source, direct
            timed("amlfs", "load", amlfs_cmd("--registry", direct, "upload", str(src / part),
                                             f"data:{part}", "--no-progress"))  # fmt: skip
        with NetProxy(az.port, delay=args.delay_ms / 1000, rate=args.mbps * 1e6) as proxy:
            url = f"http://127.0.0.1:{proxy.port}/{ACCOUNT}"

            class Via:  # what container_sas_url needs of an Azurite: its account URL
                account_url = url

            def run(tool: str, case: str, cmd: list[str], dest: str | None, want_tree) -> None:
                settle()
                a0, p0 = proc_cpu(az.proc.pid), proxy.cpu_seconds()
                t = timed(tool, case, cmd, env=azenv if tool == "azcopy" else None)
                nt = NetTiming(
                    **vars(t),
                    azurite_cpu=proc_cpu(az.proc.pid) - a0,
                    proxy_cpu=proxy.cpu_seconds() - p0,
                )
                if dest is not None:
                    check_tree(dest, want_tree)
                timings.append(nt)
                print(f"  {tool:<13} {case:<16} {nt.wall:7.2f} s  cpu {nt.cpu:6.2f}"
                      f"  azurite {nt.azurite_cpu:5.2f}  proxy {nt.proxy_cpu:5.2f}", flush=True)  # fmt: skip

            for rep in range(args.reps):
                for part in parts:
                    if "download" in cases:
                        sas = container_sas_url(Via, "data")  # type: ignore[arg-type]
                        base, query = sas.split("?", 1)
                        reg = write_registry(os.path.join(work, "via.yaml"), url, ["data"])
                        for tool in tools:
                            dest = os.path.join(work, f"dl-{tool}")
                            drop_dir(dest)
                            run(tool, f"download {part}",
                                download_cmd(tool, part, dest, reg, sas, azcopy), dest, want[part])  # fmt: skip
                    if "upload" in cases:
                        for tool in tools:
                            c = f"up-{tool}-{part}-{rep}"
                            az.service().create_container(c)
                            sas = container_sas_url(Via, c)  # type: ignore[arg-type]
                            reg = write_registry(os.path.join(work, "up.yaml"), url, [c])
                            run(tool, f"upload {part}",
                                upload_cmd(tool, src / part, c, reg, sas, azcopy), None, None)  # fmt: skip
    finally:
        if az is not None:
            az.stop()
        shutil.rmtree(work, ignore_errors=True)

    print_table(timings)
    meta = {
        "files": n_small,
        "big_bytes": big_mib << 20,
        "reps": args.reps,
        "delay_ms": args.delay_ms,
        "mb_per_s_per_connection": args.mbps,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    print(f"results: {save_results('realnet-small' if args.small else 'realnet', meta, timings)}")


def download_cmd(tool: str, part: str, dest: str, reg: str, sas: str, azcopy: str) -> list[str]:
    if tool == "amlfs":
        return amlfs_cmd("--registry", reg, "download", f"data:{part}", dest, "--no-progress")
    if tool.startswith("rclone"):
        extra = RCLONE_TUNED if tool == "rclone-tuned" else []
        return ["rclone", "copy", rclone_remote(sas) + f"data/{part}", dest, *extra]
    base, query = sas.split("?", 1)
    return [azcopy, "copy", f"{base}/{part}/*?{query}", dest, "--recursive", "--from-to",
            "BlobLocal", "--log-level", "ERROR", "--output-level", "quiet"]  # fmt: skip


def upload_cmd(tool: str, src: Path, c: str, reg: str, sas: str, azcopy: str) -> list[str]:
    if tool == "amlfs":
        name = c.replace("-", "_")
        return amlfs_cmd(
            "--registry", reg, "upload", str(src), f"{name}:{src.name}", "--no-progress"
        )
    if tool.startswith("rclone"):
        extra = RCLONE_TUNED if tool == "rclone-tuned" else []
        return ["rclone", "copy", str(src), rclone_remote(sas) + f"{c}/{src.name}", *extra]
    return [azcopy, "copy", str(src), sas, "--recursive", "--from-to", "LocalBlob",
            "--log-level", "ERROR", "--output-level", "quiet"]  # fmt: skip


def print_table(timings: list[NetTiming]) -> None:
    cases: dict[str, dict[str, list[NetTiming]]] = {}
    for t in timings:
        cases.setdefault(t.case, {}).setdefault(t.tool, []).append(t)
    print()
    print(f"{'case':<16} {'tool':<13} {'wall s':>7} {'cpu s':>6} {'azurite':>8} {'proxy':>6}"
          f" {'best default peer / tool':>25}")  # fmt: skip
    for case, by_tool in cases.items():
        med = {k: statistics.median(t.wall for t in v) for k, v in by_tool.items()}
        peers = [med[k] for k in ("rclone", "azcopy") if k in med]
        best = min(peers) if peers else None
        for tool, ts in by_tool.items():
            cpu = statistics.median(t.cpu for t in ts)
            azc = statistics.median(t.azurite_cpu for t in ts)
            pxc = statistics.median(t.proxy_cpu for t in ts)
            ratio = f"{best / med[tool]:.2f}x" if best else "-"
            print(f"{case:<16} {tool:<13} {med[tool]:7.2f} {cpu:6.2f} {azc:8.2f} {pxc:6.2f}"
                  f" {ratio:>25}")  # fmt: skip


if __name__ == "__main__":
    main()
