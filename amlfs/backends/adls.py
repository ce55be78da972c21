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

import datetime as dt
import logging
import threading
import uuid
from typing import Any, BinaryIO

from azure.core import MatchConditions
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
from azure.storage.filedatalake import ExponentialRetry, FileSystemClient

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

try:  # the SDK's own "do not retry" authentication error (private, hence the fallback)
    from azure.storage.filedatalake._shared.authentication import AzureSigningError as _SigningError
except ImportError:  # pragma: no cover - an SDK that moved it: refusals are merely retried
    _SigningError = ClientAuthenticationError

log = logging.getLogger(__name__)

PAGE_SIZE = 5000
TMP_PREFIX = ".amlfs-tmp-"
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def quoted_etag(etag: str | None) -> str | None:
    """ETags in one form: List Paths gives them bare (0x8D...), headers quoted ("0x8D...")."""
    if not etag:
        return None
    return etag if etag.startswith('"') else f'"{etag}"'


def _timestamp(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=value.tzinfo or dt.UTC).timestamp()
    return 0.0


def _error_code(e: AzureError) -> str:
    code = getattr(e, "error_code", None)
    return str(getattr(code, "value", code) or "")


def _is_folder(metadata: dict[str, str] | None) -> bool:
    # Directories in a hierarchical namespace answer a Blob HEAD with hdi_isfolder=true (any case).
    return any(
        k.lower() == "hdi_isfolder" and str(v).lower() == "true"
        for k, v in (metadata or {}).items()
    )


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


class _FinalRefusalCredential:
    """Wraps a token credential so that a refused token is final.

    The storage SDK's retry policy retries every AzureError except its own signing errors, so a
    wrong client secret would cost half a minute of backoff before the user hears of it. The
    identity library retries its own transport failures; a refusal is re-raised as the SDK's
    signing error (a ClientAuthenticationError), which the retry policy passes straight up.
    """

    def __init__(self, inner: Any):
        self._inner = inner
        if hasattr(inner, "get_token_info"):
            self.get_token_info = self._get_token_info

    def _refused(self, e: ClientAuthenticationError) -> Exception:
        return _SigningError(str(getattr(e, "message", None) or e).splitlines()[0])

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        try:
            return self._inner.get_token(*scopes, **kwargs)
        except ClientAuthenticationError as e:
            raise self._refused(e) from e

    def _get_token_info(self, *scopes: str, options: Any = None) -> Any:
        try:
            return self._inner.get_token_info(*scopes, options=options)
        except ClientAuthenticationError as e:
            raise self._refused(e) from e

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close:
            close()


class AdlsBackend(Backend):
    """One ADLS Gen2 filesystem. Thread-safe (the SDK clients are; little state here)."""

    def __init__(
        self,
        fs: FileSystemClient,
        *,
        url: str,
        credential: ResolvedCredential | None = None,
        block_size: int = 8 * 1024 * 1024,
    ):
        self.fs = fs
        self.rc = credential
        self.block_size = block_size
        self.description = f"ADLS Gen2 filesystem {fs.file_system_name!r} at {url}"
        self._skipped: set[str] = set()
        self._skipped_lock = threading.Lock()

    @classmethod
    def from_config(cls, ds: DatastoreConfig, block_size: int = 8 * 1024 * 1024) -> AdlsBackend:
        if not ds.filesystem:
            raise RegistryError(
                f"datastore {ds.name!r}: filesystem is required for azure_data_lake_gen2"
            )
        rc = resolve_credential(ds)
        url = account_url(ds, "dfs", rc)
        credential = sdk_credential(rc, ds.account_name)
        if rc.kind == TOKEN:
            credential = _FinalRefusalCredential(credential)
        fs = FileSystemClient(
            url,
            ds.filesystem,
            credential=credential,
            max_single_get_size=block_size,
            max_chunk_get_size=block_size,
            retry_policy=ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=4),
            connection_timeout=10,
        )
        return cls(fs, url=url, credential=rc, block_size=block_size)

    # --- errors ----------------------------------------------------------------------------------

    def _map_error(self, e: Exception, path: str) -> BackendError:
        """The one place SDK and credential exceptions become BackendErrors (secrets redacted)."""
        if isinstance(e, BackendError):
            return e
        where = f"{path!r} in {self.description}" if path else self.description
        code = _error_code(e) if isinstance(e, AzureError) else ""
        status = getattr(e, "status_code", None)
        text = str(getattr(e, "message", None) or e)
        first_line = redact(text.splitlines()[0] if text else type(e).__name__, self.rc)
        if isinstance(e, ResourceNotFoundError) or status == 404:
            return NotFound(f"no such file or directory: {where}", path)
        if isinstance(e, ClientAuthenticationError) or status in (401, 403):
            tried = f" using the {self.rc.source}" if self.rc else ""
            if code == "AuthorizationPermissionMismatch":
                return Forbidden(
                    f"permission denied on {where}{tried} (an ACL or the credential's permissions refuse it)",
                    path,
                )
            return Forbidden(f"access denied to {where}{tried} ({code or first_line})", path)
        if isinstance(e, ResourceModifiedError) or status == 412:
            return Changed(f"{where} changed while it was being read", path)
        if isinstance(e, ResourceExistsError) or status == 409:
            return AlreadyExists(f"{where} already exists ({code})", path)
        if code in ("InvalidResourceName", "InvalidUri"):
            return InvalidName(f"{where}: ADLS does not allow this name", path)
        if isinstance(e, ServiceRequestError | ServiceResponseError) or status in _TRANSIENT_STATUS:
            return Transient(f"{where}: temporary failure ({code or first_line})", path)
        return BackendError(f"{where}: {code or first_line}", path)

    def _log_skip(self, name: str) -> None:
        with self._skipped_lock:
            if name in self._skipped:
                return
            self._skipped.add(name)
        log.warning("skipping %r in %s: not a safe file name", name, self.description)

    # --- reads -----------------------------------------------------------------------------------

    def stat(self, path: str) -> ObjectInfo:
        rel = normpath(path)
        try:
            if not rel:
                p = self.fs.get_file_system_properties()
                return ObjectInfo("", True, mtime=_timestamp(p.last_modified))
            p = self.fs.get_file_client(rel).get_file_properties()
        except AzureError as e:
            raise self._map_error(e, rel) from None
        if _is_folder(p.metadata):
            return ObjectInfo(rel, True, mtime=_timestamp(p.last_modified))
        return ObjectInfo(
            rel, False, size=p.size, etag=quoted_etag(p.etag), mtime=_timestamp(p.last_modified)
        )

    def list_page(self, path: str, token: str | None = None) -> tuple[list[ObjectInfo], str | None]:
        rel = normpath(path)
        try:
            pages = self.fs.get_paths(
                path=rel or None, recursive=False, max_results=PAGE_SIZE
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
            mtime = _timestamp(it.last_modified)
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

    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        rel = normpath(path)
        if length <= 0:
            return b""
        fc = self.fs.get_file_client(rel)
        cond: dict[str, Any] = {}
        if etag:
            cond = {"etag": quoted_etag(etag), "match_condition": MatchConditions.IfNotModified}
        try:
            try:
                dl = fc.download_file(offset=offset, length=length, **cond)
            except HttpResponseError as e:
                if e.status_code != 416:
                    raise
                # At or past the end: nothing to read, but the pin must still hold.
                p = fc.get_file_properties(**cond)
                if _is_folder(p.metadata):
                    raise IsADirectory(
                        f"{rel!r} in {self.description} is a directory", rel
                    ) from None
                return b""
            if _is_folder(dl.properties.metadata):
                raise IsADirectory(f"{rel!r} in {self.description} is a directory", rel)
            return dl.readall()
        except (AzureError, BackendError) as e:
            raise self._map_error(e, rel) from None

    # --- writes ----------------------------------------------------------------------------------

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
        tmp_client = self.fs.get_file_client(tmp)
        cond: dict[str, Any] = {} if overwrite else {"match_condition": MatchConditions.IfMissing}
        try:
            # create (with parents) + append + flush on the temporary name ...
            if length:
                tmp_client.upload_data(
                    _ExactReader(stream, length),
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
        except BaseException as e:
            try:
                tmp_client.delete_file()
            except AzureError:
                pass
            if isinstance(e, AzureError):
                err = self._map_error(e, rel)
                if not overwrite and isinstance(err, Changed):
                    err = AlreadyExists(f"{rel!r} in {self.description} exists", rel)
                raise err from None
            raise
        return self.stat(rel)

    def delete(self, path: str) -> None:
        rel = normpath(path)
        if not rel:
            raise IsADirectory("cannot delete the datastore root", rel)
        fc = self.fs.get_file_client(rel)
        try:
            # DFS Delete Path also removes empty directories; the Backend contract is files only.
            p = fc.get_file_properties()
            if _is_folder(p.metadata):
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

    def ensure_exists(self) -> None:
        try:
            self.fs.create_file_system()
        except ResourceExistsError:
            pass
        except AzureError as e:
            err = self._map_error(e, "")
            if not isinstance(err, Forbidden):
                raise err from None
            # A filesystem-scoped SAS or an ACL-only principal may not create filesystems.
            try:
                self.check_access()
            except BackendError:
                raise err from None

    def check_access(self) -> None:
        try:
            next(self.fs.get_paths(recursive=False, max_results=1).by_page(), None)
        except AzureError as e:
            raise self._map_error(e, "") from None

    def close(self) -> None:
        self.fs.close()
