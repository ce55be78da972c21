"""The outside of a mount: start a daemon in the background and wait until it is live, find amlfs
mounts in /proc/self/mountinfo, read a mount's live facts, unmount (a dead daemon's mount too).

Runtime facts (pid, counters) come from the mount itself, through an unlisted file at its root
(attrs.STATS_NAME): any process that can read the mount can ask, and a dead daemon cannot
lie.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from ..errors import AmlfsError, UsageError
from .attrs import STATS_NAME
from .daemon import FSTYPE

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo."""

    mountpoint: str
    fstype: str
    source: str

    @property
    def datastore(self) -> str:
        return self.source.partition(":")[0]

    @property
    def path(self) -> str:
        return self.source.partition(":")[2]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def all_mounts(mountinfo: str = MOUNTINFO) -> list[MountEntry]:
    out = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, sep, right = line.rstrip("\n").partition(" - ")
            if not sep:
                continue
            fields, tail = left.split(" "), right.split(" ")
            if len(fields) < 5 or len(tail) < 2:
                continue
            source = _unescape(tail[1])
            if tail[0] == FSTYPE:
                source = unquote(source)  # daemon.fuse_options percent-encodes non-ASCII
            out.append(MountEntry(_unescape(fields[4]), tail[0], source))
    return out


def list_mounts(mountinfo: str = MOUNTINFO) -> list[MountEntry]:
    """amlfs mounts, live or dead (a dead daemon's mount stays until unmounted)."""
    return [m for m in all_mounts(mountinfo) if m.fstype == FSTYPE]


def find_mount(mountpoint: str, *, any_type: bool = False) -> MountEntry | None:
    """The (last, i.e. topmost) mount at `mountpoint`; only amlfs ones unless `any_type`."""
    target = _canonical(mountpoint)
    found = None
    for m in all_mounts():
        if m.mountpoint == target and (any_type or m.fstype == FSTYPE):
            found = m
    return found


def _canonical(path: str) -> str:
    # realpath stats each component; on a dead mount that fails and realpath keeps the name.
    return os.path.realpath(os.path.abspath(os.path.expanduser(path)))


def read_facts(mountpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """The mount's live facts and counters. AmlfsError if its daemon is dead or does not answer."""
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            with open(os.path.join(mountpoint, STATS_NAME), "rb") as f:
                result["value"] = f.read()
        except OSError as e:
            result["error"] = e

    # A hung daemon would block the read; a daemon thread lets us give up on it.
    t = threading.Thread(target=work, daemon=True, name="amlfs-facts")
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise AmlfsError(f"the daemon of {mountpoint} did not answer within {timeout:.0f} s")
    if "error" in result:
        e: OSError = result["error"]
        if e.errno == 107:  # ENOTCONN
            raise AmlfsError(
                f"the daemon of {mountpoint} is dead: run `amlfs unmount {mountpoint}`"
            )
        raise AmlfsError(f"cannot read the state of {mountpoint}: {e.strerror}")
    return json.loads(result["value"])


def validate_mountpoint(mountpoint: str, nonempty: bool = False) -> str:
    """The absolute mountpoint, or UsageError: missing, not a directory, a mount, not empty."""
    path = _canonical(mountpoint)
    existing = find_mount(path, any_type=True)
    if existing is not None:
        if existing.fstype == FSTYPE:
            raise UsageError(
                f"{path} is already an amlfs mount of {existing.source}"
                f" (`amlfs unmount {path}` first)"
            )
        raise UsageError(f"{path} is already a mount ({existing.fstype})")
    try:
        isdir = os.path.isdir(path) if os.path.lexists(path) else None
    except OSError as e:
        raise UsageError(f"mountpoint {path}: {e.strerror}") from None
    if isdir is None:
        raise UsageError(f"mountpoint {path} does not exist")
    if not isdir:
        raise UsageError(f"mountpoint {path} is not a directory")
    if os.getuid() != 0 and not os.access(path, os.W_OK):
        raise UsageError(f"mountpoint {path} is not writable by you (FUSE requires it)")
    if not nonempty:
        try:
            with os.scandir(path) as it:
                if next(it, None) is not None:
                    raise UsageError(
                        f"mountpoint {path} is not empty (use -o nonempty to mount over it)"
                    )
        except OSError as e:
            raise UsageError(f"mountpoint {path}: {e.strerror}") from None
    return path


def start_background(
    argv: list[str],
    mountpoint: str,
    log_file: str | None,
    timeout: float = 30.0,
    stdin: bytes = b"",
    env: dict[str, str] | None = None,
) -> int:
    """Run `argv` (a foreground mount command) as a detached daemon, `stdin` on its standard
    input (then closed), `env` its environment (None: ours); return its pid once the mount is
    live. `argv` gets `--status-fd N` appended after its first `mount` word."""
    read_fd, write_fd = os.pipe()
    try:
        i = argv.index("mount") + 1
        cmd = [*argv[:i], "--status-fd", str(write_fd), *argv[i:]]
        try:
            out = open(log_file, "ab") if log_file else open(os.devnull, "wb")  # noqa: SIM115
        except OSError as e:
            raise UsageError(f"cannot open log file {log_file}: {e.strerror}") from None
        with out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=out,
                start_new_session=True,
                pass_fds=(write_fd,),
                cwd="/",
                env=env,
            )
        assert proc.stdin is not None
        try:
            with proc.stdin:  # small (a JSON document): fits the pipe, never blocks
                proc.stdin.write(stdin)
        except BrokenPipeError:
            pass  # the daemon died at once: its status pipe says why
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        deadline = time.monotonic() + timeout
        line = _read_status(read_fd, deadline)
    finally:
        os.close(read_fd)
    if line.startswith("error "):
        _, code, message = (line.split(" ", 2) + [""])[:3]
        proc.wait(timeout=10)
        raise (UsageError if code == "2" else AmlfsError)(message)
    if not line.startswith("ready"):
        try:
            proc.wait(timeout=1)
            why = f"exited with status {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.terminate()
            why = f"did not report within {timeout:.0f} s"
        hint = f"; see {log_file}" if log_file else "; run with --foreground or --log-file"
        raise AmlfsError(f"the mount daemon {why}{hint}")
    while not os.path.ismount(mountpoint):
        if proc.poll() is not None:
            raise AmlfsError(f"the mount daemon exited with status {proc.returncode}")
        if time.monotonic() > deadline:
            proc.terminate()
            raise AmlfsError(f"{mountpoint} did not become a live mount within {timeout:.0f} s")
        time.sleep(0.02)
    return proc.pid


def _read_status(fd: int, deadline: float) -> str:
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


def unmount(mountpoint: str, lazy: bool = False, wait: float = 10.0) -> None:
    """Unmount an amlfs mount, live or dead; wait for a live daemon to exit."""
    entry = find_mount(mountpoint)
    if entry is None:
        raise UsageError(f"{_canonical(mountpoint)} is not an amlfs mount")
    path = entry.mountpoint
    pid = None
    try:
        facts = read_facts(path, timeout=2.0)
        pid = facts.get("pid")
        # A writable mount commits what is still open before it exits: wait for that too.
        wait = max(wait, float(facts.get("unmount_timeout") or 0) + 5)
    except AmlfsError as e:
        log.info("%s", e)  # dead or hung: unmount all the same
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool:
        cmd = [tool, "-u", *(["-z"] if lazy else []), path]
    else:
        cmd = ["umount", *(["-l"] if lazy else []), path]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0 and find_mount(path) is not None:
        msg = (r.stderr.strip().splitlines() or [f"{cmd[0]} failed"])[-1]
        if "busy" in msg.lower():
            msg += " (close what uses it, or use --lazy)"
        raise AmlfsError(f"cannot unmount {path}: {msg}")
    if isinstance(pid, int):
        _wait_exit(pid, wait)


def _wait_exit(pid: int, wait: float) -> None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    log.warning("the daemon (pid %d) is still running %.0f s after the unmount", pid, wait)
