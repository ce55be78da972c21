"""Every Backend behaves the same: one suite, parametrised over the backends.

Adding a backend is one `@backend_factory("name")` function below that returns a fresh, empty,
writable Backend. Tests of flat-namespace oddities (names no hierarchical store can hold, folder
markers) plant blobs through the SDK and run against Blob only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import http.server
import io
import logging
import threading
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from amlfs.backends.base import Backend
from amlfs.backends.blob import BlobBackend
from amlfs.backends.errors import (
    AlreadyExists,
    BackendError,
    Changed,
    Forbidden,
    InvalidName,
    NotADirectory,
    NotFound,
    Transient,
)
from amlfs.backends.local import LocalBackend
from amlfs.credentials import ResolvedCredential
from amlfs.registry import Credentials

from .azurite import ACCOUNT, KEY, free_port

FACTORIES: dict[str, Callable[[pytest.FixtureRequest], Backend]] = {}


def backend_factory(name: str):
    def register(fn: Callable[[pytest.FixtureRequest], Backend]):
        FACTORIES[name] = fn
        return fn

    return register


@backend_factory("local")
def _local(request: pytest.FixtureRequest) -> Backend:
    return LocalBackend(request.getfixturevalue("local_config").path)


@backend_factory("blob")
def _blob(request: pytest.FixtureRequest) -> Backend:
    return BlobBackend.from_config(request.getfixturevalue("blob_config"))


@backend_factory("fileshare")
def _fileshare(request: pytest.FixtureRequest) -> Backend:
    from amlfs.backends.fileshare import FileShareBackend

    return FileShareBackend.from_config(request.getfixturevalue("fileshare_config"))


@backend_factory("adls")
def _adls(request: pytest.FixtureRequest) -> Backend:
    from amlfs.backends.adls import AdlsBackend

    return AdlsBackend.from_config(request.getfixturevalue("adls_config"))


@pytest.fixture(params=list(FACTORIES))
def backend(request):
    b = FACTORIES[request.param](request)
    yield b
    b.close()


@pytest.fixture
def blob_backend(blob_config):
    b = BlobBackend.from_config(blob_config)
    yield b
    b.close()


@pytest.fixture
def plant(azurite, container):
    """Write a blob straight through the SDK (or raw HTTP for names the SDK's URL handling
    would normalise), bypassing the backend: what other tools leave in a container."""
    cc = azurite.service().get_container_client(container)
    expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    sas = generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(write=True, create=True),
        expiry=expiry,
    )

    def put(name: str, data: bytes = b"x", metadata: dict[str, str] | None = None) -> None:
        if any(seg in (".", "..") for seg in name.split("/")):
            # urllib3 resolves dot segments in URLs; %2E reaches the service as a literal '.'.
            segs = [
                s.replace(".", "%2E") if s in (".", "..") else quote(s, safe="")
                for s in name.split("/")
            ]
            conn = http.client.HTTPConnection("127.0.0.1", azurite.port, timeout=10)
            try:
                conn.request(
                    "PUT",
                    f"/{ACCOUNT}/{container}/{'/'.join(segs)}?{sas}",
                    body=data,
                    headers={"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"},
                )
                assert conn.getresponse().status == 201
            finally:
                conn.close()
        else:
            cc.upload_blob(name, data, metadata=metadata, overwrite=True)

    return put


def names(entries) -> dict[str, bool]:
    return {e.name: e.is_dir for e in entries}


def seed(b: Backend, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        b.write_bytes(path, data)


# --- stat and listing ----------------------------------------------------------------------------


def test_stat_file_dir_root_missing(backend):
    before = time.time() - 60
    info = backend.write_bytes("d/f.txt", b"hello")
    f = backend.stat("d/f.txt")
    assert (f.path, f.is_dir, f.size) == ("d/f.txt", False, 5)
    assert f.etag and f.etag == info.etag
    assert before < f.mtime < time.time() + 60
    assert backend.stat("d").is_dir
    assert backend.stat("/d/").is_dir  # user paths are normalised
    root = backend.stat("")
    assert root.is_dir and root.path == ""
    with pytest.raises(NotFound):
        backend.stat("nope")
    with pytest.raises(NotFound):
        backend.stat("d/nope.txt")
    with pytest.raises((NotFound, NotADirectory)):
        backend.stat("d/f.txt/below")


def test_list_nested_dirs_with_attributes(backend):
    seed(backend, {"a/b/c.txt": b"ccc", "a/x.txt": b"xxxxxxx", "a/b2/d.bin": b"", "top": b"t"})
    assert names(backend.list_dir("")) == {"a": True, "top": False}
    entries = {e.name: e for e in backend.list_dir("a")}
    assert names(entries.values()) == {"b": True, "b2": True, "x.txt": False}
    x = entries["x.txt"]
    assert x.path == "a/x.txt" and x.size == 7
    # A listing fills the attribute cache: it must agree with stat, ETag format included.
    st = backend.stat("a/x.txt")
    assert (x.size, x.etag, x.mtime) == (st.size, st.etag, st.mtime)
    assert {e.path: e.size for e in backend.list_dir("a/b2")} == {"a/b2/d.bin": 0}
    with pytest.raises(NotFound):
        backend.list_page("missing")
    with pytest.raises((NotADirectory, NotFound)):
        backend.list_page("a/x.txt")


def test_listing_pages(backend):
    backend.page_size = 7
    expected = {f"many/f{i:02d}" for i in range(17)} | {"many/sub/z"}
    for p in expected:
        backend.write_bytes(p, p.encode())
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        entries, token = backend.list_page("many", token)
        assert len(entries) <= 7
        seen += [e.path for e in entries]
        pages += 1
        if not token:
            break
    assert pages >= 3
    assert len(seen) == len(set(seen)) == 18
    assert set(seen) == {p for p in expected if "sub" not in p} | {"many/sub"}
    assert sorted(e.path for e in backend.walk("many")) == sorted(expected)


def test_empty_root_lists_nothing(backend):
    assert backend.list_page("") == ([], None)
    assert list(backend.walk()) == []
    backend.check_access()


# --- reads ---------------------------------------------------------------------------------------


def test_ranged_reads(backend):
    data = bytes(range(256)) * 40
    backend.write_bytes("r/data.bin", data)
    assert backend.read_range("r/data.bin", 0, 100) == data[:100]
    assert backend.read_range("r/data.bin", 5000, 1000) == data[5000:6000]
    assert backend.read_range("r/data.bin", 10000, 1000) == data[10000:]  # short at the end
    assert backend.read_range("r/data.bin", len(data), 10) == b""  # exactly at EOF
    assert backend.read_range("r/data.bin", len(data) + 99, 10) == b""  # past EOF
    assert backend.read_range("r/data.bin", 7, 0) == b""
    assert backend.read_all("r/data.bin") == data
    backend.write_bytes("r/empty", b"")
    assert backend.read_range("r/empty", 0, 10) == b""
    with pytest.raises(NotFound):
        backend.read_range("r/missing.bin", 0, 10)


def test_etag_pin(backend):
    old = backend.write_bytes("e/f", b"version one")
    assert backend.read_range("e/f", 0, 7, etag=old.etag) == b"version"
    new = backend.write_bytes("e/f", b"version two!")
    assert new.etag != old.etag
    with pytest.raises(Changed):
        backend.read_range("e/f", 0, 7, etag=old.etag)
    assert backend.read_range("e/f", 8, 100, etag=new.etag) == b"two!"
    assert backend.read_range("e/f", 0, 4, etag=backend.stat("e/f").etag) == b"vers"
    listed = next(e for e in backend.list_dir("e") if e.name == "f")
    assert backend.read_range("e/f", 0, 4, etag=listed.etag) == b"vers"


ODD_NAMES = [
    "sp ace.txt",
    "ünï/cødé.txt",
    "a+b",
    "100%",
    "50%20off",
    "hash#tag",
    "what?",
    "日本/語.txt",
    "x;y=z&w",
]


# Azure Files refuses these characters in names (as the real service does).
FILE_SHARE_FORBIDDEN = set('"\\:|<>*?')


def test_odd_names_round_trip(backend):
    if type(backend).__name__ == "FileShareBackend":
        odd = [n for n in ODD_NAMES if not FILE_SHARE_FORBIDDEN & set(n)]
        assert len(odd) < len(ODD_NAMES)
        return _odd_names(backend, odd)
    _odd_names(backend, ODD_NAMES)


def _odd_names(backend, odd_names):
    for i, name in enumerate(odd_names):
        backend.write_bytes(f"odd/{name}", f"{i}".encode())
    walked = {e.path for e in backend.walk("odd")}
    assert walked == {f"odd/{n}" for n in odd_names}
    listed = names(backend.list_dir("odd"))
    assert listed == {n.split("/")[0]: "/" in n for n in odd_names}
    for i, name in enumerate(odd_names):
        assert backend.stat(f"odd/{name}").size == len(str(i))
        assert backend.read_all(f"odd/{name}") == f"{i}".encode()


def test_walk_returns_every_file_once(backend):
    files = {
        f"w/{d}/{f}": f"{d}{f}".encode() for d in ("a", "a/b", "c", "c/d/e") for f in ("1", "2")
    }
    files["w/top"] = b"top"
    files["other"] = b"not under w"
    seed(backend, files)
    walked = [e.path for e in backend.walk("w")]
    assert len(walked) == len(set(walked))
    assert set(walked) == {p for p in files if p.startswith("w/")}
    assert all(not e.is_dir for e in backend.walk(""))
    assert {e.path for e in backend.walk("")} == set(files)
    sizes = {e.path: e.size for e in backend.walk("w/c")}
    assert sizes == {"w/c/1": 2, "w/c/2": 2, "w/c/d/e/1": 6, "w/c/d/e/2": 6}
    with pytest.raises(NotFound):
        list(backend.walk("nowhere"))


# --- writes and deletes --------------------------------------------------------------------------


def test_write_no_overwrite_and_delete(backend):
    backend.write_bytes("wd/f", b"first")
    with pytest.raises(AlreadyExists):
        backend.write_bytes("wd/f", b"second", overwrite=False)
    assert backend.read_all("wd/f") == b"first"
    backend.write_bytes("wd/g", b"new", overwrite=False)
    backend.delete("wd/f")
    with pytest.raises(NotFound):
        backend.stat("wd/f")
    with pytest.raises(NotFound):
        backend.delete("wd/f")
    assert names(backend.list_dir("wd")) == {"g": False}


def test_write_file_from_disk(backend, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"z" * 3000)
    info = backend.write_file("disk/src.bin", str(src))
    assert info.size == 3000 and not info.is_dir
    assert backend.read_all("disk/src.bin") == b"z" * 3000


# --- Blob specifics --------------------------------------------------------------------------------


def test_blob_unsafe_names_are_never_listed(blob_backend, plant, caplog):
    long_seg = "q" * 300
    unsafe = ["a//b", "x/./y", "x/../y", "x/.", f"s/{long_seg}", f"{long_seg}/deep", "/lead", "t//"]
    for name in unsafe:
        plant(name)
    plant("x/ok")
    plant("a/fine")
    with caplog.at_level(logging.WARNING, logger="amlfs.backends.blob"):
        walked = {e.path for e in blob_backend.walk()}
        assert walked == {"x/ok", "a/fine"}
        assert names(blob_backend.list_dir("")) == {"a": True, "x": True, "s": True, "t": True}
        assert names(blob_backend.list_dir("x")) == {"ok": False}
        assert names(blob_backend.list_dir("a")) == {"fine": False}
        assert names(blob_backend.list_dir("s")) == {}
        list(blob_backend.walk())
    warned = [r.getMessage() for r in caplog.records]
    for name in ("a//b", "x/./y", "x/../y", f"s/{long_seg}"):
        assert sum(repr(name) in m for m in warned) == 1, name  # logged once, not per listing
    with pytest.raises(InvalidName):  # and no user path can reach one
        blob_backend.stat("x/../y")


def test_blob_folder_markers_any_case(blob_backend, plant):
    plant("m1", b"", {"hdi_isfolder": "true"})
    plant("M2", b"", {"HDI_ISFOLDER": "True"})
    plant("m3", b"", {"Hdi_isfolder": "TRUE"})
    plant("m3/inside", b"in")
    plant("notmarker", b"", {"hdi_isfolder": "false"})
    plant("bigmarker", b"data", {"hdi_isfolder": "true"})  # has content: a file
    assert names(blob_backend.list_dir("")) == {
        "m1": True,
        "M2": True,
        "m3": True,
        "notmarker": False,
        "bigmarker": False,
    }
    for d in ("m1", "M2", "m3"):
        assert blob_backend.stat(d).is_dir
    assert blob_backend.stat("m1").mtime > 0  # a marker carries its own time
    assert blob_backend.list_page("m1") == ([], None)  # an empty directory, not NotFound
    assert list(blob_backend.walk("m1")) == []
    assert names(blob_backend.list_dir("m3")) == {"inside": False}
    assert {e.path for e in blob_backend.walk()} == {"m3/inside", "notmarker", "bigmarker"}


def test_blob_name_both_file_and_prefix(blob_backend, plant):
    plant("both", b"a file")
    plant("both/inner.txt", b"inner")
    plant("mk", b"", {"hdi_isfolder": "true"})
    plant("mk/in", b"1")
    assert names(blob_backend.list_dir("")) == {"both": True, "mk": True}
    assert blob_backend.stat("both").is_dir
    assert names(blob_backend.list_dir("both")) == {"inner.txt": False}
    assert {e.path for e in blob_backend.walk()} == {"both/inner.txt", "mk/in"}


def test_blob_name_both_file_and_prefix_across_pages(blob_backend, plant):
    # Sorted: 'p' < 'p!1' < 'p!2' < 'p!3' < 'p/' -- the blob and its prefix land on different pages.
    for name in ("p", "p!1", "p!2", "p!3", "p/in", "q!", "q/x"):
        plant(name, b"data")
    plant("q", b"", {"hdi_isfolder": "true"})
    blob_backend.page_size = 2
    listed: list[tuple[str, bool]] = []
    token = None
    while True:
        entries, token = blob_backend.list_page("", token)
        listed += [(e.name, e.is_dir) for e in entries]
        if not token:
            break
    assert sorted(listed) == [
        ("p", True),
        ("p!1", False),
        ("p!2", False),
        ("p!3", False),
        ("q", True),
        ("q!", False),
    ]
    walked = sorted(e.path for e in blob_backend.walk())
    assert walked == ["p!1", "p!2", "p!3", "p/in", "q!", "q/x"]


def test_blob_large_upload_in_blocks_has_md5(blob_backend):
    blob_backend.upload_block_size = blob_backend.single_put_size = 64 * 1024
    data = bytes(range(256)) * 1200 + b"tail"  # ~300 KiB: 5 blocks
    info = blob_backend.write_stream("big/blob.bin", io.BytesIO(data), len(data))
    md5 = hashlib.md5(data).digest()
    assert info.content_md5 == md5 and info.size == len(data)
    st = blob_backend.stat("big/blob.bin")
    assert st.content_md5 == md5 and st.etag == info.etag
    assert [e.content_md5 for e in blob_backend.walk("big")] == [md5]
    assert blob_backend.read_all("big/blob.bin") == data
    with pytest.raises(AlreadyExists):
        blob_backend.write_stream("big/blob.bin", io.BytesIO(data), len(data), overwrite=False)
    small = blob_backend.write_bytes("big/small", b"abc")
    assert (
        small.content_md5
        == hashlib.md5(b"abc").digest()
        == blob_backend.stat("big/small").content_md5
    )


class _Trickle(io.RawIOBase):
    """A stream that returns at most 1000 bytes per read, like a pipe."""

    def __init__(self, data: bytes):
        self._buf = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(min(n, 1000) if n >= 0 else 1000)


def test_blob_short_reads_and_truncated_source(blob_backend):
    blob_backend.upload_block_size = blob_backend.single_put_size = 16 * 1024
    data = b"0123456789" * 5000
    blob_backend.write_stream("s/whole", _Trickle(data), len(data))
    assert blob_backend.read_all("s/whole") == data
    for length in (100, 60_000):  # one put, and blocks
        with pytest.raises(BackendError, match="nothing was written"):
            blob_backend.write_stream("s/short", io.BytesIO(b"x" * (length - 1)), length)
        with pytest.raises(NotFound):
            blob_backend.stat("s/short")


def test_blob_wrong_key_is_forbidden(blob_config):
    blob_config.credentials = Credentials(account_key="d3Jvbmcga2V5" * 7 + "AA==")
    b = BlobBackend.from_config(blob_config)
    try:
        for call in (
            lambda: b.stat("any"),
            lambda: b.stat(""),
            lambda: b.list_page(""),
            lambda: b.read_range("any", 0, 10),
            lambda: b.write_bytes("any", b"x"),
            b.check_access,
        ):
            with pytest.raises(Forbidden) as e:
                call()
            assert "account key from the registry" in str(e.value)
            assert "d3Jvbmcga2V5" not in str(e.value)
    finally:
        b.close()


def test_blob_missing_container(blob_config):
    blob_config.container_name = "nosuchcontainer"
    b = BlobBackend.from_config(blob_config)
    try:
        for call in (
            lambda: b.stat(""),
            lambda: b.stat("x"),
            lambda: b.list_page(""),
            b.check_access,
        ):
            with pytest.raises(NotFound, match="container"):
                call()
        with pytest.raises(NotFound, match="container"):
            b.read_range("x", 0, 1)
        b.ensure_exists()
        b.ensure_exists()  # idempotent
        assert b.list_page("") == ([], None)
    finally:
        b._cc.delete_container()
        b.close()


def test_blob_network_down_is_transient(blob_config):
    blob_config.account_url = f"http://127.0.0.1:{free_port()}/{ACCOUNT}"
    b = BlobBackend.from_config(blob_config, retry_total=2, retry_backoff=0.1, connection_timeout=2)
    try:
        t0 = time.monotonic()
        with pytest.raises(Transient, match="network error"):
            b.read_range("x", 0, 1)
        with pytest.raises(Transient):
            b.stat("x")
        assert time.monotonic() - t0 < 10
    finally:
        b.close()


class _Misbehaving(http.server.BaseHTTPRequestHandler):
    """Answers every request with a throttling 503, or holds it past the client's timeout."""

    def _answer(self) -> None:
        self.server.hits += 1
        if self.server.mode == "hang":
            self.server.release.wait(10)
            return
        body = b"<?xml version='1.0'?><Error><Code>ServerBusy</Code><Message>busy</Message></Error>"
        self.send_response(503)
        self.send_header("x-ms-error-code", "ServerBusy")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def misbehaving():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Misbehaving)
    server.daemon_threads = True
    server.hits, server.mode, server.release = 0, "503", threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
    thread.join()


def _backend_at(server, **kwargs) -> BlobBackend:
    url = f"http://127.0.0.1:{server.server_address[1]}/{ACCOUNT}"
    return BlobBackend(
        url, "c", ResolvedCredential("account_key", KEY, "test key"), account_name=ACCOUNT, **kwargs
    )


def test_blob_throttling_is_retried_then_transient(misbehaving):
    b = _backend_at(misbehaving, retry_total=2, retry_backoff=0.05)
    try:
        with pytest.raises(Transient, match="503 ServerBusy"):
            b.read_range("x", 0, 10)
        assert misbehaving.hits == 3  # the first try and two retries
    finally:
        b.close()


def test_blob_hung_server_times_out_transient(misbehaving):
    misbehaving.mode = "hang"
    b = _backend_at(misbehaving, retry_total=0, read_timeout=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(Transient):
            b.read_range("x", 0, 10)
        assert time.monotonic() - t0 < 5
    finally:
        b.close()
