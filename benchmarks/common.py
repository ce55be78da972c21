"""Shared benchmark helpers: Azurite on disk with a high fd limit, container SAS URLs for the peer
tools, the azcopy and rclone command lines, and timing of a child process (wall time and the
child's CPU seconds from os.wait4)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.azurite import ACCOUNT, KEY, Azurite, start_azurite  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
AZCOPY_SHIPPED = REPO / "node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64"
VENV_BIN = REPO / ".venv" / "bin"

__all__ = [
    "ACCOUNT",
    "KEY",
    "Azurite",
    "Timing",
    "azcopy_binary",
    "azcopy_env",
    "amlfs_cmd",
    "container_sas_url",
    "drop_dir",
    "make_registry",
    "rclone_remote",
    "save_results",
    "scratch_dir",
    "start_bench_azurite",
    "timed",
]


@dataclass
class Timing:
    tool: str
    case: str
    wall: float
    cpu: float  # the child's user + system CPU seconds
    returncode: int

    def row(self, baseline: float | None) -> str:
        ratio = f"{self.wall / baseline:6.2f}x" if baseline else "     -"
        return f"{self.tool:<16} {self.case:<22} {self.wall:8.2f} {self.cpu:8.2f} {ratio}"


def timed(
    tool: str, case: str, cmd: list[str], env: dict | None = None, check: bool = True
) -> Timing:
    """Run `cmd` to completion; wall time and the child's CPU time (rusage of that child only)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    # communicate() reaps with waitpid; drain the pipes ourselves and reap with wait4 for rusage.
    out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    _, status, rusage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{tool} {case} exited {proc.returncode}:\n{out.decode()[-2000:]}\n{err.decode()[-2000:]}"
        )
    return Timing(tool, case, wall, rusage.ru_utime + rusage.ru_stime, proc.returncode)


def start_bench_azurite() -> Azurite:
    """Azurite persisting to a temp directory on disk (1 GiB blobs are not held in node's heap);
    tests/azurite.py raises the fd limit for it (ranged GETs keep fds open)."""
    return start_azurite(in_memory=False)


def container_sas_url(az: Azurite, container: str, hours: int = 4) -> str:
    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(
            read=True, write=True, list=True, create=True, add=True, delete=True
        ),
        expiry=datetime.now(UTC) + timedelta(hours=hours),
    )
    return f"{az.account_url}/{container}?{sas}"


def rclone_remote(sas_url: str) -> str:
    """An on-the-fly rclone remote for a container SAS URL (no rclone config file needed)."""
    return f":azureblob,sas_url='{sas_url}':"


def azcopy_binary(workdir: str) -> str:
    """The npm-shipped azcopy; copied and made executable when the package left it 0644."""
    if os.access(AZCOPY_SHIPPED, os.X_OK):
        return str(AZCOPY_SHIPPED)
    dst = os.path.join(workdir, "azcopy")
    shutil.copy(AZCOPY_SHIPPED, dst)
    os.chmod(dst, os.stat(dst).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return dst


def azcopy_env(workdir: str) -> dict[str, str]:
    env = {
        "AZCOPY_LOG_LOCATION": os.path.join(workdir, "azcopy-logs"),
        "AZCOPY_JOB_PLAN_LOCATION": os.path.join(workdir, "azcopy-plans"),
        "AZCOPY_DISABLE_SYSLOG": "true",
    }
    os.environ.pop("AZCOPY_AUTO_LOGIN_TYPE", None)
    return env


def make_registry(path: str, az: Azurite, container: str, name: str = "bench") -> str:
    """A registry file naming one blob datastore on `container` (0600: it holds the key)."""
    import yaml

    doc = {
        "default_datastore": name,
        "datastores": [
            {
                "name": name,
                "type": "azure_blob",
                "account_name": ACCOUNT,
                "container_name": container,
                "account_url": az.account_url,
                "protocol": "http",
                "credentials": {"account_key": KEY},
            }
        ],
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f)
    return path


def drop_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def amlfs_cmd(*args: str) -> list[str]:
    return [str(VENV_BIN / "amlfs"), *args]


def save_results(name: str, meta: dict, timings: list[Timing]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"{name}-{stamp}.json"
    doc = {
        "when": stamp,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        **meta,
        "results": [asdict(t) for t in timings],
    }
    out.write_text(json.dumps(doc, indent=2))
    return out


def scratch_dir(prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix)


def restart_azurite(az: Azurite) -> Azurite:
    """Stop Azurite and start it again on the same port and on-disk location (its data kept):
    after a storm of aborted GETs has exhausted its descriptors."""
    from tests.azurite import _raise_nofile, azurite_binary

    az.proc.terminate()
    try:
        az.proc.wait(10)
    except subprocess.TimeoutExpired:
        az.proc.kill()
        az.proc.wait()
    cmd = [
        azurite_binary() or "azurite-blob",
        "--blobHost", "127.0.0.1", "--blobPort", str(az.port), "--skipApiVersionCheck",
        "--loose", "--silent", "--disableProductStyleUrl", "--location", az.workdir,
    ]  # fmt: skip
    log = open(os.path.join(az.workdir, "azurite-restart.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_raise_nofile)
    import socket

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited with {proc.returncode} on restart")
        try:
            with socket.create_connection(("127.0.0.1", az.port), timeout=0.2):
                return Azurite(az.port, proc, az.workdir)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("azurite did not listen again within 30 s")
