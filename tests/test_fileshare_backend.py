"""The Azure File share backend against the protocol-level File service test server."""

from __future__ import annotations

import datetime as dt

import pytest

from amlfs.backends import open_backend
from amlfs.backends.base import join
from amlfs.backends.errors import Forbidden, InvalidName, NotADirectory, NotFound
from amlfs.backends.fileshare import FileShareBackend
from amlfs.registry import Credentials
from tests.servers.backend_cases import *  # noqa: F403 - the shared backend behaviours
from tests.servers.fixtures import fileshare_server, make_fileshare_config, unique  # noqa: F401


@pytest.fixture(params=["key", "sas"])
def backend(request, fileshare_server):  # noqa: F811
    b = FileShareBackend.from_config(make_fileshare_config(fileshare_server, auth=request.param))
    b.ensure_exists()
    yield b
    b.close()


@pytest.fixture
def base():
    return unique("t")


@pytest.fixture
def min_pages():
    return 4


def test_open_backend_and_create_share(fileshare_server):  # noqa: F811
    ds = make_fileshare_config(fileshare_server)
    ds.file_share_name = unique("new")
    b = open_backend(ds, create_if_not_exists=True)
    assert isinstance(b, FileShareBackend)
    b.check_access()
    b.ensure_exists()  # idempotent
    assert "file share" in b.description


def test_missing_share_is_not_found(fileshare_server):  # noqa: F811
    ds = make_fileshare_config(fileshare_server)
    ds.file_share_name = unique("absent")
    b = FileShareBackend.from_config(ds)
    with pytest.raises(NotFound):
        b.check_access()
    with pytest.raises(NotFound):
        b.stat("")


def test_wrong_key_is_forbidden_and_secret_free(fileshare_server):  # noqa: F811
    ds = make_fileshare_config(fileshare_server)
    wrong = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
    ds.credentials = Credentials(account_key=wrong)
    b = FileShareBackend.from_config(ds)
    with pytest.raises(Forbidden) as ei:
        b.list_page("")
    msg = str(ei.value)
    assert "account key from the registry" in msg and wrong not in msg
    assert "\n" not in msg


def test_read_only_sas_is_forbidden_to_write(fileshare_server):  # noqa: F811
    from azure.storage.fileshare import generate_share_sas

    ds = make_fileshare_config(fileshare_server)
    FileShareBackend.from_config(ds).write_bytes("f", b"data")
    sas = generate_share_sas(
        fileshare_server.account,
        ds.file_share_name,
        fileshare_server.key,
        permission="rl",
        expiry=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    ds.credentials = Credentials(sas_token=sas)
    b = FileShareBackend.from_config(ds)
    assert b.read_all("f") == b"data"
    with pytest.raises(Forbidden) as ei:
        b.write_bytes("g", b"x")
    assert sas.split("sig=")[1][:10] not in str(ei.value)


def test_expired_sas_is_forbidden(fileshare_server):  # noqa: F811
    from azure.storage.fileshare import generate_share_sas

    ds = make_fileshare_config(fileshare_server)
    ds.credentials = Credentials(
        sas_token=generate_share_sas(
            fileshare_server.account,
            ds.file_share_name,
            fileshare_server.key,
            permission="rl",
            expiry=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1),
        )
    )
    with pytest.raises(Forbidden):
        FileShareBackend.from_config(ds).check_access()


def test_names_azure_files_refuses(backend, base):
    with pytest.raises(InvalidName):
        backend.write_bytes(join(base, "what?"), b"x")


def test_names_are_case_insensitive(backend, base):
    # Azure Files (SMB semantics) preserves case but matches names case-insensitively.
    backend.write_bytes(join(base, "Readme.TXT"), b"1")
    assert backend.read_all(join(base, "README.txt")) == b"1"
    assert [e.name for e in backend.list_dir(base)] == ["Readme.TXT"]


def test_listing_is_one_request_per_page(fileshare_server, backend, base):  # noqa: F811
    for i in range(5):
        backend.write_bytes(join(base, f"f{i}"), b"x")
    before = len(fileshare_server.requests)
    entries = list(backend.list_dir(base))
    calls = fileshare_server.requests[before:]
    assert len(entries) == 5 and all(e.etag and e.mtime for e in entries)
    assert len(calls) == 2 and all("comp" in q for _, q in calls)  # 3 + 2 entries, no HEADs


def test_list_a_file_is_not_a_directory(backend, base):
    backend.write_bytes(join(base, "f"), b"x")
    with pytest.raises(NotADirectory):
        backend.list_page(join(base, "f"))


def test_reads_are_one_get_per_block(fileshare_server):  # noqa: F811
    ds = make_fileshare_config(fileshare_server)
    b = FileShareBackend.from_config(ds, block_size=4096)
    info = b.write_bytes("blob", bytes(10000))
    before = len(fileshare_server.requests)
    assert len(b.read_range("blob", 0, 4096, etag=info.etag)) == 4096
    assert [m for m, _ in fileshare_server.requests[before:]] == ["GET"]
