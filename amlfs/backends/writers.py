"""Which backends can be written through a mount, and their Writer (the write side lives beside
each backend: blobwrite.py, adlswrite.py, sharewrite.py, localwrite.py)."""

from __future__ import annotations

from .base import Backend, Writer
from .errors import Unsupported


def writer_for(backend: Backend) -> Writer:
    """The Writer of `backend`; Unsupported for a backend without one (yet)."""
    from .adls import AdlsBackend
    from .blob import BlobBackend
    from .fileshare import FileShareBackend
    from .local import LocalBackend

    if isinstance(backend, BlobBackend):
        from .blobwrite import BlobWriter

        return BlobWriter(backend)
    if isinstance(backend, AdlsBackend):
        from .adlswrite import AdlsWriter

        return AdlsWriter(backend)
    if isinstance(backend, FileShareBackend):
        from .sharewrite import ShareWriter

        return ShareWriter(backend)
    if isinstance(backend, LocalBackend):
        from .localwrite import LocalWriter

        return LocalWriter(backend)
    raise Unsupported(
        f"{backend.description} cannot be mounted writable: --rw works with Blob, ADLS Gen2,"
        " File share and local datastores"
    )
