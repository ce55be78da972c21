"""Location specs: DATASTORE[:PATH], :PATH and azureml:// URIs, and every way they can be wrong."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from amlfs.errors import UsageError
from amlfs.uri import Location, parse_location

LONG = "azureml://subscriptions/0000-11/resourcegroups/rg-1/workspaces/ws.1/datastores"


@pytest.mark.parametrize(
    "spec, datastore, path",
    [
        ("data", "data", ""),
        ("data:", "data", ""),
        ("data:a/b.txt", "data", "a/b.txt"),
        ("data:/a/b/", "data", "a/b"),
        ("data:a//./b", "data", "a/b"),
        ("data:./", "data", ""),
        ("Data_2:x:y", "Data_2", "x:y"),  # only the first colon separates
        ("data:a b/ü.txt", "data", "a b/ü.txt"),
        ("data:a%20b", "data", "a%20b"),  # no percent-decoding outside azureml://
        (":", None, ""),
        (":a/b", None, "a/b"),
        (":/", None, ""),
        ("n" * 255, "n" * 255, ""),
        ("azureml://datastores/data/paths/a/b.txt", "data", "a/b.txt"),
        ("azureml://datastores/data/paths/a/b/", "data", "a/b"),
        ("azureml://datastores/data/paths/", "data", ""),
        ("azureml://datastores/data/paths", "data", ""),
        ("azureml://datastores/data", "data", ""),
        ("azureml://datastores/data/", "data", ""),
        ("azureml://datastores/data/paths/a%20b/c%2Fd/%C3%BC.txt", "data", "a b/c/d/ü.txt"),
        ("azureml://datastores/data/paths/a+b%25", "data", "a+b%"),
        ("AzureML://Datastores/data/Paths/x", "data", "x"),
        ("azureml://datastores/work%5Fblob/paths/x", "work_blob", "x"),
        (f"{LONG}/workspaceblobstore/paths/raw/train.csv", "workspaceblobstore", "raw/train.csv"),
        (f"{LONG}/workspaceblobstore/paths/", "workspaceblobstore", ""),
        (f"{LONG}/workspaceblobstore", "workspaceblobstore", ""),
        (
            "azureml://subscriptions/s/resourceGroups/r/workspaces/w/datastores/d/paths/p",
            "d",
            "p",
        ),
    ],
)
def test_forms(spec, datastore, path):
    assert parse_location(spec) == Location(datastore, path)


@pytest.mark.parametrize(
    "spec, why",
    [
        ("my-store:x", "'my-store' is not a datastore name"),
        ("a b", "'a b' is not a datastore name"),
        ("n" * 256, "is not a datastore name"),
        ("/abs/path", "'/abs/path' is not a datastore name"),
        ("dir/file:x", "'dir/file' is not a datastore name"),
        ("..", "'..' is not a datastore name"),
        ("data:..", "'..' segments are not allowed"),
        ("data:a/../../etc", "'..' segments are not allowed"),
        (":../x", "'..' segments are not allowed"),
        ("data:a\0b", "the path contains a NUL character"),
        ("azureml://datastores/data/paths/a/%2E%2E/b", "'..' segments are not allowed"),
        ("azureml://datastores/data/paths/%2e%2e%2fx", "'..' segments are not allowed"),
        ("azureml://datastores/data/paths/a%00", "the path contains a NUL character"),
        ("azureml://datastores/data/paths/%FF", "the path is not valid percent-encoded UTF-8"),
        (
            "azureml://datastores/%FF/paths/x",
            "the datastore name is not valid percent-encoded UTF-8",
        ),
        ("azureml://datastores/my-store/paths/x", "'my-store' is not a datastore name"),
        ("azureml://datastores/a%2Fb/paths/x", "'a/b' is not a datastore name"),
        ("azureml://", "unknown azureml:// form"),
        ("azureml://datastores", "unknown azureml:// form"),
        ("azureml://datastores/", "unknown azureml:// form"),
        ("azureml://datastores//paths/x", "unknown azureml:// form"),
        ("azureml://datastore/data/paths/x", "unknown azureml:// form"),
        ("azureml://datastores/data/files/x", "unknown azureml:// form"),
        ("azureml://datastores/data//x", "unknown azureml:// form"),
        (
            "azureml://subscriptions/s/resourcegroups/r/datastores/d/paths/p",
            "unknown azureml:// form",
        ),
        (
            "azureml://subscriptions/s/resourcegroups/r/workspaces//datastores/d",
            "unknown azureml:// form",
        ),
        ("azureml://subscriptions/s/resourcegroups/r/workspaces/w", "unknown azureml:// form"),
        (
            "azureml://locations/westeurope/workspaces/w/data/d/versions/1",
            "unknown azureml:// form",
        ),
        ("azureml:mydata:1", "data asset references are not supported"),
        ("azureml:/datastores/d/paths/x", "data asset references are not supported"),
        ("https://acct.blob.core.windows.net/c/x", "only azureml:// URIs are supported"),
        ("wasbs://c@acct.blob.core.windows.net/x", "only azureml:// URIs are supported"),
    ],
)
def test_errors_name_the_spec(spec, why):
    with pytest.raises(UsageError) as exc:
        parse_location(spec)
    msg = str(exc.value)
    assert msg.startswith(f"bad location {spec!r}: ")
    assert why in msg
    assert "\n" not in msg
    assert exc.value.exit_code == 2


def test_empty_spec():
    with pytest.raises(UsageError) as exc:
        parse_location("")
    assert str(exc.value) == (
        "empty location: expected DATASTORE[:PATH], :PATH or azureml://datastores/NAME/paths/PATH"
    )


def test_url_query_string_is_never_echoed():
    secret = "sig=FAKESIGNATUREsecret"
    spec = f"https://acct.blob.core.windows.net/c/x?sv=2022&{secret}"
    with pytest.raises(UsageError) as exc:
        parse_location(spec)
    assert "FAKESIGNATURE" not in str(exc.value)
    assert "'https://acct.blob.core.windows.net/c/x?***'" in str(exc.value)


def test_location_value():
    loc = parse_location("data:a/b")
    assert str(loc) == "data:a/b"
    assert str(parse_location(":x")) == ":x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        loc.path = "c"  # type: ignore[misc]
    assert {loc, parse_location("azureml://datastores/data/paths/a/b")} == {loc}


_segment = st.text(
    st.characters(blacklist_characters="/\\\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda s: s not in (".", ".."))


@given(
    name=st.from_regex(r"[A-Za-z0-9_]{1,40}", fullmatch=True),
    segments=st.lists(_segment, max_size=4),
)
def test_azureml_uri_round_trips_any_path(name, segments):
    path = "/".join(segments)
    uri = f"azureml://datastores/{name}/paths/{quote(path, safe='/')}"
    assert parse_location(uri) == Location(name, path)
    long = f"azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/{name}/paths/"
    assert parse_location(long + quote(path)) == Location(name, path)
