"""The lean HTTP client checks what it receives: ranges, lengths, Connection: close, timeouts,
chunked bodies, aborts and proxy tunnels -- against the canned server of tests/canned.py (for
what the real service never sends) and against Azurite with the SDK as the oracle."""

from __future__ import annotations

import base64
import os
import socket
import threading
import time

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from amlfs.backends import open_backend
from amlfs.backends.base import Abort
from amlfs.backends.blob import BlobBackend
from amlfs.backends.blobget import BlobFastPath, ProtocolError
from amlfs.backends.errors import Aborted, BackendError, Transient
from amlfs.backends.httpframe import HttpStatusError
from amlfs.credentials import ResolvedCredential

from .azurite import ACCOUNT, KEY
from .canned import CannedServer, ConnectProxy, Stall, chunked, partial, response

BODY = bytes(range(256)) * 4  # a 1 KiB object


def fast(server: CannedServer, **kw) -> BlobFastPath:
    kw.setdefault("retry_total", 0)
    return BlobFastPath(f"{server.url}/acct", "c", None, **kw)


def read(server: CannedServer, offset: int, length: int, **kw) -> bytes:
    client = fast(server, **kw)
    try:
        return client.read("x", offset, length)
    finally:
        client.close()


# --- ranges and lengths ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "offset", "length", "why"),
    [
        (response(200, BODY), 100, 10, "HTTP 200"),  # the whole object, for a read at 100
        (response(200, BODY), 0, 10, "HTTP 200 with 1024 bytes"),  # whole, past the request
        (partial(BODY[:3], 0, 1024), 100, 3, "Content-Range 'bytes 0-2/1024'"),  # wrong start
        (partial(BODY[100:120], 100, 1024), 100, 10, "Content-Range 'bytes 100-119"),  # past end
        (partial(BODY[100:105], 100, 1024), 100, 10, "short of bytes 100-109, not at the end"),
        (partial(BODY[100:110], 100, 1024, length=12), 100, 10, "Content-Length 12"),
        (response(206, BODY[100:110]), 100, 10, "Content-Range ''"),  # no Content-Range
        (response(206, b"", {"Content-Range": "bytes 100-109/1024"}), 100, 10, "Content-Len"),
    ],
)
def test_a_range_that_does_not_answer_the_request_is_refused(answer, offset, length, why):
    with CannedServer([answer]) as server:
        with pytest.raises(ProtocolError, match=why):
            read(server, offset, length)


def test_answers_that_fit_are_accepted():
    script = [
        partial(BODY[100:110], 100, 1024),
        partial(BODY[1020:], 1020, 1024),  # short, at the object's end
        response(200, BODY[:10]),  # the whole (10-byte) object for a read at 0
        partial(BODY[:4], 0, 4, headers={"Content-Type": "x"}),
    ]
    with CannedServer(script) as server:
        client = fast(server)
        try:
            assert client.read("x", 100, 10) == BODY[100:110]
            assert client.read("x", 1020, 10) == BODY[1020:]
            assert client.read("x", 0, 64) == BODY[:10]
            assert client.read("x", 0, 4) == BODY[:4]
            assert server.accepted == 1
        finally:
            client.close()


def test_the_backend_names_the_path_and_what_was_wrong():
    with CannedServer([response(200, BODY)] * 2) as server:
        cred = ResolvedCredential("account_key", KEY, "the test key")
        backend = BlobBackend(
            f"{server.url}/{ACCOUNT}",
            "c",
            cred,
            account_name=ACCOUNT,
            retry_total=1,
            retry_backoff=0.01,
        )
        try:
            with pytest.raises(Transient) as e:
                backend.read_range_into("dir/f", 100, memoryview(bytearray(10)))
            assert "'dir/f'" in str(e.value) and "HTTP 200 (the whole object)" in str(e.value)
            assert "at 100" in str(e.value)
        finally:
            backend.close()


# --- connections ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        partial(b"abc", 0, 6, headers={"Connection": "close"}),
        partial(b"abc", 0, 6, version="HTTP/1.0"),
        response(404, b"no", {"x-ms-error-code": "BlobNotFound", "Connection": "close"}),
    ],
    ids=["close", "http/1.0", "error-close"],
)
def test_connection_close_is_honoured(first):
    with CannedServer([first, partial(b"def", 3, 6)]) as server:
        client = fast(server)
        try:
            try:
                assert client.read("x", 0, 3) == b"abc"
            except HttpStatusError as e:
                assert e.status_code == 404
            assert client.read("x", 3, 3) == b"def"
            assert server.accepted == 2
        finally:
            client.close()


def test_http10_keep_alive_is_reused():
    ka = {"Connection": "keep-alive"}
    script = [partial(b"abc", 0, 6, version="HTTP/1.0", headers=ka), partial(b"def", 3, 6)]
    with CannedServer(script) as server:
        client = fast(server)
        try:
            assert client.read("x", 0, 3) + client.read("x", 3, 3) == b"abcdef"
            assert server.accepted == 1
        finally:
            client.close()


def test_a_timeout_mid_body_is_transient_and_drops_the_connection():
    head_and_some = partial(BODY, 0, 1024)[:-1000]
    with CannedServer([Stall(head_and_some)]) as server:
        with pytest.raises(TimeoutError):
            read(server, 0, 1024, timeout=0.3)
        assert server.client_closed.wait(2)
    cred = ResolvedCredential("account_key", KEY, "the test key")
    with CannedServer([Stall(head_and_some)]) as server:
        backend = BlobBackend(
            f"{server.url}/{ACCOUNT}",
            "c",
            cred,
            account_name=ACCOUNT,
            read_timeout=0.3,
            retry_total=0,
        )
        try:
            with pytest.raises(Transient, match="network error"):
                backend.read_range_into("f", 0, memoryview(bytearray(1024)))
        finally:
            backend.close()


def test_chunked_listing_with_extensions_and_trailers():
    listing = (
        b'<?xml version="1.0"?><EnumerationResults><Blobs><Blob><Name>a</Name>'
        b"<Properties><Content-Length>3</Content-Length><Etag>0x1</Etag></Properties>"
        b"</Blob></Blobs><NextMarker/></EnumerationResults>"
    )
    body = b"10;ext=1\r\n" + listing[:16] + b"\r\n"
    body += b"%x\r\n%s\r\n0\r\nTrailer: x\r\n\r\n" % (len(listing) - 16, listing[16:])
    odd = response(200, body, {"Transfer-Encoding": "chunked"})
    bad = response(200, b"zz\r\nabc\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"})
    with CannedServer([odd, chunked(listing, pieces=5), bad]) as server:
        client = fast(server)
        try:
            assert [b.name for b in client.list_flat("")] == ["a"]
            assert [b.name for b in client.list_flat("")] == ["a"]
            with pytest.raises(ProtocolError, match="chunk size"):
                client.list_flat("").__next__()
            assert server.accepted == 1
        finally:
            client.close()


# --- streaming and aborts -------------------------------------------------------------------------


def test_abort_mid_body_stops_at_once_and_never_retries():
    head_and_some = partial(BODY * 1024, 0, 1 << 20)[: -(1 << 19)]  # half of 1 MiB sent
    with CannedServer([Stall(head_and_some), partial(b"x", 0, 1)]) as server:
        client = fast(server, retry_total=3)
        abort, seen, buf = Abort(), [], memoryview(bytearray(1 << 20))

        def progress(n: int) -> None:
            assert buf[:n] == (BODY * 1024)[:n]  # never reported before it is in buf
            seen.append(n)
            if n >= 1 << 18:
                abort.cancel()  # from the reading thread; the other-thread case is below

        with pytest.raises(Aborted):
            client.read_into("x", 0, buf, progress=progress, abort=abort)
        assert seen and seen == sorted(seen) and seen[-1] < 1 << 20
        assert server.client_closed.wait(2)
        assert server.accepted == 1 and len(server.requests) == 1
        client.close()


@pytest.mark.parametrize("before", [b"", partial(BODY, 0, 1024)[:-500]], ids=["head", "body"])
def test_abort_from_another_thread_wakes_a_stalled_read(before):
    with CannedServer([Stall(before)]) as server:
        client = fast(server, retry_total=3)
        abort = Abort()

        def cancel_when_stalled() -> None:
            if server.stalled.wait(5):
                abort.cancel()

        t = threading.Thread(target=cancel_when_stalled)
        t.start()
        with pytest.raises(Aborted):
            client.read_into("x", 0, memoryview(bytearray(1024)), abort=abort)
        t.join()
        assert server.client_closed.wait(2) and server.accepted == 1
        with pytest.raises(Aborted):  # an aborted Abort stops the next call before it starts
            client.read_into("x", 0, memoryview(bytearray(1024)), abort=abort)
        client.close()


def test_progress_streams_a_large_read(blob_config):
    backend = open_backend(blob_config)
    data = os.urandom(8 << 20)
    backend.write_bytes("big", data)
    buf, seen = memoryview(bytearray(len(data))), []

    def progress(n: int) -> None:
        assert buf[:n] == data[:n]
        seen.append(n)

    try:
        assert backend.read_range_into("big", 0, buf, progress=progress) == len(data)
        assert seen[-1] == len(data) and seen == sorted(set(seen))
        assert all(b - a <= 256 << 10 for a, b in zip([0, *seen], seen, strict=False))
        assert len(seen) >= 8  # the first bytes were reported long before the last
    finally:
        backend.close()


# --- the SDK as the oracle ------------------------------------------------------------------------


def test_same_bytes_and_errors_as_the_sdk(blob_config):
    lean = open_backend(blob_config)
    cred = ResolvedCredential("account_key", KEY, "the test key")
    sdk = BlobBackend(
        blob_config.account_url,
        blob_config.container_name,
        cred,
        account_name=ACCOUNT,
        lean=False,
    )
    info = lean.write_bytes("f", BODY)
    lean.write_bytes("empty", b"")
    cases = [
        ("f", 0, 1024, None),
        ("f", 100, 10, None),
        ("f", 1020, 10, None),
        ("f", 1024, 10, None),
        ("f", 5000, 10, None),
        ("empty", 0, 10, None),
        ("missing", 0, 10, None),
        ("f", 0, 10, '"0x0"'),
        ("f", 0, 10, info.etag),
    ]

    def outcome(backend, name, offset, length, etag):
        buf = memoryview(bytearray(length))
        try:
            n = backend.read_range_into(name, offset, buf, etag)
            return bytes(buf[:n])
        except BackendError as e:
            return type(e).__name__

    try:
        for case in cases:
            assert outcome(lean, *case) == outcome(sdk, *case), case
    finally:
        lean.close()
        sdk.close()


# --- proxies --------------------------------------------------------------------------------------


def test_reads_and_lists_through_a_connect_proxy(azurite, container, monkeypatch):
    cc = azurite.service().get_container_client(container)
    cc.upload_blob("a/b", BODY)
    cred = AzureNamedKeyCredential(ACCOUNT, KEY)
    auth = "Basic " + base64.b64encode(b"us er:p@ss").decode()
    with ConnectProxy(authorization=auth) as proxy:
        monkeypatch.setenv("http_proxy", proxy.url.replace("//", "//us%20er:p%40ss@"))
        monkeypatch.setenv("no_proxy", "example.invalid")
        client = BlobFastPath(azurite.account_url, container, cred)
        try:
            assert client.read("a/b", 10, 20) == BODY[10:30]
            assert [b.name for b in client.list_flat("")] == ["a/b"]
            assert len(proxy.connects) == 1  # one tunnel, kept alive
            port = azurite.account_url.split(":")[2].split("/")[0]
            assert proxy.connects[0].startswith(f"CONNECT 127.0.0.1:{port} HTTP/1.1".encode())
        finally:
            client.close()

        monkeypatch.setenv("http_proxy", proxy.url)  # no credentials: 407
        client = BlobFastPath(azurite.account_url, container, cred, retry_total=0)
        with pytest.raises(ProtocolError, match="refused CONNECT .*407"):
            client.read("a/b", 0, 1)
        client.close()

        monkeypatch.setenv("no_proxy", "127.0.0.1")  # bypassed: straight to the service
        client = BlobFastPath(azurite.account_url, container, cred)
        assert client.read("a/b", 0, 4) == BODY[:4]
        client.close()
        assert len(proxy.connects) == 2


def test_abort_during_a_retry_backoff_ends_it():
    busy = response(503, headers={"x-ms-error-code": "ServerBusy"})
    with CannedServer([busy, busy]) as server:
        client = fast(server, retry_total=3, retry_backoff=30)
        abort = Abort()

        def cancel_after_first() -> None:
            if server.wait_requests(1):
                abort.cancel()

        t = threading.Thread(target=cancel_after_first)
        t.start()
        t0 = time.monotonic()
        with pytest.raises(Aborted):
            client.read_into("x", 0, memoryview(bytearray(4)), abort=abort)
        assert time.monotonic() - t0 < 5 and len(server.requests) == 1
        t.join()
        client.close()


def test_https_through_a_connect_proxy_and_abort_over_tls(tmp_path, monkeypatch):
    """TLS to the service inside the tunnel; an abort shuts the TLS socket down mid-body."""
    import ssl

    from .servers.common import make_self_signed_cert

    files = make_self_signed_cert(str(tmp_path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.cert, files.key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", files.cert)
    script = [partial(BODY[:10], 0, 1024), Stall(partial(BODY, 0, 1024)[:-500])]
    with CannedServer(script, tls=ctx) as server, ConnectProxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        client = BlobFastPath(f"{server.url}/acct", "c", None, retry_total=0)
        try:
            assert client.read("x", 0, 10) == BODY[:10]
            assert proxy.connects[0].startswith(f"CONNECT 127.0.0.1:{server.port} ".encode())
            abort = Abort()
            t = threading.Thread(target=lambda: server.stalled.wait(5) and abort.cancel())
            t.start()
            with pytest.raises(Aborted):
                client.read_into("x", 0, memoryview(bytearray(1024)), abort=abort)
            t.join()
            assert server.client_closed.wait(2) and len(proxy.connects) == 1
        finally:
            client.close()


def test_read_to_fd_checks_the_range_too(tmp_path):
    with CannedServer([partial(BODY[:3], 0, 1024), partial(BODY[100:103], 100, 1024)]) as s:
        client = fast(s)
        with open(tmp_path / "out", "w+b") as f:
            with pytest.raises(ProtocolError, match="Content-Range 'bytes 0-2/1024'"):
                client.read_to_fd("x", 100, 3, f.fileno(), 0)
            assert os.path.getsize(tmp_path / "out") == 0  # nothing written
            assert client.read_to_fd("x", 100, 3, f.fileno(), 0) == 3
            assert f.read() == BODY[100:103]
        client.close()


class _SignallingAbort(Abort):
    """An Abort that says when the call has attached a closer (it is blocked on a socket)."""

    __slots__ = ("attached",)

    def __init__(self) -> None:
        super().__init__()
        self.attached = threading.Event()

    def attach(self, closer) -> None:
        super().attach(closer)
        self.attached.set()


@pytest.mark.parametrize("where", ["tls-handshake", "proxy-connect"])
def test_abort_while_a_connection_is_being_set_up(where, monkeypatch):
    """A peer that accepts TCP and then says nothing: the TLS handshake, or the proxy's answer
    to CONNECT, stalls until the abort shuts the socket down."""
    with socket.create_server(("127.0.0.1", 0)) as mute:  # the kernel accepts; nobody answers
        url = f"https://127.0.0.1:{mute.getsockname()[1]}/acct"
        if where == "proxy-connect":
            monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{mute.getsockname()[1]}")
            url = "https://storage.example.invalid/acct"
        client = BlobFastPath(url, "c", None, retry_total=3)
        abort = _SignallingAbort()
        t = threading.Thread(target=lambda: abort.attached.wait(5) and abort.cancel())
        t.start()
        t0 = time.monotonic()
        with pytest.raises(Aborted):
            client.read_into("x", 0, memoryview(bytearray(4)), abort=abort)
        assert time.monotonic() - t0 < 2
        t.join()
        client.close()


def test_throttling_waits_at_least_the_retry_after_the_service_asks_for():
    busy = response(503, b"", {"x-ms-error-code": "ServerBusy", "Retry-After": "1"})
    with CannedServer([busy, partial(BODY[:10], 0, 1024)]) as server:
        t0 = time.monotonic()
        assert read(server, 0, 10, retry_total=1, retry_backoff=0.01) == BODY[:10]
        assert time.monotonic() - t0 >= 0.9  # not the 10 ms backoff
    with CannedServer([busy]) as server:
        with pytest.raises(HttpStatusError) as e:
            read(server, 0, 10)  # no retries left: the engine sees what the service asked
        assert e.value.status_code == 503 and e.value.retry_after == "1"
