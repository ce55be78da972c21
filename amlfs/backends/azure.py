"""What every Azure SDK backend shares (blob.py, fileshare.py, adls.py): error handling on top
of failures.py (the one mapping of SDK and transport exceptions to typed BackendErrors), and
helpers for ETags, times, folder markers, upload streams, temporary names and once-only log
lines. (The SDK clients themselves -- retry
policy, HTTP session, endpoint resolution -- are azclient.py's.)
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid
from abc import abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar

from ..credentials import ResolvedCredential, redact
from .azclient import sdk_abort
from .base import Abort, Backend, normpath
from .errors import (
    BackendError,
    Forbidden,
    IsADirectory,
    Throttled,
)
from .failures import (
    ERRORS,
    TRANSIENT_KINDS,
    Failure,
    Kind,
    api_version_message,
    classify,
    error_code,
    retry_after,
    unresolved_host,
    unresolved_message,
)

T = TypeVar("T")


PAGE_SIZE = 5000  # the services' maximum per listing call
TMP_PREFIX = ".amlfs-tmp-"
_MAX_LOGGED_KEYS = 10_000


# --- values as the services give them --------------------------------------------------------------


def quoted_etag(etag: str | None) -> str | None:
    """ETags in one form: listings give them bare (0x8D...), headers quoted ("0x8D..."); If-Match
    and callers comparing ETags need one. A weak ETag (W/"...") stays as it is."""
    if not etag:
        return None
    return etag if etag.startswith(('"', "W/")) else f'"{etag}"'


def timestamp(value: Any) -> float:
    """A datetime (naive means UTC), or Azure's 7-digit ISO 8601 string, as a POSIX time (0.0
    when absent)."""
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


def is_folder(metadata: dict[str, str] | None) -> bool:
    """Metadata hdi_isfolder=true, in any letter case: a Blob folder marker, or a directory of a
    hierarchical namespace answering a Blob HEAD."""
    return any(
        k.lower() == "hdi_isfolder" and str(v).strip().lower() == "true"
        for k, v in (metadata or {}).items()
    )


# --- upload streams and names ----------------------------------------------------------------------


class ExactReader:
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


def read_exact(stream: BinaryIO, n: int) -> bytes:
    """`n` bytes from `stream`, fewer only if it ends (pipes and sockets return short reads)."""
    parts, got = [], 0
    while got < n:
        more = stream.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)  # one part: no copy


def file_path(path: str, doing: str = "write") -> str:
    """`normpath(path)` for a file to write (or delete): never the root, a directory."""
    rel = normpath(path)
    if not rel:
        raise IsADirectory(f"cannot {doing} the datastore root", rel)
    return rel


def temp_name(rel: str) -> str:
    """A fresh temporary name in the directory of `rel`: uploads are written there, then renamed
    into place, so that readers see the old file or the new one, never a part."""
    parent = rel.rpartition("/")[0]
    name = f"{TMP_PREFIX}{uuid.uuid4().hex}"
    return f"{parent}/{name}" if parent else name


@contextmanager
def removed_on_failure(tmp_client: Any) -> Iterator[None]:
    """Delete the temporary file of `tmp_client` (best effort) when the block fails at all."""
    from azure.core.exceptions import AzureError

    try:
        yield
    except BaseException:
        try:
            tmp_client.delete_file()
        except AzureError:
            pass
        raise


# --- the common part of the backends --------------------------------------------------------------


class AzureBackend(Backend):
    """The part of the Azure SDK backends that is not about their service: the one place
    exceptions become BackendErrors, once-only log lines, ensure_exists, a secret-free repr.
    Thread-safe, as the Backend contract requires."""

    #: the service's name in messages ("Azure Files does not allow this name")
    service = "Azure"
    #: see `classify`
    exists_codes: frozenset[str] | None = None

    def __init__(
        self, description: str, rc: ResolvedCredential | None, logger: logging.Logger
    ) -> None:
        self.description = description
        self.rc = rc
        self._log = logger
        self._logged: set[str] = set()
        self._logged_lock = threading.Lock()

    # --- errors ------------------------------------------------------------------------------

    def _map_error(self, exc: BaseException, path: str) -> BackendError:
        """The one place SDK and transport exceptions become typed BackendErrors."""
        if isinstance(exc, BackendError):
            return exc
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
        code = error_code(exc)
        detail = redact(str(getattr(exc, "message", None) or exc), self.rc)
        lines = detail.strip().splitlines()
        source = self.rc.source if self.rc else ""
        request_headers = getattr(getattr(response, "request", None), "headers", None) or {}
        failure = Failure(
            path=path,
            where=f"{path!r} in {self.description}" if path else self.description,
            status=status,
            code=code,
            what=f"{status} {code}".strip(),
            version=request_headers.get("x-ms-version", ""),
            unresolved=unresolved_host(exc, self.description),
            text=lines[0] if lines else type(exc).__name__,
            detail=detail,
            type=type(exc).__name__,
            source=source,
            tried=f" using the {source}" if source else "",
        )
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug("%s %r: %s: %s", self.description, path, failure.type, detail)
        kind = classify(exc, status, code, self.exists_codes)
        err = ERRORS[kind](self._message(kind, failure), path)
        if isinstance(err, Throttled):
            err.retry_after = retry_after(exc)
        return err

    def _message(self, kind: Kind, f: Failure) -> str:
        """What a failure of `kind` says (this wording: the hierarchical backends')."""
        if kind is Kind.NETWORK and f.unresolved:
            return unresolved_message(self.description, f.unresolved)
        if kind is Kind.PROTOCOL:
            return f"{f.where}: bad response from the service: {f.text}"
        if kind in TRANSIENT_KINDS:
            return f"{f.where}: temporary failure ({f.reason})"
        if kind is Kind.API_VERSION:
            return api_version_message(self.description, f.version)
        denied = f"access denied to {f.where}{f.tried} ({f.reason})"
        return {
            Kind.CHANGED: f"{f.where} changed while it was being read",
            Kind.GONE: f"no such file or directory: {f.where}",
            Kind.NOT_FOUND: f"no such file or directory: {f.where}",
            Kind.DENIED: denied,
            Kind.ACL: denied,
            Kind.NO_TOKEN: denied,
            Kind.TYPE_MISMATCH: f"{f.where} is not the kind of entry expected (file vs directory)",
            Kind.EXISTS: f"{f.where} already exists ({f.code})",
            Kind.NOT_EMPTY: f"directory not empty: {f.where}",
            Kind.BAD_NAME: f"{f.where}: {self.service} does not allow this name",
            Kind.UNSUPPORTED: f"{self.description} refuses the request (HTTP {f.what}:"
            " most often an API version it does not support)",
        }.get(kind, f"{f.where}: {f.reason}")

    def _call(self, path: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except BackendError:
            raise
        except Exception as e:
            raise self._map_error(e, path) from None

    # --- logging -----------------------------------------------------------------------------

    def _log_once(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> None:
        with self._logged_lock:
            if key in self._logged:
                return
            if len(self._logged) >= _MAX_LOGGED_KEYS:
                self._logged.clear()
            self._logged.add(key)
        self._log.log(level, message, *args)

    def _log_skip(self, name: str) -> None:
        """A remote name that cannot be a safe path is left out: say so once."""
        self._log_once(
            "unsafe:" + name, "skipping %r in %s: not a safe file name", name, self.description
        )

    # --- the container / share / filesystem ------------------------------------------------

    @abstractmethod
    def _create(self) -> None:
        """Create the container / share / filesystem (ResourceExistsError if it exists)."""

    def ensure_exists(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self._create()
        except ResourceExistsError:
            pass
        except Exception as e:
            err = self._map_error(e, "")
            if not isinstance(err, Forbidden):
                raise err from None
            # A container-, share- or filesystem-scoped SAS, or an ACL-only principal, may not
            # create one; an existing, reachable one is enough.
            try:
                self.check_access()
            except BackendError:
                raise err from None

    def __repr__(self) -> str:
        source = self.rc.source if self.rc else "none"
        return f"{type(self).__name__}({self.description}, credential: {source})"


class SdkReads:
    """Ranged reads through the SDK, for the backends whose reads have no lean client yet (File
    share, ADLS): each implements `_read`, one SDK download of a range."""

    def _read(
        self, rel: str, offset: int, length: int, etag: str | None, hooks: dict[str, Any]
    ) -> bytes:
        """`length` bytes of `rel` at `offset` (If-Match `etag`), one SDK download; `hooks`: the
        keyword arguments of `sdk_abort` for the SDK call."""
        raise NotImplementedError

    def read_range(self, path: str, offset: int, length: int, etag: str | None = None) -> bytes:
        return self._read(normpath(path), offset, length, etag, {})

    def read_range_into(
        self,
        path: str,
        offset: int,
        buf: memoryview,
        etag: str | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        abort: Abort | None = None,
    ) -> int:
        """Through the SDK, which reads a block whole: `progress` is called once, at the end;
        `abort` is honoured as far as the SDK allows (see azclient.sdk_abort: checked before each
        request, the body read cut short, a stall before the headers runs to the timeout). After
        a cut body the Blob SDK under ADLS pauses 1 s before its own retry, which the abort then
        stops."""
        rel = normpath(path)
        with sdk_abort(abort, rel) as hooks:
            data = self._read(rel, offset, len(buf), etag, hooks)
        buf[: len(data)] = data
        if progress is not None:
            progress(len(data))
        return len(data)
