"""The rules under the fault handling, one by one: a local write error inside the backend's
read_range_to_fd is a LocalIOError (lean client and SDK path alike, into /dev/full: ENOSPC);
the failure streak that stops a run; the AIMD throttle (an injected clock)."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from amlfs.backends.blob import BlobBackend
from amlfs.backends.errors import LocalIOError, NotFound, Throttled, Transient
from amlfs.credentials import resolve_credential
from amlfs.outcome import STREAK_STOP, FailureStreak
from amlfs.throttle import Throttle

from .conftest import blob_config


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "sdk"])
def test_a_full_disk_inside_read_range_to_fd_is_a_local_error(azurite, container, direct, lean):
    direct.write_bytes("x.bin", os.urandom(300_000))
    ds = blob_config(azurite.account_url, container)
    b = BlobBackend(
        ds.account_url, container, resolve_credential(ds), account_name=ds.account_name, lean=lean
    )
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        with pytest.raises(LocalIOError) as info:
            b.read_range_to_fd("x.bin", 0, 300_000, fd, 0)
    finally:
        os.close(fd)
        b.close()
    e = info.value
    assert not isinstance(e, Transient)
    assert e.errno == errno.ENOSPC and e.filename == "/dev/full" and e.same_for_all
    assert "No space left on device (ENOSPC)" in str(e) and "network" not in str(e)


def test_local_errors_that_stop_a_run_and_those_that_do_not():
    assert LocalIOError(OSError(errno.EROFS, "Read-only file system"), "/t/a").same_for_all
    eio = LocalIOError(OSError(errno.EIO, "Input/output error"), "/t/a")
    assert not eio.same_for_all and "/t/a" in str(eio) and eio.hint


def test_a_streak_of_one_kind_stops_and_a_success_or_a_missing_file_breaks_it():
    s = FailureStreak()
    eio = LocalIOError(OSError(errno.EIO, "Input/output error"), "/t/a")
    assert [s.failure(eio) for _ in range(STREAK_STOP - 1)] == [0] * (STREAK_STOP - 1)
    s.success()
    assert [s.failure(eio) for _ in range(STREAK_STOP - 1)] == [0] * (STREAK_STOP - 1)
    assert s.failure(NotFound("gone")) == 0  # about one file: never a reason to stop
    assert [s.failure(eio) for _ in range(STREAK_STOP)][-1] == STREAK_STOP


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _busy(after: float | None) -> Throttled:
    e = Throttled("503 ServerBusy")
    e.retry_after = after
    return e


def test_throttle_halves_on_throttling_waits_retry_after_and_recovers():
    clock = _Clock()
    t = Throttle(32, clock=clock, cut_interval=0.5)
    calls = []

    def refused_then_ok():
        calls.append(clock.now)
        if len(calls) == 1:
            raise _busy(2.0)
        return "ok"

    # The retry must wait until the Retry-After has passed on the (injected) clock.
    advanced = threading.Event()

    def advance():
        while len(calls) < 1:
            advanced.wait(0.01)
        clock.now += 2.5

    mover = threading.Thread(target=advance)
    mover.start()
    assert t.call(refused_then_ok) == "ok"
    mover.join()
    assert calls[1] >= calls[0] + 2.0
    assert t.limit == pytest.approx(16 + 1 / 16)
    # One burst of refusals within cut_interval is one cut.
    t._throttled(_busy(0))
    t._throttled(_busy(0))
    assert int(t.limit) == 8
    # Successes add 1/limit each: back to the maximum after a few rounds.
    for _ in range(600):  # from 8 to 32: 8 + 9 + ... + 31 = 468 successes
        t.call(lambda: None)
    assert t.limit == 32


def test_throttle_gives_up_after_its_attempts():
    t = Throttle(4, attempts=3, default_pause=0.0)
    n = []

    def always_busy():
        n.append(1)
        raise _busy(0.0)

    with pytest.raises(Throttled):
        t.call(always_busy)
    assert len(n) == 3 and t.active == 0
