"""Large files fetched in ranged chunks by the engine in amlfs.fetch: the chunk size, and the
per-file state that the workers fetching its chunks share (guarded by its lock)."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from .commit import part_path

if TYPE_CHECKING:
    from .fetch import DownloadJob

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_RANGE_WORKERS",
    "DEFAULT_WORKERS",
    "MAX_AUTO_CHUNK",
    "SMALL_FILE_MAX",
    "BigFile",
    "chunk_size",
]

DEFAULT_BLOCK_SIZE = 8 << 20
DEFAULT_WORKERS = 32
#: ranged GETs of large files in flight at once (bounds memory: this x block size)
DEFAULT_RANGE_WORKERS = 8
#: files up to this size are fetched whole by any worker into a per-thread buffer (memory:
#: workers x this); larger ones go through the ranged path, streamed into the file.
SMALL_FILE_MAX = 1 << 20
MAX_AUTO_CHUNK = 64 << 20


def chunk_size(size: int, block_size: int | None = None) -> int:
    """The ranged-read size for a file of `size` bytes: `block_size` when given; else 8 MiB,
    grown (in whole MiB, up to 64 MiB) so that a file takes about 2 x DEFAULT_RANGE_WORKERS
    requests. Fewer, larger requests cost the service less (Azurite holding 20000 blobs: 1.4 s
    of CPU per GiB at 8 MiB, 0.85 s at 64 MiB), and memory does not grow: ranges stream into
    the file."""
    if block_size:
        return block_size
    want = -(-size // (2 * DEFAULT_RANGE_WORKERS))
    return min(MAX_AUTO_CHUNK, max(DEFAULT_BLOCK_SIZE, -(-want // (1 << 20)) << 20))


class BigFile:
    """A file fetched in chunks by several workers; the last chunk to finish completes it."""

    def __init__(self, job: DownloadJob, block_size: int):
        self.job = job
        self.info = job.info
        self.tmp = part_path(job.dest)
        self.block_size = block_size
        self.lock = threading.Lock()
        self.fd = -1
        self.attempt = 0
        self.error: BaseException | None = None
        self.reset(job.resume_chunks)

    def reset(self, resume: frozenset[int]) -> None:
        self.nchunks = max(1, -(-self.info.size // self.block_size))
        self.todo = [i for i in range(self.nchunks) if i not in resume]
        self.remaining = len(self.todo)
        self.resumed = bool(resume)
        self.resumed_bytes = sum(self.chunk_range(i)[1] for i in resume if i < self.nchunks)
        self.fresh_done: list[int] = []
        self.bytes_done = 0

    def chunk_range(self, idx: int) -> tuple[int, int]:
        off = idx * self.block_size
        return off, min(self.block_size, self.info.size - off)
