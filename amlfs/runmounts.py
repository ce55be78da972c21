"""The mounts of a training run: started with `amlfs mount` in a child process (its daemon
outlives no run: every way out of a run unmounts), read-only for inputs, `--rw` for outputs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence

from .errors import AmlfsError, UsageError

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 120
#: how long an output mount's daemon may take to write back what it holds after the unmount
COMMIT_TIMEOUT = 600.0


def amlfs_cli(registry_path: str) -> list[str]:
    # A registry never saved holds only the embedded default, which the child finds without one.
    named = ["--registry", registry_path] if os.path.exists(registry_path) else []
    return [sys.executable, "-m", "amlfs", *named]


def mount(
    registry_path: str, location: str, where: str, label: str, extra: Sequence[str] = ()
) -> None:
    """`amlfs mount [extra] LOCATION WHERE`; errors name `label` ("input train")."""
    os.makedirs(where, exist_ok=True)
    cmd = amlfs_cli(registry_path) + ["mount", *extra, "--", location, where]
    # Without --registry (a registry never saved), $AMLFS_REGISTRY must not name a missing file.
    env = {k: v for k, v in os.environ.items() if k != "AMLFS_REGISTRY" or "--registry" in cmd}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT, env=env)
    if p.returncode != 0:
        message = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "mount failed"
        message = message.removeprefix("amlfs: error: ")
        err = UsageError if p.returncode == 2 else AmlfsError
        raise err(f"{label}: {message}")


def unmount(where: str) -> None:
    """Unmount, never leaving the mount behind: a plain unmount first, lazy as the fallback."""
    for args in (["-u"], ["-u", "-z"]):
        p = subprocess.run(["fusermount3", *args, where], capture_output=True, text=True)
        if p.returncode == 0:
            return
    log.warning("could not unmount %s: %s", where, p.stderr.strip())


def unmount_and_wait(where: str, timeout: float = COMMIT_TIMEOUT) -> str | None:
    """Unmount a writable mount and wait for its daemon to finish writing back; None when it
    did, else why not (a busy mount is not detached lazily: its writes would be cut off)."""
    from .fs import control

    try:
        pid = control.read_facts(where, timeout=5.0).get("pid")
    except AmlfsError as e:
        return f"its mount at {where} is not healthy: {e}"
    try:
        control.unmount(where, wait=timeout)
    except AmlfsError as e:
        return str(e)
    if isinstance(pid, int) and _alive(pid):
        return f"its mount daemon (pid {pid}) was still writing {timeout:.0f} s after the unmount"
    return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
