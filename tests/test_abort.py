"""Cancelling backend calls: Abort, and TrioBackend.call giving back its thread, its limiter slot
and (through on_exit, on the trio thread) the caller's buffer only when the thread has ended."""

from __future__ import annotations

import threading
import time

import pytest
import trio
import trio.testing

from amlfs.backends import open_backend
from amlfs.backends.base import Abort
from amlfs.backends.bridge import TrioBackend
from amlfs.backends.errors import Aborted
from amlfs.registry import BLOB, Credentials, DatastoreConfig

from .azurite import ACCOUNT, KEY
from .canned import CannedServer, Stall, partial, response


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


MIB = bytes(range(256)) * 4096
HALF_A_BODY = partial(MIB, 0, 1 << 20)[: -(1 << 19)]  # a 206 head and 512 KiB of its 1 MiB body


@pytest.mark.parametrize("stall", [b"", HALF_A_BODY], ids=["before-head", "mid-body"])
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
            assert (
                time.monotonic() - t0 < 3
            )  # the caller did not wait for the thread (stalled 10 s)
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


# --- the SDK backends (File share, ADLS): abort as far as the SDK allows ---------------------------


def _sdk_backend(kind: str, url: str):
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.storage.filedatalake import FileSystemClient
    from azure.storage.fileshare import ShareClient

    from amlfs.backends.adls import AdlsBackend
    from amlfs.backends.azclient import BoundedRetry
    from amlfs.backends.fileshare import FileShareBackend

    cred = AzureNamedKeyCredential(ACCOUNT, KEY)
    retry = BoundedRetry(0.01, 3)  # retries, to show that they stop once aborted
    if kind == "file":
        share = ShareClient(url, "s", credential=cred, retry_policy=retry)
        return FileShareBackend(share, url=url)
    fs = FileSystemClient(url, "fs", credential=cred, retry_policy=retry)
    return AdlsBackend(fs, url=url)


@pytest.mark.parametrize("kind", ["file", "adls"])
def test_sdk_read_is_cut_short_by_abort(kind):
    """Headers and part of a 1 MiB body, then a stall: cancelling shuts the socket down (found
    through the SDK's response hook) and no retry is sent. The Blob SDK under ADLS pauses 1 s
    after a broken body before its own retry, which the abort then stops."""
    head = partial(MIB, 0, 1 << 20, headers={"ETag": '"0x1"', "x-ms-type": "File"})
    with CannedServer([Stall(head[: -(1 << 19)]), partial(b"y", 0, 1)]) as server:
        backend = _sdk_backend(kind, f"{server.url}/{ACCOUNT}")
        abort, result = Abort(), []

        def read() -> None:
            try:
                backend.read_range_into("d/f", 0, memoryview(bytearray(1 << 20)), abort=abort)
            except Exception as e:
                result.append(e)

        t = threading.Thread(target=read)
        t.start()
        assert server.stalled.wait(5)
        t0 = time.monotonic()
        abort.cancel()
        t.join(5)
        assert time.monotonic() - t0 < (1 if kind == "file" else 2) and not t.is_alive()
        assert len(result) == 1 and isinstance(result[0], Aborted), result
        assert server.client_closed.wait(2)
        assert len(server.requests) == 1  # never retried
        backend.close()


def test_sdk_read_reports_progress_once_and_checks_abort(fileshare_config):
    backend = open_backend(fileshare_config, create_if_not_exists=True, retry_total=0)
    backend.write_bytes("f", b"0123456789")
    buf, seen = memoryview(bytearray(8)), []
    assert backend.read_range_into("f", 4, buf, progress=seen.append, abort=Abort()) == 6
    assert bytes(buf[:6]) == b"456789" and seen == [6]
    abort = Abort()
    abort.cancel()
    with pytest.raises(Aborted):
        backend.read_range_into("f", 0, buf, abort=abort)
    backend.close()


@pytest.mark.parametrize("kind", ["blob", "file", "adls"])
@pytest.mark.parametrize("retry_total", [0, 2])
def test_open_backend_passes_retry_total(kind, retry_total):
    """The mount opens its backend with retry_total=0: one request, no retry layer inside."""
    from amlfs.backends.errors import Transient
    from amlfs.registry import ADLS, FILE

    busy = response(503, headers={"x-ms-error-code": "ServerBusy"})
    with CannedServer([busy] * (retry_total + 1)) as server:
        names = {"blob": {"container_name": "c"}, "file": {"file_share_name": "s"}}
        ds = DatastoreConfig(
            name="canned",
            type={"blob": BLOB, "file": FILE, "adls": ADLS}[kind],
            account_name=ACCOUNT,
            account_url=f"{server.url}/{ACCOUNT}",
            protocol="http",
            credentials=Credentials(account_key=KEY),
            **names.get(kind, {"filesystem": "fs"}),
        )
        backend = open_backend(ds, retry_total=retry_total, retry_backoff=0.01)
        with pytest.raises(Transient):
            backend.read_range_into("f", 0, memoryview(bytearray(4)))
        assert len(server.requests) == retry_total + 1
        backend.close()


def test_call_that_fails_runs_on_exit_and_leaves_the_abort_alone():
    def boom():
        raise ValueError("no")

    exits = []

    async def main():
        tb = TrioBackend(open_backend(DatastoreConfig(name="l", type="local", path="/")), 2)
        abort = Abort()
        with pytest.raises(ValueError):
            await tb.call(boom, abort=abort, on_exit=lambda: exits.append(1))
        assert exits == [1] and not abort.cancelled and tb.limiter.borrowed_tokens == 0

    trio.run(main)
