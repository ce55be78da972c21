"""Item: an Azurite started without --skipApiVersionCheck refuses the SDK's newest x-ms-version;
amlfs says so in one line with the fix, and `api_version` on the datastore makes it work."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from amlfs.backends import BackendError, open_backend
from amlfs.cli import main
from amlfs.errors import RegistryError
from amlfs.registry import BLOB, Credentials, DatastoreConfig

from .azurite import ACCOUNT, KEY, start_azurite


@pytest.fixture(scope="module")
def strict_azurite():
    az = start_azurite(skip_api_version_check=False)
    yield az
    az.stop()


def _config(az, api_version=None) -> DatastoreConfig:
    return DatastoreConfig(
        name="strict",
        type=BLOB,
        account_name=ACCOUNT,
        container_name="strictdata",
        account_url=az.account_url,
        protocol="http",
        credentials=Credentials(account_key=KEY),
        api_version=api_version,
    )


def test_refused_api_version_is_one_line_with_the_fix(strict_azurite):
    backend = open_backend(_config(strict_azurite))
    try:
        with pytest.raises(BackendError) as e:
            backend.check_access()
    finally:
        backend.close()
    msg = str(e.value)
    assert "\n" not in msg
    assert "does not accept storage API version" in msg
    assert "--skipApiVersionCheck" in msg and "api_version" in msg
    assert "strictdata" in msg


def test_older_api_version_works_on_sdk_and_lean_paths(strict_azurite):
    backend = open_backend(_config(strict_azurite, "2025-01-05"), create_if_not_exists=True)
    try:
        backend.write_bytes("a/b.txt", b"hello")
        assert [i.path for i in backend.walk("")] == ["a/b.txt"]  # listing: the lean client
        assert backend.read_range("a/b.txt", 0, 5) == b"hello"
    finally:
        backend.close()


def test_unknown_api_version_is_a_registry_error():
    ds = DatastoreConfig(
        name="odd",
        type=BLOB,
        account_name=ACCOUNT,
        container_name="c",
        account_url="http://127.0.0.1:9/devstoreaccount1",
        credentials=Credentials(account_key=KEY),
        api_version="2001-01-01",
    )
    with pytest.raises(RegistryError, match="api_version 2001-01-01"):
        open_backend(ds)


def test_register_api_version_option_round_trips(strict_azurite, tmp_path):
    reg = tmp_path / "reg.yaml"
    args = ["--registry", str(reg), "datastore", "register", "blob", "strict2"]
    args += ["--account-name", ACCOUNT, "--container-name", "strictdata2"]
    args += ["--account-url", strict_azurite.account_url, "--account-key", KEY]
    r = CliRunner().invoke(main, [*args, "--create-if-not-exists"])
    assert r.exit_code == 1 and "--skipApiVersionCheck" in r.output, r.output
    r = CliRunner().invoke(main, [*args, "--create-if-not-exists", "--api-version", "2025-01-05"])
    assert r.exit_code == 0, r.output
    assert (
        "api_version: '2025-01-05'" in reg.read_text()
        or "api_version: 2025-01-05" in reg.read_text()
    )
