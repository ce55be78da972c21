"""The lean Blob fast path (ranged GET, flat listing): against Azurite with every credential form
it accepts, and against a canned HTTP server for the protocol corners (stale keep-alive
connections, chunked bodies, retries); test_http_framing.py has the framing checks."""

from __future__ import annotations

import threading

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from amlfs.backends import open_backend
from amlfs.backends.blobget import BlobFastPath, HttpStatusError
from amlfs.backends.errors import Changed, NotFound

from .azurite import ACCOUNT, KEY
from .canned import CannedServer, chunked, partial, response

NAMES = ["plain", "with space/x", "ünï/日本", "a+b", "p%20q", "h#sh", "q?uery", "x/y/z"]


def _sas(container: str) -> str:
    from datetime import UTC, datetime, timedelta

    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


@pytest.fixture
def filled(azurite, container):
    cc = azurite.service().get_container_client(container)
    for i, n in enumerate(NAMES):
        cc.upload_blob(n, f"{n}:{i}".encode() * 100)
    return cc


@pytest.mark.parametrize("cred", ["key", "sas"])
def test_read_and_list_match_the_sdk(azurite, container, filled, cred):
    credential = AzureNamedKeyCredential(ACCOUNT, KEY) if cred == "key" else _sas(container)
    fast = BlobFastPath(azurite.account_url, container, credential)
    try:
        listed = list(fast.list_flat(""))
        sdk = list(filled.list_blobs(include=["metadata"]))
        assert [b.name for b in listed] == [b.name for b in sdk]
        for mine, theirs in zip(listed, sdk, strict=True):
            assert (mine.size, mine.etag) == (theirs.size, theirs.etag)
            assert mine.last_modified == theirs.last_modified
            assert mine.content_settings.content_md5 == bytes(theirs.content_settings.content_md5)
        for n in NAMES:
            whole = filled.download_blob(n).readall()
            assert fast.read(n, 0, len(whole)) == whole
            assert fast.read(n, 3, 5) == whole[3:8]
            assert fast.read(n, len(whole) - 2, 10) == whole[-2:]  # short at the end
        assert [b.name for b in fast.list_flat("x/")] == ["x/y/z"]
    finally:
        fast.close()


def test_paged_listing(azurite, container, filled):
    fast = BlobFastPath(azurite.account_url, container, AzureNamedKeyCredential(ACCOUNT, KEY))
    assert [b.name for b in fast.list_flat("", page_size=3)] == sorted(NAMES)
    fast.close()


def test_a_paged_listing_fetches_one_page_ahead(azurite, container, filled, monkeypatch):
    """The next page is asked for while the caller is still on the current one; a page that
    fails raises where the caller reaches it, after every entry before it; a walk stopped early
    leaves nothing waiting."""
    fast = BlobFastPath(azurite.account_url, container, AzureNamedKeyCredential(ACCOUNT, KEY))
    calls: list[str] = []
    second = threading.Event()
    real = BlobFastPath.list_page

    def recorded(self, prefix, marker="", page_size=5000, delimiter=""):
        calls.append(marker)
        if len(calls) == 2:
            second.set()
        if len(calls) == 3 and fail:
            raise HttpStatusError(500, "InternalError")
        return real(self, prefix, marker, page_size, delimiter)

    monkeypatch.setattr(BlobFastPath, "list_page", recorded)
    try:
        fail = False
        it = fast.list_flat("", page_size=3)
        first = next(it)
        assert second.wait(10)  # page 2 asked for while page 1's first entry is in hand
        assert [first.name, *(b.name for b in it)] == sorted(NAMES)
        calls.clear()
        fail = True
        got = []
        with pytest.raises(HttpStatusError):
            for b in fast.list_flat("", page_size=3):
                got.append(b.name)
        assert got == sorted(NAMES)[:6]  # pages 1 and 2 whole, then page 3's failure
        calls.clear()
        fail = False
        it = fast.list_flat("", page_size=3)
        next(it)
        it.close()  # stopped early: returns at once, the page ahead finishes on its own
    finally:
        fast.close()


def test_backend_maps_fast_path_errors(blob_config):
    backend = open_backend(blob_config)
    try:
        info = backend.write_bytes("f", b"0123456789")
        buf = memoryview(bytearray(4))
        assert backend.read_range_into("f", 2, buf, info.etag) == 4 and bytes(buf) == b"2345"
        backend.write_bytes("f", b"9876543210")
        with pytest.raises(Changed):
            backend.read_range_into("f", 0, buf, info.etag)
        with pytest.raises(NotFound):
            backend.read_range_into("missing", 0, buf)
        assert backend.read_range_into("f", 10, buf) == 0  # at the end: 416 -> nothing
    finally:
        backend.close()


def test_stale_connection_is_replaced_and_chunked_listing_decoded():
    listing = (
        b'<?xml version="1.0"?><EnumerationResults><Blobs><Blob><Name Encoded="true">a%0Bb</Name>'
        b"<Properties><Content-Length>3</Content-Length><Etag>0x1</Etag></Properties>"
        b"</Blob></Blobs><NextMarker/></EnumerationResults>"
    )
    script = [
        partial(b"abc", 0, 6),
        None,  # the pooled connection died while idle
        partial(b"def", 3, 6),
        chunked(listing, pieces=2),
    ]
    with CannedServer(script) as server:
        fast = BlobFastPath(f"{server.url}/acct", "c", None)
        try:
            assert fast.read("x", 0, 3) == b"abc"
            assert fast.read("x", 3, 3) == b"def"
            [blob] = fast.list_flat("")
            assert (blob.name, blob.size, blob.etag) == ("a\x0bb", 3, "0x1")
            assert server.requests[0].startswith(b"GET /acct/c/x HTTP/1.1\r\n")
            assert b"x-ms-range: bytes=3-5" in server.requests[2]
            assert server.accepted == 2
        finally:
            fast.close()


def test_service_errors_are_retried_then_raised():
    busy = response(503, headers={"x-ms-error-code": "ServerBusy"})
    missing = response(404, b"no", {"x-ms-error-code": "BlobNotFound"})
    with CannedServer([busy, partial(b"ok", 0, 2), missing]) as server:
        fast = BlobFastPath(f"{server.url}/a", "c", None, retry_backoff=0.01)
        try:
            assert fast.read("x", 0, 2) == b"ok"
            with pytest.raises(HttpStatusError) as e:
                fast.read("x", 0, 2)
            assert (e.value.status_code, e.value.error_code) == (404, "BlobNotFound")
            assert len(server.requests) == 3
            assert server.accepted == 1  # one connection, reused after each error body
        finally:
            fast.close()
