"""Shared fixtures: a session-wide Azurite, fresh containers, isolated registries."""

from __future__ import annotations

import itertools
import os

import pytest

from amlfs.registry import BLOB, LOCAL, Credentials, DatastoreConfig

from .azurite import ACCOUNT, KEY, start_azurite

_counter = itertools.count()


@pytest.fixture(scope="session")
def azurite():
    az = start_azurite()
    yield az
    az.stop()


@pytest.fixture
def container(azurite):
    """A fresh, empty container name in Azurite."""
    name = f"c{os.getpid()}x{next(_counter)}"
    azurite.service().create_container(name)
    return name


@pytest.fixture
def blob_config(azurite, container) -> DatastoreConfig:
    """A blob datastore on a fresh Azurite container, authenticated with the account key."""
    return DatastoreConfig(
        name="azblob",
        type=BLOB,
        account_name=ACCOUNT,
        container_name=container,
        account_url=azurite.account_url,
        protocol="http",
        credentials=Credentials(account_key=KEY),
    )


@pytest.fixture
def local_config(tmp_path) -> DatastoreConfig:
    root = tmp_path / "localstore"
    root.mkdir()
    return DatastoreConfig(name="loc", type=LOCAL, path=str(root))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No test reads the user's registry or Azure variables from the environment."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "home" / ".local" / "share"))
    monkeypatch.delenv("AMLFS_REGISTRY", raising=False)
    for var in list(os.environ):
        if var.startswith("AZURE_"):
            monkeypatch.delenv(var, raising=False)


# Protocol-level File share and ADLS Gen2 servers (tests/servers), shared by every suite.
from .servers.fixtures import (  # noqa: E402,F401
    adls_config,
    adls_server,
    adls_tls,
    fileshare_config,
    fileshare_server,
    sp_env,
)


@pytest.fixture
def run_dirs_in_tmp_path(tmp_path, monkeypatch):
    """`amlfs run` keeps a run directory (with the outputs it could not upload) on purpose: put
    the run directories of this test, in-process and in the commands it starts, under its
    tmp_path, so that the ones kept by design do not pile up in /tmp."""
    import tempfile

    where = tmp_path / "tmp"
    where.mkdir()
    monkeypatch.setenv("TMPDIR", str(where))
    monkeypatch.setattr(tempfile, "tempdir", str(where))
