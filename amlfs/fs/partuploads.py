"""The parts of one file's upload in flight (`PartUploads`, a mixin of writes.WriteHandle, which
owns the state it uses) and `WriteContext`, what every write handle of a mount shares.

A part is sent in the background, in the mount's nursery, at most PARTS_IN_FLIGHT of one handle
at once; its buffer is counted in the write budget until the thread sending it has let go of it.
A part's failure is kept (`_error`) for the commit to report.

Concurrency contract: the trio thread only. `_ship` runs under the handle's lock (writes.py);
the part it starts runs as a task of the mount's nursery, and tells the handle when it ends
(`_inflight`, `_idle`, `_part_done`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from ..backends.base import ObjectInfo, Upload, Writer
from ..backends.bridge import TrioBackend
from ..backends.errors import BackendError, Transient
from .staging import StagingArea
from .writebuffer import PartBuffer, WriteBudget

log = logging.getLogger("amlfs.fs.writes")

#: part uploads of one handle in flight at once
PARTS_IN_FLIGHT = 4
BACKOFF_BASE = 0.1
BACKOFF_MAX = 2.0
#: a discarded upload's parts still being sent are waited for at most this many request bounds
#: (a part gives up after two: `_stage_part`)
DISCARD_WAIT = 4


@dataclass
class WriteContext:
    """What every handle of one mount shares."""

    backend: TrioBackend
    writer: Writer
    budget: WriteBudget
    staging: StagingArea
    nursery: trio.Nursery
    block_size: int
    request_timeout: float
    count: Callable[[str, int], None]


class PartUploads:
    """Shipping parts of `WriteHandle`'s upload (which inherits this, and sets the attributes
    below)."""

    ctx: WriteContext
    path: str
    etag: str | None
    keep: ObjectInfo | None
    _buf: PartBuffer
    _hashed: trio.Event | None
    _upload: Upload | None
    _parts: list[int]
    _next_part: int
    _shipped_end: int
    _md5: Any
    _inflight: int
    _idle: trio.Event
    _error: BackendError | None
    _unreleased: dict[int, int]  # id(upload) -> its parts some thread still holds
    _released: trio.Event  # set (and replaced) whenever a part is let go
    _discarding: set[int]  # id(upload) of uploads given up, until their discard is done

    async def _ship(self, n: int) -> None:
        """Hand the first `n` buffered bytes to the upload as the next part (in the background;
        their budget is given back when the thread sending them has finished)."""
        if self._upload is None:
            self._upload = await self._open_upload(self.keep)
        while self._inflight >= PARTS_IN_FLIGHT:
            await self._idle_one()
        chunk = self._buf.take(n)
        index = self._next_part
        self._next_part += 1
        self._parts.append(index)
        offset = self._shipped_end
        self._shipped_end += n
        # The whole file's MD5 is computed in worker threads too, part after part in order.
        after, done = self._hashed, trio.Event()
        self._hashed = done
        self._start_part(self._upload, index, offset, chunk, self._md5, after, done)

    def _start_part(
        self, upload: Upload, index: int, offset: int, chunk: bytes, *hashing: Any
    ) -> None:
        """Send one part in the background (`_stage_part`), counted until it has ended
        (`_inflight`) and until no thread holds it any more (`_unreleased`)."""
        self._inflight += 1
        self._idle = trio.Event()
        self._unreleased[id(upload)] = self._unreleased.get(id(upload), 0) + 1
        self.ctx.nursery.start_soon(self._stage_part, upload, index, offset, chunk, *hashing)

    def _let_go(self, upload: Upload) -> None:
        """No thread holds one part of `upload` any more."""
        left = self._unreleased[id(upload)] - 1
        if left:
            self._unreleased[id(upload)] = left
        else:
            del self._unreleased[id(upload)]
        self._released.set()
        self._released = trio.Event()

    async def _idle_one(self) -> None:
        event = self._part_done = trio.Event()
        await event.wait()

    _part_done: trio.Event | None = None

    async def _stage_part(
        self,
        upload: Upload,
        index: int,
        offset: int,
        chunk: bytes,
        md5: Any = None,
        after: trio.Event | None = None,
        hashed: trio.Event | None = None,
    ) -> None:
        """Send one part (retrying transient failures within twice the request bound); its
        budget is given back once no thread holds `chunk` any more."""
        n = len(chunk)
        state = {"threads": 0, "done": False, "given": False}

        def release() -> None:
            if state["done"] and not state["threads"] and not state["given"]:
                state["given"] = True
                self.ctx.budget.give(n)
                self._let_go(upload)

        def exited() -> None:
            state["threads"] -= 1
            release()

        async def once() -> None:
            state["threads"] += 1
            await self.ctx.backend.call(upload.stage, index, offset, chunk, on_exit=exited)

        try:
            try:
                if md5 is not None:
                    if after is not None:
                        await after.wait()
                    await trio.to_thread.run_sync(md5.update, chunk)  # hashlib drops the GIL
            finally:
                if hashed is not None:
                    hashed.set()
            with trio.move_on_after(self.ctx.request_timeout * 2) as scope:
                await self._retrying("stage", once)
            if scope.cancelled_caught:
                raise Transient(f"{self.path!r}: uploading a part timed out", self.path)
            self.ctx.count("bytes_written", n)
        except BackendError as e:
            # A part of an upload already given up (a commit past its bound) fails nothing.
            if self._error is None and id(upload) not in self._discarding:
                self._error = e
        finally:
            state["done"] = True
            release()
            self._inflight -= 1
            if self._part_done is not None:
                self._part_done.set()
                self._part_done = None
            if self._inflight == 0:
                self._idle.set()

    async def _wait_idle(self) -> None:
        await self._idle.wait()

    def _discard(self, upload: Upload) -> None:
        """Forget an upload's uncommitted parts, in the background (it may take a request), once
        no thread is sending one of its parts any more (base.Upload: a discard runs when no
        stage is in flight): a part still being sent would otherwise recreate what the discard
        deleted (ADLS and File share: a temporary file left behind by a commit that timed out).
        A part thread still running after DISCARD_WAIT request bounds is not waited for."""

        async def run() -> None:
            try:
                with trio.move_on_after(self.ctx.request_timeout * DISCARD_WAIT) as scope:
                    while id(upload) in self._unreleased:
                        await self._released.wait()
                if scope.cancelled_caught:
                    log.warning("%r: discarding an upload while a part is being sent", self.path)
                await self.ctx.backend.call(upload.discard)
            except Exception as e:
                log.warning("%r: could not discard an upload: %s", self.path, e)
            finally:
                self._discarding.discard(id(upload))

        self._discarding.add(id(upload))
        self.ctx.nursery.start_soon(run)

    async def _open_upload(self, keep: ObjectInfo | None) -> Upload:
        w = self.ctx.writer

        def open_() -> Upload:
            up = w.open_upload(self.path, etag=self.etag, keep=keep)
            prepare = getattr(up, "prepare", None)
            if prepare is not None:
                prepare()
            return up

        return await self._retrying("open", lambda: self.ctx.backend.call(open_))

    async def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        attempt = 0
        while True:
            try:
                return await fn()
            except Transient as e:
                delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)
                attempt += 1
                log.debug("%s %r: %s; retrying in %.2f s", what, self.path, e, delay)
                await trio.sleep(delay)
