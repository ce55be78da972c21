"""The typed errors of the storage backends: each names the errno the FUSE mount returns for
it, and whether every later request would fail the same way (a transfer then stops at once)."""

from __future__ import annotations

import errno
import os


class BackendError(Exception):
    """A storage failure. `errno` is what the FUSE mount returns for it.

    `same_for_all`: the failure does not depend on the file (a refused credential, a missing
    container, an unsupported API version, a full or read-only target), so a transfer stops at
    once instead of failing every other file the same way. `hint` says what to do about it.
    """

    errno = errno.EIO
    same_for_all = False
    hint = ""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


class NotFound(BackendError):
    errno = errno.ENOENT


class Forbidden(BackendError):
    """Authentication failed or authorisation denied (HTTP 401/403, ACL refusal)."""

    errno = errno.EACCES
    same_for_all = True
    hint = "check the datastore's credential in the registry (amlfs datastore show NAME)"


class ContainerMissing(NotFound):
    """The container, share or filesystem itself does not exist."""

    same_for_all = True
    hint = "check the datastore's container/share/filesystem name, or create it"


class Unsupported(BackendError):
    """The service refuses the request itself (an unsupported API version), for every file."""

    errno = errno.EOPNOTSUPP
    same_for_all = True
    hint = "use a service (or Azurite) that supports this API version"


class Changed(BackendError):
    """The object changed since its ETag was pinned (HTTP 412)."""

    errno = errno.ESTALE


class Transient(BackendError):
    """A temporary failure worth retrying: timeouts, connection resets, 5xx, throttling."""

    errno = errno.EIO


class Aborted(BackendError):
    """The call was cancelled by its caller (Abort.cancel): not retried, not a storage failure."""

    errno = errno.EINTR  # never reaches a user as such; the data path maps it


#: local errors after which every later file would fail the same way
_LOCAL_STOP_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


_LOCAL_HINTS = {
    errno.ENOSPC: "free space on the target filesystem, or choose another directory",
    errno.EDQUOT: "the disk quota is exhausted: free space or choose another directory",
    errno.EROFS: "the target filesystem is read-only: choose a writable directory",
    errno.EACCES: "check the permissions of the target directory",
    errno.EIO: "the target disk reports I/O errors: check it (dmesg) or use another one",
}


class LocalIOError(BackendError):
    """Writing (or creating) the local copy failed: ENOSPC, EIO, EACCES, EROFS... Never a
    network error and never retried; `filename` is the local file, `errno` the OSError's."""

    def __init__(self, err: OSError, filename: str | None = None, path: str | None = None):
        self.errno = err.errno or errno.EIO
        self.filename = filename or err.filename or "?"
        self.strerror = err.strerror or str(err)
        name = errno.errorcode.get(self.errno, str(self.errno))
        super().__init__(f"cannot write {self.filename}: {self.strerror} ({name})", path)
        self.same_for_all = self.errno in _LOCAL_STOP_ERRNOS
        self.hint = _LOCAL_HINTS.get(self.errno, "")

    @classmethod
    def for_fd(cls, err: OSError, fd: int) -> LocalIOError:
        """The error of a write to `fd`, named by the file `fd` is open on."""
        try:
            name: str | None = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            name = None
        return cls(err, name)


class Throttled(Transient):
    """The service asks us to slow down (HTTP 503 ServerBusy, 429); `retry_after` is its
    Retry-After in seconds when it sent one."""

    retry_after: float | None = None


class AlreadyExists(BackendError):
    errno = errno.EEXIST


class IsADirectory(BackendError):
    errno = errno.EISDIR


class NotADirectory(BackendError):
    errno = errno.ENOTDIR


class InvalidName(BackendError):
    """A remote or requested name that cannot be a safe relative path."""

    errno = errno.EINVAL


class NotEmpty(BackendError):
    errno = errno.ENOTEMPTY
