"""What a failed Azure call means: its kind (the one mapping of SDK and transport exceptions),
the typed error for that kind, and the messages and waits (Retry-After) read from it."""

from __future__ import annotations

import enum
import re
import socket
from dataclasses import dataclass

from .errors import (
    AlreadyExists,
    BackendError,
    Changed,
    ContainerMissing,
    Forbidden,
    InvalidName,
    NotADirectory,
    NotEmpty,
    NotFound,
    Throttled,
    Transient,
    Unsupported,
)
from .httpframe import ProtocolError


class UnsupportedVersion(BackendError):
    """The service refuses the storage API version (x-ms-version) sent."""


TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})  # and any other 5xx


def error_code(exc: BaseException) -> str:
    """The service's x-ms-error-code of `exc` ('' when it has none)."""
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


class Kind(enum.Enum):
    """What a failed SDK or transport call means; each backend words each kind its own way."""

    CHANGED = enum.auto()  # the ETag no longer matches (412)
    GONE = enum.auto()  # the container itself is missing (ContainerNotFound)
    NOT_FOUND = enum.auto()
    DENIED = enum.auto()  # 401 / 403
    ACL = enum.auto()  # 403 AuthorizationPermissionMismatch: an ACL or the role refuses it
    NO_TOKEN = enum.auto()  # the credential could not produce a token (no request was sent)
    TYPE_MISMATCH = enum.auto()  # a file where a directory was expected, or the reverse
    EXISTS = enum.auto()
    NOT_EMPTY = enum.auto()  # 409 DirectoryNotEmpty: a directory delete refused
    BAD_NAME = enum.auto()  # a name the service refuses
    THROTTLED = enum.auto()  # 503 ServerBusy, 429: slow down (Retry-After)
    FAILED = enum.auto()  # timed out, any other 5xx
    NETWORK = enum.auto()  # no connection, a reset, a response cut short
    GARBLED = enum.auto()  # a body that cannot be decoded
    BROKE_OFF = enum.auto()  # a failure while reading a body (the downloader's own retries)
    UNSUPPORTED = enum.auto()  # 400 InvalidHeaderValue: most often an API version refused
    HTTP = enum.auto()  # any other HTTP status
    API_VERSION = enum.auto()  # the service does not accept the x-ms-version sent
    PROTOCOL = enum.auto()  # a response that does not answer the request (lean client)
    OTHER = enum.auto()


ERRORS: dict[Kind, type[BackendError]] = {
    Kind.CHANGED: Changed,
    Kind.GONE: ContainerMissing,
    Kind.NOT_FOUND: NotFound,
    Kind.DENIED: Forbidden,
    Kind.ACL: Forbidden,
    Kind.NO_TOKEN: Forbidden,
    Kind.TYPE_MISMATCH: NotADirectory,
    Kind.EXISTS: AlreadyExists,
    Kind.NOT_EMPTY: NotEmpty,
    Kind.BAD_NAME: InvalidName,
    Kind.THROTTLED: Throttled,
    Kind.FAILED: Transient,
    Kind.NETWORK: Transient,
    Kind.GARBLED: Transient,
    Kind.BROKE_OFF: Transient,
    Kind.UNSUPPORTED: Unsupported,
    Kind.HTTP: BackendError,
    Kind.API_VERSION: UnsupportedVersion,
    Kind.PROTOCOL: Transient,
    Kind.OTHER: BackendError,
}


TRANSIENT_KINDS = frozenset(k for k, e in ERRORS.items() if issubclass(e, Transient))


@dataclass(frozen=True)
class Failure:
    """What a failed call says, read once, for the messages (every text has secrets redacted)."""

    path: str
    where: str  # "'path' in <description>", or the description for the root
    status: int | None
    code: str  # x-ms-error-code, '' when absent
    what: str  # "503 ServerBusy"
    version: str  # the x-ms-version the request sent ('' when unknown)
    unresolved: str | None  # the host name DNS could not resolve (None: not a DNS failure)
    text: str  # the first line of the exception's message, or its type's name
    detail: str  # the whole message
    type: str  # the exception's type name
    source: str  # where the credential came from ('' without one)
    tried: str  # " using the <source>" ('' without a credential)

    @property
    def reason(self) -> str:
        return self.code or self.text


def classify(
    exc: BaseException, status: int | None, code: str, exists_codes: frozenset[str] | None = None
) -> Kind:
    """The kind of failure `exc` is. `exists_codes`: the error codes with which a
    ResourceExistsError means "already exists" (None: so does every conflict, any 409). (The
    SDK's exception classes are imported here, on the first failure: see azclient.py.)"""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        DecodeError,
        HttpResponseError,
        IncompleteReadError,
        ResourceExistsError,
        ResourceModifiedError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ResourceModifiedError) or status == 412:
        return Kind.CHANGED
    if code == "ContainerNotFound":
        return Kind.GONE
    if isinstance(exc, ResourceNotFoundError) or status == 404:
        return Kind.NOT_FOUND
    if status in (401, 403) or isinstance(exc, ClientAuthenticationError):
        if code == "AuthorizationPermissionMismatch":
            return Kind.ACL
        return Kind.DENIED if status in (401, 403) else Kind.NO_TOKEN
    if code == "ResourceTypeMismatch":
        return Kind.TYPE_MISMATCH
    if code == "DirectoryNotEmpty":
        return Kind.NOT_EMPTY
    if exists_codes is None:
        exists = isinstance(exc, ResourceExistsError) or status == 409
    else:
        exists = isinstance(exc, ResourceExistsError) and code in exists_codes
    if exists:
        return Kind.EXISTS
    if code in ("InvalidResourceName", "InvalidUri"):
        return Kind.BAD_NAME
    if status == 400 and code == "InvalidHeaderValue" and "version" in str(exc).lower():
        return Kind.API_VERSION
    if status == 400 and code in ("InvalidHeaderValue", "UnsupportedHeader"):
        return Kind.UNSUPPORTED
    if status == 429 or (status == 503 and code in ("ServerBusy", "")):
        return Kind.THROTTLED
    if status is not None and (status in TRANSIENT_STATUS or status >= 500):
        return Kind.FAILED
    if isinstance(exc, ProtocolError):
        return Kind.PROTOCOL
    if isinstance(exc, (ServiceRequestError, ServiceResponseError, IncompleteReadError, OSError)):
        return Kind.NETWORK
    if isinstance(exc, DecodeError):
        return Kind.GARBLED
    if isinstance(exc, HttpResponseError):
        return Kind.BROKE_OFF if status is None else Kind.HTTP
    return Kind.OTHER


_DNS_TEXTS = ("Name or service not known", "Temporary failure in name resolution",
              "nodename nor servname", "No address associated with hostname", "Failed to resolve")  # fmt: skip


_HOST_RES = (re.compile(r"Failed to resolve '([^']+)'"), re.compile(r"host='([^']+)'"),
             re.compile(r"https?://([^/:'\s]+)"))  # fmt: skip


def unresolved_host(exc: BaseException, description: str) -> str | None:
    """The host name whose DNS lookup failed in `exc` (a socket.gaierror anywhere in its chain,
    or urllib3's wording of one), else None. The name comes from the error's text, else from
    `description` (which holds the account URL)."""
    texts, seen, e = [], set(), exc
    dns = False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        dns = dns or isinstance(e, socket.gaierror)
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    text = " ".join(texts)
    if not dns and not any(t in text for t in _DNS_TEXTS):
        return None
    for pattern in _HOST_RES:
        for source in (text, description):
            m = pattern.search(source)
            if m:
                return m[1]
    return "?"


def unresolved_message(description: str, host: str) -> str:
    return (
        f"{description}: the host name {host!r} could not be resolved (DNS): check the account"
        " name, endpoint or account_url, and the network"
    )


def api_version_message(description: str, version: str) -> str:
    """The one line for a service that refuses our x-ms-version (an older Azurite, mostly)."""
    sent = f" {version}" if version else ""
    return (
        f"{description} does not accept storage API version{sent} (HTTP 400 InvalidHeaderValue):"
        " start Azurite with --skipApiVersionCheck, or set an older api_version on the datastore"
        " (e.g. api_version: 2025-01-05)"
    )


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After (seconds) of a failed response, when the exception carries it."""
    value = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(getattr(exc, "response", None), "headers", None) or {}
        value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, min(60.0, float(value))) if value is not None else None
    except (TypeError, ValueError):
        return None
