"""The systemd template unit, readiness notification (NOTIFY_SOCKET) and the fstab mount helper."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from amlfs.fs import control
from amlfs.fs.notify import sd_notify

from .test_mount import FUSE_OK, Mounts

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "amlfs@.service"
HELPER = REPO / "systemd" / "mount.fuse.amlfs"
needs_fuse = pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3")


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    for unit in (UNIT, tmp_path / "amlfs@mydata.service"):
        if unit != UNIT:
            shutil.copy(UNIT, unit)  # an instance, as `systemctl start amlfs@mydata` sees it
        r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr.strip() == "", r.stderr
    broken = tmp_path / "broken@.service"
    broken.write_text(UNIT.read_text().replace("Type=notify", "Type=notifyy"))
    r = subprocess.run(["systemd-analyze", "verify", str(broken)], capture_output=True, text=True)
    assert "notifyy" in r.stderr  # the check is not vacuous


def test_unit_settings():
    s = unit_settings()
    assert s["Type"] == ["notify"] and s["NotifyAccess"] == ["main"]
    assert s["Restart"] == ["on-failure"] and s["RestartPreventExitStatus"] == ["2"]
    assert "network-online.target" in s["After"][0] and "network-online.target" in s["Wants"][0]
    (start,) = s["ExecStart"]
    assert "mount --foreground" in start and "${AMLFS_SOURCE} ${AMLFS_MOUNTPOINT}" in start
    assert any(v.startswith("AMLFS_SOURCE=%I") for v in s["Environment"])
    assert s["EnvironmentFile"] == ["-/etc/amlfs/%i.env"]


def test_sd_notify_paths_and_abstract_sockets(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    for address in (str(tmp_path / "notify"), f"@amlfs-test-{os.getpid()}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(address.replace("@", "\0", 1) if address[0] == "@" else address)
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            assert sd_notify("READY=1\nSTATUS=hi") is True
            assert sock.recv(4096) == b"READY=1\nSTATUS=hi"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd_notify("READY=1") is False  # logged, never raised


@needs_fuse
def test_foreground_daemon_notifies_ready_when_live_and_stopping(tmp_path, local_config):
    Path(local_config.path, "f").write_bytes(b"served")
    m = Mounts(tmp_path, local_config)
    mp = m.mountpoint()
    m.mounted.append(mp)
    address = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--registry", str(m.registry), "mount", "--foreground"]
        + ["--block-size", "64K", "loc:", str(mp)],
        env={**os.environ, "NOTIFY_SOCKET": address},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    m.pids.append(proc.pid)
    try:
        message = sock.recv(4096).decode()
        assert message.startswith("READY=1\n") and f"MAINPID={proc.pid}" in message
        assert os.path.ismount(mp) and (mp / "f").read_bytes() == b"served"
        proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert proc.wait(30) == 0
        assert control.find_mount(str(mp)) is None
        err = proc.stderr.read().decode()
        assert "Traceback" not in err
    finally:
        sock.close()
        m.cleanup()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_fuse
def test_foreground_bad_input_exits_2_without_ready(tmp_path, local_config):
    m = Mounts(tmp_path, local_config)
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(0.5)
        r = subprocess.run(
            [sys.executable, "-m", "amlfs", "--registry", str(m.registry), "mount", "-f"]
            + ["loc:missing", str(m.mountpoint())],
            env={**os.environ, "NOTIFY_SOCKET": address},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2 and "does not exist" in r.stderr
        with pytest.raises(TimeoutError):
            sock.recv(4096)


@needs_fuse
def test_fstab_helper_mounts_with_fstab_options(tmp_path, local_config):
    Path(local_config.path, "f").write_bytes(b"from fstab")
    m = Mounts(tmp_path, local_config)
    mp = m.mountpoint()
    m.mounted.append(mp)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("AMLFS_REGISTRY", None)
    opts = f"rw,_netdev,nofail,noatime,x-systemd.automount,registry={m.registry},cache_size=16M"
    try:
        r = subprocess.run(
            ["sh", str(HELPER), "loc:", str(mp), "-n", "-o", opts, "-t", "fuse.amlfs"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert (mp / "f").read_bytes() == b"from fstab"
        m.pids.append(m.pid(mp))
        facts = control.read_facts(str(mp))
        assert facts["cache_bytes"] == 16 << 20
        with pytest.raises(OSError):
            (mp / "new").write_bytes(b"x")  # rw in fstab does not make it writable
    finally:
        m.cleanup()


def test_fstab_helper_usage():
    r = subprocess.run(["sh", str(HELPER)], capture_output=True, text=True)
    assert r.returncode == 1 and "usage" in r.stderr
