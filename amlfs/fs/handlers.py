"""The request wrapper of the mount's handlers: every handler goes through `handler`, the one
place where exceptions become errno values. Only FUSEError leaves a handler (pyfuse3's main loop
dies on anything else): backend errors carry their errno; a request past its bound is EIO;
anything unexpected is EIO, logged with its traceback once. Every request is bounded by the
operations' `request_timeout` from its arrival.

Also here: refusals (`refuse`) and the kernel invalidation the handlers ask for.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import pyfuse3
import trio
from pyfuse3 import FUSEError

from ..backends.errors import BackendError
from .stats import Stats

log = logging.getLogger("amlfs.fs.operations")

_OPAQUE = (pyfuse3.RequestContext, pyfuse3.ReaddirToken)
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class Handled(Protocol):
    """What `handler` needs of the operations object it wraps."""

    stats: Stats
    request_timeout: float
    _debug: bool
    _reported: set[tuple[str, str]]

    def _count_error(self, code: int) -> None: ...


def handler(op: str, bound: str = "request_timeout") -> Callable[[F], F]:
    """Count the request and turn every failure into a FUSEError with the right errno. The
    request is bounded by the operations' attribute `bound` (seconds; commits have their own)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(self: Handled, *args: Any) -> Any:
            self.stats.incr(f"requests.{op}")
            if self._debug:
                log.debug("%s%r", op, tuple(a for a in args if not isinstance(a, _OPAQUE)))
            try:
                limit = getattr(self, bound)
                with trio.fail_after(limit):
                    return await fn(self, *args)
            except FUSEError as e:
                if e.errno != errno.ENOSYS:  # by design (xattrs): the kernel stops asking
                    self._count_error(e.errno)
                raise
            except BackendError as e:
                self._count_error(e.errno)
                level = logging.DEBUG if e.errno == errno.ENOENT else logging.WARNING
                log.log(level, "%s: %s", op, e)
                raise FUSEError(e.errno) from None
            except trio.TooSlowError:
                self._count_error(errno.EIO)
                log.warning("%s: the storage did not answer within %.0f s", op, limit)
                raise FUSEError(errno.EIO) from None
            except Exception as e:
                self._count_error(errno.EIO)
                key = (op, type(e).__name__)
                if key not in self._reported:
                    self._reported.add(key)
                    log.exception("%s: unexpected failure (further ones logged in one line)", op)
                else:
                    log.error("%s: unexpected failure: %r", op, e)
                raise FUSEError(errno.EIO) from None

        return wrapper  # type: ignore[return-value]

    return decorate


def invalidate_entry(parent_inode: int, name: bytes) -> None:
    """Ask the kernel to drop its dentry for `name` (queued: safe inside a request handler)."""
    try:
        pyfuse3.invalidate_entry_async(parent_inode, name, ignore_enoent=True)
    except Exception as e:  # no kernel connection (tests, shutdown): nothing to invalidate
        log.debug("cannot invalidate %r in inode %d: %s", name, parent_inode, e)


def refuse(op: str, code: int = errno.EROFS) -> Callable[..., Awaitable[Any]]:
    @handler(op)
    async def refuse(self: Handled, *args: Any) -> Any:
        raise FUSEError(code)

    refuse.__name__ = op
    return refuse
