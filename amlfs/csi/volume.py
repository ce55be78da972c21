"""What a NodePublishVolume request asks for, validated: the datastore (a registry name, or one
described inline by the volume attributes), the path in it, the mount configuration, and the
credential material from the request's secrets or the workload identity token kubelet passes.

Pure: no I/O besides reading the node's registry. Every refusal is a `VolumeError` carrying the CSI
status code and a one-line message naming the field; a secret's value never appears in one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

from ..errors import AmlfsError, RegistryError, UsageError
from ..fs.config import MountConfig
from ..registry import DatastoreConfig, Registry, datastore_to_dict, parse_datastore

# gRPC status code names (grpc.StatusCode members); kept as strings so that this module does not
# need grpc.
INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
PERMISSION_DENIED = "PERMISSION_DENIED"
ALREADY_EXISTS = "ALREADY_EXISTS"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
INTERNAL = "INTERNAL"
UNAVAILABLE = "UNAVAILABLE"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"

#: kubelet's own volume_context keys (pod info, ephemeral flag, service-account tokens)
K8S_PREFIX = "csi.storage.k8s.io/"
TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"
#: the audience Azure AD accepts for a federated (workload identity) client assertion
TOKEN_AUDIENCE = "api://AzureADTokenExchange"

# Volume attributes that describe the datastore inline (type plus its fields), and aliases.
_INLINE_FIELDS = ("type", "account_name", "account_url", "endpoint", "protocol", "api_version")
_CONTAINER_ALIASES = {
    "container_name": "container_name",
    "share_name": "file_share_name",
    "file_share_name": "file_share_name",
    "filesystem": "filesystem",
}
# Mount settings, as volume attributes or as mountOptions NAME=VALUE.
_SIZE_OPTIONS = (
    "cache_size",
    "block_size",
    "attr_timeout",
    "list_timeout",
    "negative_timeout",
    "read_timeout",
    "read_ahead",
    "disk_cache_size",
)
_BOOL_OPTIONS = ("immutable", "preload", "disk_cache", "rw", "ro", "readonly")
# Kernel/FUSE mount flags passed through as they are.
_FUSE_FLAGS = frozenset(
    "nodev nosuid noexec noatime relatime nodiratime lazytime dev suid exec".split()
)
# Workload identity: which application to exchange the token for, in which tenant.
_IDENTITY_FIELDS = ("client_id", "tenant_id", "authority_host")
_ATTRIBUTES = frozenset(
    ("datastore", "path", *_INLINE_FIELDS, *_CONTAINER_ALIASES, *_SIZE_OPTIONS, *_BOOL_OPTIONS)
    + _IDENTITY_FIELDS
)

# nodePublishSecretRef keys: ours, and the blob-csi-driver's names for the same things.
_SECRET_KEYS = {
    "account_key": "account_key",
    "azurestorageaccountkey": "account_key",
    "sas_token": "sas_token",
    "azurestorageaccountsastoken": "sas_token",
    "connection_string": "connection_string",
    "client_id": "client_id",
    "client_secret": "client_secret",
    "tenant_id": "tenant_id",
    "authority_url": "authority_url",
}
_SECRET_ACCOUNT_KEYS = ("account_name", "azurestorageaccountname")


class VolumeError(AmlfsError):
    """A request that cannot be served; `code` is the gRPC status code name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def invalid(message: str) -> VolumeError:
    return VolumeError(INVALID_ARGUMENT, message)


@dataclass(frozen=True)
class WorkloadIdentity:
    """A federated credential: the service-account token (secret) and whom it is exchanged for."""

    client_id: str
    tenant_id: str
    authority_host: str | None
    token: str = field(repr=False)


@dataclass(frozen=True)
class VolumeSpec:
    """One publish request, validated. `datastore` carries the secret credentials (never shown
    by its repr); `fingerprint` identifies what is mounted, without secrets, so that a republish
    of the same target can tell "the same volume" (idempotent) from "another one" (refused)."""

    volume_id: str
    target_path: str
    datastore: DatastoreConfig
    path: str
    config: MountConfig
    readonly: bool
    identity: WorkloadIdentity | None
    fingerprint: str
    notes: tuple[str, ...] = ()


_OPTION = re.compile(r"--([a-z][a-z-]*)")


def _truthy(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("", "1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise invalid(f"volume attribute {name!r} must be true or false, not {value!r}")


def parse_mount_flags(flags: list[str]) -> dict[str, str]:
    """`mountOptions` (each possibly a comma list) as NAME -> VALUE ('' for a bare flag)."""
    out: dict[str, str] = {}
    for flag in flags:
        for opt in filter(None, (o.strip() for o in flag.split(","))):
            name, eq, value = opt.partition("=")
            name = name.strip()
            if name in _SIZE_OPTIONS and eq and value:
                out[name] = value
            elif (name in _BOOL_OPTIONS or name in _FUSE_FLAGS) and not eq:
                out[name] = ""
            elif name in ("defaults", "_netdev", "nofail"):
                continue
            else:
                raise invalid(f"unknown mount option {opt!r} in the volume capability")
    return out


def parse_tokens(raw: str) -> dict[str, str]:
    """kubelet's service-account tokens (JSON: audience -> {token, expirationTimestamp})."""
    try:
        doc = json.loads(raw)
        tokens = {aud: str(entry["token"]) for aud, entry in doc.items()}
    except (ValueError, TypeError, KeyError, AttributeError):
        raise invalid(f"volume context {TOKENS_KEY!r} is not kubelet's token JSON") from None
    return tokens


def build_spec(
    *,
    volume_id: str,
    target_path: str,
    volume_context: dict[str, str],
    secrets: dict[str, str],
    mount_flags: list[str],
    readonly_request: bool,
    access_mode_readonly: bool,
    registry_path: str | None,
) -> VolumeSpec:
    """Validate a publish request; VolumeError (with its CSI code) for anything unusable."""
    if not volume_id:
        raise invalid("volume_id is required")
    if not target_path:
        raise invalid("target_path is required")
    attrs = {k: v for k, v in volume_context.items() if not k.startswith(K8S_PREFIX)}
    for key in attrs:
        if key not in _ATTRIBUTES:
            raise invalid(f"unknown volume attribute {key!r}")
    for key in secrets:
        if key not in _SECRET_KEYS and key not in _SECRET_ACCOUNT_KEYS:
            raise invalid(f"unknown key {key!r} in the node-publish secret")
    options = {k: attrs[k] for k in (*_SIZE_OPTIONS, *_BOOL_OPTIONS) if k in attrs}
    options.update(parse_mount_flags(mount_flags))

    creds = {_SECRET_KEYS[k]: v for k, v in secrets.items() if k in _SECRET_KEYS}
    for key, value in creds.items():
        if not value.strip():
            raise invalid(f"secret key {key!r} is empty")
    identity = _workload_identity(attrs, volume_context, creds)

    ds = _datastore(volume_id, attrs, creds, secrets, registry_path, identity is not None)
    path = attrs.get("path", "").strip("/")

    wants_rw = "rw" in options and _truthy("rw", options["rw"])
    wants_ro = any(k in options and _truthy(k, options[k]) for k in ("ro", "readonly"))
    if wants_rw and (wants_ro or readonly_request or access_mode_readonly):
        raise invalid("rw conflicts with a read-only request (readonly, ro or a reader-only mode)")
    fuse = ["allow_other", *sorted(k for k in options if k in _FUSE_FLAGS)]
    try:
        config, notes = MountConfig.from_options(
            **{k: options.get(k) for k in _SIZE_OPTIONS},
            immutable="immutable" in options and _truthy("immutable", options["immutable"]),
            fuse_options=tuple(fuse),
            nonempty=False,
            rw=wants_rw,
            preload="preload" in options and _truthy("preload", options["preload"]),
            no_disk_cache="disk_cache" in options
            and not _truthy("disk_cache", options["disk_cache"]),
        )
    except UsageError as e:
        # the CLI's option names as volume attributes: --disk-cache-size -> disk_cache_size
        raise invalid(_OPTION.sub(lambda m: m[1].replace("-", "_"), str(e))) from None
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "volume_id": volume_id,
                "datastore": ds.name if "datastore" in attrs else _public_fields(ds),
                "path": path,
                "config": json.loads(config.to_json()),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    return VolumeSpec(
        volume_id=volume_id,
        target_path=target_path,
        datastore=ds,
        path=path,
        config=config,
        readonly=not wants_rw,
        identity=identity,
        fingerprint=fingerprint,
        notes=tuple(notes),
    )


def _public_fields(ds: DatastoreConfig) -> dict[str, object]:
    out = {f.name: getattr(ds, f.name) for f in dataclasses.fields(ds)}
    out.pop("credentials")
    out.pop("name")
    return out


def _workload_identity(
    attrs: dict[str, str], volume_context: dict[str, str], creds: dict[str, str]
) -> WorkloadIdentity | None:
    raw = volume_context.get(TOKENS_KEY)
    if raw is None:
        return None
    if creds:
        return None  # an explicit secret wins; the token is not needed
    tokens = parse_tokens(raw)
    token = tokens.get(TOKEN_AUDIENCE)
    if token is None:
        raise invalid(
            f"no service-account token for audience {TOKEN_AUDIENCE!r}: set it in the"
            " CSIDriver's tokenRequests"
        )
    for key in ("client_id", "tenant_id"):
        if not attrs.get(key):
            raise invalid(f"volume attribute {key!r} is required for workload identity")
    return WorkloadIdentity(
        client_id=attrs["client_id"],
        tenant_id=attrs["tenant_id"],
        authority_host=attrs.get("authority_host") or None,
        token=token,
    )


def _datastore(
    volume_id: str,
    attrs: dict[str, str],
    creds: dict[str, str],
    secrets: dict[str, str],
    registry_path: str | None,
    workload_identity: bool,
) -> DatastoreConfig:
    """The datastore to mount, carrying the request's credentials (if any)."""
    account_from_secret = next((secrets[k] for k in _SECRET_ACCOUNT_KEYS if secrets.get(k)), None)
    if "datastore" in attrs:
        for key in (*_INLINE_FIELDS, *_CONTAINER_ALIASES):
            if key in attrs:
                raise invalid(f"volume attribute {key!r} cannot be combined with 'datastore'")
        try:
            registry = Registry.load(registry_path)
            ds = registry.get(attrs["datastore"])
        except UsageError as e:
            if "unknown datastore" in str(e):
                raise VolumeError(NOT_FOUND, str(e)) from None
            raise VolumeError(FAILED_PRECONDITION, f"the node's registry: {e}") from None
        data = datastore_to_dict(ds)
        if creds:  # the request's secret replaces the registry's credential
            data["credentials"] = creds
        if account_from_secret:
            data["account_name"] = account_from_secret
        return _parse(data)
    if "type" not in attrs:
        raise invalid("volume attribute 'datastore' or 'type' is required")
    # A name a registry accepts: letters, digits, underscores.
    name = "csi_" + hashlib.sha256(volume_id.encode()).hexdigest()[:16]
    data: dict[str, object] = {"name": name}
    for key in _INLINE_FIELDS:
        if key in attrs:
            data[key] = attrs[key]
    for key, canonical in _CONTAINER_ALIASES.items():
        if key in attrs:
            data[canonical] = attrs[key]
    if account_from_secret and "account_name" not in data:
        data["account_name"] = account_from_secret
    if str(data.get("type", "")).lower() == "local":
        raise invalid("volume attribute 'type': local datastores cannot be described inline")
    if creds:
        data["credentials"] = creds
    elif not workload_identity:
        raise invalid(
            "an inline volume needs a credential: a node-publish secret (account_key, sas_token,"
            " connection_string, or client_id/client_secret/tenant_id) or a workload identity"
            f" (client_id and tenant_id attributes and a {TOKEN_AUDIENCE!r} token)"
        )
    return _parse(data)


def _parse(data: dict[str, object]) -> DatastoreConfig:
    try:
        return parse_datastore(data, "volume attributes")
    except RegistryError as e:
        # "volume attributes: datastore 'x': field 'file_share_name' is required ..."
        raise invalid(str(e).replace("file_share_name", "share_name")) from None
