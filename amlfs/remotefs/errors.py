"""Backend errors as the OSError subclasses fsspec callers expect (FileNotFoundError & co)."""

from __future__ import annotations

import errno

from ..backends.errors import (
    AlreadyExists,
    BackendError,
    Forbidden,
    IsADirectory,
    NotADirectory,
    NotFound,
)

_TYPES: list[tuple[type[BackendError], type[OSError], int]] = [
    (NotFound, FileNotFoundError, errno.ENOENT),
    (Forbidden, PermissionError, errno.EACCES),
    (AlreadyExists, FileExistsError, errno.EEXIST),
    (IsADirectory, IsADirectoryError, errno.EISDIR),
    (NotADirectory, NotADirectoryError, errno.ENOTDIR),
]


def os_error(e: BackendError, path: str | None = None) -> OSError:
    """The OSError for `e`: its errno, its message (with its hint), and the fsspec path."""
    message = f"{e.message}; {e.hint}" if e.hint else e.message
    for backend_type, os_type, code in _TYPES:
        if isinstance(e, backend_type):
            return os_type(code, message, path)
    return OSError(e.errno or errno.EIO, message, path)
