"""Storage backends behind one interface; `open_backend` picks one for a datastore."""

from __future__ import annotations

from ..registry import ADLS, BLOB, FILE, LOCAL, DatastoreConfig
from .base import (
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


def open_backend(ds: DatastoreConfig, create_if_not_exists: bool = False) -> Backend:
    """A Backend for the datastore `ds` (its container/share/filesystem created on request)."""
    if ds.type == LOCAL:
        from .local import LocalBackend

        backend: Backend = LocalBackend(ds.path or "")
    elif ds.type == BLOB:
        from .blob import BlobBackend

        backend = BlobBackend.from_config(ds)
    elif ds.type == FILE:
        from .fileshare import FileShareBackend

        backend = FileShareBackend.from_config(ds)
    elif ds.type == ADLS:
        from .adls import AdlsBackend

        backend = AdlsBackend.from_config(ds)
    else:
        raise ValueError(f"unknown datastore type {ds.type!r}")
    if create_if_not_exists:
        backend.ensure_exists()
    return backend
