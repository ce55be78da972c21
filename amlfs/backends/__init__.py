"""Storage backends behind one interface; `open_backend` picks one for a datastore."""

from __future__ import annotations

import binascii
from typing import Any

from ..errors import RegistryError
from ..registry import ADLS, BLOB, FILE, LOCAL, DatastoreConfig
from .base import Abort, Backend, ObjectInfo
from .errors import Aborted, AlreadyExists, BackendError, Changed, Forbidden, NotFound, Transient

__all__ = [
    "Abort",
    "Aborted",
    "AlreadyExists",
    "Backend",
    "BackendError",
    "Changed",
    "Forbidden",
    "NotFound",
    "ObjectInfo",
    "Transient",
    "TrioBackend",
    "open_backend",
]


def __getattr__(name: str) -> Any:
    # TrioBackend imports trio: loaded on first use, so that synchronous users of the backends
    # (amlfs.remotefs, the fsspec filesystem inside pandas or Dask workers) never import it.
    if name == "TrioBackend":
        from .bridge import TrioBackend

        return TrioBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_backend(
    ds: DatastoreConfig, create_if_not_exists: bool = False, **options: Any
) -> Backend:
    """A Backend for the datastore `ds` (its container/share/filesystem created on request).

    `options` go to every Azure backend's `from_config`: `retry_total=` (0: no retries inside
    the backend, for a caller that retries itself within its own deadline), `retry_backoff=`,
    `connection_timeout=`, `read_timeout=`. A local datastore ignores them.
    """
    if ds.type == LOCAL:
        from .local import LocalBackend

        backend: Backend = LocalBackend(ds.path or "")
    elif ds.type not in (BLOB, FILE, ADLS):
        raise ValueError(f"unknown datastore type {ds.type!r}")
    else:
        try:
            backend = _open_azure(ds, **options)
        except binascii.Error:
            raise RegistryError(
                f"datastore {ds.name!r}: credentials.account_key is not base64: copy the storage"
                " account key again (Access keys in the portal)"
            ) from None
        except ValueError as e:
            if ds.api_version and "api version" in str(e).lower():
                raise RegistryError(
                    f"datastore {ds.name!r}: api_version {ds.api_version} is not one the Azure"
                    " storage SDK knows; use a published version such as 2025-01-05"
                ) from None
            raise
    if create_if_not_exists:
        backend.ensure_exists()
    return backend


def _open_azure(ds: DatastoreConfig, **options: Any) -> Backend:
    if ds.type == BLOB:
        from .blob import BlobBackend

        return BlobBackend.from_config(ds, **options)
    if ds.type == FILE:
        from .fileshare import FileShareBackend

        return FileShareBackend.from_config(ds, **options)
    from .adls import AdlsBackend

    return AdlsBackend.from_config(ds, **options)
