"""An Azure Blob container as a datastore (azure-storage-blob; flat namespace).

Directories are virtual: a prefix with something under it, or a zero-byte folder marker blob with
metadata hdi_isfolder=true (any letter case). A name that is both a blob and a prefix is shown as
the directory only. Blob names that cannot be safe relative paths ('a//b', '.', '..', a segment
over 255 bytes) never appear in listings or walks; each is logged once.
"""

from __future__ import annotations

import binascii
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..credentials import ResolvedCredential, sdk_credential
from ..errors import RegistryError
from ..registry import DatastoreConfig
from .azclient import (
    MiB,
    client_options,
    pooled_transport,
    resolve,
    retry_policy,
)
from .azure import PAGE_SIZE, AzureBackend, file_path, is_folder, quoted_etag, timestamp
from .base import ObjectInfo, is_safe_name, is_safe_relpath, normpath
from .blobdata import BlobData
from .blobget import BlobFastPath, lean_credential
from .bloblist import ListedPrefix
from .blobupload import DEFAULT_UPLOAD_MEMORY, BlockSender, UploadBudget
from .errors import Forbidden, NotADirectory, NotFound
from .failures import Failure, Kind, unresolved_message
from .http import DEFAULT_RETRIES

__all__ = ["BlobBackend"]

log = logging.getLogger(__name__)


def _is_folder_marker(size: int | None, metadata: dict[str, str] | None) -> bool:
    return not size and is_folder(metadata)


def _file_info(path: str, props: Any) -> ObjectInfo:
    md5 = props.content_settings.content_md5 if props.content_settings else None
    return ObjectInfo(
        path=path,
        is_dir=False,
        size=props.size or 0,
        etag=quoted_etag(props.etag),
        mtime=timestamp(props.last_modified),
        content_md5=bytes(md5) if md5 else None,
    )


def _dir_info(path: str, props: Any = None) -> ObjectInfo:
    return ObjectInfo(
        path=path, is_dir=True, mtime=timestamp(getattr(props, "last_modified", None))
    )


class BlobBackend(BlobData, AzureBackend):
    """One blob container. Thread-safe: the SDK clients and the HTTP session are shared by all
    threads; the connection pool is sized for `max_connections` concurrent requests. Reads and
    uploads of data: blobdata.py."""

    def __init__(
        self,
        account_url: str,
        container: str,
        credential: ResolvedCredential,
        *,
        account_name: str | None = None,
        block_size: int = 8 * MiB,
        upload_block_size: int = 8 * MiB,
        upload_concurrency: int = 16,
        upload_memory: int = DEFAULT_UPLOAD_MEMORY,
        block_md5: bool = False,
        retry_total: int = DEFAULT_RETRIES,
        retry_backoff: float = 1.0,
        connection_timeout: float = 30.0,
        read_timeout: float = 30.0,
        max_connections: int = 64,
        lean: bool = True,
        api_version: str | None = None,
    ):
        """`lean=False` keeps every request on the SDK (the lean client of blobget.py serves
        ranged reads and listings otherwise, through a CONNECT tunnel where an HTTP proxy
        applies). `retry_total=0`: no retries here, for a caller that retries itself.
        `api_version`: the x-ms-version to send (None: the SDK's newest; an emulator may want an
        older one). Uploads: a large file keeps up to `upload_concurrency` blocks in flight,
        and all uploads together hold at most `upload_memory` bytes of buffers (one block per
        file at least: blobupload.py); `block_md5`: each block carries a Content-MD5 that the
        service checks (a second MD5 pass over the data, ~1.5 CPU-s per GiB); off by default, as
        in the SDK and azcopy: over https TLS already guards every block in transit. The whole
        file's MD5 is stored either way."""
        parts = urlsplit(account_url)
        self.account_url = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
        super().__init__(f"blob container {container!r} at {self.account_url}", credential, log)
        self.credential = credential  # the same as self.rc, never None here
        self.container = container
        self.block_size = block_size
        self.upload_block_size = upload_block_size
        self.upload_concurrency = max(1, upload_concurrency)
        self.block_md5 = block_md5
        self._blocks = BlockSender(
            UploadBudget(upload_memory), upload_block_size, self.upload_concurrency
        )
        # Uploads up to this size go in one Put Blob (read whole, so Content-MD5 can lead).
        self.single_put_size = upload_block_size
        self.page_size = PAGE_SIZE
        self._side: ThreadPoolExecutor | None = None
        self._side_lock = threading.Lock()
        # The SDK client (uploads, HEAD, container calls) is made on first use (`_cc`): a command
        # the lean client serves alone never imports the SDK (see azclient.py).
        self._sdk_args = (
            account_name,
            max_connections,
            connection_timeout,
            read_timeout,
            retry_total,
            retry_backoff,
            api_version,
        )
        self._sdk: Any = None
        self._session: Any = None
        self._sdk_lock = threading.Lock()
        # Ranged reads and listings, the hot paths, bypass the SDK (see blobget.py).
        self._fast: BlobFastPath | None = None
        if lean:
            try:
                self._fast = BlobFastPath(
                    self.account_url,
                    container,
                    lean_credential(credential, account_name),
                    timeout=read_timeout,
                    retry_total=retry_total,
                    retry_backoff=retry_backoff,
                    **({"api_version": api_version} if api_version else {}),
                )
            except binascii.Error:
                raise  # a malformed account key: open_backend says so in one line
            except ValueError as e:  # a proxy it cannot tunnel through: the SDK gets through
                log.info("%s: reads go through the SDK: %s", self.description, e)
        if self._fast is None or api_version:
            # Fail now on what the SDK refuses (a credential, an api_version it does not know).
            self._cc  # noqa: B018

    @property
    def _cc(self) -> Any:
        """The SDK's ContainerClient, made on first use (thread-safe)."""
        cc = self._sdk
        if cc is not None:
            return cc
        with self._sdk_lock:
            if self._sdk is None:
                from azure.storage.blob import ContainerClient

                (account_name, max_conns, conn_timeout, read_timeout, retries, backoff, version) = (
                    self._sdk_args
                )
                # Callers' requests, and the block sender's threads (blobupload.py).
                transport, session = pooled_transport(
                    max_conns + self._blocks.threads, conn_timeout, read_timeout
                )
                try:
                    self._sdk = ContainerClient(
                        self.account_url,
                        self.container,
                        credential=sdk_credential(self.credential, account_name),
                        **client_options(
                            self.block_size,
                            retry_policy(retries, backoff),
                            api_version=version,
                            transport=transport,
                        ),
                    )
                except BaseException:
                    session.close()
                    raise
                self._session = session
            return self._sdk

    @classmethod
    def from_config(
        cls, ds: DatastoreConfig, block_size: int = 8 * MiB, **kwargs: Any
    ) -> BlobBackend:
        """The backend for blob datastore `ds` (credential resolved as in credentials.py)."""
        if not ds.container_name:
            raise RegistryError(f"datastore {ds.name!r}: container_name is required")
        rc, url = resolve(ds, "blob")
        return cls(
            url,
            ds.container_name,
            rc,
            account_name=ds.account_name,
            block_size=block_size,
            api_version=ds.api_version,
            **kwargs,
        )

    # --- errors ----------------------------------------------------------------------------------

    exists_codes = frozenset({"BlobAlreadyExists", ""})

    def _message(self, kind: Kind, f: Failure) -> str:
        d, p = self.description, repr(f.path)
        return {
            Kind.CHANGED: f"{p} changed since it was opened (ETag mismatch)",
            Kind.GONE: f"{d} does not exist (container not found)",
            Kind.NOT_FOUND: f"no such file or directory: {p}",
            Kind.DENIED: f"access denied to {d} using {f.source} (HTTP {f.what})",
            Kind.ACL: f"access denied to {d} using {f.source} (HTTP {f.what})",
            # NO_TOKEN: raised by a TokenCredential before any request
            Kind.NO_TOKEN: f"could not authenticate to {d} using {f.source}: {f.text}",
            Kind.EXISTS: f"{p} exists",
            Kind.BAD_NAME: f"{d}: {p}: the service does not allow this name (HTTP {f.what})",
            Kind.THROTTLED: f"{d}: {p}: the service is busy (HTTP {f.what})",
            Kind.FAILED: f"{d}: {p}: the service failed (HTTP {f.what})",
            Kind.NETWORK: (
                unresolved_message(d, f.unresolved)
                if f.unresolved
                else f"{d}: {p}: network error ({f.type})"
            ),
            Kind.GARBLED: f"{d}: {p}: bad response ({f.what})",  # a truncated or garbled body
            Kind.PROTOCOL: f"{d}: {p}: bad response: {f.text}",
            Kind.BROKE_OFF: f"{d}: {p}: the response broke off",
            Kind.HTTP: f"{d}: {p}: HTTP {f.what}",
            Kind.OTHER: f"{d}: {p}: {f.detail}",
        }.get(kind) or super()._message(kind, f)

    def _log_skip(self, name: str) -> None:
        # 'dir/' zero-byte blobs are a common folder convention, not an anomaly worth a warning.
        level = logging.DEBUG if name.endswith("/") and "//" not in name else logging.WARNING
        self._log_once(
            "unsafe:" + name,
            "%s: skipping blob %r: its name is not a safe path",
            self.description,
            name,
            level=level,
        )

    def _both(self, name: str) -> None:
        self._log_once(
            "both:" + name,
            "%s: %r is both a blob and a directory prefix; showing the directory",
            self.description,
            name,
            level=logging.INFO,
        )

    # --- metadata --------------------------------------------------------------------------------

    def _has_children(self, name: str) -> bool:
        """Whether any blob lies under `name` + '/' (one list call, one result)."""
        if self._fast is not None:
            return bool(self._fast.list_page(name + "/", page_size=1)[0])
        pages = self._cc.list_blobs(name_starts_with=name + "/", results_per_page=1).by_page()
        return any(True for _ in next(pages, []))

    def _head(self, rel: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._cc.get_blob_client(rel).get_blob_properties()
        except ResourceNotFoundError as e:
            if getattr(e, "error_code", None) == "ContainerNotFound":
                raise
            return None

    def stat(self, path: str) -> ObjectInfo:
        """HEAD of the blob and a one-entry LIST of `path/`, sent at once (a name may be a blob,
        a prefix, or both): one round trip, not two."""
        rel = normpath(path)
        if not rel:
            self._call(rel, lambda: next(self._cc.list_blobs(results_per_page=1).by_page(), None))
            return _dir_info("")
        children = self._side_pool().submit(self._has_children, rel)
        props = self._call(rel, lambda: self._head(rel))
        if props is not None and _is_folder_marker(props.size, props.metadata):
            return _dir_info(rel, props)
        if props is not None:
            try:
                shadowed = children.result()
            except Exception as e:
                err = self._map_error(e, rel)
                if not isinstance(err, Forbidden):
                    raise err from None
                shadowed = False  # a SAS without list permission: the blob is what we know
            if shadowed:
                self._both(rel)
                return _dir_info(rel, props)
            return _file_info(rel, props)
        if self._call(rel, children.result):
            return _dir_info(rel)
        raise NotFound(f"no such file or directory: {rel!r}", rel)

    def _side_pool(self) -> ThreadPoolExecutor:
        """Threads for the LIST half of `stat` (created on first use)."""
        with self._side_lock:
            if self._side is None:
                self._side = ThreadPoolExecutor(8, thread_name_prefix="amlfs-blob-stat")
            return self._side

    def list_page(
        self, path: str, token: str | None = None, page_size: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        rel = normpath(path)
        prefix = f"{rel}/" if rel else ""
        size = page_size or self.page_size

        def fetch() -> tuple[list[Any], str | None]:
            if self._fast is not None:
                items, marker = self._fast.list_page(prefix, token or "", size, "/")
                return items, marker or None
            pages = self._cc.walk_blobs(
                name_starts_with=prefix or None,
                include=["metadata"],
                delimiter="/",
                results_per_page=size,
            ).by_page(continuation_token=token)
            items = list(next(pages, []))
            return items, pages.continuation_token or None

        items, next_token = self._call(rel, fetch)
        if self._fast is None:
            from azure.storage.blob import BlobPrefix
        else:
            BlobPrefix = ListedPrefix  # noqa: N806 - no SDK items on the lean path
        # The service interleaves prefixes and blobs in name order, Azurite lists a page's
        # prefixes first: merge without relying on either.
        entries: dict[str, ObjectInfo] = {}
        prefixes: set[str] = set()
        blob_names: dict[str, str] = {}  # segment -> blob name, of blobs not shadowed (yet)
        for item in items:
            is_prefix = isinstance(item, (BlobPrefix, ListedPrefix))
            seg = item.name[len(prefix) : -1] if is_prefix else item.name[len(prefix) :]
            if not is_safe_name(seg):
                self._log_skip(item.name)
                continue
            if is_prefix:
                prefixes.add(seg)
                if seg in blob_names:
                    self._both(blob_names.pop(seg))
                old = entries.get(seg)
                entries[seg] = old if old is not None and old.is_dir else _dir_info(prefix + seg)
            elif _is_folder_marker(item.size, item.metadata):
                entries[seg] = _dir_info(prefix + seg, item)  # a marker's time beats none
                if seg not in prefixes:
                    blob_names[seg] = item.name
            elif seg in prefixes:
                self._both(item.name)
            else:
                entries[seg] = _file_info(prefix + seg, item)
                blob_names[seg] = item.name

        if next_token and items:
            # The prefix 'x/' sorts after the blob 'x', maybe past this page's end: ask.
            last = max(item.name for item in items)
            for seg, name in list(blob_names.items()):
                if name + "/" > last and self._call(rel, lambda n=name: self._has_children(n)):
                    del entries[seg]  # the prefix comes on a later page, as the directory
                    self._both(name)

        if token is None and not items and not next_token and rel:
            self._require_marker(rel)
        return list(entries.values()), next_token

    def _require_marker(self, rel: str) -> None:
        """Nothing lies under `rel`: fine for an empty folder (a marker), else an error."""
        props = self._call(rel, lambda: self._head(rel))
        if props is None:
            raise NotFound(f"no such file or directory: {rel!r}", rel)
        if not _is_folder_marker(props.size, props.metadata):
            raise NotADirectory(f"not a directory: {rel!r}", rel)

    def walk(self, path: str = "", first_page: int | None = None) -> Iterator[ObjectInfo]:
        """Every file below `path` from one flat listing (no delimiter), minus folder markers,
        unsafe names and blobs shadowed by a same-named prefix; `first_page` as in
        Backend.walk (the SDK path always asks for full pages)."""
        rel = normpath(path)
        prefix = f"{rel}/" if rel else ""
        blobs = (
            self._fast.list_flat(prefix, self.page_size, first_page)
            if self._fast is not None
            else self._cc.list_blobs(
                name_starts_with=prefix or None,
                include=["metadata"],
                results_per_page=self.page_size,
            )
        )
        # Listings are sorted, so a blob 'x' is shadowed iff a later name starts with 'x/'; the
        # names between them extend 'x' by a character below '/', so the undecided blobs form a
        # chain of prefixes and only the newest needs checking.
        pending: list[tuple[str, ObjectInfo]] = []
        seen = False
        it = iter(blobs)
        while True:
            b = self._call(rel, lambda: next(it, None))
            if b is None:
                break
            seen = True
            name = b.name
            while pending:
                pname, pinfo = pending[-1]
                if name.startswith(pname + "/"):
                    pending.pop()
                    self._both(pname)
                elif name > pname + "/":
                    pending.pop()
                    yield pinfo
                else:
                    break
            relname = name[len(prefix) :]
            if not is_safe_relpath(relname):
                self._log_skip(name)
                continue
            if _is_folder_marker(b.size, b.metadata):
                continue
            pending.append((name, _file_info(name, b)))
        for _, pinfo in reversed(pending):
            yield pinfo
        if not seen and rel:
            self._require_marker(rel)

    def delete(self, path: str) -> None:
        rel = file_path(path, "delete")
        self._call(
            rel, lambda: self._cc.get_blob_client(rel).delete_blob(delete_snapshots="include")
        )

    # --- container -------------------------------------------------------------------------------

    def _create(self) -> None:
        self._cc.create_container()

    def check_access(self) -> None:
        self._call("", lambda: next(self._cc.list_blobs(results_per_page=1).by_page(), None))

    def close(self) -> None:
        if self._side is not None:
            self._side.shutdown(wait=False, cancel_futures=True)
        self._blocks.close()
        if self._fast is not None:
            self._fast.close()
        with self._sdk_lock:
            if self._sdk is not None:
                self._sdk.close()
                self._session.close()
