"""Shared benchmark helpers: Azurite on disk with a high fd limit, container SAS URLs for the peer
tools, the azcopy and rclone command lines, timing of a child process (wall time and the
child's CPU seconds from os.wait4), and the File share / ADLS Gen2 test servers of tests/servers
in a child process."""

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
    "PROTOCOL_BACKENDS",
    "Azurite",
    "ProtocolServer",
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
    "write_protocol_registry",
]


@dataclass
class Timing:
    tool: str
    case: str
    wall: float
    cpu: float  # the child's user + system CPU seconds
    returncode: int
    user: float = 0.0  # of which user CPU seconds (the rest is the kernel's work for the tool)

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
    cpu = rusage.ru_utime + rusage.ru_stime
    return Timing(tool, case, wall, cpu, proc.returncode, rusage.ru_utime)


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
    compile_amlfs()
    return [str(VENV_BIN / "amlfs"), *args]


_compiled = False


def compile_amlfs() -> None:
    """Byte-compile amlfs once, as an install does: with PYTHONDONTWRITEBYTECODE set (as on this
    rig) every `amlfs` child would otherwise compile its modules from source (~0.1-0.2 CPU-s per
    run), a cost no installed copy pays."""
    global _compiled
    if not _compiled:
        import compileall

        compileall.compile_dir(str(REPO / "amlfs"), quiet=1)
        _compiled = True


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


# --- File share and ADLS Gen2 on the protocol-level test servers (amlfs only: no peer reaches them)

PROTOCOL_BACKENDS = ("fileshare", "adls")
_CHUNK = 8 << 20


def serve_protocol(
    kind: str, container: str, files: list[tuple[str, str]], synthetic: dict[str, int], conn
) -> None:
    """The child: serve `kind` in memory with `files` ((remote name, local path) pairs) and
    `synthetic` ({remote name: size}, content made here) in `container`, until told to stop."""
    from amlfs.schema import datastore_to_dict
    from tests.servers.adls import AdlsServer
    from tests.servers.fileshare import FileShareServer
    from tests.servers.fixtures import make_adls_config, make_fileshare_config

    if kind == "fileshare":
        server = FileShareServer()
        ds = make_fileshare_config(server, share=container)
    elif kind == "adls":
        server = AdlsServer()
        ds = make_adls_config(server, filesystem=container)
    else:
        raise ValueError(f"unknown protocol backend {kind!r}")
    chunk = os.urandom(_CHUNK)
    for name, size in synthetic.items():
        # Distinct blocks (a cache keyed on content could not cheat), fast to make.
        n = -(-size // _CHUNK)
        data = b"".join(i.to_bytes(8, "little") + chunk[8:] for i in range(n))[:size]
        server.put_file(container, name, data)
        del data
    for name, path in files:
        with open(path, "rb") as f:
            server.put_file(container, name, f.read())
    server.start()
    conn.send(datastore_to_dict(ds))
    try:
        conn.recv()  # "stop"
    except EOFError:  # the parent died
        pass
    server.stop()


class ProtocolServer:
    """A tests/servers File share or ADLS Gen2 server in a child process (so that its CPU is
    measured apart from the client's and it never shares a GIL with it). Inside `with`, `entry`
    is its datastore's registry entry (named `kind`, key auth) and `pid` the server's process."""

    def __init__(
        self,
        kind: str,
        container: str,
        files: list[tuple[str, str]] | None = None,
        synthetic: dict[str, int] | None = None,
    ):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process that has had threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=serve_protocol,
            args=(kind, container, list(files or []), dict(synthetic or {}), child),
            daemon=True,
        )
        self.kind = kind
        self.entry: dict = {}
        self.pid = 0

    def __enter__(self) -> ProtocolServer:
        self._proc.start()
        if not self._conn.poll(300):
            self._proc.kill()
            raise RuntimeError(f"the {self.kind} test server did not start")
        self.entry = self._conn.recv()
        self.pid = self._proc.pid or 0
        return self

    def cpu_seconds(self) -> float:
        """The server process's user + system CPU seconds so far."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc) -> None:
        try:
            self._conn.send("stop")
        except OSError:
            pass
        self._proc.join(15)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def write_protocol_registry(path: str, entry: dict) -> str:
    """A registry file naming the one datastore `entry` (0600: it holds the key)."""
    import yaml

    doc = {"default_datastore": entry["name"], "datastores": [entry]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(doc, f)
    return path
