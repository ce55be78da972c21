"""Backend errors as the OSError subclasses fsspec callers expect (FileNotFoundError & co)."""

from __future__ import annotations

import errno

from ..backends.base import (
    AlreadyExists,
    BackendError,
    Forbidden,
    IsADirectory,
    NotADirectory,
    NotFound,
)

_TYPES: list[tuple[type[BackendError], type[OSError]]] = [
    (NotFound, FileNotFoundError),
    (Forbidden, PermissionError),
    (AlreadyExists, FileExistsError),
    (IsADirectory, IsADirectoryError),
    (NotADirectory, NotADirectoryError),
]


def os_error(e: BackendError, path: str | None = None) -> OSError:
    """The OSError for `e`: its errno, its message (with its hint), and the fsspec path."""
    message = f"{e.message}; {e.hint}" if e.hint else e.message
    for backend_type, os_type in _TYPES:
        if isinstance(e, backend_type):
            return os_type(os_type_errno(os_type, e), message, path)
    return OSError(e.errno or errno.EIO, message, path)


def os_type_errno(os_type: type[OSError], e: BackendError) -> int:
    return {
        FileNotFoundError: errno.ENOENT,
        PermissionError: errno.EACCES,
        FileExistsError: errno.EEXIST,
        IsADirectoryError: errno.EISDIR,
        NotADirectoryError: errno.ENOTDIR,
    }.get(os_type, e.errno)
