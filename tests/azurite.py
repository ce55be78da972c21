"""Start and stop the Azurite Blob emulator (the pinned npm package) on a free loopback port."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# The well-known Azurite development account (public, documented; not a secret).
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def azurite_binary() -> str | None:
    local = REPO / "node_modules" / ".bin" / "azurite-blob"
    if local.exists():
        return str(local)
    return shutil.which("azurite-blob")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class Azurite:
    port: int
    proc: subprocess.Popen
    workdir: str

    @property
    def account_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.account_url};"
        )

    def service(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(
            self.account_url, credential={"account_name": ACCOUNT, "account_key": KEY}
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_azurite(
    in_memory: bool = True,
    port: int | None = None,
    skip_api_version_check: bool = True,
    workdir: str | None = None,
) -> Azurite:
    """Azurite on `port` (a free one by default); on disk in `workdir` unless `in_memory` (give
    the same port and workdir to restart one with its data)."""
    binary = azurite_binary()
    if binary is None:
        raise RuntimeError("azurite is not installed: run `npm install` in the repository root")
    port = port or free_port()
    workdir = workdir or tempfile.mkdtemp(prefix="amlfs-azurite-")
    cmd = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        *(["--skipApiVersionCheck"] if skip_api_version_check else []),
        "--loose",
        "--silent",
        "--disableProductStyleUrl",
    ]
    # Azurite refuses --location together with --inMemoryPersistence.
    cmd += ["--inMemoryPersistence"] if in_memory else ["--location", workdir]
    log = open(os.path.join(workdir, "azurite.log"), "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_raise_nofile)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"azurite exited with {proc.returncode}; see {workdir}/azurite.log")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Azurite(port, proc, workdir)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("azurite did not start listening within 30 s")
