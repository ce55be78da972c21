"""Looking around a datastore and removing from it: the library side of `amlfs ls`, `amlfs cat`
and `amlfs rm`. Backends are used as the Backend contract allows (thread-safe calls)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO

from .backends import Backend, BackendError, NotFound, ObjectInfo
from .backends.base import normpath
from .errors import UsageError

CHUNK = 8 << 20


def entries(backend: Backend, path: str, recursive: bool = False) -> Iterator[ObjectInfo]:
    """What `ls` shows for `path`: a file itself; a directory's children (sorted, directories
    first), or with `recursive` every file below it. NotFound when `path` is neither."""
    rel = normpath(path)
    info = backend.stat(rel)
    if not info.is_dir:
        yield info
        return
    if recursive:
        yield from sorted(backend.walk(rel), key=lambda i: i.path)
        return
    yield from sorted(backend.list_dir(rel), key=lambda i: (not i.is_dir, i.name))


def copy_to(backend: Backend, path: str, out: BinaryIO, what: str) -> int:
    """Write the file `path` to `out` in CHUNK-sized reads pinned to its ETag; the byte count.
    UsageError when `path` is a directory (`what` names it in the message)."""
    rel = normpath(path)
    info = backend.stat(rel)
    if info.is_dir:
        raise UsageError(f"{what} is a directory: `amlfs ls {what}` lists it")
    offset = 0
    while offset < info.size:
        data = backend.read_range(rel, offset, min(CHUNK, info.size - offset), etag=info.etag)
        if not data:
            break
        out.write(data)
        offset += len(data)
    return offset


@dataclass
class Removal:
    """What `rm` removes (or would): the files, their bytes, and the failures."""

    files: list[str] = field(default_factory=list)
    bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def plan_removal(backend: Backend, path: str, recursive: bool, force: bool, what: str) -> Removal:
    """The files `rm` would delete for `path`. UsageError for a directory without `recursive`
    and for the datastore root without `force`; NotFound when `path` does not exist."""
    rel = normpath(path)
    if not rel and not force:
        raise UsageError(
            f"refusing to remove everything in datastore {what.rstrip(':')!r}: give a path,"
            " or -r --force to empty it"
        )
    info = backend.stat(rel)
    plan = Removal()
    if info.is_dir:
        if not recursive:
            raise UsageError(f"{what} is a directory: use -r to remove it and everything in it")
        found = list(backend.walk(rel))
    else:
        found = [info]
    plan.files = sorted(f.path for f in found)
    plan.bytes = sum(f.size for f in found)
    return plan


def remove(
    backend: Backend,
    plan: Removal,
    workers: int = 16,
    on_removed: Callable[[str], None] = lambda name: None,
) -> Removal:
    """Delete the planned files in parallel; a file already gone counts as removed."""

    def one(name: str) -> tuple[str, str | None]:
        try:
            backend.delete(name)
        except NotFound:
            pass
        except BackendError as e:
            return name, str(e)
        return name, None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for name, error in pool.map(one, plan.files):
            if error is None:
                on_removed(name)
            else:
                plan.failed.append((name, error))
    return plan
