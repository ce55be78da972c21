"""Where a mount daemon logs: a rotated per-mount file by default, the journal under systemd,
--log-file when given; `amlfs mounts` shows it and `amlfs logs` prints and follows it."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from amlfs import logs
from amlfs.fs import control

from .test_mount import FUSE_OK, Mounts

needs_fuse = pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3")


@pytest.fixture
def state(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "amlfs" / "logs"


def test_log_names_are_one_to_one_and_under_xdg_state(state):
    names = {logs.default_log_path(p).name for p in ("/mnt/a-b", "/mnt/a/b", "/mnt/a%2Db", "/")}
    assert len(names) == 4
    assert logs.default_log_path("/mnt/a-b").parent == state


def test_default_target_is_a_rotated_bounded_file(state, tmp_path):
    root = logging.getLogger()
    saved, hook = list(root.handlers), sys.excepthook
    try:
        target = logs.configure_daemon(str(tmp_path / "mnt"), debug=False)
        assert target.kind == logs.FILE and Path(target.path).parent == state
        handler = root.handlers[0]
        assert isinstance(handler, logging.handlers.RotatingFileHandler)
        assert handler.maxBytes == logs.LOG_BYTES and handler.backupCount == logs.BACKUPS
        line = "x" * 1000
        for _ in range(logs.LOG_BYTES * (logs.BACKUPS + 2) // 1000):
            logging.getLogger("amlfs.test").warning(line)
        handler.close()
        kept = list(state.glob("*.log*"))
        assert len(kept) == logs.BACKUPS + 1
        assert sum(p.stat().st_size for p in kept) <= logs.LOG_BYTES * (logs.BACKUPS + 1)
        assert logs.find_target(str(tmp_path / "mnt")) == target
        assert logs.tail_lines(target.path, 2)[-1].endswith(line)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        sys.excepthook = hook


def test_journal_only_when_stderr_is_the_journal_stream(state, tmp_path):
    script = (
        "import sys; from amlfs import logs;"
        "t = logs.configure_daemon(sys.argv[1], False);"
        "print(t.kind, t.invocation)"
    )
    err = tmp_path / "stderr"
    with open(err, "wb") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "INVOCATION_ID": "abc"}
        r = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "m1")],
            env=env, stderr=f, stdout=subprocess.PIPE, text=True, check=True,
        )  # fmt: skip
    assert r.stdout.split() == ["journal", "abc"]
    # Inherited variables with stderr elsewhere (a shell inside a service): not the journal.
    r = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "m2")],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert r.stdout.split() == ["file", "None"]
    assert "journalctl" in logs.journal_command(logs.find_target(str(tmp_path / "m1")))[0]


@needs_fuse
def test_background_mount_logs_to_its_file_mounts_shows_it_logs_follows(
    state, tmp_path, local_config
):
    Path(local_config.path, "f").write_bytes(b"x")
    m = Mounts(tmp_path, local_config)
    mp = m.mountpoint()
    m.mounted.append(mp)
    try:
        r = m.cli("mount", "loc:", str(mp))
        assert r.returncode == 0, r.stderr
        m.pids.append(m.pid(mp))
        log_path = logs.default_log_path(str(mp))
        rows = [json.loads(line) for line in m.cli("mounts", "--json").stdout.splitlines()]
        assert [row["log"] for row in rows if row["mountpoint"] == str(mp)] == [str(log_path)]
        assert str(log_path) in m.cli("mounts").stdout
        r = m.cli("logs", str(mp))
        assert r.returncode == 0 and f"mounted loc: at {mp}" in r.stdout, r.stdout + r.stderr
        follower = subprocess.Popen(
            [sys.executable, "-m", "amlfs", "logs", "-n", "1", "-f", str(mp)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert "mounted" in follower.stdout.readline()
            control.unmount(str(mp))
            assert f"unmounted {mp}" in follower.stdout.readline()
        finally:
            follower.send_signal(signal.SIGINT)
            assert follower.wait(10) == 0
    finally:
        m.cleanup()


def test_logs_of_an_unknown_mountpoint_exit_2(tmp_path, state):
    r = subprocess.run(
        [sys.executable, "-m", "amlfs", "logs", str(tmp_path)], capture_output=True, text=True
    )
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "mount it first" in r.stderr


def test_logs_of_unused_mountpoints_are_pruned(state, tmp_path):
    state.mkdir(parents=True)
    old, new = state / "old.log", state / "new.log"
    old.write_text("x")
    new.write_text("y")
    month = logs.KEEP_DAYS * 86400
    os.utime(old, (1_000_000, 1_000_000))
    assert logs.prune(now=1_000_000 + month + 1) == 1
    assert not old.exists() and new.exists()


@needs_fuse
def test_prune_keeps_the_log_of_a_live_mount(state, tmp_path, local_config):
    m = Mounts(tmp_path, local_config)
    mp = m.mountpoint("quiet.mnt")
    m.mounted.append(mp)
    try:
        assert m.cli("mount", "loc:", str(mp)).returncode == 0
        m.pids.append(m.pid(mp))
        log_path = logs.default_log_path(str(mp))
        os.utime(log_path, (1, 1))
        logs.prune()
        assert log_path.exists()
    finally:
        m.cleanup()
    os.utime(log_path, (1, 1))  # the daemon's last line ("unmounted") touched it
    logs.prune()
    assert not log_path.exists()
