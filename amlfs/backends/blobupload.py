"""Uploading one large file as blocks, within one memory budget shared by every upload.

A file larger than one block goes up as `Put Block`s (several in flight) and one `Put Block
List` that commits them: readers see the old blob or the new one, never a part, and a failure
before the commit leaves no blob (staged blocks that are never committed are discarded by the
service after a week). The whole-file MD5 is computed as the blocks are read, in order (one pass
over the data), and stored as the blob's Content-MD5 by the commit: downloads (fetch.py, stage)
and `amlfs verify` check files against it. Each block also carries its own transactional
Content-MD5, which the service checks against the body it received (a second MD5 pass, done on
the sending thread).

The budget bounds the bytes of upload buffers held at once by all the upload workers of a
backend (blocks in flight and whole small files being put): a file always gets room for one
block (waiting for it when the budget is used up), and more blocks in flight, up to its own
limit, only when the budget has room and nobody else is waiting. So one large file alone keeps
many blocks in flight, and 32 workers uploading large files share the same bytes.

Thread-safe; the caller's thread reads the source, a shared pool of threads sends the blocks.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, BinaryIO

from .errors import BackendError

MiB = 1024 * 1024
MAX_BLOCKS = 50_000  # per block blob
#: the default budget: what 32 workers putting 8 MiB files held before blocks were shared
DEFAULT_UPLOAD_MEMORY = 256 * MiB


class UploadBudget:
    """Bytes of upload buffers that may be held at once. `acquire(n)` waits until they fit
    (a request larger than the whole budget waits until nothing else is held); with
    `wait=False` it takes them only if they fit now and nobody is waiting. Each wait is bounded
    by the requests that hold the bytes (their own timeouts and retries)."""

    def __init__(self, limit: int):
        self.limit = max(1, limit)
        self.used = 0
        self.peak = 0  # the most held at once (tests, benchmarks)
        self._waiting = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, wait: bool = True) -> bool:
        with self._cond:
            if self.used + n > self.limit and self.used > 0:
                if not wait:
                    return False
                self._waiting += 1
                try:
                    while self.used + n > self.limit and self.used > 0:
                        self._cond.wait(1.0)
                finally:
                    self._waiting -= 1
            elif not wait and self._waiting:
                return False  # leave the room to whoever waits for it
            self.used += n
            self.peak = max(self.peak, self.used)
            return True

    @property
    def waiting(self) -> bool:
        """Whether someone waits for room."""
        return self._waiting > 0

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


class BlockSender:
    """The threads that send blocks for every upload of one backend: as many as the budget
    holds blocks (a block in flight holds its bytes), made on first use."""

    def __init__(self, budget: UploadBudget, block_size: int, per_file: int):
        self.budget = budget
        self.per_file = max(1, per_file)
        self.threads = max(self.per_file, budget.limit // max(1, block_size))
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="amlfs-blob-up")
            return self._pool.submit(fn, *args)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)


def block_size_for(length: int, block_size: int) -> int:
    """The block size for a blob of `length` bytes: `block_size`, larger when the blob would
    take more than the 50,000 blocks the service allows."""
    return max(block_size, -(-length // MAX_BLOCKS))


def source_ended(rel: str, got: int, length: int) -> BackendError:
    return BackendError(
        f"{rel!r}: the source ended after {got} of {length} bytes; nothing was written", rel
    )


def fill(stream: BinaryIO, view: memoryview) -> int:
    """Read into `view` until it is full or `stream` ends; the byte count (readinto when the
    stream has it: no intermediate bytes object)."""
    readinto = getattr(stream, "readinto", None)
    got, n = 0, len(view)
    while got < n:
        if readinto is not None:
            try:
                k = readinto(view[got:]) or 0
            except NotImplementedError:  # a RawIOBase with read() alone
                readinto = None
                continue
        else:
            more = stream.read(n - got)
            k = len(more)
            view[got : got + k] = more
        if not k:
            break
        got += k
    return got


def upload_blocks(
    rel: str,
    stream: BinaryIO,
    length: int,
    *,
    block_size: int,
    sender: BlockSender,
    put_block: Callable[[str, memoryview, bytes | None], Any],
    commit: Callable[[list[str], bytes], dict[str, Any]],
    block_md5: bool = True,
) -> tuple[dict[str, Any], bytes]:
    """Stage `length` bytes of `stream` as blocks and commit them; (the commit's response,
    the whole-file MD5). `put_block(id, data, md5)` stages one block (`md5`: its transactional
    Content-MD5, None when `block_md5` is off); `commit(ids, md5)` commits them with the
    whole-file MD5. Block ids are a per-upload random prefix and the block's index (two writers
    of one blob never commit each other's blocks); the first error raises, and nothing is
    committed then."""
    block = block_size_for(length, block_size)
    size = min(block, length)  # every buffer's size (the last block uses part of one)
    budget = sender.budget
    prefix = uuid.uuid4().hex
    md5 = hashlib.md5()
    ids: list[str] = []
    # The buffers are this upload's, in flight or just sent, and so is their share of the
    # budget (`held`): a sent block's buffer takes the next block (no fresh pages to fault in).
    inflight: deque[tuple[Future, bytearray]] = deque()
    held = 0

    def send(block_id: str, data: memoryview) -> Any:
        digest = hashlib.md5(data).digest() if block_md5 else None
        return put_block(block_id, data, digest)

    def sent() -> bytearray:
        """The oldest block's buffer, once it is sent (its error raised)."""
        fut, buf = inflight[0]
        fut.result()
        inflight.popleft()
        return buf

    def take() -> bytearray:
        """A buffer for the next block: one of a block already sent; a new one while the
        budget has room (one always: waiting for it when this upload holds none) and this
        file has fewer than its limit in flight; else the oldest block's, once sent."""
        nonlocal held
        while inflight and inflight[0][0].done():
            buf = sent()
            if not (budget.waiting and inflight):
                return buf
            held -= size  # others wait for room: give this one back
            budget.release(size)
        if len(inflight) < sender.per_file and budget.acquire(size, wait=not inflight):
            held += size
            return bytearray(size)
        return sent()

    remaining = length
    try:
        while remaining > 0:
            n = min(block, remaining)
            buf = take()
            view = memoryview(buf)[:n]
            got = fill(stream, view)
            if got != n:
                raise source_ended(rel, length - remaining + got, length)
            md5.update(view)
            block_id = f"{prefix}{len(ids):08d}"
            inflight.append((sender.submit(send, block_id, view), buf))
            ids.append(block_id)
            remaining -= n
        while inflight:
            sent()
    finally:
        for fut, _ in inflight:
            if not fut.cancel():  # sending: its bytes are free when it ends
                held -= size
                fut.add_done_callback(lambda _: budget.release(size))
        budget.release(held)
    digest = md5.digest()
    return commit(ids, digest), digest
