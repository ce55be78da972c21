"""Upload, download and stage: amlfs beside `rclone copy` and `azcopy` on the same data, in the
same run, against one Azurite (on-disk persistence).

Work: N x 128 KiB files ("small", 2000 by default) and one big file (1 GiB); stage first run of
both and a re-run with nothing changed. Each tool runs as a child process; wall time and the
child's CPU seconds (os.wait4) are reported as the median of --reps runs, the tools interleaved
within each repetition so that a noisy neighbour hurts all of them alike. Every output tree is
checked (file count and bytes) so that a tool that copies less cannot look faster.

    .venv/bin/python benchmarks/transfer.py            # the full run (~10 minutes)
    .venv/bin/python benchmarks/transfer.py --small    # 200 files + 64 MiB, for development
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
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

SMALL_SIZE = 128 << 10
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

    def sas(self, container: str) -> str:
        return container_sas_url(self.az, container)

    def run(self, tool: str, case: str, cmd: list[str], env: dict | None = None) -> Timing:
        t = timed(tool, case, cmd, env=env)
        self.timings.append(t)
        print(f"  {tool:<14} {case:<20} {t.wall:7.2f} s  cpu {t.cpu:6.2f} s", flush=True)
        return t

    def check(self, where: str, want: tuple[int, int]) -> None:
        got = tree_size(where)
        if got != want:
            raise RuntimeError(f"{where}: copied {got} (files, bytes), expected {want}")

    def close(self) -> None:
        self.az.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="200 files + 64 MiB (development)")
    ap.add_argument("--files", type=int, help="number of 128 KiB files (default 2000)")
    ap.add_argument("--big-mib", type=int, help="size of the big file in MiB (default 1024)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each case (median)")
    ap.add_argument("--no-tuned", action="store_true", help="skip the tuned-rclone rows")
    args = ap.parse_args()
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
    b = Bench(args, work)
    try:
        data = b.container("data")
        sas = b.sas(data)
        base, query = sas.split("?", 1)
        tools = ["amlfs", "rclone", "azcopy"] + ([] if args.no_tuned else ["rclone-tuned"])

        # --- upload: each tool into its own container, every repetition a fresh one --------
        print("upload", flush=True)
        for rep in range(args.reps):
            for tool in ("amlfs", "rclone", "azcopy"):
                c = data if (tool, rep) == ("amlfs", 0) else b.container(f"up-{tool}-{rep}")
                csas = b.sas(c)
                cbase, cquery = csas.split("?", 1)
                for case, part in (("upload small", "small"), ("upload big", "big")):
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
        for _rep in range(args.reps):
            for part, want in (("small", want_small), ("big", want_big)):
                for tool in tools:
                    dest = os.path.join(work, f"dl-{tool}")
                    drop_dir(dest)
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
        for _rep in range(args.reps):
            for tool in tools:
                dest = os.path.join(work, f"st-{tool}")
                drop_dir(dest)
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
    finally:
        b.close()
        # The scratch tree holds several GiB: never leave it behind, not even after a failure.
        shutil.rmtree(work, ignore_errors=True)

    print_table(b.timings)
    meta = {
        "files": n_small,
        "file_bytes": SMALL_SIZE,
        "big_bytes": big_mib << 20,
        "reps": args.reps,
        "azurite": "on-disk persistence (temp dir), high ulimit -n",
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    out = save_results("transfer-small" if args.small else "transfer", meta, b.timings)
    print(f"results: {out}")


def print_table(timings: list[Timing]) -> None:
    cases: dict[str, dict[str, list[Timing]]] = {}
    for t in timings:
        cases.setdefault(t.case, {}).setdefault(t.tool, []).append(t)
    print()
    print(f"{'case':<24} {'tool':<14} {'wall s':>8} {'cpu s':>8} {'vs amlfs':>9}")
    for case, by_tool in cases.items():
        ref = statistics.median(t.wall for t in by_tool["amlfs"]) if "amlfs" in by_tool else None
        for tool, ts in by_tool.items():
            wall = statistics.median(t.wall for t in ts)
            cpu = statistics.median(t.cpu for t in ts)
            ratio = f"{wall / ref:8.2f}x" if ref else "-"
            print(f"{case:<24} {tool:<14} {wall:8.2f} {cpu:8.2f} {ratio:>9}")
    print("vs amlfs: the tool's wall time / amlfs's (above 1: amlfs is faster)")


if __name__ == "__main__":
    main()
