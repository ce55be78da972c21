"""The shared backend behaviours against real Azure accounts, skipped unless configured:

- File share: AMLFS_LIVE_FILE_SHARE_URL (https://ACCOUNT.file.core.windows.net/SHARE) and
  AMLFS_LIVE_FILE_SHARE_SAS (a share SAS with rcwdl) or AMLFS_LIVE_FILE_SHARE_KEY.
- ADLS Gen2: AMLFS_LIVE_ADLS_URL (https://ACCOUNT.dfs.core.windows.net/FILESYSTEM) and one of
  AMLFS_LIVE_ADLS_SAS, AMLFS_LIVE_ADLS_KEY, or AMLFS_LIVE_ADLS_TENANT_ID + _CLIENT_ID +
  _CLIENT_SECRET (a service principal with Storage Blob Data Contributor).

Each test works in a fresh directory named amlfs-live-*, and deletes the files it wrote.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import urlsplit

import pytest

from amlfs.backends.errors import BackendError
from amlfs.registry import ADLS, FILE, Credentials, DatastoreConfig
from tests.servers.backend_cases import *  # noqa: F403 - the shared backend behaviours

# Captured at import: the suite's autouse fixture clears AZURE_* variables, not these.
_ENV = {k: v for k, v in os.environ.items() if k.startswith("AMLFS_LIVE_")}


def _split(url: str) -> tuple[str, str, str]:
    """(account URL, account name, share/filesystem) from a share or filesystem URL."""
    parts = urlsplit(url.rstrip("/"))
    return f"{parts.scheme}://{parts.netloc}", parts.netloc.split(".")[0], parts.path.strip("/")


def _fileshare_config() -> DatastoreConfig | None:
    url = _ENV.get("AMLFS_LIVE_FILE_SHARE_URL")
    sas, key = _ENV.get("AMLFS_LIVE_FILE_SHARE_SAS"), _ENV.get("AMLFS_LIVE_FILE_SHARE_KEY")
    if not url or not (sas or key):
        return None
    account_url, account, share = _split(url)
    return DatastoreConfig(
        name="live-files",
        type=FILE,
        account_name=account,
        file_share_name=share,
        account_url=account_url,
        credentials=Credentials(sas_token=sas) if sas else Credentials(account_key=key),
    )


def _adls_config() -> DatastoreConfig | None:
    url = _ENV.get("AMLFS_LIVE_ADLS_URL")
    if not url:
        return None
    account_url, account, filesystem = _split(url)
    if _ENV.get("AMLFS_LIVE_ADLS_SAS"):
        creds = Credentials(sas_token=_ENV["AMLFS_LIVE_ADLS_SAS"])
    elif _ENV.get("AMLFS_LIVE_ADLS_KEY"):
        creds = Credentials(account_key=_ENV["AMLFS_LIVE_ADLS_KEY"])
    elif all(_ENV.get(f"AMLFS_LIVE_ADLS_{k}") for k in ("TENANT_ID", "CLIENT_ID", "CLIENT_SECRET")):
        creds = Credentials(
            tenant_id=_ENV["AMLFS_LIVE_ADLS_TENANT_ID"],
            client_id=_ENV["AMLFS_LIVE_ADLS_CLIENT_ID"],
            client_secret=_ENV["AMLFS_LIVE_ADLS_CLIENT_SECRET"],
        )
    else:
        return None
    return DatastoreConfig(
        name="live-adls",
        type=ADLS,
        account_name=account,
        filesystem=filesystem,
        account_url=account_url,
        credentials=creds,
    )


@pytest.fixture(params=["azure_file", "azure_data_lake_gen2"])
def backend(request):
    if request.param == "azure_file":
        from amlfs.backends.fileshare import FileShareBackend as cls

        ds = _fileshare_config()
        hint = "AMLFS_LIVE_FILE_SHARE_URL and AMLFS_LIVE_FILE_SHARE_SAS (or _KEY)"
    else:
        from amlfs.backends.adls import AdlsBackend as cls

        ds = _adls_config()
        hint = "AMLFS_LIVE_ADLS_URL and AMLFS_LIVE_ADLS_SAS, _KEY or _TENANT_ID/_CLIENT_ID/_CLIENT_SECRET"
    if ds is None:
        pytest.skip(f"live {request.param} tests need {hint}")
    b = cls.from_config(ds)
    yield b
    b.close()


@pytest.fixture
def base(backend):
    d = f"amlfs-live-{uuid.uuid4().hex[:12]}"
    yield d
    try:
        for f in list(backend.walk(d)):
            backend.delete(f.path)
    except BackendError:
        pass


@pytest.fixture
def min_pages():
    return 1
