"""Large uploads as blocks (blobupload.py, blobget's Put Block / Put Block List) against Azurite,
compared with the SDK's block upload of the same data (BlobBackend(lean=False)): the same stored
bytes, Content-MD5, content type and block ids, the same errors (AlreadyExists without overwrite,
also when the blob appears during the upload; a wrong key; a read-only SAS; a missing container),
no blob after a failure before the commit, the service checking each block's Content-MD5, and
the shared upload budget bounding the bytes held by concurrent uploads."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from amlfs.backends.blob import BlobBackend
from amlfs.backends.blobget import BlobFastPath, HttpStatusError
from amlfs.backends.blobupload import UploadBudget
from amlfs.backends.errors import AlreadyExists, BackendError, Forbidden, NotFound
from amlfs.credentials import ResolvedCredential

from .azurite import ACCOUNT, KEY
from .canned import CannedServer, response

BLOCK = 64 * 1024
DATA = os.urandom(BLOCK * 7 + 123)  # 8 blocks, the last one short


def _backend(azurite, container, lean=True, sas=None, key=KEY, **kw) -> BlobBackend:
    if sas is None:
        cred = ResolvedCredential("account_key", key, "the Azurite key")
    else:
        cred = ResolvedCredential("sas", sas, "a SAS")
    b = BlobBackend(azurite.account_url, container, cred, account_name=ACCOUNT, lean=lean, **kw)
    b.upload_block_size = b.single_put_size = BLOCK
    return b


def _sas(container: str, **perms: bool) -> str:
    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(**perms),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


def _pair(azurite, container, **kw):
    return _backend(azurite, container, True, **kw), _backend(azurite, container, False, **kw)


@pytest.mark.parametrize("auth", ["key", "sas"])
def test_same_blob_as_the_sdk(azurite, container, auth):
    sas = _sas(container, read=True, write=True, create=True) if auth == "sas" else None
    lean, sdk = _pair(azurite, container, sas=sas)
    cc = azurite.service().get_container_client(container)
    try:
        a = lean.write_stream("lean/ünï big", io.BytesIO(DATA), len(DATA))
        b = sdk.write_stream("sdk/ünï big", io.BytesIO(DATA), len(DATA))
        pa = cc.get_blob_client("lean/ünï big").get_blob_properties()
        pb = cc.get_blob_client("sdk/ünï big").get_blob_properties()
        assert cc.download_blob("lean/ünï big").readall() == DATA
        assert a.content_md5 == b.content_md5 == hashlib.md5(DATA).digest()
        assert bytes(pa.content_settings.content_md5) == a.content_md5
        assert pa.content_settings.content_type == pb.content_settings.content_type
        assert (pa.blob_type, pa.size) == (pb.blob_type, pb.size) == ("BlockBlob", len(DATA))
        assert a.etag == f'"{pa.etag.strip(chr(34))}"' and a.mtime == pa.last_modified.timestamp()
        # the block ids have the SDK path's form: a per-upload prefix and the index
        la = cc.get_blob_client("lean/ünï big").get_block_list("committed")[0]
        lb = cc.get_blob_client("sdk/ünï big").get_block_list("committed")[0]
        assert [x.size for x in la] == [x.size for x in lb] == [BLOCK] * 7 + [123]
        ids = [x.id for x in la]
        assert len({i[:32] for i in ids}) == 1 and [i[32:] for i in ids] == [
            f"{n:08d}" for n in range(8)
        ]
        assert [len(x.id) for x in lb] == [len(i) for i in ids]
        # overwrite: the new bytes, a new ETag
        a2 = lean.write_stream("lean/ünï big", io.BytesIO(DATA[::-1]), len(DATA))
        assert a2.etag != a.etag and lean.read_all("lean/ünï big") == DATA[::-1]
        assert lean.stat("lean/ünï big").content_md5 == hashlib.md5(DATA[::-1]).digest()
    finally:
        lean.close()
        sdk.close()


def test_exists_without_overwrite_as_the_sdk(azurite, container):
    lean, sdk = _pair(azurite, container)
    try:
        lean.write_bytes("exists", b"x")
        lean.write_bytes("empty", b"")
        outcomes = []
        for b in (lean, sdk):
            for name in ("exists", "empty"):
                with pytest.raises(AlreadyExists) as e:
                    b.write_stream(name, io.BytesIO(DATA), len(DATA), overwrite=False)
                outcomes.append((type(e.value), str(e.value)))
            b.write_stream(f"new-{b is lean}", io.BytesIO(DATA), len(DATA), overwrite=False)
            assert b.read_all(f"new-{b is lean}") == DATA
        assert outcomes[:2] == outcomes[2:]
        assert lean.read_all("exists") == b"x"
    finally:
        lean.close()
        sdk.close()


class _Racing(io.RawIOBase):
    """A source that, half-way through, has another writer create the blob."""

    def __init__(self, data: bytes, create):
        self._buf = io.BytesIO(data)
        self._create = create
        self._half = len(data) // 2

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:
        if self._create is not None and self._buf.tell() >= self._half:
            self._create()
            self._create = None
        return self._buf.readinto(view)


def test_conditional_commit_loses_to_a_blob_made_meanwhile(azurite, container):
    lean, sdk = _pair(azurite, container)
    try:
        outcomes = []
        for b in (lean, sdk):
            name = f"race-{b is lean}"
            src = _Racing(DATA, lambda n=name, w=b: w.write_bytes(n, b"other"))
            with pytest.raises(AlreadyExists) as e:
                b.write_stream(name, src, len(DATA), overwrite=False)
            outcomes.append((type(e.value), str(e.value).replace(name, "N")))
            assert b.read_all(name) == b"other"  # the other writer's blob stands
        assert outcomes[0] == outcomes[1]
    finally:
        lean.close()
        sdk.close()


class _Failing(io.RawIOBase):
    """A source whose read fails after `good` bytes (a disk error)."""

    def __init__(self, data: bytes, good: int):
        self._buf = io.BytesIO(data[:good])

    def readable(self) -> bool:
        return True

    def readinto(self, view) -> int:
        n = self._buf.readinto(view)
        if not n:
            raise OSError(5, "Input/output error")
        return n


def test_failure_before_the_commit_leaves_no_blob(azurite, container):
    lean, sdk = _pair(azurite, container)
    try:
        for b in (lean, sdk):
            name = f"fail-{b is lean}"
            with pytest.raises(OSError):
                b.write_stream(name, _Failing(DATA, BLOCK * 5 + 7), len(DATA))
            with pytest.raises(NotFound):
                b.stat(name)
            with pytest.raises(BackendError, match="nothing was written"):
                b.write_stream(name, io.BytesIO(DATA[:-1]), len(DATA))
            with pytest.raises(NotFound):
                b.stat(name)
            # an existing blob stays as it was
            b.write_bytes(name, b"old")
            with pytest.raises(OSError):
                b.write_stream(name, _Failing(DATA, BLOCK * 3), len(DATA))
            assert b.read_all(name) == b"old"
            budget = b._blocks.budget
            for _ in range(1000):  # blocks still sending when the read failed end on their own
                if not budget.used:
                    break
                time.sleep(0.01)
            assert budget.used == 0  # every buffer given back
    finally:
        lean.close()
        sdk.close()


def test_auth_failures_as_the_sdk(azurite, container, blob_config):
    wrong = "d3Jvbmcga2V5" * 7 + "AA=="
    errors = []
    for lean in (True, False):
        b = _backend(azurite, container, lean, key=wrong)
        try:
            for overwrite in (True, False):
                with pytest.raises(Forbidden) as e:
                    b.write_stream("f", io.BytesIO(DATA), len(DATA), overwrite=overwrite)
                errors.append((type(e.value), str(e.value)))
                assert wrong[:12] not in str(e.value)
        finally:
            b.close()
    assert errors[:2] == errors[2:]
    ro = _sas(container, read=True, list=True)
    errors = []
    lean, sdk = _pair(azurite, container, sas=ro)
    try:
        for b in (lean, sdk):
            with pytest.raises(Forbidden) as e:
                b.write_stream("ro", io.BytesIO(DATA), len(DATA))
            errors.append((type(e.value), str(e.value)))
    finally:
        lean.close()
        sdk.close()
    assert errors[0] == errors[1]
    errors = []
    lean, sdk = _pair(azurite, "nosuchcontainer")
    try:
        for b in (lean, sdk):
            with pytest.raises(BackendError) as e:
                b.write_stream("f", io.BytesIO(DATA), len(DATA))
            errors.append((type(e.value), str(e.value)))
    finally:
        lean.close()
        sdk.close()
    assert errors[0] == errors[1] and "container not found" in errors[0][1]


def test_the_service_checks_each_block_md5(azurite, container):
    fast = BlobFastPath(azurite.account_url, container, AzureNamedKeyCredential(ACCOUNT, KEY))
    try:
        good = hashlib.md5(b"abc").digest()
        fast.put_block("b", "id0", b"abc", good)
        with pytest.raises(HttpStatusError) as e:
            fast.put_block("b", "id1", b"abd", good)
        assert e.value.status_code == 400
        fast.put_block_list("b", ["id0"], good, overwrite=False)
        assert fast.read("b", 0, 10) == b"abc"
        with pytest.raises(HttpStatusError) as e:
            fast.put_block_list("b", ["id0"], good, overwrite=False)
        assert e.value.status_code in (409, 412)
    finally:
        fast.close()


class _Token:
    def get_token(self, *scopes):
        return type("T", (), {"token": "tok-123", "expires_on": 2**40})()


def test_blocks_carry_a_bearer_token():
    ok = response(201, headers={"ETag": '"0x1"', "Last-Modified": "Mon, 30 Nov 2026 07:00:00 GMT"})
    with CannedServer([ok, ok]) as server:
        fast = BlobFastPath(f"{server.url}/acct", "c", _Token())
        try:
            fast.put_block("x y", "blk", b"data", hashlib.md5(b"data").digest())
            resp = fast.put_block_list("x y", ["blk"], b"\0" * 16, overwrite=False)
            assert resp["etag"] == '"0x1"'
            assert server.wait_requests(2)
            first, second = server.requests
            assert first.startswith(b"PUT /acct/c/x%20y?comp=block&blockid=YmxrHTTP"[:-4])
            assert b"Authorization: Bearer tok-123" in first
            assert b"Content-MD5: " + b"jXd/OF09/siBXSD3SWAm3A==" in first
            assert b"comp=blocklist" in second and b"If-None-Match: *" in second
            assert b"Authorization: Bearer tok-123" in second
        finally:
            fast.close()


def test_budget_semantics():
    budget = UploadBudget(100)
    assert budget.acquire(60) and budget.acquire(40)
    assert not budget.acquire(1, wait=False)
    got = threading.Event()
    t = threading.Thread(target=lambda: (budget.acquire(50), got.set()))
    t.start()
    while not budget._waiting:  # the thread waits for room
        t.join(0.01)
    budget.release(40)
    assert not budget.acquire(10, wait=False)  # room, but someone waits for it
    budget.release(60)
    t.join(10)
    assert got.is_set() and budget.used == 50
    budget.release(50)
    assert budget.acquire(500, wait=False) and budget.used == 500  # too big, alone: fine
    budget.release(500)
    assert budget.peak == 500


def test_shared_budget_bounds_concurrent_uploads(azurite, container):
    # 6 workers, 8 blocks each, 3 blocks' worth of budget: never more than 3 blocks held.
    b = _backend(azurite, container, upload_memory=3 * BLOCK, upload_concurrency=8)
    try:
        budget = b._blocks.budget
        b.write_stream("alone", io.BytesIO(DATA), len(DATA))
        assert budget.peak == 3 * BLOCK  # one file alone fills the budget with blocks
        budget.peak = 0
        errors = []

        def one(i: int) -> None:
            try:
                b.write_stream(f"many/{i}", io.BytesIO(DATA), len(DATA))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        assert 0 < budget.peak <= 3 * BLOCK and budget.used == 0
        for i in range(6):
            assert b.read_all(f"many/{i}") == DATA
    finally:
        b.close()


def test_per_block_md5_is_off_by_default_and_can_be_asked_for(azurite, container):
    """Off by default (as the SDK and azcopy: TLS guards the blocks on https); when asked for,
    every Put Block carries a Content-MD5 the service checks. The whole file's MD5 is stored
    either way."""
    data = os.urandom(BLOCK * 3 + 5)
    for want in (False, True):
        b = _backend(azurite, container, **({"block_md5": True} if want else {}))
        try:
            assert b.block_md5 is want
            info = b.write_stream(f"md5-{want}", io.BytesIO(data), len(data))
            assert info.content_md5 == hashlib.md5(data).digest()
            assert b.read_all(f"md5-{want}") == data
        finally:
            b.close()


def test_reads_without_the_lean_client_go_through_the_sdk(azurite, container, tmp_path):
    """lean=False: read_range_into and read_range_to_fd fall back to the SDK's reads (the next
    class in BlobBackend's MRO) with the same bytes."""
    b = _backend(azurite, container, lean=False)
    try:
        b.write_stream("r", io.BytesIO(DATA), len(DATA))
        buf = memoryview(bytearray(1000))
        assert b.read_range_into("r", 5, buf) == 1000 and bytes(buf) == DATA[5:1005]
        fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            assert b.read_range_to_fd("r", 7, 3000, fd, 0) == 3000
            assert os.pread(fd, 3000, 0) == DATA[7:3007]
        finally:
            os.close(fd)
    finally:
        b.close()
