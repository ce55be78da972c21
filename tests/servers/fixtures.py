"""pytest fixtures for the File share and ADLS Gen2 test servers, and datastore factories.

Import what a test module needs: `from tests.servers.fixtures import adls_server, ...`.
Servers are session-scoped (one per session, a fresh share / filesystem per test); listings are
capped at 3 entries per page so that every listing test exercises continuation.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import tempfile
from dataclasses import dataclass

import pytest

from amlfs.registry import ADLS, FILE, Credentials, DatastoreConfig

from .aad import Directory
from .adls import AdlsServer
from .common import TLSFiles, make_self_signed_cert
from .fileshare import FileShareServer

PAGE = 3
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "0b5a1c3d-2e4f-4a6b-8c7d-9e0f1a2b3c4d"
CLIENT_SECRET = "test-client-secret-not-real"

_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_counter)}"


@dataclass
class AdlsTls:
    """An HTTPS ADLS server with an AAD stand-in, and the CA bundle that trusts it."""

    server: AdlsServer
    tls: TLSFiles


def make_fileshare_config(
    server: FileShareServer, share: str | None = None, auth: str = "key"
) -> DatastoreConfig:
    """A datastore on `server` (a fresh share unless named), authenticated by "key" or "sas"."""
    from azure.storage.fileshare import generate_share_sas

    share = share or unique("share")
    server.create_share(share)
    if auth == "key":
        creds = Credentials(account_key=server.key)
    elif auth == "sas":
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        creds = Credentials(
            sas_token=generate_share_sas(
                server.account, share, server.key, permission="rcwdl", expiry=expiry
            )
        )
    else:
        raise ValueError(f"unknown auth {auth!r}")
    return DatastoreConfig(
        name="fileshare",
        type=FILE,
        account_name=server.account,
        file_share_name=share,
        account_url=server.account_url,
        protocol=server.account_url.split(":", 1)[0],
        credentials=creds,
    )


def make_adls_config(
    server: AdlsServer, auth: str = "key", filesystem: str | None = None
) -> DatastoreConfig:
    """A datastore on `server` (a fresh filesystem unless named), by "key", "sas" or "sp".
    "sp" needs the TLS server with its AAD stand-in (`adls_tls_server`) and REQUESTS_CA_BUNDLE
    pointing at its certificate (the `sp_env` fixture)."""
    from azure.storage.filedatalake import generate_file_system_sas

    filesystem = filesystem or unique("fs")
    server.create_filesystem(filesystem)
    if auth == "key":
        creds = Credentials(account_key=server.key)
    elif auth == "sas":
        expiry = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
        creds = Credentials(
            sas_token=generate_file_system_sas(
                server.account, filesystem, server.key, permission="racwdl", expiry=expiry
            )
        )
    elif auth == "sp":
        if server.aad is None:
            raise ValueError("service-principal auth needs the TLS server with its AAD stand-in")
        creds = Credentials(
            tenant_id=server.aad.tenant_id,
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            authority_url=server.base_url,
        )
    else:
        raise ValueError(f"unknown auth {auth!r}")
    return DatastoreConfig(
        name="adls",
        type=ADLS,
        account_name=server.account,
        filesystem=filesystem,
        account_url=server.account_url,
        protocol=server.account_url.split(":", 1)[0],
        credentials=creds,
    )


@pytest.fixture(scope="session")
def fileshare_server():
    server = FileShareServer(max_page=PAGE).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def adls_server():
    server = AdlsServer(max_page=PAGE).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def adls_tls():
    with tempfile.TemporaryDirectory(prefix="amlfs-tls-") as d:
        tls = make_self_signed_cert(d)
        server = AdlsServer(
            max_page=PAGE, tls=tls, aad=Directory(TENANT_ID, {CLIENT_ID: CLIENT_SECRET})
        ).start()
        yield AdlsTls(server, tls)
        server.stop()


@pytest.fixture
def sp_env(adls_tls, monkeypatch):
    """Trust the TLS server's certificate for this test (requests reads REQUESTS_CA_BUNDLE)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", adls_tls.tls.cert)
    return adls_tls


@pytest.fixture
def fileshare_config(fileshare_server) -> DatastoreConfig:
    return make_fileshare_config(fileshare_server)


@pytest.fixture
def adls_config(adls_server) -> DatastoreConfig:
    return make_adls_config(adls_server)
