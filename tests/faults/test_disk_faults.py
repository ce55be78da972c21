"""`amlfs stage` and `amlfs download` into a failing local disk: full (a small tmpfs), read-only
(a tmpfs remounted ro), failing every write with EIO (tests/faults/eiofs.py). Each is reported
as the local error it is, with the local path, never retried as a network error, and stops the
run early when every later file must fail the same way; no partial file under a real name."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import Cli, real_files
from .mounts import eio_filesystem

FLAGS = ("--block-size", "256K", "--workers", "8", "--no-progress")
BOUND = 30.0  # no retries: a local error ends its file at once

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts filesystems: needs root")


def _mount_tmpfs(path: Path, size: str, ro: bool = False) -> None:
    path.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    if ro:
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@pytest.fixture
def mounts_to_undo():
    done: list[Path] = []
    yield done
    for p in reversed(done):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


@pytest.fixture
def full_target(tmp_path, mounts_to_undo) -> Path:
    p = tmp_path / "full"
    _mount_tmpfs(p, "1m")
    mounts_to_undo.append(p)
    return p


@pytest.fixture
def readonly_target(tmp_path, mounts_to_undo) -> Path:
    p = tmp_path / "ro"
    _mount_tmpfs(p, "1m", ro=True)
    mounts_to_undo.append(p)
    return p


@pytest.fixture
def eio_target(tmp_path):
    p = tmp_path / "eio"
    p.mkdir()
    with eio_filesystem(p):
        yield p


def _one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.parametrize("command", ["stage", "download"])
def test_full_target_is_enospc_with_the_path_and_stops(
    cli: Cli, proxy, seeded, full_target, command
):
    target = full_target / "out"
    r, secs = cli.run(command, "faulty:d", str(target), *FLAGS)
    assert r.returncode == 1, r.stderr
    assert secs < BOUND
    line = _one_error(r.stderr)
    assert "No space left on device (ENOSPC)" in line and str(target) in line, line
    assert "network" not in r.stderr and "WARNING" not in r.stderr
    # Not retried: at most one GET per file and per chunk, and the run stopped early.
    assert proxy.count("GET", "/d/") <= len(seeded) + 21
    sizes = {k[2:]: len(v) for k, v in seeded.items()}
    for rel, size in real_files(target).items():
        assert size == sizes[rel]  # only complete files under real names


@pytest.mark.parametrize("sub", ["", "new/dir"], ids=["the-mount", "a-new-subdirectory"])
@pytest.mark.parametrize("command", ["stage", "download"])
def test_readonly_target_is_erofs_and_one_line(cli: Cli, seeded, readonly_target, command, sub):
    target = readonly_target / sub
    r, secs = cli.run(command, "faulty:d", str(target), *FLAGS)
    assert r.returncode == 1, r.stderr
    assert secs < BOUND
    line = _one_error(r.stderr)
    assert "Read-only file system" in line and str(readonly_target) in line, line
    assert "Traceback" not in r.stderr
    assert not real_files(readonly_target)


@pytest.mark.parametrize("command", ["stage", "download"])
def test_eio_on_write_is_reported_as_a_local_io_error(cli: Cli, proxy, seeded, eio_target, command):
    target = eio_target / "out"
    r, secs = cli.run(command, "faulty:d", str(target), *FLAGS)
    assert r.returncode == 1, r.stderr
    assert secs < BOUND
    assert "Input/output error (EIO)" in r.stderr and str(target) in r.stderr, r.stderr
    assert "network" not in r.stderr and "WARNING" not in r.stderr
    assert proxy.count("GET", "/d/") <= len(seeded) + 21
    assert not real_files(target)
