"""What a transfer ends with: its counts and per-file failures (`TransferResult`), the error that
stops a whole run early (`TransferStopped`), and the rule that decides when per-file failures
are really one failure repeated (`FailureStreak`).

A failure that does not depend on the file (refused credential, missing container, unsupported
API version, full or read-only target; `BackendError.same_for_all`) stops the run at once with
one line; so do `STREAK_STOP` consecutive failures of one kind with no file succeeding between
them (a disk that fails every write with EIO, a service that is down). Other failures are
collected and listed once at the end. Thread-safe where noted.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .backends.errors import BackendError, Changed, NotFound
from .errors import AmlfsError

log = logging.getLogger(__name__)

__all__ = ["STREAK_STOP", "FailureStreak", "TransferResult", "TransferStopped", "error_text"]

#: consecutive same-kind failures, with no success between them, that stop a run
STREAK_STOP = 8


@dataclass
class TransferResult:
    copied: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    deleted: int = 0
    #: remote names that could not be safe local paths (or clash with a directory), skipped
    unsafe: int = 0
    #: --verify: files whose Content-MD5 matched, and files the service had no MD5 for
    verified: int = 0
    no_md5: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed


class TransferStopped(AmlfsError):
    """The run stopped early because every later file would fail the same way. `result` holds
    what was done and the per-file failures before the stop; `cause` the failure itself."""

    exit_code = 1

    def __init__(self, cause: BaseException, result: TransferResult, repeated: int = 0):
        text = str(cause)
        if repeated:
            text = f"{repeated} files in a row failed the same way, the last: {text}"
        hint = getattr(cause, "hint", "")
        super().__init__(f"stopped: {text}" + (f"; {hint}" if hint else ""))
        self.cause = cause
        self.result = result


def error_text(e: BaseException, where: str) -> str:
    if isinstance(e, BackendError):
        return str(e)
    if isinstance(e, OSError):
        return f"{where}: {e.strerror or e}"
    return f"{where}: {type(e).__name__}: {e}"


def _kind(e: BaseException | None) -> tuple | None:
    """What makes two failures 'the same way'; None for failures that are about one file."""
    if e is None or isinstance(e, (NotFound, Changed)):
        return None
    return (type(e).__name__, getattr(e, "errno", None))


class FailureStreak:
    """Counts consecutive failures of one kind with no success between them. Thread-safe."""

    def __init__(self, stop_after: int = STREAK_STOP):
        self.stop_after = stop_after
        self._lock = threading.Lock()
        self._kind: tuple | None = None
        self._count = 0

    def success(self) -> None:
        with self._lock:
            self._kind, self._count = None, 0

    def failure(self, e: BaseException | None) -> int:
        """Record a failure; the streak's length when it reached `stop_after`, else 0."""
        kind = _kind(e)
        with self._lock:
            if kind is None or kind != self._kind:
                self._kind, self._count = kind, 1 if kind is not None else 0
            else:
                self._count += 1
            return self._count if self._count >= self.stop_after else 0
