"""The check `amlfs datastore register` makes before saving: one cheap authenticated call (list
one entry), and a one-line answer naming what failed: auth, not found, unreachable, API version."""

from __future__ import annotations

import os

from .backends import BackendError, Forbidden, NotFound, Transient, open_backend
from .errors import AmlfsError
from .registry import ADLS, BLOB, FILE, LOCAL, DatastoreConfig

_SERVICES = {BLOB: "Blob storage", FILE: "Azure Files", ADLS: "ADLS Gen2 (dfs)"}
_OFFLINE = "; fix it, or pass --no-verify to register it without checking"


def verify_datastore(ds: DatastoreConfig) -> None:
    """AmlfsError (exit 1) unless the storage of `ds` answers an authenticated listing."""
    if ds.type == LOCAL:
        if not os.path.isdir(ds.path or ""):
            raise AmlfsError(f"datastore {ds.name!r}: {ds.path} is not a directory{_OFFLINE}")
        return
    from .backends.failures import UnsupportedVersion

    backend = open_backend(ds)
    try:
        backend.check_access()
    except BackendError as e:
        if isinstance(e, UnsupportedVersion):
            what = "unsupported API version"
        elif isinstance(e, Forbidden):
            what = "authentication failed"
        elif isinstance(e, NotFound):
            what = "not found"
        elif isinstance(e, Transient):
            what = "unreachable"
        else:
            what = f"refused (does this endpoint serve {_SERVICES.get(ds.type, ds.type)}?)"
        raise AmlfsError(f"datastore {ds.name!r} not registered: {what}: {e}{_OFFLINE}") from None
    finally:
        backend.close()
