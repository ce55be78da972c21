"""Writing a small file whole or not at all (the registry, run manifests, the CSI plugin's state)."""

from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path


def write_atomic(path: str | Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` with `data`: a temporary file beside it, renamed over it, so that a reader
    sees the old file or the new one, never half of one. mkstemp creates it 0600: what it holds
    (secrets, often) is never readable by others. With `durable` the data is on disk before the
    rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
