"""Blob directory listings through the lean client (blobget.py, bloblist.py): it is the path the
backend takes, and it lists exactly what the SDK path lists -- entries, their order, attributes
and continuation tokens -- on a tree with every oddity a flat namespace has."""

from __future__ import annotations

import logging
import threading

import pytest
from azure.storage.blob import ContainerClient

from amlfs.backends.blob import BlobBackend
from amlfs.backends.blobget import BlobFastPath
from amlfs.backends.bloblist import ListedBlob, ListedPrefix, parse_listing
from amlfs.backends.errors import NotADirectory, NotFound

# Names that XML must escape ('&', '<', '>', quotes), that URLs must escape ('+', '%', '#', '?',
# ' '), and that are not ASCII.
ODD = ["a+b", "p%20q", "amp&ersand", "lt<gt>", "quo\"te's", "h#sh?q", "sp ace", "ünï", "日本語"]


@pytest.fixture
def tree(azurite, container) -> ContainerClient:
    cc = azurite.service().get_container_client(container)
    files: dict[str, bytes] = {f"odd/{n}": n.encode() for n in ODD}
    files |= {f"odd/{n}/inner": b"in" for n in ODD[:4]}  # odd prefixes, odd prefix paths
    files |= {f"many/f{i:02d}": b"x" * i for i in range(23)}
    # Sorted 'p' < 'p!1' < 'p!2' < 'p/': the blob and its prefix land on different small pages.
    files |= {"many/p": b"file", "many/p!1": b"1", "many/p!2": b"2", "many/p/in": b"in"}
    files |= {"both": b"a file", "both/inner.txt": b"inner", "top.txt": b"top"}
    files |= {"a//b": b"unsafe", "s/" + "q" * 300: b"long", "ok/x": b"x"}
    for name, data in files.items():
        cc.upload_blob(name, data)
    markers = {"mk": "true", "MK2": "TRUE", "empty": "True", "many/sub": "true", "odd/ünï": "true"}
    for name, value in markers.items():
        key = "Hdi_isfolder" if name == "MK2" else "hdi_isfolder"
        cc.upload_blob(name, b"", metadata={key: value}, overwrite=True)
    cc.upload_blob("mk/in", b"1")
    cc.upload_blob("notmarker", b"", metadata={"hdi_isfolder": "false"})
    return cc


def _pages(b: BlobBackend, path: str) -> list[tuple[list, str | None]]:
    out = []
    token = None
    while True:
        entries, token = b.list_page(path, token)
        out.append((entries, token))
        if not token:
            return out


@pytest.fixture
def backends(blob_config):
    lean = BlobBackend.from_config(blob_config)
    sdk = BlobBackend.from_config(blob_config, lean=False)
    yield lean, sdk
    lean.close()
    sdk.close()


@pytest.fixture
def calls(monkeypatch) -> dict[str, int]:
    """Counts the listing requests of each path (the real calls still run)."""
    counts = {"lean": 0, "sdk": 0}
    lean_list, sdk_walk = BlobFastPath.list_page, ContainerClient.walk_blobs

    def lean(self, *args, **kwargs):
        counts["lean"] += 1
        return lean_list(self, *args, **kwargs)

    def sdk(self, *args, **kwargs):
        counts["sdk"] += 1
        return sdk_walk(self, *args, **kwargs)

    monkeypatch.setattr(BlobFastPath, "list_page", lean)
    monkeypatch.setattr(ContainerClient, "walk_blobs", sdk)
    return counts


def test_listing_takes_the_lean_path(tree, backends, calls):
    lean, sdk = backends
    assert {e.name for e in lean.list_dir("odd")} == set(ODD)
    assert calls == {"lean": 1, "sdk": 0}
    assert {e.name for e in sdk.list_dir("odd")} == set(ODD)
    assert calls == {"lean": 1, "sdk": 1}


@pytest.mark.parametrize("page_size", [5000, 3, 1])
def test_lean_listing_equals_the_sdk_listing(tree, backends, calls, page_size, caplog):
    lean, sdk = backends
    lean.page_size = sdk.page_size = page_size
    dirs = ["", "odd", "odd/amp&ersand", "odd/lt<gt>", "odd/a+b", "odd/ünï", "many", "both"]
    dirs += ["mk", "MK2", "empty", "many/sub", "many/p", "s", "ok"]
    with caplog.at_level(logging.INFO, logger="amlfs.backends.blob"):
        for d in dirs:
            mine, theirs = _pages(lean, d), _pages(sdk, d)
            # Entries (path, kind, size, ETag, mtime, MD5), their order, and the tokens.
            assert mine == theirs, d
    assert calls["lean"] >= len(dirs) and calls["sdk"] >= len(dirs)
    if page_size == 1:
        assert len(_pages(lean, "many")) > 20
    listed = {e.name: e.is_dir for page, _ in _pages(lean, "") for e in page}
    assert listed == {
        "odd": True,
        "many": True,
        "both": True,  # a blob and a prefix: the directory
        "top.txt": False,
        "a": True,
        "s": True,
        "ok": True,
        "mk": True,
        "MK2": True,
        "empty": True,
        "notmarker": False,
    }
    many = {e.name: e for page, _ in _pages(lean, "many") for e in page}
    assert many["p"].is_dir and many["sub"].is_dir and not many["p!1"].is_dir
    assert many["f05"].size == 5 and many["f05"].etag.startswith('"')
    assert many["f05"].content_md5 and many["f05"].mtime > 0
    odd = {e.name: e for page, _ in _pages(lean, "odd") for e in page}
    assert set(odd) == set(ODD)
    assert [n for n in ODD if odd[n].is_dir] == ODD[:4] + ["ünï"]
    assert _pages(lean, "s") == [([], None)]  # its one blob's name is not a path
    messages = [r.getMessage() for r in caplog.records]
    # Logged once per backend, however often listed.
    assert sum("'both' is both a blob" in m for m in messages) == 2


def test_tokens_are_interchangeable(tree, backends):
    lean, sdk = backends
    lean.page_size = sdk.page_size = 4
    _, token = lean.list_page("many")
    assert token
    assert sdk.list_page("many", token) == lean.list_page("many", token)
    _, sdk_token = sdk.list_page("many")
    assert sdk_token == token


def test_missing_and_file_paths_fail_alike(tree, backends):
    for b in backends:
        with pytest.raises(NotFound):
            b.list_page("nothing/here")
        with pytest.raises(NotADirectory):
            b.list_page("top.txt")


def test_parse_listing_unescapes_and_decodes_names():
    body = (
        b'<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs>'
        b"<BlobPrefix><Name>d/a&amp;b&lt;c&gt;/</Name></BlobPrefix>"
        b'<BlobPrefix><Name Encoded="true">d/ctl%01x/</Name></BlobPrefix>'
        b"<Blob><Name>d/&#x65E5;&quot;q&apos;+%25</Name><Properties>"
        b"<Last-Modified>Wed, 25 Nov 2026 23:13:14 GMT</Last-Modified><Etag>0x1</Etag>"
        b"<Content-Length>12</Content-Length><Content-MD5>zG3Mzh67tx1i9PoY3t1ItQ==</Content-MD5>"
        b"</Properties><Metadata><Hdi_isfolder>a&amp;b</Hdi_isfolder></Metadata></Blob>"
        b'<Blob><Name Encoded="true">d/v%0Bt</Name><Properties/></Blob>'
        b"</Blobs><NextMarker>d/&lt;next</NextMarker></EnumerationResults>"
    )
    items, marker = parse_listing(body)
    assert marker == "d/<next"
    assert items[:2] == [ListedPrefix("d/a&b<c>/"), ListedPrefix("d/ctl\x01x/")]
    blob = items[2]
    assert isinstance(blob, ListedBlob)
    assert (blob.name, blob.size, blob.etag) == ("d/日\"q'+%25", 12, "0x1")
    assert blob.last_modified is not None and blob.last_modified.year == 2026
    assert blob.content_settings.content_md5 and len(blob.content_settings.content_md5) == 16
    assert blob.metadata == {"Hdi_isfolder": "a&b"}
    assert (items[3].name, items[3].size, items[3].etag) == ("d/v\x0bt", 0, None)
    assert parse_listing(b"<EnumerationResults><Blobs/><NextMarker/></EnumerationResults>") == (
        [],
        "",
    )


def test_stat_sends_head_and_list_at_once(tree, backends):
    """The HEAD waits until the LIST has started: sequential requests would never get there."""
    lean, _ = backends
    listing = threading.Event()
    head, has_children = lean._head, lean._has_children

    def slow_head(rel):
        assert listing.wait(5), "the LIST was not sent while the HEAD was in flight"
        return head(rel)

    def watched(rel):
        listing.set()
        return has_children(rel)

    lean._head, lean._has_children = slow_head, watched
    assert lean.stat("both").is_dir  # a blob and a prefix: the directory
    listing.clear()
    assert not lean.stat("top.txt").is_dir
    listing.clear()
    with pytest.raises(NotFound):
        lean.stat("nothing/here")
