"""The plugin's first process: it runs the gRPC server as a child, restarts it when it dies, and
reaps the mount daemons, which sit outside the server's process tree as its own orphans.

Why: in a container, the first process is PID 1, and when PID 1 exits every other process of the
container is killed, mount daemons included. This process does almost nothing (no gRPC, no
storage client, no threads), so it is the part least likely to die; a crash of the server, the
part that does the work, then costs no mount. It is a child subreaper, so that the daemons
(started through `setsid -f`, whose intermediate process exits at once) are re-parented to it
and reaped here even when it is not PID 1.

Restarts back off from 1 s to 30 s, reset once a server has run a minute. SIGTERM/SIGINT are
passed to the server; the supervisor then exits, leaving the mounts up.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
MAX_BACKOFF = 30.0
STABLE = 60.0


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _die_with_parent() -> None:
    # in the server child, between fork and exec: a server must not outlive its supervisor
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise(argv: list[str]) -> int:
    """Run `argv` (the server) until it is stopped by a signal to us; returns the exit status."""
    try:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError as e:
        log.warning("cannot become a child subreaper (%s): mount daemons go to init", e)
    stopping = False
    server: subprocess.Popen | None = None

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        if server is not None and server.poll() is None:
            server.send_signal(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    backoff = 1.0
    while True:
        started = time.monotonic()
        server = subprocess.Popen(argv, preexec_fn=_die_with_parent)  # noqa: PLW1509
        log.info("started the CSI server (pid %d)", server.pid)
        status = _wait_reaping(server.pid)
        server.returncode = status  # reaped here, not by Popen
        if stopping:
            log.info("the CSI server stopped (status %d); the mounts stay up", status)
            return 0
        ran = time.monotonic() - started
        backoff = 1.0 if ran > STABLE else min(MAX_BACKOFF, backoff * 2)
        log.warning(
            "the CSI server (pid %d) exited with status %d after %.0f s; restarting in %.0f s",
            server.pid,
            status,
            ran,
            backoff,
        )
        deadline = time.monotonic() + backoff
        while not stopping and time.monotonic() < deadline:
            _reap_orphans()
            time.sleep(0.1)
        if stopping:
            return 0


def _wait_reaping(pid: int) -> int:
    """Wait for `pid` to exit, reaping every other child (orphaned mount daemons) meanwhile."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            return -1
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        log.debug("reaped process %d (status %d)", got, os.waitstatus_to_exitcode(status))


def _reap_orphans() -> None:
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0:
            return
