"""The ADLS Gen2 backend against the protocol-level DFS + Blob test server (key, SAS and a
service principal through the test AAD endpoint over TLS)."""

from __future__ import annotations

import datetime as dt

import pytest

from amlfs.backends import open_backend
from amlfs.backends.adls import AdlsBackend
from amlfs.backends.base import join
from amlfs.backends.errors import Forbidden, NotADirectory, NotFound
from amlfs.registry import Credentials
from tests.servers.backend_cases import *  # noqa: F403 - the shared backend behaviours
from tests.servers.fixtures import (  # noqa: F401
    adls_server,
    adls_tls,
    make_adls_config,
    sp_env,
    unique,
)


@pytest.fixture(params=["key", "sas", "sp"])
def backend(request, adls_server):  # noqa: F811
    if request.param == "sp":
        tls = request.getfixturevalue("sp_env")
        ds = make_adls_config(tls.server, auth="sp")
    else:
        ds = make_adls_config(adls_server, auth=request.param)
    b = AdlsBackend.from_config(ds)
    b.ensure_exists()
    yield b
    b.close()


@pytest.fixture
def base():
    return unique("t")


@pytest.fixture
def min_pages():
    return 4


def test_open_backend_and_create_filesystem(adls_server):  # noqa: F811
    ds = make_adls_config(adls_server)
    ds.filesystem = unique("new")
    b = open_backend(ds, create_if_not_exists=True)
    assert isinstance(b, AdlsBackend)
    b.check_access()
    b.ensure_exists()
    assert "ADLS Gen2" in b.description


def test_missing_filesystem_is_not_found(adls_server):  # noqa: F811
    ds = make_adls_config(adls_server)
    ds.filesystem = unique("absent")
    b = AdlsBackend.from_config(ds)
    with pytest.raises(NotFound):
        b.check_access()
    with pytest.raises(NotFound):
        b.stat("")


def test_wrong_key_is_forbidden(adls_server):  # noqa: F811
    ds = make_adls_config(adls_server)
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    ds.credentials = Credentials(account_key=wrong)
    with pytest.raises(Forbidden) as ei:
        AdlsBackend.from_config(ds).list_page("")
    assert "account key from the registry" in str(ei.value) and wrong not in str(ei.value)


def test_expired_sas_is_forbidden(adls_server):  # noqa: F811
    from azure.storage.filedatalake import generate_file_system_sas

    ds = make_adls_config(adls_server)
    ds.credentials = Credentials(
        sas_token=generate_file_system_sas(
            adls_server.account,
            ds.filesystem,
            adls_server.key,
            permission="rl",
            expiry=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
        )
    )
    with pytest.raises(Forbidden):
        AdlsBackend.from_config(ds).check_access()


def test_acl_denial_is_forbidden_for_the_service_principal(sp_env):  # noqa: F811
    server = sp_env.server
    ds = make_adls_config(server, auth="sp")
    b = AdlsBackend.from_config(ds)
    b.write_bytes("open/f", b"1")
    b.write_bytes("secret/f", b"2")
    server.deny(ds.filesystem, "secret")
    assert b.read_all("open/f") == b"1"
    assert {e.name for e in b.list_dir("")} == {"open", "secret"}  # the parent still lists it
    for call in (
        lambda: b.stat("secret/f"),
        lambda: b.read_range("secret/f", 0, 1),
        lambda: b.list_page("secret"),
    ):
        with pytest.raises(Forbidden) as ei:
            call()
        assert "permission denied" in str(ei.value) and "service principal" in str(ei.value)
    assert ds.credentials.client_secret not in str(ei.value)
    # A shared key is a superuser: ACLs do not apply to it, as on Azure.
    key = AdlsBackend.from_config(make_adls_config(server, filesystem=ds.filesystem))
    assert key.read_all("secret/f") == b"2"


def test_acl_denial_for_any_credential(adls_server):  # noqa: F811
    ds = make_adls_config(adls_server)
    b = AdlsBackend.from_config(ds)
    b.write_bytes("locked/f", b"1")
    adls_server.deny(ds.filesystem, "locked", shared_key_too=True)
    with pytest.raises(Forbidden):
        b.read_all("locked/f")


def test_wrong_client_secret_is_forbidden(sp_env):  # noqa: F811
    ds = make_adls_config(sp_env.server, auth="sp")
    ds.credentials.client_secret = "not-the-secret"
    with pytest.raises(Forbidden) as ei:
        AdlsBackend.from_config(ds).list_page("")
    assert "not-the-secret" not in str(ei.value)


def test_listing_is_one_request_per_page(adls_server, backend, base):  # noqa: F811
    if backend.rc.kind == "token":
        pytest.skip("counted on the plain-HTTP server")
    for i in range(5):
        backend.write_bytes(join(base, f"f{i}"), b"x")
    before = len(adls_server.requests)
    entries = list(backend.list_dir(base))
    calls = adls_server.requests[before:]
    assert len(entries) == 5 and all(e.etag and e.mtime for e in entries)
    assert len(calls) == 2 and all("resource" in q for _, q in calls)  # 3 + 2 entries, no HEADs


def test_list_a_file_is_not_a_directory(backend, base):
    backend.write_bytes(join(base, "f"), b"x")
    with pytest.raises(NotADirectory):
        backend.list_page(join(base, "f"))


def test_reads_are_one_get_per_block_with_if_match(adls_server):  # noqa: F811
    """The SDK splits a read into block-sized GETs; the lean path (leanread.py) sends the one
    ranged GET asked for."""
    ds = make_adls_config(adls_server)
    for lean, gets in ((False, 3), (True, 1)):
        b = AdlsBackend.from_config(ds, block_size=4096, lean=lean)
        info = b.write_bytes("blob", bytes(10000))
        before = len(adls_server.requests)
        assert len(b.read_range("blob", 0, 10000, etag=info.etag)) == 10000
        assert [m for m, _ in adls_server.requests[before:]] == ["GET"] * gets
        b.close()
