"""An Azure File share as a datastore (azure-storage-file-share): real directories, one listing
per directory page with every entry's size, ETag and times, ranged reads checked against the
pinned ETag, and uploads that appear whole (a temporary file renamed into place).

Azure Files has no conditional Get File (no If-Match): a read pinned to an ETag compares the
ETag the ranged GET returns with the pinned one and raises Changed when they differ. The bytes
of one response always belong to the ETag it carries, so a reader never sees a mix.
"""

from __future__ import annotations

import logging
from typing import Any, BinaryIO

from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.fileshare import ShareClient, ShareServiceClient

from ..credentials import TOKEN, ResolvedCredential, sdk_credential
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
    quoted_etag,
    removed_on_failure,
    temp_name,
    timestamp,
)
from .base import ObjectInfo, is_safe_name, normpath
from .errors import BackendError, Changed, IsADirectory, NotFound
from .failures import error_code
from .leanread import ShareLeanReads, lean_client

log = logging.getLogger(__name__)

_LIST_INCLUDE = ["timestamps", "etag", "attributes"]


def _mtime(props: Any) -> float:
    return timestamp(props.last_write_time) or timestamp(props.last_modified)


def _is_type_mismatch(e: BaseException) -> bool:
    """A file where a directory was expected, or the reverse."""
    return isinstance(e, HttpResponseError) and error_code(e) == "ResourceTypeMismatch"


class FileShareBackend(ShareLeanReads, SdkReads, AzureBackend):
    """One Azure File share. Thread-safe: the SDK clients are, and the state here is immutable
    apart from the set of names already logged as unsafe."""

    service = "Azure Files"

    def __init__(
        self,
        share: ShareClient,
        *,
        url: str,
        credential: ResolvedCredential | None = None,
        session: Any = None,
    ):
        super().__init__(f"file share {share.share_name!r} at {url}", credential, log)
        self.share = share
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
    ) -> FileShareBackend:
        """`retry_total`: retries inside the SDK, `retry_backoff` apart, doubling (None: the
        SDK's default schedule, see client_options). `lean=False`: ranged reads through the SDK
        too (else leanread.py's lean GET, with the same retries)."""
        if not ds.file_share_name:
            raise RegistryError(
                f"datastore {ds.name!r}: file_share_name is required for azure_file"
            )
        rc, url = resolve(ds, "file")
        kwargs, session = pooled_client_options(
            ds,
            block_size,
            retry_total=retry_total,
            retry_backoff=retry_backoff,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
        )
        if rc.kind == TOKEN:
            # Azure Files accepts OAuth only for callers that declare a backup intent.
            kwargs["token_intent"] = "backup"
        cred = sdk_credential(rc, ds.account_name)
        service = ShareServiceClient(url, credential=cred, **kwargs)
        backend = cls(
            service.get_share_client(ds.file_share_name), url=url, credential=rc, session=session
        )
        if lean:
            backend._lean = lean_client(
                url,
                ds.file_share_name,
                cred,
                api_version=backend.share.api_version,
                timeout=read_timeout or 60.0,
                retry_total=retry_total,
                retry_backoff=retry_backoff,
                extra_headers={"x-ms-file-request-intent": "backup"} if rc.kind == TOKEN else None,
                description=backend.description,
            )
        return backend

    def _file_error(self, e: Exception, rel: str) -> BackendError:
        """`_map_error` for a call on the file `rel`: a directory there is IsADirectory."""
        if _is_type_mismatch(e):
            return IsADirectory(f"{rel!r} in {self.description} is a directory", rel)
        return self._map_error(e, rel)

    # --- reads -----------------------------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo:
        rel = normpath(path)
        try:
            if not rel:
                p = self.share.get_share_properties()
                return ObjectInfo("", True, mtime=timestamp(p.last_modified))
            try:
                f = self.share.get_file_client(rel).get_file_properties()
                return ObjectInfo(
                    rel, False, size=f.size, etag=quoted_etag(f.etag), mtime=_mtime(f)
                )
            except (ResourceNotFoundError, HttpResponseError) as e:
                if not (isinstance(e, ResourceNotFoundError) or _is_type_mismatch(e)):
                    raise
            d = self.share.get_directory_client(rel).get_directory_properties()
            return ObjectInfo(rel, True, mtime=_mtime(d))
        except (AzureError, BackendError) as e:
            if _is_type_mismatch(e):
                raise NotFound(
                    f"no such file or directory: {rel!r} in {self.description}", rel
                ) from None
            raise self._map_error(e, rel) from None

    def list_page(
        self, path: str, token: str | None = None, page_size: int | None = None
    ) -> tuple[list[ObjectInfo], str | None]:
        rel = normpath(path)
        try:
            pages = (
                self.share.get_directory_client(rel)
                .list_directories_and_files(
                    include=_LIST_INCLUDE,
                    include_extended_info=True,
                    results_per_page=page_size or PAGE_SIZE,
                )
                .by_page(continuation_token=token)
            )
            items = list(next(pages))
            next_token = pages.continuation_token or None
        except StopIteration:
            return [], None
        except AzureError as e:
            raise self._map_error(e, rel) from None
        out = []
        for it in items:
            if not is_safe_name(it.name):
                self._log_skip(it.name)
                continue
            child = f"{rel}/{it.name}" if rel else it.name
            if it.is_directory:
                out.append(ObjectInfo(child, True, mtime=_mtime(it)))
            else:
                out.append(
                    ObjectInfo(
                        child, False, size=it.size or 0, etag=quoted_etag(it.etag), mtime=_mtime(it)
                    )
                )
        return out, next_token

    def _read(
        self, rel: str, offset: int, length: int, etag: str | None, hooks: dict[str, Any]
    ) -> bytes:
        want = quoted_etag(etag)
        fc = self.share.get_file_client(rel)
        try:
            if length <= 0:
                return b""
            try:
                dl = fc.download_file(offset=offset, length=length, **hooks)
            except HttpResponseError as e:
                if e.status_code != 416:
                    raise
                # Reading at or past the end: nothing to return, but the pin still holds.
                if want and quoted_etag(fc.get_file_properties(**hooks).etag) != want:
                    raise Changed(
                        f"{rel!r} in {self.description} changed since it was opened", rel
                    ) from None
                return b""
            if want and quoted_etag(dl.properties.etag) != want:
                raise Changed(f"{rel!r} in {self.description} changed since it was opened", rel)
            return dl.readall()
        except (AzureError, BackendError) as e:
            raise self._file_error(e, rel) from None

    # --- writes ----------------------------------------------------------------------------------

    def _make_dirs(self, rel_dir: str) -> None:
        parts = rel_dir.split("/") if rel_dir else []
        for i in range(1, len(parts) + 1):
            try:
                self.share.get_directory_client("/".join(parts[:i])).create_directory()
            except ResourceExistsError:
                pass

    def write_stream(
        self, path: str, stream: BinaryIO, length: int, overwrite: bool = True
    ) -> ObjectInfo:
        rel = file_path(path)
        tmp_client = self.share.get_file_client(temp_name(rel))
        try:
            with removed_on_failure(tmp_client):
                self._make_dirs(rel.rpartition("/")[0])
                tmp_client.upload_file(
                    ExactReader(stream, length), length=length, max_concurrency=4
                )
                # The rename is what makes the file visible: readers see the old file or the new.
                tmp_client.rename_file(rel, overwrite=overwrite)
        except (AzureError, BackendError) as e:
            raise self._file_error(e, rel) from None
        return self.stat(rel)

    def delete(self, path: str) -> None:
        rel = normpath(path)
        try:
            self.share.get_file_client(rel).delete_file()
        except AzureError as e:
            raise self._file_error(e, rel) from None

    # --- the share -------------------------------------------------------------------------------

    def _create(self) -> None:
        self.share.create_share()

    def check_access(self) -> None:
        try:
            pages = (
                self.share.get_directory_client("")
                .list_directories_and_files(results_per_page=1)
                .by_page()
            )
            next(pages, None)
        except AzureError as e:
            raise self._map_error(e, "") from None

    def close(self) -> None:
        self._close_lean()
        self.share.close()
        if self._session is not None:
            self._session.close()
