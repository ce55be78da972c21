"""An ADLS Gen2 filesystem as a datastore (azure-storage-file-datalake): a hierarchical
namespace with real directories.

Which endpoint serves what (the SDK decides; an emulator URL serves both on one address):
- DFS (`*.dfs.*`): List Paths (one level, with size/ETag/mtime and x-ms-continuation paging),
  path create / append / flush, rename, delete.
- Blob (`*.blob.*`): filesystem create and properties, path properties (HEAD; directories carry
  the metadata hdi_isfolder=true), and reads: ranged GETs with If-Match, so a read pinned to an
  ETag fails with 412 (Changed) when the file was replaced.

Uploads go to a temporary file in the target directory that is then renamed into place, so a
reader sees the old file or the new one, never a partial one. ACL refusals (403
AuthorizationPermissionMismatch) are Forbidden, i.e. EACCES in the mount.
"""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceModifiedError
from azure.storage.filedatalake import FileSystemClient

from ..credentials import ResolvedCredential, sdk_credential
from ..errors import RegistryError
from ..registry import DatastoreConfig
from .azclient import (
    pooled_client_options,
    resolve,
)
from .azure import (
    PAGE_SIZE,
    AzureBackend,
    ExactReader,
    SdkReads,
    file_path,
    is_folder,
    quoted_etag,
    removed_on_failure,
    temp_name,
    timestamp,
)
from .base import ObjectInfo, is_safe_name, normpath
from .errors import AlreadyExists, BackendError, Changed, IsADirectory, NotADirectory
from .failures import Failure, Kind
from .leanread import AdlsLeanReads, blob_endpoint, lean_client

log = logging.getLogger(__name__)


class AdlsBackend(AdlsLeanReads, SdkReads, AzureBackend):
    """One ADLS Gen2 filesystem. Thread-safe (the SDK clients are; little state here)."""

    service = "ADLS"

    def __init__(
        self,
        fs: FileSystemClient,
        *,
        url: str,
        credential: ResolvedCredential | None = None,
        block_size: int = 8 * 1024 * 1024,
        session: Any = None,
    ):
        super().__init__(f"ADLS Gen2 filesystem {fs.file_system_name!r} at {url}", credential, log)
        self.fs = fs
        self.block_size = block_size
        self._session = session

    @classmethod
    def from_config(
        cls,
        ds: DatastoreConfig,
        block_size: int = 8 * 1024 * 1024,
        *,
        retry_total: int | None = None,
        retry_backoff: float = 1.0,
        connection_timeout: float = 10.0,
        read_timeout: float | None = None,
        lean: bool = True,
    ) -> AdlsBackend:
        """`retry_total`: retries inside the SDK, `retry_backoff` apart, doubling (None: the
        SDK's default schedule, see client_options). `lean=False`: ranged reads through the SDK
        too (else leanread.py's lean GET on the Blob endpoint, with the same retries)."""
        if not ds.filesystem:
            raise RegistryError(
                f"datastore {ds.name!r}: filesystem is required for azure_data_lake_gen2"
            )
        rc, url = resolve(ds, "dfs")
        kwargs, session = pooled_client_options(
            ds,
            block_size,
            retry_total=retry_total,
            retry_backoff=retry_backoff,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
        )
        cred = sdk_credential(rc, ds.account_name)
        fs = FileSystemClient(url, ds.filesystem, credential=cred, **kwargs)
        backend = cls(fs, url=url, credential=rc, block_size=block_size, session=session)
        if lean:
            backend._lean = lean_client(
                blob_endpoint(url),
                ds.filesystem,
                cred,
                api_version=fs.api_version,
                timeout=read_timeout or 60.0,
                retry_total=retry_total,
                retry_backoff=retry_backoff,
                description=backend.description,
            )
        return backend

    def _message(self, kind: Kind, f: Failure) -> str:
        if kind is Kind.ACL:
            return (
                f"permission denied on {f.where}{f.tried}"
                " (an ACL or the credential's permissions refuse it)"
            )
        return super()._message(kind, f)

    # --- reads -----------------------------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo:
        rel = normpath(path)
        try:
            if not rel:
                p = self.fs.get_file_system_properties()
                return ObjectInfo("", True, mtime=timestamp(p.last_modified))
            p = self.fs.get_file_client(rel).get_file_properties()
        except AzureError as e:
            raise self._map_error(e, rel) from None
        if is_folder(p.metadata):
            return ObjectInfo(rel, True, mtime=timestamp(p.last_modified))
        return ObjectInfo(
            rel, False, size=p.size, etag=quoted_etag(p.etag), mtime=timestamp(p.last_modified)
        )

    def list_page(
        self, path: str, token: str | None = None, page_size: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        rel = normpath(path)
        try:
            pages = self.fs.get_paths(
                path=rel or None, recursive=False, max_results=page_size or PAGE_SIZE
            ).by_page(continuation_token=token)
            items = list(next(pages))
            next_token = pages.continuation_token or None
        except StopIteration:
            return [], None
        except AzureError as e:
            raise self._map_error(e, rel) from None
        if rel and len(items) == 1 and items[0].name == rel and not items[0].is_directory:
            # List Paths on a file answers with that file.
            raise NotADirectory(f"{rel!r} in {self.description} is a file, not a directory", rel)
        out = []
        for it in items:
            name = it.name.rsplit("/", 1)[-1]
            if not is_safe_name(name) or it.name != (f"{rel}/{name}" if rel else name):
                self._log_skip(it.name)
                continue
            mtime = timestamp(it.last_modified)
            if it.is_directory:
                out.append(ObjectInfo(it.name, True, mtime=mtime))
            else:
                out.append(
                    ObjectInfo(
                        it.name,
                        False,
                        size=it.content_length or 0,
                        etag=quoted_etag(it.etag),
                        mtime=mtime,
                    )
                )
        return out, next_token

    def _read(
        self, rel: str, offset: int, length: int, etag: str | None, hooks: dict[str, Any]
    ) -> bytes:
        if length <= 0:
            return b""
        fc = self.fs.get_file_client(rel)
        cond: dict[str, Any] = dict(hooks)
        if etag:
            cond.update(etag=quoted_etag(etag), match_condition=MatchConditions.IfNotModified)
        try:
            try:
                dl = fc.download_file(offset=offset, length=length, **cond)
            except HttpResponseError as e:
                if e.status_code != 416:
                    raise
                # At or past the end: nothing to read, but the pin must still hold.
                p = fc.get_file_properties(**cond)
                if is_folder(p.metadata):
                    raise IsADirectory(
                        f"{rel!r} in {self.description} is a directory", rel
                    ) from None
                return b""
            if is_folder(dl.properties.metadata):
                raise IsADirectory(f"{rel!r} in {self.description} is a directory", rel)
            return dl.readall()
        except (AzureError, BackendError) as e:
            raise self._map_error(e, rel) from None

    # --- writes ----------------------------------------------------------------------------------

    def write_stream(
        self, path: str, stream: BinaryIO, length: int, overwrite: bool = True
    ) -> ObjectInfo:
        rel = file_path(path)
        tmp_client = self.fs.get_file_client(temp_name(rel))
        cond: dict[str, Any] = {} if overwrite else {"match_condition": MatchConditions.IfMissing}
        try:
            with removed_on_failure(tmp_client):
                # create (with parents) + append + flush on the temporary name ...
                if length:
                    tmp_client.upload_data(
                        ExactReader(stream, length),
                        length=length,
                        overwrite=True,
                        chunk_size=self.block_size,
                        max_concurrency=4,
                    )
                else:
                    tmp_client.create_file()  # upload_data sends nothing at all for no data
                # ... then one rename makes it visible; IfMissing turns "no overwrite" into a
                # server-side check, so two writers cannot both win.
                tmp_client.rename_file(f"{self.fs.file_system_name}/{rel}", **cond)
        except AzureError as e:
            err = self._map_error(e, rel)
            if not overwrite and isinstance(err, Changed):
                err = AlreadyExists(f"{rel!r} in {self.description} exists", rel)
            raise err from None
        return self.stat(rel)

    def delete(self, path: str) -> None:
        rel = file_path(path, "delete")
        fc = self.fs.get_file_client(rel)
        try:
            # DFS Delete Path also removes empty directories; the Backend contract is files only.
            p = fc.get_file_properties()
            if is_folder(p.metadata):
                raise IsADirectory(f"{rel!r} in {self.description} is a directory", rel)
            fc.delete_file(etag=p.etag, match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:
            # Replaced between the check and the delete: delete whatever file is there now.
            try:
                fc.delete_file()
            except AzureError as e:
                raise self._map_error(e, rel) from None
        except AzureError as e:
            raise self._map_error(e, rel) from None

    # --- the filesystem --------------------------------------------------------------------------

    def _create(self) -> None:
        self.fs.create_file_system()

    def check_access(self) -> None:
        try:
            next(self.fs.get_paths(recursive=False, max_results=1).by_page(), None)
        except AzureError as e:
            raise self._map_error(e, "") from None

    def close(self) -> None:
        self._close_lean()
        self.fs.close()
        if self._session is not None:
            self._session.close()
