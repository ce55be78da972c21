"""The lean Put Blob (blobget.BlobFastPath.put, used by BlobBackend.write_stream for files up to
one block) against Azurite, compared with the SDK's upload of the same data: the same stored
bytes, Content-MD5 and content type, the returned ETag and mtime those of the blob, the same
errors (AlreadyExists without overwrite, a missing container, a read-only SAS)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from amlfs.backends.blob import BlobBackend
from amlfs.backends.errors import AlreadyExists, BackendError
from amlfs.credentials import ResolvedCredential

from .azurite import ACCOUNT, KEY

NAMES = ["plain", "with space/x", "ünï/日本", "a+b", "p%20q", "h#sh", "semi;colon", "empty"]


def _backend(azurite, container: str, lean: bool, sas: str | None = None) -> BlobBackend:
    if sas is None:
        cred = ResolvedCredential("account_key", KEY, "the Azurite key")
    else:
        cred = ResolvedCredential("sas", sas, "a SAS")
    return BlobBackend(azurite.account_url, container, cred, account_name=ACCOUNT, lean=lean)


def _sas(container: str, **perms: bool) -> str:
    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(**perms),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


@pytest.mark.parametrize("auth", ["key", "sas"])
def test_same_blob_as_the_sdk(azurite, container, auth):
    sas = _sas(container, read=True, write=True, create=True, list=True) if auth == "sas" else None
    lean, sdk = _backend(azurite, container, True, sas), _backend(azurite, container, False, sas)
    cc = azurite.service().get_container_client(container)
    try:
        for i, name in enumerate(NAMES):
            data = b"" if name == "empty" else bytes([i]) * (1000 * i + 7)
            a = lean.write_bytes(f"lean/{name}", data)
            b = sdk.write_bytes(f"sdk/{name}", data)
            pa = cc.get_blob_client(f"lean/{name}").get_blob_properties()
            pb = cc.get_blob_client(f"sdk/{name}").get_blob_properties()
            assert cc.download_blob(f"lean/{name}").readall() == data
            assert bytes(pa.content_settings.content_md5) == hashlib.md5(data).digest()
            assert pa.content_settings.content_md5 == pb.content_settings.content_md5
            assert pa.content_settings.content_type == pb.content_settings.content_type
            assert (pa.blob_type, pa.size) == (pb.blob_type, pb.size)
            assert a.etag == f'"{pa.etag.strip(chr(34))}"' and a.size == len(data)
            assert a.mtime == pa.last_modified.timestamp()
            assert a.content_md5 == b.content_md5
            assert lean.stat(f"lean/{name}").etag == a.etag
            # overwrite, and the overwritten content is what reads give
            a2 = lean.write_bytes(f"lean/{name}", data + b"!")
            assert a2.etag != a.etag
            assert lean.read_all(f"lean/{name}") == data + b"!"
    finally:
        lean.close()
        sdk.close()


def test_same_errors_as_the_sdk(azurite, container):
    lean, sdk = _backend(azurite, container, True), _backend(azurite, container, False)
    try:
        lean.write_bytes("exists", b"x")
        outcomes = []
        for b in (lean, sdk):
            with pytest.raises(AlreadyExists) as e:
                b.write_bytes("exists", b"y", overwrite=False)
            outcomes.append((type(e.value), str(e.value)))
            b.write_bytes(f"new-{b is lean}", b"z", overwrite=False)  # no blob: fine
        assert outcomes[0] == outcomes[1]
        assert lean.read_all("exists") == b"x"
    finally:
        lean.close()
        sdk.close()
    gone = "nosuchcontainer"
    lean, sdk = _backend(azurite, gone, True), _backend(azurite, gone, False)
    try:
        errors = []
        for b in (lean, sdk):
            with pytest.raises(BackendError) as e:
                b.write_bytes("f", b"x")
            errors.append((type(e.value), str(e.value)))
        assert errors[0] == errors[1]
    finally:
        lean.close()
        sdk.close()
    ro = _sas(container, read=True, list=True)
    lean, sdk = _backend(azurite, container, True, ro), _backend(azurite, container, False, ro)
    try:
        errors = []
        for b in (lean, sdk):
            with pytest.raises(BackendError) as e:
                b.write_bytes("ro", b"x")
            errors.append(type(e.value))
        assert errors[0] == errors[1] and errors[0].__name__ == "Forbidden"
    finally:
        lean.close()
        sdk.close()
