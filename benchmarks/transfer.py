"""Upload, download and stage: amlfs beside `rclone copy` and `azcopy` on the same data, in the
same run, against one Azurite (on-disk persistence).

Work: N x 128 KiB files ("small", 2000 by default) and one big file (1 GiB); stage first run of
both and a re-run with nothing changed. Each tool runs as a child process; wall time and the
child's CPU seconds (os.wait4) are reported as the median of --reps runs, the tools interleaved
within each repetition so that a noisy neighbour hurts all of them alike. Every output tree is
checked (file count and bytes) so that a tool that copies less cannot look faster.

    .venv/bin/python benchmarks/transfer.py            # the full run (~10 minutes)
    .venv/bin/python benchmarks/transfer.py --small    # 200 files + 64 MiB, for development
    .venv/bin/python benchmarks/transfer.py --small --backends blob,fileshare,adls

`--backends` adds amlfs-only rows (no peer reaches these servers) for an Azure File share and an
ADLS Gen2 filesystem served by the protocol-level test servers of tests/servers, each in a child
process (its CPU seconds measured apart from the client's): `amlfs stage` first run and
no-change re-run of the small files and of the big file. The default is blob only; without
`blob` neither Azurite nor the peers run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    PROTOCOL_BACKENDS,
    ProtocolServer,
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
    write_protocol_registry,
)

SMALL_SIZE = 128 << 10
BACKENDS = ("blob", *PROTOCOL_BACKENDS)
PROTOCOL_TOOLS = tuple(f"amlfs-{k}" for k in PROTOCOL_BACKENDS)
RCLONE_TUNED = ["--transfers", "32", "--checkers", "32", "--multi-thread-streams", "16"]


def make_source(root: Path, n_small: int, big_bytes: int) -> None:
    (root / "small").mkdir(parents=True)
    (root / "big").mkdir()
    for i in range(n_small):
        (root / "small" / f"file{i:05d}.bin").write_bytes(os.urandom(SMALL_SIZE))
    block = os.urandom(1 << 20)
    with open(root / "big" / "big.bin", "wb") as f:
        for i in range(big_bytes >> 20):
            # Distinct blocks: no tool can profit from repeated content.
            f.write(i.to_bytes(8, "little") + block[8:])


def tree_size(root: str) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.startswith(".") and n.endswith(".amlfs-part"):
                raise RuntimeError(f"a partial file was left behind in {dirpath}: {n}")
            files += 1
            size += os.path.getsize(os.path.join(dirpath, n))
    return files, size


def check_tree(where: str, want: tuple[int, int]) -> None:
    got = tree_size(where)
    if got != want:
        raise RuntimeError(f"{where}: copied {got} (files, bytes), expected {want}")


def settle() -> None:
    """Write back earlier runs' dirty pages so that no tool pays for another's."""
    os.sync()
    time.sleep(0.5)


class Bench:
    def __init__(self, args: argparse.Namespace, work: str):
        self.args = args
        self.work = work
        self.az = start_bench_azurite()
        self.azcopy = azcopy_binary(work)
        self.azenv = azcopy_env(work)
        self.timings: list[Timing] = []
        self.registry = os.path.join(work, "datastores.yaml")
        self.containers: list[str] = []

    def container(self, name: str) -> str:
        self.az.service().create_container(name)
        self.containers.append(name)
        self._write_registry()
        return name

    def _write_registry(self) -> None:
        import yaml

        from benchmarks.common import ACCOUNT, KEY

        doc = {
            "default_datastore": self.containers[0],
            "datastores": [
                {
                    "name": c.replace("-", "_"),
                    "type": "azure_blob",
                    "account_name": ACCOUNT,
                    "container_name": c,
                    "account_url": self.az.account_url,
                    "protocol": "http",
                    "credentials": {"account_key": KEY},
                }
                for c in self.containers
            ],
        }
        doc["default_datastore"] = doc["datastores"][0]["name"]
        fd = os.open(self.registry, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(doc, f)

    def amlfs(self, *args: str) -> list[str]:
        return amlfs_cmd("--registry", self.registry, *args, "--no-progress")

    def retire(self, dest: str) -> None:
        """Make way for a tool's next output tree at `dest` without deleting the last one:
        ext4 skips inodes freed within the last minute when it allocates new ones (a scan of
        the inode table: ~30% of a 2000-file download's CPU when its own last tree was just
        deleted, a cost a fresh node never pays). The old tree is moved aside, and the
        trees are deleted at the end, or once less than 8 GiB of disk is left."""
        trash = os.path.join(self.work, "trash")
        if shutil.disk_usage(self.work).free < 8 << 30 and os.path.isdir(trash):
            print("  (disk space: deleting earlier output trees now)", flush=True)
            drop_dir(trash)
        if os.path.lexists(dest):
            os.makedirs(trash, exist_ok=True)
            os.rename(dest, os.path.join(trash, f"{os.path.basename(dest)}-{time.time_ns()}"))

    def sas(self, container: str) -> str:
        return container_sas_url(self.az, container)

    def run(self, tool: str, case: str, cmd: list[str], env: dict | None = None) -> Timing:
        from benchmarks.netproxy import proc_cpu

        a0 = proc_cpu(self.az.proc.pid)
        t = timed(tool, case, cmd, env=env)
        st = ServerTiming(**asdict(t), server_cpu=proc_cpu(self.az.proc.pid) - a0)
        self.timings.append(st)
        print(f"  {tool:<14} {case:<20} {t.wall:7.2f} s  cpu {t.cpu:6.2f} s (user {t.user:5.2f})"
              f"  azurite cpu {st.server_cpu:6.2f} s", flush=True)  # fmt: skip
        return st

    def check(self, where: str, want: tuple[int, int]) -> None:
        check_tree(where, want)

    def close(self) -> None:
        self.az.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="200 files + 64 MiB (development)")
    ap.add_argument("--files", type=int, help="number of 128 KiB files (default 2000)")
    ap.add_argument("--big-mib", type=int, help="size of the big file in MiB (default 1024)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each case (median)")
    ap.add_argument("--no-tuned", action="store_true", help="skip the tuned-rclone rows")
    ap.add_argument(
        "--backends",
        default="blob",
        help="comma-separated subset of blob,fileshare,adls (default blob; fileshare and adls "
        "are amlfs-only stage rows on the tests/servers protocol servers)",
    )
    ap.add_argument(
        "--cases",
        default="upload,download,stage",
        help="a subset of these (blob; download and stage read what the first upload wrote)",
    )
    ap.add_argument("--parts", default="small,big", help="uploads of: small (N files), big")
    args = ap.parse_args()
    backends = [x for x in args.backends.split(",") if x]
    if not backends:
        ap.error("--backends: name at least one of " + ",".join(BACKENDS))
    if unknown := set(backends) - set(BACKENDS):
        ap.error(f"unknown backends: {', '.join(sorted(unknown))}")
    n_small = args.files or (200 if args.small else 2000)
    big_mib = args.big_mib or (64 if args.small else 1024)

    work = scratch_dir("amlfs-bench-")
    src = Path(work) / "src"
    print(f"source: {n_small} x 128 KiB + {big_mib} MiB in {src}", flush=True)
    try:
        make_source(src, n_small, big_mib << 20)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    want_small = (n_small, n_small * SMALL_SIZE)
    want_big = (1, big_mib << 20)
    want_all = (n_small + 1, want_small[1] + want_big[1])
    load_before = os.getloadavg()
    b: Bench | None = None
    timings: list[Timing] = []
    try:
        if "blob" in backends:
            b = Bench(args, work)
            blob_cases(b, src, want_small, want_big, want_all)
        for kind in PROTOCOL_BACKENDS:
            if kind in backends:
                timings += protocol_stage(kind, args, src, work, want_small, want_big)
    finally:
        if b is not None:
            b.close()
        # The scratch tree holds several GiB: never leave it behind, not even after a failure.
        shutil.rmtree(work, ignore_errors=True)
    timings = (b.timings if b is not None else []) + timings

    print_table(timings)
    meta = {
        "files": n_small,
        "file_bytes": SMALL_SIZE,
        "big_bytes": big_mib << 20,
        "reps": args.reps,
        "backends": backends,
        "azurite": "on-disk persistence (temp dir), high ulimit -n" if "blob" in backends else None,
        "protocol_servers": "tests/servers (in memory, one child process each, ThreadingHTTPServer)"
        if set(backends) & set(PROTOCOL_BACKENDS)
        else None,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    out = save_results("transfer-small" if args.small else "transfer", meta, timings)
    print(f"results: {out}")


def blob_cases(
    b: Bench,
    src: Path,
    want_small: tuple[int, int],
    want_big: tuple[int, int],
    want_all: tuple[int, int],
) -> None:
    """Upload, download and stage on Azurite: amlfs, rclone and azcopy interleaved."""
    args, work = b.args, b.work
    data = b.container("data")
    sas = b.sas(data)
    base, query = sas.split("?", 1)
    tools = ["amlfs", "rclone", "azcopy"] + ([] if args.no_tuned else ["rclone-tuned"])

    if "upload" not in args.cases:  # download and stage read the data: upload it, untimed
        for part in ("small", "big"):
            subprocess.run(b.amlfs("upload", str(src / part), f"data:{part}"), check=True)

    # --- upload: each tool into its own container, every repetition a fresh one --------
    print("upload", flush=True)
    parts = [(f"upload {p}", p) for p in ("small", "big") if p in args.parts.split(",")]
    for rep in range(args.reps if "upload" in args.cases else 0):
        for tool in ("amlfs", "rclone", "azcopy"):
            c = data if (tool, rep) == ("amlfs", 0) else b.container(f"up-{tool}-{rep}")
            csas = b.sas(c)
            cbase, cquery = csas.split("?", 1)
            for case, part in parts:
                settle()
                if tool == "amlfs":
                    cmd = b.amlfs("upload", str(src / part), f"{c.replace('-', '_')}:{part}")
                elif tool == "rclone":
                    cmd = [
                        "rclone",
                        "copy",
                        str(src / part),
                        rclone_remote(csas) + f"{c}/{part}",
                    ]
                else:
                    cmd = [
                        b.azcopy,
                        "copy",
                        str(src / part),
                        f"{cbase}?{cquery}",
                        "--recursive",
                        "--from-to",
                        "LocalBlob",
                        "--log-level",
                        "ERROR",
                        "--output-level",
                        "quiet",
                    ]
                b.run(tool, case, cmd, env=b.azenv if tool == "azcopy" else None)

    def download_cmd(tool: str, part: str, dest: str) -> list[str]:
        if tool == "amlfs":
            return b.amlfs("download", f"data:{part}", dest)
        if tool.startswith("rclone"):
            extra = RCLONE_TUNED if tool == "rclone-tuned" else []
            return ["rclone", "copy", rclone_remote(sas) + f"{data}/{part}", dest, *extra]
        src_url = f"{base}/{part}/*?{query}" if part else f"{base}/*?{query}"
        return [
            b.azcopy,
            "copy",
            src_url,
            dest,
            "--recursive",
            "--from-to",
            "BlobLocal",
            "--log-level",
            "ERROR",
            "--output-level",
            "quiet",
        ]

    # --- download -----------------------------------------------------------------------
    print("download", flush=True)
    for _rep in range(args.reps if "download" in args.cases else 0):
        for part, want in (("small", want_small), ("big", want_big)):
            for tool in tools:
                dest = os.path.join(work, f"dl-{tool}")
                b.retire(dest)
                settle()
                b.run(
                    tool,
                    f"download {part}",
                    download_cmd(tool, part, dest),
                    env=b.azenv if tool == "azcopy" else None,
                )
                b.check(dest, want)

    # --- stage: first run of everything, then a re-run with nothing changed --------------
    print("stage", flush=True)
    for _rep in range(args.reps if "stage" in args.cases else 0):
        for tool in tools:
            dest = os.path.join(work, f"st-{tool}")
            b.retire(dest)
            state = os.path.join(work, f".st-{tool}.amlfs-stage.json")
            if os.path.exists(state):
                os.unlink(state)
            settle()
            env = b.azenv if tool == "azcopy" else None
            if tool == "amlfs":
                first = again = b.amlfs("stage", "data:", dest)
            elif tool.startswith("rclone"):
                first = again = download_cmd(tool, "", dest)
            else:
                first = download_cmd(tool, "", dest)
                again = [
                    b.azcopy,
                    "sync",
                    f"{base}?{query}",
                    dest,
                    "--recursive",
                    "--from-to",
                    "BlobLocal",
                    "--log-level",
                    "ERROR",
                    "--output-level",
                    "quiet",
                ]
            b.run(tool, "stage first run", first, env=env)
            b.check(dest, want_all)
            b.run(tool, "stage no-change re-run", again, env=env)
            b.check(dest, want_all)


@dataclass
class ServerTiming(Timing):
    server_cpu: float | None = None  # the test server's CPU seconds during the run


def protocol_stage(
    kind: str,
    args: argparse.Namespace,
    src: Path,
    work: str,
    want_small: tuple[int, int],
    want_big: tuple[int, int],
) -> list[Timing]:
    """`amlfs stage` of the small files and of the big file from a File share or ADLS Gen2 test
    server holding `src`: first run into an empty directory, then a re-run with nothing changed."""
    tool = f"amlfs-{kind}"
    files = [(p.relative_to(src).as_posix(), str(p)) for p in sorted(src.rglob("*")) if p.is_file()]
    print(f"stage on {kind}: start the test server and load its data ...", flush=True)
    timings: list[Timing] = []
    with ProtocolServer(kind, "data", files=files) as srv:
        registry = write_protocol_registry(os.path.join(work, f"registry-{kind}.yaml"), srv.entry)
        for _rep in range(args.reps):
            for part, want in (("small", want_small), ("big", want_big)):
                dest = os.path.join(work, f"st-{tool}-{part}")
                drop_dir(dest)
                for suffix in ("json", "journal"):
                    state = os.path.join(work, f".st-{tool}-{part}.amlfs-stage.{suffix}")
                    if os.path.exists(state):
                        os.unlink(state)
                cmd = amlfs_cmd(
                    "--registry", registry, "stage", f"{srv.entry['name']}:{part}", dest,
                    "--no-progress",
                )  # fmt: skip
                for case in (f"stage {part} first run", f"stage {part} no-change re-run"):
                    settle()
                    s0 = srv.cpu_seconds()
                    t = timed(tool, case, cmd)
                    st = ServerTiming(**asdict(t), server_cpu=srv.cpu_seconds() - s0)
                    check_tree(dest, want)
                    timings.append(st)
                    print(
                        f"  {tool:<16} {case:<28} {st.wall:7.2f} s  cpu {st.cpu:6.2f} s"
                        f"  server cpu {st.server_cpu:6.2f} s",
                        flush=True,
                    )
    return timings


def print_table(timings: list[Timing]) -> None:
    cases: dict[str, dict[str, list[Timing]]] = {}
    for t in timings:
        if t.tool not in PROTOCOL_TOOLS:
            cases.setdefault(t.case, {}).setdefault(t.tool, []).append(t)
    if cases:
        print_peer_table(cases)
    proto: dict[tuple[str, str], list[ServerTiming]] = {}
    for t in timings:
        if isinstance(t, ServerTiming) and t.tool in PROTOCOL_TOOLS:
            proto.setdefault((t.case, t.tool), []).append(t)
    if proto:
        print()
        print("other backends, amlfs only (tests/servers in a child process; medians):")
        print(f"{'case':<32} {'tool':<16} {'wall s':>8} {'cpu s':>8} {'server cpu s':>13}")
        for (case, tool), ts in proto.items():  # first seen first: tool, then case
            wall = statistics.median(t.wall for t in ts)
            cpu = statistics.median(t.cpu for t in ts)
            srv = statistics.median(t.server_cpu or 0.0 for t in ts)
            print(f"{case:<32} {tool:<16} {wall:8.2f} {cpu:8.2f} {srv:13.2f}")


def print_peer_table(cases: dict[str, dict[str, list[Timing]]]) -> None:
    print()
    print(f"{'case':<24} {'tool':<14} {'wall s':>8} {'cpu s':>8} {'user s':>7} {'azurite':>8}"
          f" {'vs amlfs':>9} {'cpu/rclone':>10} {'user/rclone':>11}")  # fmt: skip
    for case, by_tool in cases.items():
        ref = statistics.median(t.wall for t in by_tool["amlfs"]) if "amlfs" in by_tool else None
        rc = by_tool.get("rclone")
        rcpu = statistics.median(t.cpu for t in rc) if rc else None
        ruser = statistics.median(t.user for t in rc) if rc else None
        for tool, ts in by_tool.items():
            wall = statistics.median(t.wall for t in ts)
            cpu = statistics.median(t.cpu for t in ts)
            user = statistics.median(t.user for t in ts)
            srv = statistics.median(getattr(t, "server_cpu", None) or 0.0 for t in ts)
            ratio = f"{wall / ref:8.2f}x" if ref else "-"
            cratio = f"{cpu / rcpu:9.2f}x" if rcpu else "-"
            uratio = f"{user / ruser:10.2f}x" if ruser else "-"
            print(
                f"{case:<24} {tool:<14} {wall:8.2f} {cpu:8.2f} {user:7.2f} {srv:8.2f} {ratio:>9}"
                f" {cratio:>10} {uratio:>11}"
            )
    print("vs amlfs: the tool's wall time / amlfs's (above 1: amlfs is faster);"
          " cpu/rclone: the tool's client CPU / rclone copy's (user s: the part outside the"
          " kernel); azurite: Azurite's CPU seconds")  # fmt: skip


if __name__ == "__main__":
    main()
