"""An Azure File share as a datastore (azure-storage-file-share): real directories, one listing
per directory page with every entry's size, ETag and times, ranged reads checked against the
pinned ETag, and uploads that appear whole (a temporary file renamed into place).

Azure Files has no conditional Get File (no If-Match): a read pinned to an ETag compares the
ETag the ranged GET returns with the pinned one and raises Changed when they differ. The bytes
of one response always belong to the ETag it carries, so a reader never sees a mix.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from typing import Any, BinaryIO

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.fileshare import ExponentialRetry, ShareClient, ShareServiceClient

from ..credentials import (
    TOKEN,
    ResolvedCredential,
    account_url,
    redact,
    resolve_credential,
    sdk_credential,
)
from ..errors import RegistryError
from ..registry import DatastoreConfig
from .base import (
    AlreadyExists,
    Backend,
    BackendError,
    Changed,
    Forbidden,
    InvalidName,
    IsADirectory,
    NotADirectory,
    NotFound,
    ObjectInfo,
    Transient,
    is_safe_name,
    normpath,
)

log = logging.getLogger(__name__)

PAGE_SIZE = 5000
TMP_PREFIX = ".amlfs-tmp-"
_LIST_INCLUDE = ["timestamps", "etag", "attributes"]
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def quoted_etag(etag: str | None) -> str | None:
    """ETags in one form ("0x..." with quotes) whether they came from a header or a listing."""
    if not etag:
        return None
    return etag if etag.startswith('"') else f'"{etag}"'


def _timestamp(value: Any) -> float:
    """A datetime, or Azure's 7-digit ISO 8601 string, as a POSIX time (0.0 when absent)."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=value.tzinfo or dt.UTC).timestamp()
    if isinstance(value, str) and value:
        head, _, frac = value.rstrip("Z").partition(".")
        try:
            base = dt.datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC)
        except ValueError:
            return 0.0
        return base.timestamp() + (float("0." + frac) if frac.isdigit() else 0.0)
    return 0.0


def _error_code(e: AzureError) -> str:
    code = getattr(e, "error_code", None)
    return str(getattr(code, "value", code) or "")


class _ExactReader:
    """Reads exactly `length` bytes from `stream`; a short stream is an error, not a short file."""

    def __init__(self, stream: BinaryIO, length: int):
        self._stream = stream
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        data = self._stream.read(want)
        if not data:
            raise BackendError(f"the source ended {self._left} bytes before its announced length")
        self._left -= len(data)
        return data


class FileShareBackend(Backend):
    """One Azure File share. Thread-safe: the SDK clients are, and the state here is immutable
    apart from the set of names already logged as unsafe."""

    def __init__(
        self, share: ShareClient, *, url: str, credential: ResolvedCredential | None = None
    ):
        self.share = share
        self.rc = credential
        self.description = f"file share {share.share_name!r} at {url}"
        self._skipped: set[str] = set()
        self._skipped_lock = threading.Lock()

    @classmethod
    def from_config(
        cls, ds: DatastoreConfig, block_size: int = 8 * 1024 * 1024
    ) -> FileShareBackend:
        if not ds.file_share_name:
            raise RegistryError(
                f"datastore {ds.name!r}: file_share_name is required for azure_file"
            )
        rc = resolve_credential(ds)
        url = account_url(ds, "file", rc)
        kwargs: dict[str, Any] = {
            "max_single_get_size": block_size,
            "max_chunk_get_size": block_size,
            "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=4),
            "connection_timeout": 10,
        }
        if rc.kind == TOKEN:
            # Azure Files accepts OAuth only for callers that declare a backup intent.
            kwargs["token_intent"] = "backup"
        service = ShareServiceClient(url, credential=sdk_credential(rc, ds.account_name), **kwargs)
        return cls(service.get_share_client(ds.file_share_name), url=url, credential=rc)

    # --- errors ----------------------------------------------------------------------------------

    def _map_error(self, e: Exception, path: str) -> BackendError:
        """The one place SDK exceptions become BackendErrors (secrets redacted)."""
        if isinstance(e, BackendError):
            return e
        where = f"{path!r} in {self.description}" if path else self.description
        code = _error_code(e) if isinstance(e, AzureError) else ""
        status = getattr(e, "status_code", None)
        first_line = redact(
            str(getattr(e, "message", None) or e).splitlines()[0] if str(e) else type(e).__name__,
            self.rc,
        )
        if isinstance(e, ResourceNotFoundError) or status == 404:
            return NotFound(f"no such file or directory: {where}", path)
        if isinstance(e, ClientAuthenticationError) or status in (401, 403):
            tried = f" using the {self.rc.source}" if self.rc else ""
            return Forbidden(f"access denied to {where}{tried} ({code or first_line})", path)
        if isinstance(e, ResourceModifiedError) or status == 412:
            return Changed(f"{where} changed while it was being read", path)
        if code == "ResourceTypeMismatch":
            return NotADirectory(
                f"{where} is not the kind of entry expected (file vs directory)", path
            )
        if isinstance(e, ResourceExistsError) or status == 409:
            return AlreadyExists(f"{where} already exists ({code})", path)
        if code in ("InvalidResourceName", "InvalidUri"):
            return InvalidName(f"{where}: Azure Files does not allow this name", path)
        if isinstance(e, ServiceRequestError | ServiceResponseError) or status in _TRANSIENT_STATUS:
            return Transient(f"{where}: temporary failure ({code or first_line})", path)
        return BackendError(f"{where}: {code or first_line}", path)

    # --- reads -----------------------------------------------------------------------------------

    def _log_skip(self, name: str) -> None:
        with self._skipped_lock:
            if name in self._skipped:
                return
            self._skipped.add(name)
        log.warning("skipping %r in %s: not a safe file name", name, self.description)

    def stat(self, path: str) -> ObjectInfo:
        rel = normpath(path)
        try:
            if not rel:
                p = self.share.get_share_properties()
                return ObjectInfo("", True, mtime=_timestamp(p.last_modified))
            try:
                f = self.share.get_file_client(rel).get_file_properties()
                mtime = _timestamp(f.last_write_time) or _timestamp(f.last_modified)
                return ObjectInfo(rel, False, size=f.size, etag=quoted_etag(f.etag), mtime=mtime)
            except (ResourceNotFoundError, HttpResponseError) as e:
                if not (
                    isinstance(e, ResourceNotFoundError) or _error_code(e) == "ResourceTypeMismatch"
                ):
                    raise
            d = self.share.get_directory_client(rel).get_directory_properties()
            return ObjectInfo(
                rel, True, mtime=_timestamp(d.last_write_time) or _timestamp(d.last_modified)
            )
        except (AzureError, BackendError) as e:
            if isinstance(e, HttpResponseError) and _error_code(e) == "ResourceTypeMismatch":
                raise NotFound(
                    f"no such file or directory: {rel!r} in {self.description}", rel
                ) from None
            raise self._map_error(e, rel) from None

    def list_page(self, path: str, token: str | None = None) -> tuple[list[ObjectInfo], str | None]:
        rel = normpath(path)
        try:
            pages = (
                self.share.get_directory_client(rel)
                .list_directories_and_files(
                    include=_LIST_INCLUDE, include_extended_info=True, results_per_page=PAGE_SIZE
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
            mtime = _timestamp(it.last_write_time) or _timestamp(it.last_modified)
            if it.is_directory:
                out.append(ObjectInfo(child, True, mtime=mtime))
            else:
                out.append(
                    ObjectInfo(
                        child, False, size=it.size or 0, etag=quoted_etag(it.etag), mtime=mtime
                    )
                )
        return out, next_token

    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        rel = normpath(path)
        want = quoted_etag(etag)
        fc = self.share.get_file_client(rel)
        try:
            if length <= 0:
                return b""
            try:
                dl = fc.download_file(offset=offset, length=length)
            except HttpResponseError as e:
                if e.status_code != 416:
                    raise
                # Reading at or past the end: nothing to return, but the pin still holds.
                if want and quoted_etag(fc.get_file_properties().etag) != want:
                    raise Changed(
                        f"{rel!r} in {self.description} changed since it was opened", rel
                    ) from None
                return b""
            if want and quoted_etag(dl.properties.etag) != want:
                raise Changed(f"{rel!r} in {self.description} changed since it was opened", rel)
            return dl.readall()
        except (AzureError, BackendError) as e:
            if isinstance(e, HttpResponseError) and _error_code(e) == "ResourceTypeMismatch":
                raise IsADirectory(f"{rel!r} in {self.description} is a directory", rel) from None
            raise self._map_error(e, rel) from None

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
        rel = normpath(path)
        if not rel:
            raise IsADirectory("cannot write the datastore root", rel)
        parent = rel.rsplit("/", 1)[0] if "/" in rel else ""
        tmp = (
            f"{parent}/{TMP_PREFIX}{uuid.uuid4().hex}"
            if parent
            else f"{TMP_PREFIX}{uuid.uuid4().hex}"
        )
        tmp_client = self.share.get_file_client(tmp)
        try:
            self._make_dirs(parent)
            tmp_client.upload_file(_ExactReader(stream, length), length=length, max_concurrency=4)
            # The rename is what makes the file visible: readers see the old file or the new one.
            tmp_client.rename_file(rel, overwrite=overwrite)
        except BaseException as e:
            try:
                tmp_client.delete_file()
            except AzureError:
                pass
            if isinstance(e, AzureError | BackendError):
                if isinstance(e, HttpResponseError) and _error_code(e) == "ResourceTypeMismatch":
                    raise IsADirectory(
                        f"{rel!r} in {self.description} is a directory", rel
                    ) from None
                raise self._map_error(e, rel) from None
            raise
        return self.stat(rel)

    def delete(self, path: str) -> None:
        rel = normpath(path)
        try:
            self.share.get_file_client(rel).delete_file()
        except AzureError as e:
            if isinstance(e, HttpResponseError) and _error_code(e) == "ResourceTypeMismatch":
                raise IsADirectory(f"{rel!r} in {self.description} is a directory", rel) from None
            raise self._map_error(e, rel) from None

    # --- the share -------------------------------------------------------------------------------

    def ensure_exists(self) -> None:
        try:
            self.share.create_share()
        except ResourceExistsError:
            pass
        except AzureError as e:
            err = self._map_error(e, "")
            if not isinstance(err, Forbidden):
                raise err from None
            # A share-scoped SAS may not create shares; an existing, reachable share is enough.
            try:
                self.check_access()
            except BackendError:
                raise err from None

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
        self.share.close()
