"""Fixtures of the fault-injection suite: a fault proxy in front of the session's Azurite, blob
datastores reached through it, seeded data and a CLI runner (amlfs in a subprocess, as users
run it)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from amlfs.backends import open_backend
from amlfs.registry import BLOB, Credentials, DatastoreConfig, datastore_to_dict

from ..azurite import ACCOUNT, KEY
from .proxy import FaultProxy


def blob_config(account_url: str, container: str, name: str = "faulty") -> DatastoreConfig:
    return DatastoreConfig(
        name=name,
        type=BLOB,
        account_name=ACCOUNT,
        container_name=container,
        account_url=account_url,
        protocol="http",
        credentials=Credentials(account_key=KEY),
    )


def registry_doc(*configs: DatastoreConfig) -> dict:
    return {
        "default_datastore": configs[0].name,
        "datastores": [datastore_to_dict(c) for c in configs],
    }


def payload(name: str, size: int) -> bytes:
    """Deterministic, name-dependent bytes (a misplaced range shows as wrong bytes)."""
    return random.Random(name).randbytes(size)


@dataclass
class Cli:
    registry: Path
    cwd: Path

    def run(self, *args: str, timeout: float = 180, env: dict | None = None):
        """amlfs in a subprocess: (CompletedProcess, seconds)."""
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "amlfs", "--registry", str(self.registry), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            env={**os.environ, **(env or {})},
        )
        return r, time.monotonic() - t0


def write_registry(path: Path, *configs: DatastoreConfig) -> Path:
    path.write_text(yaml.safe_dump(registry_doc(*configs)))
    path.chmod(0o600)
    return path


@pytest.fixture
def proxy(azurite):
    p = FaultProxy(("127.0.0.1", azurite.port))
    yield p
    p.stop()


@pytest.fixture
def direct(azurite, container):
    """The container's backend without the proxy: seeds data, changes objects mid-test."""
    b = open_backend(blob_config(azurite.account_url, container, "direct"))
    yield b
    b.close()


@pytest.fixture
def faulty(proxy, azurite, container) -> DatastoreConfig:
    """A blob datastore on the test's container, reached through the fault proxy."""
    return blob_config(proxy.url(azurite.account_url), container)


@pytest.fixture
def cli(tmp_path, faulty) -> Cli:
    return Cli(write_registry(tmp_path / "registry.yaml", faulty), tmp_path)


#: the standard data set: small files (whole GETs) and large ones (ranged chunks with 256K blocks)
SMALL = {f"d/s{i:02d}.bin": 40_000 + 977 * i for i in range(12)}
LARGE = {"d/big/l0.bin": 3 << 20, "d/big/l1.bin": (2 << 20) + 12345}


@pytest.fixture
def seeded(direct) -> dict[str, bytes]:
    files = {name: payload(name, size) for name, size in {**SMALL, **LARGE}.items()}
    for name, data in files.items():
        direct.write_bytes(name, data)
    return files


def check_tree(root: Path, files: dict[str, bytes], prefix: str = "d/") -> None:
    """`root` holds exactly `files` (names relative to `prefix`), byte-exact, no part files."""
    got = {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and ".amlfs" not in p.name
    }
    want = {k[len(prefix) :]: v for k, v in files.items()}
    assert sorted(got) == sorted(want)
    for rel, data in want.items():
        assert got[rel].read_bytes() == data, rel


def real_files(root: Path) -> dict[str, int]:
    """Files under their real names (not part files, not stage state)."""
    return {
        str(p.relative_to(root)): p.stat().st_size
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }
