"""Credential resolution, endpoint URLs, and every credential form Azurite accepts, end to end."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import subprocess
import tempfile
import time
import uuid

import pytest
from azure.core.credentials import AccessToken, AzureNamedKeyCredential
from azure.storage.blob import (
    AccountSasPermissions,
    ContainerSasPermissions,
    ResourceTypes,
    generate_account_sas,
    generate_container_sas,
)

from amlfs.backends.blob import BlobBackend
from amlfs.backends.errors import Forbidden, NotFound
from amlfs.credentials import (
    DEV_KEY,
    LazyDefaultAzureCredential,
    ResolvedCredential,
    account_url,
    resolve_credential,
    sdk_credential,
)
from amlfs.errors import RegistryError
from amlfs.registry import BLOB, FILE, Credentials, DatastoreConfig

from .azurite import ACCOUNT, KEY, azurite_binary, free_port

WRONG_KEY = base64.b64encode(
    b"not the key, but 64 bytes long: padding padding padding padding!"
).decode()


def _expiry() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


def container_sas(container: str, **perms: bool) -> str:
    perms = perms or {"read": True, "write": True, "list": True, "create": True, "delete": True}
    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(**perms),
        expiry=_expiry(),
    )


def round_trip(ds: DatastoreConfig, name: str = "dir/hello.txt") -> None:
    """Write, stat, list and read back through a backend built from `ds`."""
    b = BlobBackend.from_config(ds)
    try:
        data = f"hello via {ds.name}".encode()
        b.write_bytes(name, data)
        assert b.stat(name).size == len(data)
        assert [e.name for e in b.list_dir(name.rsplit("/", 1)[0])] == [name.rsplit("/", 1)[1]]
        assert b.read_all(name) == data
        b.check_access()
    finally:
        b.close()


def cfg(azurite, container: str, creds: Credentials | None = None, **kw) -> DatastoreConfig:
    fields = {
        "name": "ds",
        "type": BLOB,
        "account_name": ACCOUNT,
        "container_name": container,
        "account_url": azurite.account_url,
        "protocol": "http",
        "credentials": creds or Credentials(),
    }
    fields.update(kw)
    return DatastoreConfig(**fields)


# --- end to end against Azurite ------------------------------------------------------------------


def test_account_key_from_registry(azurite, container):
    ds = cfg(azurite, container, Credentials(account_key=KEY))
    assert resolve_credential(ds).source == "account key from the registry"
    round_trip(ds)


@pytest.mark.parametrize("lead", ["", "?"])
def test_container_sas_from_registry(azurite, container, lead):
    ds = cfg(azurite, container, Credentials(sas_token=lead + container_sas(container)))
    rc = resolve_credential(ds)
    assert rc.kind == "sas" and not rc.value.startswith("?")
    round_trip(ds)


def test_account_sas(azurite, container):
    sas = generate_account_sas(
        ACCOUNT,
        KEY,
        resource_types=ResourceTypes(container=True, object=True),
        permission=AccountSasPermissions(
            read=True, write=True, list=True, create=True, delete=True
        ),
        expiry=_expiry(),
    )
    round_trip(cfg(azurite, container, Credentials(sas_token=sas)))


def test_connection_string_with_key_and_explicit_endpoint(azurite, container):
    # No account_url, no account_name in the datastore: everything comes from the string.
    ds = cfg(
        azurite,
        container,
        Credentials(connection_string=azurite.connection_string),
        account_url=None,
        account_name=None,
    )
    assert account_url(ds, "blob") == azurite.account_url
    round_trip(ds)


def test_connection_string_with_sas(azurite, container):
    sas = container_sas(container)
    cs = f"BlobEndpoint={azurite.account_url}/;SharedAccessSignature=?{sas}"
    ds = cfg(
        azurite, container, Credentials(connection_string=cs), account_url=None, account_name=None
    )
    assert sdk_credential(resolve_credential(ds), None) == sas
    round_trip(ds)


def test_environment_credentials_end_to_end(azurite, container, monkeypatch):
    ds = cfg(azurite, container)
    for var in ("AZURE_STORAGE_KEY", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_ACCOUNT_KEY"):
        monkeypatch.setenv(var, KEY)
        assert resolve_credential(ds).source == var
        round_trip(ds, f"{var}/f")
        monkeypatch.delenv(var)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", "?" + container_sas(container))
    round_trip(ds, "sas/f")
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN")
    # The endpoint, too, comes from the environment's connection string.
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    round_trip(cfg(azurite, container, account_url=None, account_name=None), "cs/f")


def test_anonymous_public_container(azurite, monkeypatch):
    name = f"pub{uuid.uuid4().hex[:12]}"
    cc = azurite.service().create_container(name, public_access="container")
    cc.upload_blob("open/data.txt", b"public")
    monkeypatch.setenv("AMLFS_ANONYMOUS", "1")
    ds = cfg(azurite, name)
    rc = resolve_credential(ds)
    assert rc.kind == "anonymous" and sdk_credential(rc, ACCOUNT) is None
    b = BlobBackend.from_config(ds)
    try:
        assert [e.path for e in b.walk()] == ["open/data.txt"]
        assert b.read_all("open/data.txt") == b"public"
        with pytest.raises(Forbidden, match="anonymous"):
            b.write_bytes("nope", b"x")
    finally:
        b.close()
        cc.delete_container()


# --- failures name the credential's source, never the secret -------------------------------------


def test_wrong_key_forbidden_names_source_not_secret(azurite, container, monkeypatch):
    b = BlobBackend.from_config(cfg(azurite, container, Credentials(account_key=WRONG_KEY)))
    with pytest.raises(Forbidden) as e:
        b.stat("x")
    b.close()
    msg = str(e.value)
    assert "account key from the registry" in msg and container in msg
    assert WRONG_KEY not in msg and WRONG_KEY[:12] not in msg
    assert WRONG_KEY not in repr(b) and WRONG_KEY not in repr(b.credential)

    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", WRONG_KEY)
    b = BlobBackend.from_config(cfg(azurite, container))
    with pytest.raises(Forbidden, match="AZURE_STORAGE_ACCOUNT_KEY") as e:
        b.list_page("")
    b.close()
    assert WRONG_KEY not in str(e.value)


def test_bad_or_insufficient_sas_forbidden(azurite, container):
    good = container_sas(container)
    tampered = good.replace("sig=", "sig=AAAA")
    b = BlobBackend.from_config(cfg(azurite, container, Credentials(sas_token=tampered)))
    with pytest.raises(Forbidden, match="SAS token from the registry") as e:
        b.read_range("x", 0, 1)
    b.close()
    assert "sig=" not in str(e.value) and tampered not in str(e.value)

    read_only = container_sas(container, read=True, list=True)
    b = BlobBackend.from_config(cfg(azurite, container, Credentials(sas_token=read_only)))
    try:
        assert b.list_page("") == ([], None)
        with pytest.raises(Forbidden):
            b.write_bytes("f", b"x")
    finally:
        b.close()


def test_sas_without_list_permission_still_stats_and_reads_files(azurite, container):
    azurite.service().get_container_client(container).upload_blob("d/f.txt", b"readable")
    ds = cfg(azurite, container, Credentials(sas_token=container_sas(container, read=True)))
    b = BlobBackend.from_config(ds)
    try:
        info = b.stat("d/f.txt")  # HEAD works; the "is it also a prefix?" listing is refused
        assert (info.is_dir, info.size) == (False, 8)
        assert b.read_all("d/f.txt") == b"readable"
        with pytest.raises(Forbidden):
            b.list_page("d")
    finally:
        b.close()


def test_missing_blob_with_good_credentials_is_not_found(azurite, container):
    b = BlobBackend.from_config(
        cfg(azurite, container, Credentials(sas_token=container_sas(container)))
    )
    with pytest.raises(NotFound):
        b.stat("absent")
    b.close()


# --- resolution order and parsing (no service needed) --------------------------------------------


def _ds(**creds: str) -> DatastoreConfig:
    return DatastoreConfig(
        name="ds",
        type=BLOB,
        account_name="acct",
        container_name="c",
        credentials=Credentials(**creds),
    )


def test_environment_order():
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct;AccountKey=a2V5",
        "AZURE_STORAGE_SAS_TOKEN": "?sv=1&sig=abc",
        "AZURE_STORAGE_KEY": "a2V5MQ==",
        "AZURE_STORAGE_ACCESS_KEY": "a2V5Mg==",
        "AZURE_STORAGE_ACCOUNT_KEY": "a2V5Mw==",
    }
    expected = [
        (
            "connection_string",
            "AZURE_STORAGE_CONNECTION_STRING",
            env["AZURE_STORAGE_CONNECTION_STRING"],
        ),
        ("sas", "AZURE_STORAGE_SAS_TOKEN", "sv=1&sig=abc"),
        ("account_key", "AZURE_STORAGE_KEY", "a2V5MQ=="),
        ("account_key", "AZURE_STORAGE_ACCESS_KEY", "a2V5Mg=="),
        ("account_key", "AZURE_STORAGE_ACCOUNT_KEY", "a2V5Mw=="),
    ]
    for kind, source, value in expected:
        rc = resolve_credential(_ds(), env)
        assert (rc.kind, rc.source, rc.value) == (kind, source, value)
        del env[source]
    rc = resolve_credential(_ds(), {})
    assert (rc.kind, rc.source) == ("token", "DefaultAzureCredential")
    assert isinstance(rc.value, LazyDefaultAzureCredential)
    assert rc.value._credential is None  # nothing built, imported or probed yet
    assert resolve_credential(_ds(), {"AMLFS_ANONYMOUS": "true"}).kind == "anonymous"
    assert resolve_credential(_ds(), {"AZURE_STORAGE_SAS_TOKEN": "?"}).kind == "token"


def test_registry_beats_environment():
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": "AccountName=x;AccountKey=eQ==",
        "AZURE_STORAGE_KEY": "eQ==",
    }
    assert (
        resolve_credential(_ds(account_key="a2V5"), env).source == "account key from the registry"
    )
    rc = resolve_credential(_ds(sas_token="?sv=2&sig=x"), env)
    assert (rc.kind, rc.value, rc.source) == ("sas", "sv=2&sig=x", "SAS token from the registry")
    assert resolve_credential(
        _ds(connection_string="AccountName=a;AccountKey=eQ=="), env
    ).source == ("connection string from the registry")


def test_service_principal():
    from azure.identity import ClientSecretCredential

    ds = _ds(
        tenant_id="72f988bf-0000-0000-0000-000000000000",
        client_id="12345678-aaaa-bbbb-cccc-123456789abc",
        client_secret="s3cr3t-value",
        authority_url="https://login.microsoftonline.us/",
    )
    rc = resolve_credential(ds, {"AZURE_STORAGE_KEY": "eQ=="})
    assert rc.kind == "token" and isinstance(rc.value, ClientSecretCredential)
    assert rc.source == "service principal (client 12345678...) from the registry"
    assert "s3cr3t" not in repr(rc) and "s3cr3t" not in rc.source
    assert sdk_credential(rc, "acct") is rc.value
    # The authority host reaches MSAL (sovereign clouds), without the scheme or path.
    assert rc.value._authority == "https://login.microsoftonline.us"  # read, not patched
    with pytest.raises(RegistryError, match="tenant_id, client_id and client_secret"):
        resolve_credential(_ds(tenant_id="t", client_id="c"), {})


def test_repr_never_shows_the_secret():
    rc = ResolvedCredential("account_key", "VERYSECRET==", "account key from the registry")
    assert "VERYSECRET" not in repr(rc) and "VERYSECRET" not in str(rc)
    named = sdk_credential(rc, "acct")
    assert isinstance(named, AzureNamedKeyCredential) and named.named_key == (
        "acct",
        "VERYSECRET==",
    )
    assert "VERYSECRET" not in repr(named)
    with pytest.raises(RegistryError, match="account_name"):
        sdk_credential(rc, None)


def test_account_urls():
    ds = _ds()
    assert account_url(ds, "blob") == "https://acct.blob.core.windows.net"
    assert account_url(ds, "file") == "https://acct.file.core.windows.net"
    assert account_url(ds, "dfs") == "https://acct.dfs.core.windows.net"
    ds.endpoint, ds.protocol = "core.chinacloudapi.cn", "http"
    assert account_url(ds, "blob") == "http://acct.blob.core.chinacloudapi.cn"
    ds.account_url = "http://127.0.0.1:10000/devstoreaccount1/"
    for service in ("blob", "file", "dfs"):  # an emulator serves one URL: used as given
        assert account_url(ds, service) == "http://127.0.0.1:10000/devstoreaccount1"
    with pytest.raises(ValueError):
        account_url(ds, "queue")
    with pytest.raises(RegistryError, match="account_name"):
        account_url(DatastoreConfig(name="n", type=BLOB, container_name="c"), "blob")


def test_connection_string_endpoints():
    cs = "DefaultEndpointsProtocol=https;AccountName=acc;AccountKey=a2V5;EndpointSuffix=core.usgovcloudapi.net"
    ds = _ds(connection_string=cs)
    assert account_url(ds, "blob") == "https://acc.blob.core.usgovcloudapi.net"
    assert account_url(ds, "dfs") == "https://acc.dfs.core.usgovcloudapi.net"
    named = sdk_credential(resolve_credential(ds, {}), "ignored")
    assert named.named_key == ("acc", "a2V5")
    explicit = "BlobEndpoint=https://acc.blob.core.windows.net/;FileEndpoint=https://acc.file.core.windows.net;SharedAccessSignature=sv=1&sig=a%3D"
    ds = _ds(connection_string=explicit)
    assert account_url(ds, "blob") == "https://acc.blob.core.windows.net"
    assert account_url(ds, "file") == "https://acc.file.core.windows.net"
    assert account_url(ds, "dfs") == "https://acc.dfs.core.windows.net"
    assert sdk_credential(resolve_credential(ds, {}), None) == "sv=1&sig=a%3D"
    # No key, no SAS: anonymous access to the named endpoint.
    assert (
        sdk_credential(
            resolve_credential(_ds(connection_string="BlobEndpoint=https://h/x"), {}), None
        )
        is None
    )


def test_use_development_storage(monkeypatch):
    ds = _ds(connection_string="UseDevelopmentStorage=true")
    ds.account_name = None
    assert account_url(ds, "blob") == "http://127.0.0.1:10000/devstoreaccount1"
    assert account_url(ds, "dfs") == "http://127.0.0.1:10000/devstoreaccount1"
    assert sdk_credential(resolve_credential(ds, {}), None).named_key == (
        "devstoreaccount1",
        DEV_KEY,
    )
    with pytest.raises(RegistryError, match="file"):
        account_url(DatastoreConfig(name="f", type=FILE, credentials=ds.credentials), "file")
    # From the environment, too, when the registry has no credentials.
    env_ds = DatastoreConfig(name="e", type=BLOB, container_name="c")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    assert account_url(env_ds, "blob") == "http://127.0.0.1:10000/devstoreaccount1"


# --- bearer tokens: Azurite accepts them over HTTPS with --oauth basic ---------------------------


def _self_signed(tmp: str) -> tuple[str, str]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


class FakeAADToken:
    """A TokenCredential minting the JWT shape Azurite's basic OAuth checks (issuer, audience,
    lifetime; it does not verify signatures) -- what a ClientSecretCredential would hand over."""

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com",
            "iss": "https://sts.windows.net/ab1f708d-50f6-404c-a006-d71b2ac7a606/",
            "iat": now - 60,
            "nbf": now - 60,
            "exp": now + 3600,
            "oid": str(uuid.uuid4()),
            "tid": "ab1f708d-50f6-404c-a006-d71b2ac7a606",
        }

        def b64(obj: dict) -> str:
            return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

        return AccessToken(f"{b64({'alg': 'RS256', 'typ': 'JWT'})}.{b64(claims)}.c2ln", now + 3600)


@pytest.fixture(scope="module")
def azurite_https():
    binary = azurite_binary()
    if binary is None:
        pytest.skip("azurite is not installed")
    tmp = tempfile.mkdtemp(prefix="amlfs-azurite-tls-")
    cert, key = _self_signed(tmp)
    port = free_port()
    log = open(os.path.join(tmp, "azurite.log"), "wb")
    proc = subprocess.Popen(
        [
            binary,
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
            "--disableProductStyleUrl",
            "--cert",
            cert,
            "--key",
            key,
            "--oauth",
            "basic",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        import socket

        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"azurite (TLS) did not start; see {tmp}/azurite.log")
                time.sleep(0.1)
        yield f"https://127.0.0.1:{port}/{ACCOUNT}", cert
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def test_bearer_token_end_to_end(azurite_https, monkeypatch):
    url, cert = azurite_https
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    rc = ResolvedCredential("token", FakeAADToken(), "a test token credential")
    name = f"tok{uuid.uuid4().hex[:12]}"
    b = BlobBackend(url, name, rc)
    try:
        b.ensure_exists()
        b.write_bytes("t/x.bin", b"token data")
        assert b.read_all("t/x.bin") == b"token data"
        assert [e.path for e in b.walk()] == ["t/x.bin"]
    finally:
        b.close()


def test_default_credential_without_any_identity_is_forbidden(azurite_https, monkeypatch):
    url, cert = azurite_https
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", cert)
    # Every source that would leave loopback (IMDS) or spawn tools is off: none can give a token.
    lazy = LazyDefaultAzureCredential(
        exclude_managed_identity_credential=True,
        exclude_cli_credential=True,
        exclude_powershell_credential=True,
        exclude_developer_cli_credential=True,
        exclude_visual_studio_code_credential=True,
        exclude_shared_token_cache_credential=True,
        exclude_workload_identity_credential=True,
        exclude_environment_credential=False,
    )
    b = BlobBackend(url, "whatever", ResolvedCredential("token", lazy, "DefaultAzureCredential"))
    try:
        with pytest.raises(Forbidden, match="DefaultAzureCredential"):
            b.stat("x")
    finally:
        b.close()
        lazy.close()
