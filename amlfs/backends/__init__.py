"""Storage backends behind one interface; `open_backend` picks one for a datastore."""

from __future__ import annotations

from typing import Any

from ..registry import ADLS, BLOB, FILE, LOCAL, DatastoreConfig
from .base import (
    Abort,
    Aborted,
    AlreadyExists,
    Backend,
    BackendError,
    Changed,
    Forbidden,
    NotFound,
    ObjectInfo,
    Transient,
    TrioBackend,
)

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
    elif ds.type == BLOB:
        from .blob import BlobBackend

        backend = BlobBackend.from_config(ds, **options)
    elif ds.type == FILE:
        from .fileshare import FileShareBackend

        backend = FileShareBackend.from_config(ds, **options)
    elif ds.type == ADLS:
        from .adls import AdlsBackend

        backend = AdlsBackend.from_config(ds, **options)
    else:
        raise ValueError(f"unknown datastore type {ds.type!r}")
    if create_if_not_exists:
        backend.ensure_exists()
    return backend
