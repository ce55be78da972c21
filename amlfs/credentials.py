"""Which credential a datastore uses, and how the Azure storage SDKs want it.

A datastore's registry entry may carry one credential form (account key, SAS token, service
principal, connection string). Without one, the environment conventions apply in this order:
AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_KEY (or _ACCESS_KEY,
_ACCOUNT_KEY), AMLFS_ANONYMOUS=1 (a public container), a workload identity
(AZURE_FEDERATED_TOKEN_FILE with AZURE_CLIENT_ID and AZURE_TENANT_ID), then
DefaultAzureCredential. The secret itself never reaches a log line, an error message or a repr: `source` says where it came from.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import RegistryError
from .registry import DatastoreConfig

log = logging.getLogger(__name__)

CONNECTION_STRING = "connection_string"
ACCOUNT_KEY = "account_key"
SAS = "sas"
TOKEN = "token"
ANONYMOUS = "anonymous"

ENV_CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ENV_SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
ENV_KEYS = ("AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY")
ENV_ANONYMOUS = "AMLFS_ANONYMOUS"
#: what the AKS workload identity webhook (and amlfs csi) sets for a federated credential
ENV_WORKLOAD_IDENTITY = ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID")

# The Azure Storage emulator's well-known development account (public and documented).
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_DEV_PORTS = {"blob": 10000, "dfs": 10000}  # the emulator has no Azure Files

SERVICES = ("blob", "file", "dfs")


@dataclass(frozen=True)
class ResolvedCredential:
    """One credential and where it came from. `value` is never shown: see `source`."""

    kind: str  # "connection_string" | "account_key" | "sas" | "token" | "anonymous"
    value: Any = field(repr=False)
    source: (
        str  # human, never the secret: "account key from the registry", "AZURE_STORAGE_SAS_TOKEN"
    )


def parse_connection_string(cs: str) -> dict[str, str]:
    """`Key=Value;...` pairs with lower-cased keys (values may contain '=')."""
    out: dict[str, str] = {}
    for part in cs.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip():
            out[key.strip().lower()] = value.strip()
    return out


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def resolve_credential(
    ds: DatastoreConfig, environ: Mapping[str, str] | None = None
) -> ResolvedCredential:
    """The credential datastore `ds` authenticates with: its registry entry's, else the
    environment's (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    c = ds.credentials
    if c.connection_string:
        return ResolvedCredential(
            CONNECTION_STRING, c.connection_string, "connection string from the registry"
        )
    if c.account_key:
        return ResolvedCredential(ACCOUNT_KEY, c.account_key, "account key from the registry")
    if c.sas_token:
        return ResolvedCredential(SAS, c.sas_token.lstrip("?"), "SAS token from the registry")
    if c.tenant_id or c.client_id or c.client_secret:
        if not (c.tenant_id and c.client_id and c.client_secret):
            raise RegistryError(
                f"datastore {ds.name!r}: a service principal needs tenant_id, client_id and"
                " client_secret"
            )
        return ResolvedCredential(
            TOKEN,
            _service_principal(c.tenant_id, c.client_id, c.client_secret, c.authority_url),
            f"service principal (client {c.client_id[:8]}...) from the registry",
        )

    if env.get(ENV_CONNECTION_STRING):
        return ResolvedCredential(
            CONNECTION_STRING, env[ENV_CONNECTION_STRING], ENV_CONNECTION_STRING
        )
    if env.get(ENV_SAS_TOKEN, "").lstrip("?"):
        return ResolvedCredential(SAS, env[ENV_SAS_TOKEN].lstrip("?"), ENV_SAS_TOKEN)
    for var in ENV_KEYS:
        if env.get(var):
            return ResolvedCredential(ACCOUNT_KEY, env[var], var)
    if _truthy(env.get(ENV_ANONYMOUS)):
        return ResolvedCredential(ANONYMOUS, None, f"anonymous access ({ENV_ANONYMOUS})")
    if all(env.get(v) for v in ENV_WORKLOAD_IDENTITY):
        return ResolvedCredential(
            TOKEN,
            workload_identity_credential(env),
            f"workload identity (client {env['AZURE_CLIENT_ID'][:8]}...,"
            f" token file {env['AZURE_FEDERATED_TOKEN_FILE']})",
        )
    return ResolvedCredential(TOKEN, LazyDefaultAzureCredential(), "DefaultAzureCredential")


def workload_identity_credential(env: Mapping[str, str]) -> Any:
    """A federated token file (a Kubernetes service-account token) exchanged for an Azure AD
    token as a client assertion; the file is re-read as it is rotated. DefaultAzureCredential
    would find the same variables, but could not be told to trust an authority named in
    AZURE_AUTHORITY_HOST without asking login.microsoftonline.com first (see
    _service_principal)."""
    from azure.identity import WorkloadIdentityCredential

    kwargs: dict[str, Any] = {}
    if env.get("AZURE_AUTHORITY_HOST"):
        kwargs["authority"] = env["AZURE_AUTHORITY_HOST"]
        kwargs["disable_instance_discovery"] = True
    return _WithoutAuthResponse(
        WorkloadIdentityCredential(
            tenant_id=env["AZURE_TENANT_ID"],
            client_id=env["AZURE_CLIENT_ID"],
            token_file_path=env["AZURE_FEDERATED_TOKEN_FILE"],
            **kwargs,
        )
    )


class _WithoutAuthResponse:
    """A credential whose refusals carry no HTTP response. WorkloadIdentityCredential attaches
    Azure AD's response to its ClientAuthenticationError; the ADLS SDK then parses that as a
    storage error body and fails with AttributeError ('str' object has no attribute 'get')
    instead of reporting the refusal. ClientSecretCredential's errors carry none."""

    def __init__(self, credential: Any):
        self._credential = credential

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError

        try:
            return getattr(self._credential, method)(*args, **kwargs)
        except ClientAuthenticationError as e:
            raise ClientAuthenticationError(message=e.message) from None

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._call("get_token", *scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self._call("get_token_info", *scopes, options=options)

    def close(self) -> None:
        self._credential.close()

    def __enter__(self) -> _WithoutAuthResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _service_principal(
    tenant_id: str, client_id: str, client_secret: str, authority_url: str | None
) -> Any:
    from azure.identity import ClientSecretCredential

    kwargs: dict[str, Any] = {}
    if authority_url:
        # azure-identity wants the authority host ("login.microsoftonline.us"), with or
        # without a scheme; the v2 schema stores a URL that may carry a path.
        parts = urlsplit(authority_url if "://" in authority_url else f"https://{authority_url}")
        kwargs["authority"] = parts.netloc or authority_url
        # An authority named in the registry is trusted as given: without this, MSAL first asks
        # login.microsoftonline.com to vouch for any host it does not know (ADFS, Azure Stack,
        # a test AAD), which fails offline. Known Microsoft hosts skip that check anyway.
        kwargs["disable_instance_discovery"] = True
    return ClientSecretCredential(tenant_id, client_id, client_secret, **kwargs)


class LazyDefaultAzureCredential:
    """DefaultAzureCredential (without the interactive browser), built on first use.

    Importing and building it costs time and probes the environment; a datastore that never
    makes a request (or fails before one) should not pay for it.
    """

    def __init__(self, **kwargs: Any):
        self._kwargs = {"exclude_interactive_browser_credential": True, **kwargs}
        self._credential: Any = None
        self._lock = threading.Lock()

    def _get(self) -> Any:
        with self._lock:
            if self._credential is None:
                from azure.identity import DefaultAzureCredential

                self._credential = DefaultAzureCredential(**self._kwargs)
            return self._credential

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._get().get_token(*scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        credential = self._get()
        if hasattr(credential, "get_token_info"):
            return credential.get_token_info(*scopes, options=options)
        from azure.core.credentials import AccessTokenInfo  # an azure-identity before 1.18

        token = credential.get_token(*scopes)
        return AccessTokenInfo(token.token, token.expires_on)

    def close(self) -> None:
        with self._lock:
            if self._credential is not None:
                self._credential.close()
                self._credential = None

    def __enter__(self) -> LazyDefaultAzureCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "LazyDefaultAzureCredential()"


def _registry_or_env_connection_string(ds: DatastoreConfig) -> str | None:
    """The connection string resolve_credential would pick for `ds`, if any."""
    if ds.credentials.connection_string:
        return ds.credentials.connection_string
    if ds.credentials.is_empty():
        return os.environ.get(ENV_CONNECTION_STRING) or None
    return None


def _connection_string_url(cs: str, service: str, ds: DatastoreConfig) -> str:
    parts = parse_connection_string(cs)
    if _truthy(parts.get("usedevelopmentstorage")):
        if service not in _DEV_PORTS:
            raise RegistryError(
                f"datastore {ds.name!r}: UseDevelopmentStorage=true names no {service} endpoint"
                " (the storage emulator has no Azure Files service)"
            )
        return f"http://127.0.0.1:{_DEV_PORTS[service]}/{DEV_ACCOUNT}"
    # ADLS Gen2 serves the same account on its dfs host; connection strings name the blob one.
    explicit = parts.get("dfsendpoint" if service == "dfs" else f"{service}endpoint")
    if explicit is None and service == "dfs" and parts.get("blobendpoint"):
        explicit = parts["blobendpoint"].replace(".blob.", ".dfs.", 1)
    if explicit:
        return explicit.rstrip("/")
    account = parts.get("accountname") or ds.account_name
    if not account:
        raise RegistryError(
            f"datastore {ds.name!r}: the connection string names neither AccountName nor"
            f" {service.capitalize()}Endpoint"
        )
    protocol = parts.get("defaultendpointsprotocol") or ds.protocol or "https"
    suffix = parts.get("endpointsuffix") or ds.endpoint or "core.windows.net"
    return f"{protocol}://{account}.{service}.{suffix}"


def account_url(ds: DatastoreConfig, service: str, rc: ResolvedCredential | None = None) -> str:
    """The account endpoint URL of `ds` for `service` ("blob", "file" or "dfs").

    An explicit `account_url` is used as given (emulators serve every service on one URL); else
    the endpoint a connection string names (that of `rc`, or the one resolve_credential would
    pick); else `{protocol}://{account_name}.{service}.{endpoint}`.
    """
    if service not in SERVICES:
        raise ValueError(f"unknown storage service {service!r}")
    if ds.account_url:
        return ds.account_url.rstrip("/")
    if rc is not None:
        cs = rc.value if rc.kind == CONNECTION_STRING else None
    else:
        cs = _registry_or_env_connection_string(ds)
    if cs:
        return _connection_string_url(cs, service, ds)
    if not ds.account_name:
        raise RegistryError(f"datastore {ds.name!r}: account_name (or account_url) is required")
    return f"{ds.protocol}://{ds.account_name}.{service}.{ds.endpoint}"


def sdk_credential(rc: ResolvedCredential, account_name: str | None) -> Any:
    """What an azure.storage `*ServiceClient(account_url, credential=...)` wants for `rc`:
    an AzureNamedKeyCredential for a key, the SAS string, the TokenCredential, or None."""
    from azure.core.credentials import AzureNamedKeyCredential

    if rc.kind == ACCOUNT_KEY:
        if not account_name:
            raise RegistryError(f"an account key ({rc.source}) needs the datastore's account_name")
        return AzureNamedKeyCredential(account_name, rc.value)
    if rc.kind == SAS:
        return rc.value
    if rc.kind == TOKEN:
        return rc.value
    if rc.kind == ANONYMOUS:
        return None
    if rc.kind == CONNECTION_STRING:
        parts = parse_connection_string(rc.value)
        if _truthy(parts.get("usedevelopmentstorage")):
            return AzureNamedKeyCredential(DEV_ACCOUNT, DEV_KEY)
        if parts.get("accountkey"):
            name = parts.get("accountname") or account_name
            if not name:
                raise RegistryError(f"the {rc.source} has an AccountKey but no AccountName")
            return AzureNamedKeyCredential(name, parts["accountkey"])
        if parts.get("sharedaccesssignature"):
            return parts["sharedaccesssignature"].lstrip("?")
        return None
    raise ValueError(f"unknown credential kind {rc.kind!r}")


def secret_values(rc: ResolvedCredential) -> tuple[str, ...]:
    """The secret strings of `rc`, so that error text can be scrubbed of them."""
    if rc.kind in (ACCOUNT_KEY, SAS) and isinstance(rc.value, str):
        return (rc.value,)
    if rc.kind == CONNECTION_STRING:
        parts = parse_connection_string(rc.value)
        return tuple(
            v for k in ("accountkey", "sharedaccesssignature") if (v := parts.get(k)) and len(v) > 3
        ) + (rc.value,)
    return ()


def redact(text: str, rc: ResolvedCredential | None = None) -> str:
    """`text` with SAS signatures and the secrets of `rc` replaced by '***'."""
    text = re.sub(r"(?i)(sig=)[^&\s'\"]+", r"\1***", text)
    if rc is not None:
        for secret in secret_values(rc):
            text = text.replace(secret, "***")
    return text
