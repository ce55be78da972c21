"""Helpers of the mount fault tests: a real `amlfs mount` through the fault proxy (daemon in a
subprocess, always unmounted), readers in subprocesses (so that a reader stuck in the kernel
shows as D state and can be timed from its read call), and the daemon's resource counts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from amlfs.fs import control

from .conftest import Cli

FUSE_OK = os.path.exists("/dev/fuse") and shutil.which("fusermount3") is not None

#: a reader in a subprocess: reads PATH whole, prints {"ok", "errno", "secs", "sha"} as JSON
_READER = r"""
import errno, hashlib, json, os, sys, time
path = sys.argv[1]
t0 = time.monotonic()
try:
    with open(path, "rb") as f:
        data = f.read()
    out = {"ok": True, "sha": hashlib.sha256(data).hexdigest(), "size": len(data)}
except OSError as e:
    out = {"ok": False, "errno": errno.errorcode.get(e.errno, str(e.errno))}
out["secs"] = time.monotonic() - t0
print(json.dumps(out), flush=True)
"""


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except OSError:
        return None


@dataclass
class Reading:
    proc: subprocess.Popen
    t0: float

    def result(self, bound: float) -> dict:
        """The reader's result; fails if it is still running (in D state or not) past `bound`
        seconds from its start."""
        try:
            out, _ = self.proc.communicate(timeout=max(0.1, bound - (time.monotonic() - self.t0)))
        except subprocess.TimeoutExpired:
            state = proc_state(self.proc.pid)
            self.proc.kill()
            raise AssertionError(
                f"reader still running after {bound:.1f} s (state {state})"
            ) from None
        return json.loads(out)


def start_read(path: Path) -> Reading:
    t0 = time.monotonic()
    return Reading(
        subprocess.Popen(
            [sys.executable, "-c", _READER, str(path)], stdout=subprocess.PIPE, text=True
        ),
        t0,
    )


@dataclass
class Mounts:
    cli: Cli
    tmp: Path
    mounted: list[Path] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def mount(self, spec: str, *opts: str, name: str = "mnt") -> Path:
        mp = self.tmp / name
        mp.mkdir(exist_ok=True)
        args = ["mount", "--block-size", "256K", "--cache-size", "32M"]
        args += ["--log-file", str(self.tmp / f"{name}.log"), *opts, spec, str(mp)]
        self.mounted.append(mp)
        r, _ = self.cli.run(*args, timeout=60)
        assert r.returncode == 0, r.stderr
        assert os.path.ismount(mp)
        self.pids.append(control.read_facts(str(mp))["pid"])
        return mp

    def cleanup(self) -> None:
        for mp in self.mounted:
            if control.find_mount(str(mp)) is not None:
                subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        for pid in self.pids:
            deadline = time.monotonic() + 10
            while proc_state(pid) not in (None, "Z", "X") and time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def resources(pid: int) -> dict[str, int]:
    """Open descriptors, threads and RSS (bytes) of process `pid`."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "fds": fds,
        "threads": int(fields["Threads"].strip()),
        "rss": int(fields["VmRSS"].strip().split()[0]) * 1024,
    }


def settles_to(pid: int, base: dict[str, int], margin: dict[str, int], timeout: float) -> dict:
    """Poll until the resources of `pid` are within `margin` of `base`; the last reading."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources(pid)
        if all(now[k] <= base[k] + margin[k] for k in margin) or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


@contextmanager
def eio_filesystem(path: Path) -> Iterator[Path]:
    """`path` (an empty directory) mounted as a filesystem whose every write fails with EIO
    (tests/faults/eiofs.py) for the body of the `with`; the test is skipped if it cannot mount."""
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "tests.faults.eiofs", str(path)], cwd=repo)
    deadline = time.monotonic() + 20
    while not os.path.ismount(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip("the EIO filesystem did not mount")
        time.sleep(0.05)
    try:
        yield path
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
