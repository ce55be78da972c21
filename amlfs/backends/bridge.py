"""The one place where blocking storage calls meet trio: `TrioBackend` runs each call of a
synchronous Backend in a worker thread under one CapacityLimiter. A cancelled caller returns at
once; with an `Abort` the worker thread is told to stop too, and it keeps its limiter slot (and
the caller's `on_exit` is not run) until it has really finished.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import trio

from .base import Abort, Backend, ObjectInfo
from .errors import Aborted

log = logging.getLogger(__name__)

T = TypeVar("T")


class TrioBackend:
    """A Backend for trio code: every call runs in a worker thread under one CapacityLimiter.

    This is the one place where blocking storage calls are bridged into trio. A cancelled caller
    returns at once (the thread is abandoned); with an `abort`, the thread is told to stop too,
    and it keeps its limiter slot until it has really finished.
    """

    def __init__(self, backend: Backend, max_threads: int = 32):
        self.sync = backend
        self.limiter = trio.CapacityLimiter(max_threads)

    async def call(
        self,
        fn: Callable[..., T],
        *args: Any,
        abort: Abort | None = None,
        on_exit: Callable[[], None] | None = None,
        **kwargs: Any,
    ) -> T:
        """`fn(*args, **kwargs)` in a worker thread under the limiter (`abort` is not passed on).

        If the calling task is cancelled meanwhile: `abort.cancel()`, and the wait is abandoned
        (the caller returns at once). `on_exit()` runs once on the trio thread when the worker
        thread has finished with `fn` (success, error, or after being abandoned) and its limiter
        slot is free again; at once if `fn` never started; not at all if the trio run has ended.
        """
        slot = _Slot(self.limiter, on_exit)
        lock = threading.Lock()
        state = ["waiting"]  # -> "running" (by the thread) or "skipped" (by the caller)

        def run() -> T:
            with lock:
                if state[0] == "skipped":
                    raise Aborted("the call was cancelled before it started")
                state[0] = "running"
            return fn(*args, **kwargs)

        try:
            return await trio.to_thread.run_sync(run, limiter=slot, abandon_on_cancel=True)
        except BaseException as e:
            if abort is not None and not isinstance(e, Exception):  # trio.Cancelled and kin
                abort.cancel()
            with lock:
                if state[0] == "waiting":
                    state[0] = "skipped"
            if not slot.acquired:  # no thread was started: nothing else will call on_exit
                slot.exited()
            raise

    async def read_range_into(
        self,
        path: str,
        offset: int,
        buf: memoryview,
        etag: str | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        abort: Abort | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> int:
        """`Backend.read_range_into` through `call`: the same `abort` stops the worker thread
        when this task is cancelled, and `on_exit` says when the thread no longer writes `buf`."""
        return await self.call(
            functools.partial(self.sync.read_range_into, progress=progress, abort=abort),
            path,
            offset,
            buf,
            etag,
            abort=abort,
            on_exit=on_exit,
        )

    async def stat(self, path: str) -> ObjectInfo:
        return await self.call(self.sync.stat, path)

    async def list_page(
        self, path: str, token: str | None = None, page_size: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        if page_size is None:
            return await self.call(self.sync.list_page, path, token)
        return await self.call(self.sync.list_page, path, token, page_size)

    async def read_range(
        self, path: str, offset: int, length: int, etag: str | None = None
    ) -> bytes:
        return await self.call(self.sync.read_range, path, offset, length, etag)


class _Slot:
    """A CapacityLimiter as `trio.to_thread.run_sync` sees it, which calls `on_exit` on the trio
    thread right after trio gives the slot back -- when the worker thread has really ended."""

    __slots__ = ("limiter", "on_exit", "acquired")

    def __init__(self, limiter: trio.CapacityLimiter, on_exit: Callable[[], None] | None):
        self.limiter = limiter
        self.on_exit = on_exit
        self.acquired = False

    async def acquire_on_behalf_of(self, borrower: object) -> None:
        await self.limiter.acquire_on_behalf_of(borrower)
        self.acquired = True

    def release_on_behalf_of(self, borrower: object) -> None:
        try:
            self.limiter.release_on_behalf_of(borrower)
        finally:
            self.exited()

    def exited(self) -> None:
        on_exit, self.on_exit = self.on_exit, None
        if on_exit is not None:
            try:
                on_exit()
            except Exception:
                log.exception("on_exit callback %r failed", on_exit)
