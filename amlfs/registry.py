"""The registry file: datastores in the Azure ML v2 datastore YAML schema, and the default one.

Loading validates every datastore and refuses a file that holds secrets but is readable by group
or others; saving is atomic (temp file, fsync, rename) and always leaves the file at mode 0600.
Secret values never appear in an error message or a repr.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import tempfile
from contextlib import suppress
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .errors import AmlfsError, RegistryError, UsageError

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

# Field groups of the v2 schema. The container field is the only one that differs by type.
_CONTAINER_FIELD = {BLOB: "container_name", FILE: "file_share_name", ADLS: "filesystem"}
_AZURE_FIELDS = ("account_name", "endpoint", "protocol", "account_url", "credentials")
_KNOWN_FIELDS = tuple(
    "name type description account_name container_name file_share_name filesystem endpoint"
    " protocol account_url path credentials".split()
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


# --- paths ---------------------------------------------------------------------------------------


def _xdg_dir(var: str, fallback: str) -> Path:
    # The XDG spec says relative values are invalid and must be ignored.
    value = os.environ.get(var, "")
    return Path(value) if os.path.isabs(value) else Path(fallback).expanduser()


def resolve_registry_path(path: str | None = None) -> Path:
    """`path` if given, else $AMLFS_REGISTRY, else $XDG_CONFIG_HOME/amlfs/datastores.yaml."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("AMLFS_REGISTRY")
    if env:
        return Path(env).expanduser()
    return _xdg_dir("XDG_CONFIG_HOME", "~/.config") / "amlfs" / "datastores.yaml"


def default_local_root() -> Path:
    """Where the embedded default datastore keeps its data: $XDG_DATA_HOME/amlfs/workspaceblobstore."""
    return _xdg_dir("XDG_DATA_HOME", "~/.local/share") / "amlfs" / DEFAULT_NAME


def _embedded_default() -> DatastoreConfig:
    return DatastoreConfig(
        name=DEFAULT_NAME,
        type=LOCAL,
        description="the embedded local default datastore",
        path=str(default_local_root()),
    )


# --- parsing and validation ----------------------------------------------------------------------


class _Fail:
    """Builds one-line RegistryErrors that name the file, the datastore and the field."""

    def __init__(self, source: str, label: str):
        self.source = source
        self.label = label

    def __call__(self, fieldname: str, problem: str) -> RegistryError:
        return RegistryError(
            f"{self.source}: datastore {self.label}: field {fieldname!r} {problem}"
        )


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
    if ds.path is not None:
        out["path"] = ds.path
    creds = ds.credentials.to_dict(redact=redact)
    if creds:
        out["credentials"] = creds
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        with suppress(TypeError):  # unhashable keys are reported by construct_mapping
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _read_yaml(path: Path) -> tuple[Any, os.stat_result]:
    """The parsed document at `path` and the stat of the file actually read."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
    except IsADirectoryError:
        raise RegistryError(f"{path}: is a directory, not a YAML file") from None
    except OSError as e:
        raise RegistryError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistryError(f"{path}: not valid UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader), st  # noqa: S506 -- a SafeLoader
    except yaml.YAMLError as e:
        # Only the position and the problem: the snippet str(e) shows could hold a secret.
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise RegistryError(f"{path}: {where}invalid YAML: {problem}") from None


def load_datastore_yaml(path: str) -> DatastoreConfig:
    """One datastore from an Azure ML v2 datastore YAML file (for `datastore create -f`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise RegistryError(f"{p}: no such file")
    data, _st = _read_yaml(p)
    if not isinstance(data, dict):
        raise RegistryError(f"{p}: expected a datastore mapping (name, type, ...) at the top level")
    return parse_datastore(data, str(p))


# --- the registry --------------------------------------------------------------------------------

_TOP_LEVEL = ("default_datastore", "datastores")
_HEADER = (
    "# amlfs datastore registry: Azure ML v2 datastore YAML, one entry per datastore.\n"
    "# It may hold secrets: keep it mode 0600 (amlfs refuses it otherwise).\n"
)


@dataclass
class Registry:
    """The registered datastores (insertion-ordered) and the name of the default one."""

    path: Path
    datastores: dict[str, DatastoreConfig]
    default: str

    @classmethod
    def load(cls, path: str | None = None) -> Registry:
        """The registry at `path` (see resolve_registry_path). A missing file gives a new registry
        holding only the embedded local `workspaceblobstore`, not written until save()."""
        p = resolve_registry_path(path)
        if not p.exists() and not p.is_symlink():
            log.debug("no registry at %s: starting with the embedded default datastore", p)
            return cls(p, {DEFAULT_NAME: _embedded_default()}, DEFAULT_NAME)
        data, st = _read_yaml(p)
        reg = cls._from_document(p, data)
        if st.st_mode & 0o077 and any(
            ds.credentials.holds_secret() for ds in reg.datastores.values()
        ):
            mode = st.st_mode & 0o777
            raise RegistryError(
                f"permissions {mode:04o} for '{p}' are too open: it holds secrets; run: chmod 600 {p}"
            )
        return reg

    @classmethod
    def _from_document(cls, p: Path, data: Any) -> Registry:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RegistryError(
                f"{p}: expected a mapping with 'default_datastore' and 'datastores'"
            )
        for key in data:
            if key not in _TOP_LEVEL:
                raise RegistryError(
                    f"{p}: unknown top-level key {key!r}{_suggest(str(key), _TOP_LEVEL)}"
                )
        entries = data.get("datastores") or []
        if not isinstance(entries, list):
            raise RegistryError(f"{p}: 'datastores' must be a list of datastore mappings")
        datastores: dict[str, DatastoreConfig] = {}
        for i, entry in enumerate(entries):
            ds = parse_datastore(entry, str(p), index=i)
            if ds.name in datastores:
                raise RegistryError(
                    f"{p}: datastore {ds.name!r}: field 'name' is used by two datastores"
                )
            datastores[ds.name] = ds
        if not datastores:
            datastores[DEFAULT_NAME] = _embedded_default()
        default = data.get("default_datastore")
        if default is None:
            default = DEFAULT_NAME if DEFAULT_NAME in datastores else next(iter(datastores))
        if not isinstance(default, str) or default not in datastores:
            raise RegistryError(
                f"{p}: default_datastore {default!r} is not one of the datastores "
                f"(known: {', '.join(datastores)})"
            )
        return cls(p, datastores, default)

    def to_document(self) -> dict:
        return {
            "default_datastore": self.default,
            "datastores": [datastore_to_dict(ds) for ds in self.datastores.values()],
        }

    def save(self) -> None:
        """Write the registry atomically at mode 0600 (the parent directory 0700 if created).

        A symlinked registry file is written through to its target, so dotfile links survive.
        """
        if self.default not in self.datastores:
            raise AmlfsError(
                f"cannot save {self.path}: the default datastore {self.default!r} is missing"
            )
        target = Path(os.path.realpath(self.path))
        text = _HEADER + yaml.safe_dump(
            self.to_document(), sort_keys=False, default_flow_style=False, allow_unicode=True
        )
        try:
            if not target.parent.exists():
                target.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
                os.chmod(target.parent, 0o700)  # mkdir's mode is filtered by the umask
            # mkstemp creates the file 0600, so the secrets are never readable by others.
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(text)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                with suppress(OSError):
                    os.unlink(tmp)
                raise
            dirfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as e:
            raise AmlfsError(f"cannot write registry {self.path}: {e.strerror or e}") from None
        log.debug("saved registry %s (%d datastores)", target, len(self.datastores))

    def get(self, name: str) -> DatastoreConfig:
        try:
            return self.datastores[name]
        except KeyError:
            raise UsageError(
                f"unknown datastore {name!r} in {self.path} (known: {', '.join(self.datastores)})"
            ) from None

    def default_datastore(self) -> DatastoreConfig:
        return self.get(self.default)

    def add(self, ds: DatastoreConfig, overwrite: bool = False, make_default: bool = False) -> None:
        """Register `ds` (validated by the same rules as the file; stored in normalised form)."""
        ds = parse_datastore(datastore_to_dict(ds), str(self.path))
        if ds.name in self.datastores and not overwrite:
            raise UsageError(
                f"datastore {ds.name!r} already exists in {self.path}; use --overwrite to replace it"
            )
        self.datastores[ds.name] = ds
        if make_default:
            self.default = ds.name

    def remove(self, name: str) -> None:
        """Unregister `name`. The default cannot be removed: another must become default first."""
        self.get(name)
        if name == self.default:
            others = [n for n in self.datastores if n != name]
            hint = (
                f"make another one the default first (set-default, e.g. {others[0]!r})"
                if others
                else "register another datastore and make it the default first"
            )
            raise UsageError(f"cannot remove datastore {name!r}: it is the default; {hint}")
        del self.datastores[name]

    def set_default(self, name: str) -> None:
        self.get(name)
        self.default = name
