"""Backend behaviours shared by the File share and ADLS Gen2 backend tests (and their live runs).

A test module provides three fixtures and star-imports this module's tests:
- `backend`: the Backend under test;
- `base`: a fresh, datastore-relative directory for the test to work in (so that live runs on a
  real account never touch anything else);
- `min_pages`: how many pages listing 12 entries must take (4 on the test servers, 1 live).
"""

from __future__ import annotations

import io

import pytest

from amlfs.backends.base import join
from amlfs.backends.errors import AlreadyExists, BackendError, Changed, IsADirectory, NotFound

ODD_NAMES = [
    "with space",
    "ünïcødé-ñ",
    "percent%20sign",
    "plus+sign",
    "hash#tag",
    "semi;colon",
    "amp&er=sand",
    "quote'd",
    ".hidden",
    "x" * 200,
]


def test_write_stat_read(backend, base):
    p = join(base, "dir/sub/file.bin")
    data = bytes(range(256)) * 40
    info = backend.write_bytes(p, data)
    assert (info.path, info.is_dir, info.size) == (p, False, len(data))
    assert info.etag and info.etag.startswith('"')
    st = backend.stat(p)
    assert (st.size, st.etag, st.is_dir) == (len(data), info.etag, False)
    assert st.mtime > 0
    assert backend.stat(join(base, "dir/sub")).is_dir
    assert backend.stat("").is_dir
    assert backend.read_all(p) == data


def test_ranged_reads(backend, base):
    p = join(base, "r.bin")
    data = bytes(range(256)) * 64
    info = backend.write_bytes(p, data)
    assert backend.read_range(p, 0, 10) == data[:10]
    assert backend.read_range(p, 1000, 5000, etag=info.etag) == data[1000:6000]
    assert backend.read_range(p, len(data) - 3, 100, etag=info.etag) == data[-3:]  # short at EOF
    assert backend.read_range(p, len(data), 10, etag=info.etag) == b""  # at EOF
    assert backend.read_range(p, len(data) + 50, 10) == b""  # past EOF
    assert backend.read_range(p, 5, 0) == b""


def test_etag_change_is_changed(backend, base):
    p = join(base, "c.bin")
    old = backend.write_bytes(p, b"old contents")
    new = backend.write_bytes(p, b"new contents!")
    assert new.etag != old.etag
    with pytest.raises(Changed):
        backend.read_range(p, 0, 5, etag=old.etag)
    with pytest.raises(Changed):
        backend.read_range(p, 100, 5, etag=old.etag)  # past EOF, still pinned
    assert backend.read_range(p, 0, 3, etag=new.etag) == b"new"


def test_listing_has_properties(backend, base):
    d = join(base, "l")
    infos = {n: backend.write_bytes(join(d, n), b"x" * i) for i, n in enumerate(["a", "b", "c"])}
    backend.write_bytes(join(d, "sub/inner"), b"z")
    entries = {e.name: e for e in backend.list_dir(d)}
    assert set(entries) == {"a", "b", "c", "sub"}
    assert entries["sub"].is_dir and entries["sub"].path == join(d, "sub")
    for n, info in infos.items():
        e = entries[n]
        assert (e.path, e.is_dir, e.size, e.etag) == (info.path, False, info.size, info.etag)
        assert e.mtime == pytest.approx(backend.stat(info.path).mtime, abs=1.0)
    assert not any(e.name.startswith(".amlfs-tmp-") for e in backend.list_dir(d))


def test_large_directory_paging(backend, base, min_pages):
    d = join(base, "many")
    names = {f"f{i:03d}" for i in range(12)}
    for n in names:
        backend.write_bytes(join(d, n), n.encode())
    seen, token, pages = [], None, 0
    while True:
        entries, token = backend.list_page(d, token)
        seen += [e.name for e in entries]
        pages += 1
        if not token:
            break
    assert sorted(seen) == sorted(names)  # each exactly once across pages
    assert pages >= min_pages  # the test servers cap pages at 3 entries
    assert {e.name for e in backend.walk(d)} == names


def test_missing_paths(backend, base):
    with pytest.raises(NotFound):
        backend.stat(join(base, "nope"))
    with pytest.raises(NotFound):
        backend.read_range(join(base, "nope"), 0, 10)
    with pytest.raises(NotFound):
        backend.list_page(join(base, "nope/deeper"))
    with pytest.raises(NotFound):
        backend.delete(join(base, "nope"))


def test_list_a_file_is_an_error(backend, base):
    p = join(base, "plain")
    backend.write_bytes(p, b"1")
    with pytest.raises(BackendError):
        backend.list_page(p)


def test_odd_names(backend, base):
    d = join(base, "odd")
    for n in ODD_NAMES:
        backend.write_bytes(join(d, n), n.encode())
    listed = {e.name for e in backend.list_dir(d)}
    assert listed == set(ODD_NAMES)
    for n in ODD_NAMES:
        assert backend.read_all(join(d, n)) == n.encode()
        assert backend.stat(join(d, n)).size == len(n.encode())


def test_no_overwrite_and_delete(backend, base):
    p = join(base, "once")
    backend.write_bytes(p, b"first")
    with pytest.raises(AlreadyExists):
        backend.write_bytes(p, b"second", overwrite=False)
    assert backend.read_all(p) == b"first"
    assert [e.name for e in backend.list_dir(base)] == ["once"]  # no temporary left behind
    backend.delete(p)
    with pytest.raises(NotFound):
        backend.stat(p)
    backend.write_bytes(join(base, "d/x"), b"1")
    with pytest.raises(IsADirectory):
        backend.delete(join(base, "d"))


def test_empty_file_and_short_stream(backend, base):
    p = join(base, "empty")
    info = backend.write_bytes(p, b"")
    assert info.size == 0 and backend.read_all(p) == b""
    with pytest.raises(BackendError):
        backend.write_stream(join(base, "short"), io.BytesIO(b"abc"), 10)
    with pytest.raises(NotFound):
        backend.stat(join(base, "short"))  # a short source leaves nothing behind
    assert {e.name for e in backend.list_dir(base)} == {"empty"}
