"""Cancelling backend calls: Abort, and TrioBackend.call giving back its thread, its limiter slot
and (through on_exit, on the trio thread) the caller's buffer only when the thread has ended."""

from __future__ import annotations

import threading
import time

import pytest
import trio
import trio.testing

from amlfs.backends import open_backend
from amlfs.backends.base import Abort, Aborted, TrioBackend
from amlfs.registry import BLOB, Credentials, DatastoreConfig

from .azurite import ACCOUNT, KEY
from .canned import CannedServer, Stall, partial


def canned_blob(server: CannedServer, **options):
    """A Blob backend (lean path) whose account URL is the canned server."""
    ds = DatastoreConfig(
        name="canned",
        type=BLOB,
        account_name=ACCOUNT,
        container_name="c",
        account_url=f"{server.url}/{ACCOUNT}",
        protocol="http",
        credentials=Credentials(account_key=KEY),
    )
    return open_backend(ds, **options)


def test_abort_runs_each_closer_once():
    abort, ran = Abort(), []
    first, second, gone = (lambda: ran.append(1)), (lambda: ran.append(2)), lambda: ran.append(3)
    abort.attach(first)
    abort.attach(second)
    abort.attach(gone)
    abort.detach(gone)
    abort.detach(gone)  # twice: no error
    abort.check("p")
    abort.cancel()
    abort.cancel()
    assert ran == [1, 2] and abort.cancelled
    abort.attach(lambda: ran.append(4))  # already cancelled: at once
    assert ran == [1, 2, 4]
    with pytest.raises(Aborted) as e:
        abort.check("p")
    assert e.value.path == "p"


def test_default_read_range_into_checks_abort(local_config):
    backend = open_backend(local_config)
    backend.write_bytes("f", b"0123456789")
    buf, seen = memoryview(bytearray(4)), []
    assert backend.read_range_into("f", 3, buf, progress=seen.append, abort=Abort()) == 4
    assert bytes(buf) == b"3456" and seen == [4]
    abort = Abort()
    abort.cancel()
    with pytest.raises(Aborted):
        backend.read_range_into("f", 0, buf, abort=abort)


@pytest.mark.parametrize("stall", [b"", partial(b"x" * 1000, 0, 1 << 20)[:-500]])
def test_cancelled_call_stops_its_thread(stall):
    """A read stalled before its headers (or mid-body) is cancelled: the caller returns at once,
    the socket is shut down so the thread ends, and then on_exit runs on the trio thread and the
    limiter slot is free."""
    with CannedServer([Stall(stall)]) as server:
        backend = canned_blob(server, retry_total=0)
        tb = TrioBackend(backend, max_threads=1)
        buf = memoryview(bytearray(1 << 20))
        abort, exits = Abort(), []

        async def main():
            trio_thread = threading.get_ident()
            exited = trio.Event()

            def on_exit():
                exits.append(threading.get_ident() == trio_thread)
                exited.set()

            async with trio.open_nursery() as nursery:

                async def reader():
                    await tb.read_range_into("x", 0, buf, abort=abort, on_exit=on_exit)

                nursery.start_soon(reader)
                assert await trio.to_thread.run_sync(server.stalled.wait, 5)
                assert tb.limiter.borrowed_tokens == 1
                t0 = time.monotonic()
                nursery.cancel_scope.cancel()
            assert time.monotonic() - t0 < 0.5  # the caller did not wait for the thread
            assert abort.cancelled
            with trio.fail_after(2):
                await exited.wait()
            assert tb.limiter.borrowed_tokens == 0  # given back before on_exit

        trio.run(main)
        assert exits == [True]
        assert server.client_closed.wait(2)
        assert server.accepted == 1  # never retried
        backend.close()


def test_call_cancelled_before_its_thread_starts():
    """Waiting for a limiter slot and cancelled: fn never runs, on_exit runs once at once."""
    ran, exits = [], []

    async def main():
        tb = TrioBackend(open_backend(DatastoreConfig(name="l", type="local", path="/")), 1)
        await tb.limiter.acquire()  # the only slot is taken
        abort = Abort()
        with trio.move_on_after(0.05):
            await tb.call(ran.append, 1, abort=abort, on_exit=lambda: exits.append(1))
        assert abort.cancelled and exits == [1]
        tb.limiter.release()
        assert await tb.call(len, "ab", on_exit=lambda: exits.append(2)) == 2
        assert exits == [1, 2]  # before call returned: the thread had ended

    trio.run(main)
    assert ran == [] and exits == [1, 2]
