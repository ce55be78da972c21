"""The Azure ML v2 datastore YAML schema: the data model of one datastore, its validation, and its
serialisation with secrets redacted. The registry file (registry.py) is a list of these.

Secret values never appear in an error message or a repr.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import RegistryError

log = logging.getLogger(__name__)

BLOB = "azure_blob"
FILE = "azure_file"
ADLS = "azure_data_lake_gen2"
LOCAL = "local"
TYPES = (BLOB, FILE, ADLS, LOCAL)

DEFAULT_NAME = "workspaceblobstore"
DEFAULT_ENDPOINT = "core.windows.net"
DEFAULT_PROTOCOL = "https"
REDACTED = "***"

DATASTORE_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,255}$")
_ACCOUNT_NAME_RE = re.compile(r"^[a-z0-9]{3,24}$")
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# Field groups of the v2 schema. The container field is the only one that differs by type.
_CONTAINER_FIELD = {BLOB: "container_name", FILE: "file_share_name", ADLS: "filesystem"}
_AZURE_FIELDS = (
    "account_name", "endpoint", "protocol", "account_url", "api_version", "credentials"
)  # fmt: skip
_KNOWN_FIELDS = tuple(
    "name type description account_name container_name file_share_name filesystem endpoint"
    " protocol account_url api_version path credentials".split()
)
# Fields Azure ML writes or accepts that mean nothing here (`az ml datastore show` output).
_IGNORED_FIELDS = frozenset(
    "$schema id tags properties resource_group resourceGroup subscription_id subscriptionId"
    " creation_context service_data_access_auth_identity serviceDataAccessAuthIdentity".split()
)
_UNSUPPORTED_TYPES = ("azure_data_lake_gen1", "one_lake", "hdfs")
# v2 writes wasbs/abfss for the same HTTPS transport; the backends only need the scheme.
_PROTOCOLS = {"https": "https", "http": "http", "wasbs": "https", "wasb": "http", "abfss": "https"}

_SECRET_FIELDS = ("account_key", "sas_token", "client_secret")
_SP_FIELDS = ("tenant_id", "client_id", "client_secret")
_CREDENTIAL_KEYS = tuple(
    "account_key sas_token tenant_id client_id client_secret authority_url resource_url"
    " connection_string".split()
)
_CS_SECRET_KEYS = ("accountkey", "sharedaccesssignature")
_CS_KEY_RE = re.compile(
    r"(?i)^(defaultendpointsprotocol|accountname|accountkey|sharedaccesssignature|endpointsuffix"
    r"|usedevelopmentstorage|developmentstorageproxyuri|(blob|file|queue|table|dfs)(secondary)?endpoint)$"
)


# --- the data model ------------------------------------------------------------------------------


def _parse_connection_string(cs: str) -> dict[str, str] | None:
    """Key=Value;... pairs with lower-cased keys, or None if `cs` is not of that shape."""
    out: dict[str, str] = {}
    for part in cs.split(";"):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        # Known keys only: a bare base64 account key also splits at its trailing '='.
        if not sep or not _CS_KEY_RE.match(key.strip()):
            return None
        out[key.strip().lower()] = value
    return out or None


def redact_connection_string(cs: str) -> str:
    """`cs` with its AccountKey and SharedAccessSignature values replaced; all of it if unparseable."""
    if _parse_connection_string(cs) is None:
        return REDACTED
    parts = []
    for part in cs.split(";"):
        key, sep, _value = part.partition("=")
        if sep and key.strip().lower() in _CS_SECRET_KEYS:
            part = f"{key}={REDACTED}"
        parts.append(part)
    return ";".join(parts)


def _redact_url(url: str) -> str:
    # A query string on a storage URL is usually a SAS.
    base, sep, _query = url.partition("?")
    return f"{base}?{REDACTED}" if sep else url


@dataclass
class Credentials:
    """One credential form (at most one group set): key, SAS, service principal, or connection
    string. All None means "absent": the environment conventions apply (see credentials.py)."""

    account_key: str | None = None
    sas_token: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    authority_url: str | None = None
    connection_string: str | None = None
    resource_url: str | None = None  # service principal token audience (v2 schema; informational)

    def is_empty(self) -> bool:
        return not any(vars(self).values())

    def holds_secret(self) -> bool:
        """True when any value here would grant access to someone who reads it."""
        if any(getattr(self, f) for f in _SECRET_FIELDS):
            return True
        if self.connection_string:
            parsed = _parse_connection_string(self.connection_string)
            return parsed is None or any(parsed.get(k) for k in _CS_SECRET_KEYS)
        return False

    def to_dict(self, redact: bool = False) -> dict[str, str]:
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if redact and f.name in _SECRET_FIELDS:
                value = REDACTED
            elif redact and f.name == "connection_string":
                value = redact_connection_string(value)
            out[f.name] = value
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_dict(redact=True).items())
        return f"Credentials({shown})"


@dataclass
class DatastoreConfig:
    """One datastore, as in an Azure ML v2 datastore YAML (plus our `account_url` and `path`)."""

    name: str
    type: str
    description: str | None = None
    account_name: str | None = None
    container_name: str | None = None  # azure_blob
    file_share_name: str | None = None  # azure_file
    filesystem: str | None = None  # azure_data_lake_gen2
    endpoint: str = DEFAULT_ENDPOINT
    protocol: str = DEFAULT_PROTOCOL
    account_url: str | None = None  # explicit endpoint URL (emulators, private endpoints)
    api_version: str | None = None  # the storage REST version to send (default: the SDK's)
    path: str | None = None  # local
    credentials: Credentials = field(default_factory=Credentials)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name == "credentials" and value.is_empty()):
                continue
            if f.name == "account_url":
                value = _redact_url(value)
            shown.append(f"{f.name}={value!r}")
        return f"DatastoreConfig({', '.join(shown)})"


# --- parsing and validation ----------------------------------------------------------------------


class _Fail:
    """Builds one-line RegistryErrors that name the file, the datastore and the field."""

    def __init__(self, source: str, label: str):
        self.source = source
        self.label = label

    def __call__(self, fieldname: str, problem: str) -> RegistryError:
        where = f"{self.source}: " if self.source else ""
        return RegistryError(f"{where}datastore {self.label}: field {fieldname!r} {problem}")


def _suggest(key: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _string(data: dict, key: str, fail: _Fail, fieldname: str | None = None) -> str | None:
    """The value of `key` as a non-empty string, None when absent or null."""
    value = data.get(key)
    if value is None:
        return None
    # Values are never echoed: any of them may be a secret.
    if not isinstance(value, str):
        raise fail(fieldname or key, f"must be a string, not {type(value).__name__}")
    if not value.strip():
        raise fail(fieldname or key, "must not be empty")
    return value


def _canonical_type(value: Any, fail: _Fail) -> str:
    if value is None:
        raise fail("type", f"is required (one of: {', '.join(TYPES)})")
    if not isinstance(value, str):
        raise fail("type", f"must be a string (one of: {', '.join(TYPES)})")
    # The v2 SDK also accepts the REST casing (AzureBlob, AzureDataLakeGen2).
    squashed = value.replace("_", "").lower()
    for t in TYPES:
        if squashed == t.replace("_", ""):
            return t
    if squashed in (u.replace("_", "") for u in _UNSUPPORTED_TYPES):
        raise fail("type", f"{value!r} is not supported by amlfs (supported: {', '.join(TYPES)})")
    raise fail(
        "type", f"has unknown value {value!r} (one of: {', '.join(TYPES)}){_suggest(value, TYPES)}"
    )


def _parse_credentials(raw: Any, ds_type: str, fail: _Fail) -> Credentials:
    if raw is None:
        return Credentials()
    if not isinstance(raw, dict):
        raise fail("credentials", "must be a mapping")
    raw = dict(raw)
    for key in raw:
        if not isinstance(key, str):
            raise fail("credentials", "has a key that is not a string")
        if key in ("certificate", "thumbprint"):
            raise fail(
                f"credentials.{key}",
                "is not supported (certificate credentials); use a client secret",
            )
        if key not in _CREDENTIAL_KEYS and key != "authority_uri":
            raise fail(
                f"credentials.{key}", f"is not a known field{_suggest(key, _CREDENTIAL_KEYS)}"
            )
    if "authority_uri" in raw:
        if "authority_url" in raw:
            raise fail(
                "credentials.authority_uri", "and 'authority_url' are the same field: give one"
            )
        raw["authority_url"] = raw.pop("authority_uri")
    values = {k: _string(raw, k, fail, f"credentials.{k}") for k in _CREDENTIAL_KEYS}
    creds = Credentials(**values)
    if ds_type == LOCAL:
        if not creds.is_empty():
            raise fail("credentials", "does not apply to type local")
        return creds

    groups = {
        "account_key": creds.account_key is not None,
        "sas_token": creds.sas_token is not None,
        "tenant_id/client_id/client_secret": any(values[k] for k in _SP_FIELDS),
        "connection_string": creds.connection_string is not None,
    }
    given = [g for g, present in groups.items() if present]
    if len(given) > 1:
        raise fail("credentials", f"may hold only one credential form, found: {', '.join(given)}")
    if groups["tenant_id/client_id/client_secret"]:
        for k in _SP_FIELDS:
            if values[k] is None:
                raise fail(
                    f"credentials.{k}",
                    "is required for a service principal (tenant_id, client_id, client_secret)",
                )
    else:
        for k in ("authority_url", "resource_url"):
            if values[k] is not None:
                raise fail(
                    f"credentials.{k}",
                    "is only used with a service principal (tenant_id, client_id, client_secret)",
                )
    if creds.sas_token is not None:
        # The portal hands out SAS tokens with a leading '?'; store one form.
        creds.sas_token = creds.sas_token.lstrip("?")
        if not creds.sas_token:
            raise fail("credentials.sas_token", "must not be empty")
    if (
        creds.connection_string is not None
        and _parse_connection_string(creds.connection_string) is None
    ):
        raise fail(
            "credentials.connection_string",
            "is not a storage connection string (Key=Value;... pairs of known keys)",
        )
    return creds


def _connection_string_names_account(creds: Credentials) -> bool:
    parsed = _parse_connection_string(creds.connection_string or "") or {}
    if parsed.get("usedevelopmentstorage", "").lower() == "true" or parsed.get("accountname"):
        return True
    return any(k.endswith("endpoint") and v for k, v in parsed.items())


def _check_account_url(url: str, fail: _Fail) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  -- raises ValueError on a bad port
    except ValueError:
        raise fail("account_url", "is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail("account_url", "must be an http:// or https:// URL with a host")
    if parts.query or parts.fragment or parts.username or parts.password:
        # Never echo it: a query string here is most likely a SAS token.
        raise fail(
            "account_url",
            "must not carry a query string or user info; put a SAS in credentials.sas_token",
        )


def parse_datastore(data: dict, source: str, index: int | None = None) -> DatastoreConfig:
    """One datastore from its Azure ML v2 datastore YAML mapping (plus our extensions).

    `source` (a file name, or "command line") and `index` (its position in a list) only name
    the datastore in errors. Raises RegistryError with one line naming source, datastore, field.
    """
    label = f"#{index + 1}" if index is not None else "(unnamed)"
    fail = _Fail(source, label)
    if not isinstance(data, dict):
        raise RegistryError(f"{source}: datastore {label}: must be a mapping of fields")

    name = data.get("name")
    if name is None:
        raise fail("name", "is required")
    if not isinstance(name, str):
        raise fail("name", f"must be a string, not {type(name).__name__}")
    fail.label = repr(name)
    if not DATASTORE_NAME_RE.match(name):
        raise fail(
            "name", "must be 1-255 letters, digits or underscores (Azure ML datastore names)"
        )

    # The type first: an unsupported type's own fields would otherwise look like typos.
    ds_type = _canonical_type(data.get("type"), fail)
    for key in data:
        if not isinstance(key, str):
            raise fail(str(key), "is not a known field (keys must be strings)")
        if key not in _KNOWN_FIELDS and key not in _IGNORED_FIELDS:
            raise fail(key, f"is not a known field{_suggest(key, _KNOWN_FIELDS)}")
    creds = _parse_credentials(data.get("credentials"), ds_type, fail)
    ds = DatastoreConfig(name=name, type=ds_type, credentials=creds)
    ds.description = data.get("description") if data.get("description") != "" else None
    if ds.description is not None and not isinstance(ds.description, str):
        raise fail("description", "must be a string")

    if ds_type == LOCAL:
        for key in (*_AZURE_FIELDS, *_CONTAINER_FIELD.values()):
            if key != "credentials" and data.get(key) is not None:
                raise fail(key, "does not apply to type local")
        path = _string(data, "path", fail)
        if path is None:
            raise fail("path", "is required for type local")
        if not os.path.isabs(os.path.expanduser(path)):
            raise fail("path", "must be an absolute path")
        ds.path = path
        return ds

    if data.get("path") is not None:
        raise fail("path", f"does not apply to type {ds_type} (only to local)")
    wanted = _CONTAINER_FIELD[ds_type]
    for key in _CONTAINER_FIELD.values():
        if key != wanted and data.get(key) is not None:
            raise fail(key, f"does not apply to type {ds_type} (it takes {wanted!r})")
    container = _string(data, wanted, fail)
    if container is None:
        raise fail(wanted, f"is required for type {ds_type}")
    if "/" in container:
        raise fail(wanted, "must be a single name without '/'")
    setattr(ds, wanted, container)

    ds.account_url = _string(data, "account_url", fail)
    if ds.account_url is not None:
        _check_account_url(ds.account_url, fail)
        ds.account_url = ds.account_url.rstrip("/")
    ds.api_version = _string(data, "api_version", fail)
    if ds.api_version is not None and not _API_VERSION_RE.match(ds.api_version):
        raise fail("api_version", "must be a storage REST API version such as 2025-01-05")
    ds.account_name = _string(data, "account_name", fail)
    if ds.account_name is not None and not _ACCOUNT_NAME_RE.match(ds.account_name):
        raise fail(
            "account_name", "must be 3-24 lower-case letters or digits (a storage account name)"
        )
    if (
        ds.account_name is None
        and ds.account_url is None
        and not _connection_string_names_account(creds)
    ):
        raise fail(
            "account_name",
            f"is required for type {ds_type} (unless account_url or a connection string gives the account)",
        )

    endpoint = _string(data, "endpoint", fail)
    if endpoint is not None:
        if "://" in endpoint or "/" in endpoint:
            raise fail(
                "endpoint",
                "must be a DNS suffix such as core.windows.net (a full URL goes in account_url)",
            )
        ds.endpoint = endpoint
    protocol = _string(data, "protocol", fail)
    if protocol is not None:
        if protocol.lower() not in _PROTOCOLS:
            raise fail("protocol", f"must be one of: {', '.join(_PROTOCOLS)}")
        ds.protocol = _PROTOCOLS[protocol.lower()]
    return ds


def datastore_to_dict(ds: DatastoreConfig, redact: bool = False) -> dict:
    """The YAML form of `ds`: set fields only, defaults left out. `redact` hides every secret."""
    out: dict[str, Any] = {"name": ds.name, "type": ds.type}
    for key in ("description", "account_name", *_CONTAINER_FIELD.values()):
        if getattr(ds, key) is not None:
            out[key] = getattr(ds, key)
    if ds.endpoint != DEFAULT_ENDPOINT:
        out["endpoint"] = ds.endpoint
    if ds.protocol != DEFAULT_PROTOCOL:
        out["protocol"] = ds.protocol
    if ds.account_url is not None:
        out["account_url"] = _redact_url(ds.account_url) if redact else ds.account_url
    if ds.api_version is not None:
        out["api_version"] = ds.api_version
    if ds.path is not None:
        out["path"] = ds.path
    creds = ds.credentials.to_dict(redact=redact)
    if creds:
        out["credentials"] = creds
    return out
