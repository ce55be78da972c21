"""The packed listing (amlfs.listtable): every entry reads back exactly as appended, whatever the
shape of its ETag or name, and the hash index finds every name."""

from __future__ import annotations

import dataclasses
import hashlib
import tracemalloc

import pytest

from amlfs.backends.base import ObjectInfo
from amlfs.listtable import ListTable, _pack_etag
from amlfs.outcome import TransferResult
from amlfs.transfer import safe_mask

ODD_ETAGS = [
    '"0x8DC0123456789AB"',  # 15 hex digits: Azure's usual shape
    '"0x8DC0123456789ABC"',  # 16
    '"0x0000000000000000"',  # packs to 0
    '"0x1"',
    '"0x8dc0123456789ab"',  # lowercase: would not round-trip through %X
    '"0x8DC0123456789ABCD"',  # 17 digits: more than 64 bits
    '"0xGHIJ"',
    "0x8DC0123456789AB",  # no quotes
    '"1f-17b2d3c4e5f6-400"',  # the local backend's shape
    "",
    '"0x"',
    'W/"0x8DC0123456789AB"',
    '"0x8DC 123456789AB"',
    '"0x+8DC0123456789A"',
    '"0x_8DC0123456789A"',
    '"Ä"',
]


def infos_for(base: str) -> list[ObjectInfo]:
    head = base + "/" if base else ""
    out = [
        ObjectInfo(f"{head}plain.bin", False, 5, '"0x8DC0123456789AB"', 1.7e9, b"\x01" * 16),
        ObjectInfo(f"{head}dir/ünïcödé 名前 🎉.txt", False, 0, None, 0.0, None),
        ObjectInfo(f"{head}big", False, 5 << 40, '"0x1"', 1.5, None),
        ObjectInfo(f"{head}sub/dir", True, 0, None, 0.0, None),
        ObjectInfo(f"{head}surrogate-\udcff", False, 1, "x", 2.25, hashlib.md5(b"").digest()),
        ObjectInfo(f"{head}a b/%2F & <x>", False, 7, "", 3.0, None),
    ]
    out += [ObjectInfo(f"{head}e{i}", False, i, etag, float(i)) for i, etag in enumerate(ODD_ETAGS)]
    return out


@pytest.mark.parametrize("base", ["", "ds", "a/b c/ü"])
@pytest.mark.parametrize("md5", [True, False])
def test_round_trip(base, md5):
    infos = infos_for(base)
    t = ListTable(base, md5=md5, items=infos)
    want = infos if md5 else [dataclasses.replace(i, content_md5=None) for i in infos]
    assert len(t) == len(infos)
    assert list(t) == want
    assert t[-1] == want[-1] and t[1:3] == want[1:3]
    assert [t.path(i) for i in range(len(t))] == [i.path for i in infos]
    head = base + "/" if base else ""
    assert [t.name(i) for i in range(len(t))] == [i.path[len(head) :] for i in infos]
    assert t.total_size() == sum(i.size for i in infos)
    for k, info in enumerate(infos):
        assert t.etag_is(k, info.etag)
        assert not t.etag_is(k, '"0x8DC0123456789AC"')
        assert t.index_of(info.path[len(head) :]) == k
    with pytest.raises(IndexError):
        t[len(t)]


def test_etag_packing_is_exact():
    for etag in ODD_ETAGS:
        packed = _pack_etag(etag)
        if packed is not None:
            value, digits = packed
            assert f'"0x{value:0{digits}X}"' == etag
    assert _pack_etag('"0x8DC0123456789AB"') == (0x8DC0123456789AB, 15)
    assert _pack_etag('"0x8dc0123456789ab"') is None


def test_paths_outside_the_base_are_kept_whole():
    infos = [
        ObjectInfo("ds/a", False, 1, None),
        ObjectInfo("other/b", False, 2, None),
        ObjectInfo("ds", False, 3, None),
        ObjectInfo("ds/", False, 4, None),
        ObjectInfo("dsx/c", False, 5, None),
    ]
    t = ListTable("ds", items=infos)
    assert list(t) == infos
    assert [t.name(i) for i in range(len(t))] == ["a", None, None, None, None]
    assert t.index_of("a") == 0 and t.index_of("b") is None and t.index_of("") is None


def test_index_of_duplicates_and_misses():
    t = ListTable("", items=[ObjectInfo(n, False, k) for k, n in enumerate(["a", "b", "a", "c"])])
    assert t.index_of("a") == 0 and t.index_of("c") == 3
    assert t.index_of("d") is None and t.index_of("ab") is None
    assert ListTable("").index_of("a") is None
    t.append(ObjectInfo("d", False))  # a new entry drops the index: it is built again
    assert t.index_of("d") == 4


def test_large_table_is_compact_and_exact():
    n = 100_000

    def info(i: int) -> ObjectInfo:
        etag = f'"0x8DC{i:012X}"' if i % 1000 else f'"custom-{i}"'
        return ObjectInfo(f"ds/d{i % 97:02d}/file-{i:07d}.bin", False, i * 3, etag, 1.7e9 + i)

    tracemalloc.start()
    try:
        t = ListTable("ds", md5=False, items=(info(i) for i in range(n)))
        for i in range(0, n, 997):
            assert t.index_of(t.name(i)) == i
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    for i in range(0, n, 7919):
        assert t[i] == info(i)
    assert t.index_of("d00/file-0000000.bin") == 0
    assert t.index_of("d00/file-0000001.bin") is None
    # names (~20 bytes) + end 4 + size 8 + mtime 8 + flags 1 + ETag 8 + index ~6, and slack
    assert held / n < 70, held / n
    assert t.nbytes() <= held


@pytest.mark.parametrize("base", ["", "ds"])
def test_safe_mask_skips_escaping_names_and_files_shadowed_by_directories(base):
    head = base + "/" if base else ""
    paths = ["a", "a/b", "c/d", "c", "x/y/z", "x/y", "x", "ok", "../escape", "a//b", "x/./y"]
    paths += ["/abs", "x/..", "ü/名", "other/file", "e/f/g", "e/f"]
    infos = [ObjectInfo(head + p if not p.startswith("other") else p, False, 1) for p in paths]
    got = TransferResult()
    # 5 names that would escape or are not normal; 'a', 'c', 'x/y', 'x', 'e/f' are also
    # directories (the directory wins); with a base, 'other/file' is not below it.
    expected = ["a/b", "c/d", "x/y/z", "ok", "ü/名"] + ([] if base else ["other/file"])
    expected += ["e/f/g"]
    table = ListTable(base, items=infos)
    mask = safe_mask(table, got)
    assert [table.name(i) for i in range(len(table)) if mask[i]] == expected
    assert got.unsafe == (11 if base else 10)
    kept = safe_mask(table, TransferResult(), lambda rel: rel.startswith("a"))
    assert [table.name(i) for i in range(len(table)) if kept[i]] == [
        r for r in expected if r.startswith("a")
    ]
