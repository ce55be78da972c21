"""The File share and ADLS Gen2 test servers against the Azure SDKs' documented behaviour:
signatures, SAS validity and scope, error codes and bodies, Range, If-Match and paging."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import requests
from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.filedatalake import DataLakeServiceClient, generate_file_system_sas
from azure.storage.fileshare import ShareServiceClient, generate_account_sas, generate_share_sas

from tests.servers.auth import _header_sort_key
from tests.servers.fixtures import adls_server, adls_tls, fileshare_server, unique  # noqa: F401

WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXk="
HOUR = dt.timedelta(hours=1)


def _now():
    return dt.datetime.now(dt.UTC)


def _share(server, key=None):
    svc = ShareServiceClient(
        server.account_url,
        credential={"account_name": server.account, "account_key": key or server.key},
    )
    name = unique("s")
    server.create_share(name)
    return svc.get_share_client(name)


def _fs(server, key=None):
    svc = DataLakeServiceClient(
        server.account_url,
        credential={"account_name": server.account, "account_key": key or server.key},
    )
    name = unique("fs")
    server.create_filesystem(name)
    return svc.get_file_system_client(name)


# --- authentication ------------------------------------------------------------------------------


def test_header_order_matches_the_sdk():
    from azure.storage.fileshare._shared.authentication import _storage_header_sort

    names = [
        "x-ms-version",
        "x-ms-meta-a_b",
        "x-ms-meta-ab",
        "x-ms-meta-a-c",
        "x-ms-date",
        "x-ms-meta-a1",
        "x-ms-range",
        "x-ms-file-attributes",
        "x-ms-client-request-id",
    ]
    ours = sorted(names, key=lambda n: (_header_sort_key(n), n))
    assert ours == [k for k, _ in _storage_header_sort([(n, "") for n in names])]


def test_fileshare_wrong_key_fails_authentication(fileshare_server):  # noqa: F811
    share = _share(fileshare_server)
    share.get_share_properties()
    bad = ShareServiceClient(
        fileshare_server.account_url,
        credential={"account_name": fileshare_server.account, "account_key": WRONG_KEY},
    )
    with pytest.raises(ClientAuthenticationError) as ei:
        bad.get_share_client(share.share_name).get_directory_client(
            ""
        ).list_directories_and_files().next()
    assert ei.value.error_code == "AuthenticationFailed" and ei.value.status_code == 403


def test_adls_wrong_key_fails_on_both_endpoints(adls_server):  # noqa: F811
    fs = _fs(adls_server)
    fs.get_file_client("f").upload_data(b"x", overwrite=True)
    bad = DataLakeServiceClient(
        adls_server.account_url,
        credential={"account_name": adls_server.account, "account_key": WRONG_KEY},
    ).get_file_system_client(fs.file_system_name)
    with pytest.raises(ClientAuthenticationError) as ei:
        list(bad.get_paths())  # DFS
    assert ei.value.error_code == "AuthenticationFailed"
    with pytest.raises(ClientAuthenticationError):
        bad.get_file_client("f").download_file().readall()  # Blob


def test_expired_sas_fails(fileshare_server, adls_server):  # noqa: F811
    share = _share(fileshare_server)
    sas = generate_share_sas(
        fileshare_server.account,
        share.share_name,
        fileshare_server.key,
        permission="rl",
        expiry=_now() - dt.timedelta(seconds=30),
    )
    with pytest.raises(ClientAuthenticationError) as ei:
        ShareServiceClient(fileshare_server.account_url, credential=sas).get_share_client(
            share.share_name
        ).get_share_properties()
    assert ei.value.status_code == 403
    fs = _fs(adls_server)
    sas = generate_file_system_sas(
        adls_server.account,
        fs.file_system_name,
        adls_server.key,
        permission="rl",
        expiry=_now() - dt.timedelta(seconds=30),
    )
    with pytest.raises(ClientAuthenticationError):
        list(
            DataLakeServiceClient(adls_server.account_url, credential=sas)
            .get_file_system_client(fs.file_system_name)
            .get_paths()
        )


def test_sas_scope_and_permissions(fileshare_server):  # noqa: F811
    a, b = _share(fileshare_server), _share(fileshare_server)
    a.get_file_client("f").upload_file(b"data")
    sas = generate_share_sas(
        fileshare_server.account,
        a.share_name,
        fileshare_server.key,
        permission="r",
        expiry=_now() + HOUR,
    )
    svc = ShareServiceClient(fileshare_server.account_url, credential=sas)
    assert (
        svc.get_share_client(a.share_name).get_file_client("f").download_file().readall() == b"data"
    )
    with pytest.raises(HttpResponseError) as ei:  # 'r' does not list
        svc.get_share_client(a.share_name).get_directory_client(
            ""
        ).list_directories_and_files().next()
    assert ei.value.error_code == "AuthorizationPermissionMismatch"
    with pytest.raises(ClientAuthenticationError):  # signed for share a, used on share b
        svc.get_share_client(b.share_name).get_share_properties()


def test_account_sas(fileshare_server):  # noqa: F811
    share = _share(fileshare_server)
    sas = generate_account_sas(
        fileshare_server.account,
        fileshare_server.key,
        resource_types="sco",
        permission="rwdlc",
        expiry=_now() + HOUR,
    )
    svc = ShareServiceClient(fileshare_server.account_url, credential=sas)
    svc.get_share_client(unique("acct")).create_share()
    svc.get_share_client(share.share_name).get_file_client("f").upload_file(b"1")
    obj_only = generate_account_sas(
        fileshare_server.account,
        fileshare_server.key,
        resource_types="o",
        permission="rwdlc",
        expiry=_now() + HOUR,
    )
    with pytest.raises(HttpResponseError) as ei:
        ShareServiceClient(fileshare_server.account_url, credential=obj_only).get_share_client(
            unique("x")
        ).create_share()
    assert ei.value.error_code == "AuthorizationResourceTypeMismatch"


def test_https_only_sas_on_http(fileshare_server):  # noqa: F811
    share = _share(fileshare_server)
    sas = generate_share_sas(
        fileshare_server.account,
        share.share_name,
        fileshare_server.key,
        permission="r",
        expiry=_now() + HOUR,
        protocol="https",
    )
    r = requests.head(f"{share.url}?restype=share&{sas}", headers={"x-ms-version": "2025-01-05"})
    assert (r.status_code, r.headers["x-ms-error-code"]) == (403, "AuthorizationProtocolMismatch")


# --- errors, Range and If-Match on the wire ------------------------------------------------------


@pytest.fixture
def share_file(fileshare_server):  # noqa: F811
    share = _share(fileshare_server)
    share.get_file_client("f.bin").upload_file(bytes(range(100)))
    sas = generate_share_sas(
        fileshare_server.account,
        share.share_name,
        fileshare_server.key,
        permission="rl",
        expiry=_now() + HOUR,
    )
    return f"{share.url}/f.bin", sas


def test_fileshare_range_and_errors_on_the_wire(share_file):
    url, sas = share_file
    h = {"x-ms-version": "2025-01-05"}
    r = requests.get(f"{url}?{sas}", headers={**h, "x-ms-range": "bytes=10-19"})
    assert r.status_code == 206 and r.content == bytes(range(10, 20))
    assert r.headers["Content-Range"] == "bytes 10-19/100" and r.headers["Content-Length"] == "10"
    assert r.headers["ETag"].startswith('"0x') and r.headers["Last-Modified"].endswith("GMT")
    r = requests.get(f"{url}?{sas}", headers={**h, "Range": "bytes=100-"})
    assert (r.status_code, r.headers["x-ms-error-code"]) == (416, "InvalidRange")
    assert b"<Code>InvalidRange</Code>" in r.content
    r = requests.get(f"{url}?{sas}", headers=h)
    assert r.status_code == 200 and len(r.content) == 100
    r = requests.get(url.replace("f.bin", "nope") + f"?{sas}", headers=h)
    assert (r.status_code, r.headers["x-ms-error-code"]) == (404, "ResourceNotFound")
    r = requests.head(url + f"?{sas}", headers=h)
    assert (
        r.status_code == 200
        and r.headers["Content-Length"] == "100"
        and r.headers["x-ms-type"] == "File"
    )


def test_fileshare_missing_things(fileshare_server):  # noqa: F811
    share = _share(fileshare_server)
    with pytest.raises(ResourceNotFoundError) as ei:
        share.get_file_client("a/b/c").get_file_properties()
    assert ei.value.error_code == "ParentNotFound"
    with pytest.raises(ResourceNotFoundError) as ei:
        share.get_file_client("c").download_file()
    assert ei.value.error_code == "ResourceNotFound"
    svc = ShareServiceClient(
        fileshare_server.account_url,
        credential={"account_name": fileshare_server.account, "account_key": fileshare_server.key},
    )
    with pytest.raises(ResourceNotFoundError) as ei:
        svc.get_share_client(unique("none")).get_share_properties()
    assert ei.value.error_code == "ShareNotFound"


def test_adls_if_match_range_and_json_errors(adls_server):  # noqa: F811
    fs = _fs(adls_server)
    f = fs.get_file_client("d/f.bin")
    f.upload_data(bytes(range(100)), overwrite=True)
    etag = f.get_file_properties().etag
    assert f.download_file(
        offset=5, length=5, etag=etag, match_condition=MatchConditions.IfNotModified
    ).readall() == bytes(range(5, 10))
    f.upload_data(b"changed", overwrite=True)
    with pytest.raises(ResourceModifiedError) as ei:
        f.download_file(
            offset=0, length=5, etag=etag, match_condition=MatchConditions.IfNotModified
        ).readall()
    assert ei.value.status_code == 412 and ei.value.error_code == "ConditionNotMet"

    sas = generate_file_system_sas(
        adls_server.account,
        fs.file_system_name,
        adls_server.key,
        permission="rl",
        expiry=_now() + HOUR,
    )
    base = f"{adls_server.account_url}/{fs.file_system_name}"
    h = {"x-ms-version": "2025-01-05"}
    r = requests.get(f"{base}/d/f.bin?{sas}", headers={**h, "Range": "bytes=2-4"})
    assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b"ang", "bytes 2-4/7")
    r = requests.get(f"{base}/d/f.bin?{sas}", headers={**h, "Range": "bytes=7-"})
    assert (r.status_code, r.headers["x-ms-error-code"]) == (416, "InvalidRange")
    r = requests.get(f"{base}?resource=filesystem&recursive=false&directory=nope&{sas}", headers=h)
    assert (r.status_code, r.headers["x-ms-error-code"]) == (404, "PathNotFound")
    assert json.loads(r.content)["error"]["code"] == "PathNotFound"
    r = requests.get(f"{base}/nope?{sas}", headers=h)  # the Blob endpoint answers in XML
    assert r.status_code == 404 and b"<Code>BlobNotFound</Code>" in r.content
    r = requests.head(f"{base}/d?{sas}", headers=h)
    assert (
        r.headers["x-ms-meta-hdi_isfolder"] == "true"
        and r.headers["x-ms-resource-type"] == "directory"
    )


# --- paging --------------------------------------------------------------------------------------


def test_fileshare_paging_with_next_marker(fileshare_server):  # noqa: F811
    share = _share(fileshare_server)
    for i in range(7):
        share.get_file_client(f"f{i}").upload_file(b"x")
    pages = share.get_directory_client("").list_directories_and_files(results_per_page=5).by_page()
    sizes = [len(list(p)) for p in pages]
    assert sizes == [3, 3, 1]  # the server caps pages at 3, as Azure caps at 5000
    pages = share.get_directory_client("").list_directories_and_files(results_per_page=2).by_page()
    assert [len(list(p)) for p in pages] == [2, 2, 2, 1]


def test_adls_paging_with_continuation(adls_server):  # noqa: F811
    fs = _fs(adls_server)
    for i in range(7):
        fs.get_file_client(f"dir/f{i}").upload_data(b"x", overwrite=True)
    pages = fs.get_paths("dir", recursive=False, max_results=2).by_page()
    first = list(next(pages))
    assert len(first) == 2 and pages.continuation_token
    rest = [p.name for page in pages for p in page]
    assert sorted([p.name for p in first] + rest) == [f"dir/f{i}" for i in range(7)]


# --- service principal ---------------------------------------------------------------------------


def test_aad_token_endpoint_and_bearer_checks(adls_tls, monkeypatch):  # noqa: F811
    from azure.identity import ClientSecretCredential

    from tests.servers.fixtures import CLIENT_ID, CLIENT_SECRET, TENANT_ID

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", adls_tls.tls.cert)
    server = adls_tls.server
    authority = server.base_url.removeprefix("https://")
    good = ClientSecretCredential(
        TENANT_ID, CLIENT_ID, CLIENT_SECRET, authority=authority, disable_instance_discovery=True
    )
    token = good.get_token("https://storage.azure.com/.default").token
    fs = unique("fs")
    server.create_filesystem(fs)
    url = f"{server.account_url}/{fs}?resource=filesystem&recursive=false"
    h = {
        "x-ms-version": "2025-01-05",
        "x-ms-date": dt.datetime.now(dt.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
    }
    assert requests.get(url, headers={**h, "Authorization": f"Bearer {token}"}).status_code == 200
    r = requests.get(url, headers={**h, "Authorization": "Bearer forged"})
    assert (r.status_code, r.headers["x-ms-error-code"]) == (401, "InvalidAuthenticationInfo")
    bad = ClientSecretCredential(
        TENANT_ID, CLIENT_ID, "wrong", authority=authority, disable_instance_discovery=True
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        bad.get_token("https://storage.azure.com/.default")
