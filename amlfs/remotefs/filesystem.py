"""The fsspec filesystem over amlfs datastores: `azureml://datastores/NAME/paths/PATH` and
`amlfs://NAME/PATH` for pandas, pyarrow, Dask and anything else that takes an fsspec URL.

Names resolve through the amlfs registry; every request goes through the datastore's Backend
(for Blob, the lean GET path: ranged, ETag-pinned reads straight into the cache's blocks).

What an instance holds, and what it pickles to: only its storage options (`registry`, a path to
a registry file or None for the worker's own $AMLFS_REGISTRY / default registry, and tuning
numbers). Credentials never leave the registry file they are in: a Dask worker that unpickles
the filesystem loads the registry named by `registry` (or its own default) and resolves the
credential there, as the amlfs CLI would on that machine.

Concurrency: an instance is thread-safe. Backends (one per datastore, opened on first use) are
thread-safe; the registry is loaded once, under a lock; read-ahead, multi-block reads, downloads
and deletions run on one pool of `max_concurrency` threads per instance.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fsspec.spec import AbstractFileSystem

from ..backends import open_backend
from ..backends.base import Backend, ObjectInfo
from ..backends.errors import BackendError, NotADirectory, NotFound
from ..registry import Registry, resolve_registry_path
from . import paths
from .errors import os_error
from .files import RemoteReadFile, RemoteWriteFile, TextWriteFile

log = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 8 << 20  # the block size amlfs (and azcopy) upload blobs with
DEFAULT_READAHEAD = 2  # blocks: 16 MiB ahead of a sequential reader
DEFAULT_CONCURRENCY = 16


def _entry(ds: str, info: ObjectInfo) -> dict[str, Any]:
    name = f"{ds}/{info.path}" if info.path else ds
    out: dict[str, Any] = {
        "name": name,
        "size": 0 if info.is_dir else info.size,
        "type": "directory" if info.is_dir else "file",
        "mtime": info.mtime,
    }
    if info.etag:
        out["etag"] = info.etag
    if info.content_md5:
        out["content_md5"] = info.content_md5.hex()
    return out


def _dir(name: str) -> dict[str, Any]:
    return {"name": name, "size": 0, "type": "directory"}


class AzureMLFileSystem(AbstractFileSystem):
    """`azureml://datastores/NAME/paths/PATH` over the datastores of an amlfs registry.

    Storage options: `registry` (a registry file; None: $AMLFS_REGISTRY, else
    ~/.config/amlfs/datastores.yaml, resolved where the filesystem is used), `block_size`
    (read cache block, bytes), `readahead` (blocks fetched ahead of a sequential reader),
    `max_concurrency` (threads per instance for read-ahead, downloads and deletions).
    """

    protocol = ("azureml",)
    root_marker = ""

    def __init__(
        self,
        registry: str | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        readahead: int = DEFAULT_READAHEAD,
        max_concurrency: int = DEFAULT_CONCURRENCY,
        **kwargs: Any,
    ):
        super().__init__(
            registry=registry,
            block_size=block_size,
            readahead=readahead,
            max_concurrency=max_concurrency,
            **kwargs,
        )
        self.registry_path = None if registry is None else os.fspath(registry)
        self.blocksize = int(block_size)
        self.readahead = int(readahead)
        self.max_concurrency = max(1, int(max_concurrency))
        self._lock = threading.Lock()
        self._registry: Registry | None = None
        self._backends: dict[str, Backend] = {}
        self._pool: ThreadPoolExecutor | None = None

    # --- paths -------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        from fsspec.utils import stringify_path

        return paths.strip(stringify_path(path))

    def unstrip_protocol(self, name: str) -> str:
        return paths.to_azureml(self._strip_protocol(name))

    @classmethod
    def _parent(cls, path: str) -> str:
        return cls._strip_protocol(path).rpartition("/")[0]

    # --- resources ---------------------------------------------------------------------------

    def registry(self) -> Registry:
        """The registry (loaded on first use; a worker loads its own)."""
        with self._lock:
            if self._registry is None:
                self._registry = Registry.load(self.registry_path)
            return self._registry

    def backend(self, name: str) -> Backend:
        """The Backend of datastore `name` (opened on first use). FileNotFoundError for a name
        the registry does not hold."""
        with self._lock:
            backend = self._backends.get(name)
        if backend is not None:
            return backend
        reg = self.registry()
        ds = reg.datastores.get(name)
        if ds is None:  # registered since this instance loaded the registry?
            with self._lock:
                self._registry = None
            reg = self.registry()
            ds = reg.datastores.get(name)
        if ds is None:
            raise FileNotFoundError(
                f"unknown datastore {name!r} in {resolve_registry_path(self.registry_path)}"
                f" (known: {', '.join(reg.datastores)})"
            )
        backend = open_backend(ds)
        with self._lock:
            if name in self._backends:
                other, backend = backend, self._backends[name]
                other.close()
            else:
                self._backends[name] = backend
        return backend

    def _resolve(self, path: str) -> tuple[str, str, Backend]:
        """(datastore, relative path, backend) of an fsspec path below a datastore."""
        stripped = self._strip_protocol(path)
        name, rel = paths.split(stripped)
        if not name:
            raise IsADirectoryError(f"{path!r} is the registry, not a datastore path")
        return name, rel, self.backend(name)

    def submit(self, fn: Callable[[], Any]) -> Any:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_concurrency, "amlfs-fsspec")
            pool = self._pool
        return pool.submit(fn)

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """fn over items on the pool; the first failure is raised after all have finished."""
        futures = [self.submit(lambda x=x: fn(x)) for x in items]
        results, first_error = [], None
        for f in futures:
            try:
                results.append(f.result())
            except BaseException as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error
        return results

    def close(self) -> None:
        """Close the backends' connections and the pool (the instance opens them again on use)."""
        with self._lock:
            backends, self._backends = list(self._backends.values()), {}
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        for b in backends:
            b.close()

    # --- metadata ----------------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        stripped = self._strip_protocol(path)
        if not stripped:
            out = [_dir(n) for n in self.registry().datastores]
        else:
            name, rel, backend = self._resolve(stripped)
            try:
                out = [_entry(name, i) for i in backend.list_dir(rel)]
            except NotADirectory:
                out = [self.info(stripped)]
            except BackendError as e:
                raise os_error(e, stripped) from None
        out.sort(key=lambda e: e["name"])
        return out if detail else [e["name"] for e in out]

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        stripped = self._strip_protocol(path)
        if not stripped:
            return _dir("")
        name, rel, backend = self._resolve(stripped)
        if not rel:
            return _dir(name)
        try:
            return _entry(name, backend.stat(rel))
        except BackendError as e:
            raise os_error(e, stripped) from None

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """Below a datastore, without maxdepth: one flat listing (Backend.walk) instead of one
        listing per directory; the directories are those the files lie in."""
        stripped = self._strip_protocol(path)
        name, rel = paths.split(stripped)
        if not name or maxdepth is not None:
            return super().find(
                stripped, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs
            )
        backend = self.backend(name)
        out: dict[str, dict[str, Any]] = {}
        try:
            for info in backend.walk(rel):
                e = _entry(name, info)
                out[e["name"]] = e
        except (NotFound, NotADirectory):
            try:
                e = self.info(stripped)
            except FileNotFoundError:
                e = None
            if e is not None and (e["type"] == "file" or withdirs):
                out[e["name"]] = e
        except BackendError as e:
            raise os_error(e, stripped) from None
        if withdirs and out:
            base = stripped
            for fname in list(out):
                parent = fname.rpartition("/")[0]
                while len(parent) > len(base) and parent not in out:
                    out[parent] = _dir(parent)
                    parent = parent.rpartition("/")[0]
            if base not in out:
                out[base] = self.info(base) if "/" in base else _dir(base)
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def ukey(self, path: str) -> str:
        info = self.info(path)
        return info.get("etag") or super().ukey(path)

    def modified(self, path: str) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.info(path)["mtime"], dt.UTC)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Directories exist while something lies in them (Blob has no others): a no-op, but
        the datastore must be known."""
        name, _ = paths.split(self._strip_protocol(path))
        if name:
            self.backend(name)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.mkdir(path)

    def rmdir(self, path: str) -> None:
        pass

    # --- data --------------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        name, rel, backend = self._resolve(path)
        stripped = self._strip_protocol(path)
        block = int(block_size or self.blocksize)
        if mode == "rb":
            details = self.info(stripped)
            if details["type"] != "file":
                raise IsADirectoryError(f"{stripped!r} is a directory")
            readahead = (cache_options or {}).get("readahead", self.readahead)
            return RemoteReadFile(self, stripped, backend, rel, details, block, readahead)
        if mode not in ("wb", "xb"):
            raise ValueError(
                f"mode {mode!r} is not supported: files are read ('rb') or written whole"
                " ('wb', 'xb')"
            )
        if not rel:
            raise IsADirectoryError(f"{stripped!r} is a datastore's root")
        if mode == "xb" and self.exists(stripped):
            raise FileExistsError(f"{stripped!r} exists")
        return RemoteWriteFile(self, stripped, backend, rel, mode, block, autocommit)

    def open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        cache_options: dict[str, Any] | None = None,
        compression: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """As fsspec's, but a text-mode write left by an exception uploads nothing either
        (io.TextIOWrapper would close, and so commit, its buffer on any exit)."""
        if "b" in mode or "r" in mode or compression is not None:
            return super().open(path, mode, block_size, cache_options, compression, **kwargs)
        text = {k: kwargs.pop(k) for k in ("encoding", "errors", "newline") if k in kwargs}
        raw = super().open(path, mode.replace("t", "") + "b", block_size, cache_options, **kwargs)
        return TextWriteFile(raw, **text)

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        stripped = self._strip_protocol(path)
        _, rel, backend = self._resolve(stripped)
        info = self.info(stripped)
        if info["type"] != "file":
            raise IsADirectoryError(f"{stripped!r} is a directory")
        size = info["size"]
        start = 0 if start is None else (max(size + start, 0) if start < 0 else start)
        end = size if end is None else (max(size + end, 0) if end < 0 else min(end, size))
        if start >= end:
            return b""
        buf = bytearray(end - start)
        view = memoryview(buf)
        chunks = [(o, min(self.blocksize, end - o)) for o in range(start, end, self.blocksize)]

        def one(chunk: tuple[int, int]) -> None:
            o, n = chunk
            got = backend.read_range_into(rel, o, view[o - start : o - start + n], info.get("etag"))
            if got != n:
                raise OSError(f"{stripped}: the object ended early: it changed while it was read")

        try:
            if len(chunks) == 1:
                one(chunks[0])
            else:
                self._map(one, chunks)
        except BackendError as e:
            raise os_error(e, stripped) from None
        return bytes(buf)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        stripped = self._strip_protocol(path)
        _, rel, backend = self._resolve(stripped)
        try:
            backend.write_bytes(rel, bytes(value), overwrite=mode != "create")
        except BackendError as e:
            raise os_error(e, stripped) from None

    def put_file(
        self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        stripped = self._strip_protocol(rpath)
        _, rel, backend = self._resolve(stripped)
        size = os.path.getsize(lpath)
        if callback is not None:
            callback.set_size(size)
        try:
            backend.write_file(rel, os.fspath(lpath), overwrite=mode != "create")
        except BackendError as e:
            raise os_error(e, stripped) from None
        if callback is not None:
            callback.relative_update(size)

    def get_file(
        self, rpath: str, lpath: str, callback: Any = None, outfile: Any = None, **kwargs: Any
    ) -> None:
        """Download into a temporary file beside `lpath`, renamed into place once complete:
        a failed download leaves no partial file."""
        stripped = self._strip_protocol(rpath)
        _, rel, backend = self._resolve(stripped)
        info = self.info(stripped)
        if info["type"] == "directory":
            if outfile is None:
                os.makedirs(lpath, exist_ok=True)
            return
        if outfile is not None:
            outfile.write(self.cat_file(stripped))
            return
        lpath = os.fspath(lpath)
        parent = os.path.dirname(os.path.abspath(lpath))
        os.makedirs(parent, exist_ok=True)
        # Created like open(lpath, "wb") would (0666 less the umask), under a name of its own.
        tmp = os.path.join(parent, f".{os.path.basename(lpath)}.{uuid.uuid4().hex[:12]}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        size = info["size"]
        if callback is not None:
            callback.set_size(size)
        try:
            chunks = [(o, min(self.blocksize, size - o)) for o in range(0, size, self.blocksize)]

            def one(chunk: tuple[int, int]) -> None:
                o, n = chunk
                if backend.read_range_to_fd(rel, o, n, fd, o, info.get("etag")) != n:
                    raise OSError(f"{stripped}: the object ended early: it changed while read")
                if callback is not None:
                    callback.relative_update(n)

            try:
                self._map(one, chunks)
            except BackendError as e:
                raise os_error(e, stripped) from None
            os.close(fd)
            fd = -1
            os.replace(tmp, lpath)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            _unlink_quiet(tmp)
            raise

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src = self._strip_protocol(path1)
        info = self.info(src)
        if info["type"] == "directory":
            return
        dst = self._strip_protocol(path2)
        _, rel, backend = self._resolve(dst)
        with self.open(src, "rb") as f:
            try:
                backend.write_stream(rel, f, info["size"], overwrite=True)
            except BackendError as e:
                raise os_error(e, dst) from None

    def rm_file(self, path: str) -> None:
        stripped = self._strip_protocol(path)
        _, rel, backend = self._resolve(stripped)
        try:
            backend.delete(rel)
        except BackendError as e:
            raise os_error(e, stripped) from None

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Delete files (in parallel); directories go with their last file (Blob), and a
        folder marker is deleted with them."""
        found = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)

        def one(p: str) -> None:
            name, rel = paths.split(p)
            if not rel:
                return  # a datastore root stays
            try:
                self.backend(name).delete(rel)
            except BackendError as e:
                if (isinstance(e, NotFound) and recursive) or self.isdir(p):
                    return  # a prefix with no marker, or a directory of a hierarchical store
                raise os_error(e, p) from None

        self._map(one, list(found))


class AmlfsFileSystem(AzureMLFileSystem):
    """`amlfs://NAME/PATH`: the same filesystem under the short form."""

    protocol = ("amlfs",)

    def unstrip_protocol(self, name: str) -> str:
        return paths.to_amlfs(self._strip_protocol(name))


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["AmlfsFileSystem", "AzureMLFileSystem"]
