"""The transfer engine (upload/download) against Azurite and the local backend, real SDK."""

from __future__ import annotations

import hashlib
import os
import threading

import pytest

from amlfs.backends import open_backend
from amlfs.backends.base import Backend, ObjectInfo
from amlfs.backends.errors import NotFound
from amlfs.backends.local import LocalBackend
from amlfs.commit import PART_SUFFIX, part_path
from amlfs.fetch import chunk_size
from amlfs.listtable import ListTable
from amlfs.transfer import (
    TransferResult,
    download,
    safe_mask,
    upload_dir,
    upload_files,
)

ODD_NAMES = ["plain.txt", "with space.bin", "ünï cødé/日本.txt", "a+b/c%20d.dat", "deep/er/x+%.y"]
BLOCK = 64 << 10  # the smallest block size: small test files still take the chunked path


def data_for(name: str, size: int = 1000) -> bytes:
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@pytest.fixture(params=["local", "blob"])
def store(request) -> Backend:
    """A fresh, empty datastore backend of each kind."""
    cfg = request.getfixturevalue("local_config" if request.param == "local" else "blob_config")
    backend = open_backend(cfg)
    yield backend
    backend.close()


def put_tree(backend: Backend, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        backend.write_bytes(name, data)


def local_tree(root) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, root).replace(os.sep, "/")] = open(full, "rb").read()
    return out


def no_parts(root) -> bool:
    return not any(n.endswith(PART_SUFFIX) for _, _, ns in os.walk(root) for n in ns)


SAMPLE = {
    **{f"data/{n}": data_for(n) for n in ODD_NAMES},
    "data/big.bin": data_for("big", 5 * BLOCK + 123),
    "data/empty": b"",
    "other/x.txt": b"not under data",
}


def test_download_tree_odd_names_and_chunks(store, tmp_path):
    put_tree(store, SAMPLE)
    r = download(store, tmp_path / "out", prefix="data", keep_prefix=False, block_size=BLOCK)
    want = {k.removeprefix("data/"): v for k, v in SAMPLE.items() if k.startswith("data/")}
    assert local_tree(tmp_path / "out") == want
    assert (r.copied, r.skipped, r.failed) == (len(want), 0, [])
    assert r.bytes == sum(len(v) for v in want.values())


def test_download_keep_prefix_is_azureml_v1_semantics(store, tmp_path):
    put_tree(store, SAMPLE)
    r = download(store, tmp_path, prefix="/data/", show_progress=False)
    assert r.copied == len(SAMPLE) - 1
    assert (tmp_path / "data" / "big.bin").read_bytes() == SAMPLE["data/big.bin"]
    assert not (tmp_path / "other").exists()


def test_download_whole_datastore_and_single_file(store, tmp_path):
    put_tree(store, SAMPLE)
    assert download(store, tmp_path / "all", show_progress=False).copied == len(SAMPLE)
    assert local_tree(tmp_path / "all") == SAMPLE
    r = download(store, tmp_path / "one", prefix="data/a+b/c%20d.dat", keep_prefix=False)
    assert r.copied == 1
    assert local_tree(tmp_path / "one") == {"c%20d.dat": SAMPLE["data/a+b/c%20d.dat"]}


def test_download_prefix_is_a_path_not_a_string_prefix(store, tmp_path):
    put_tree(store, {"dat/a": b"1", "data/b": b"2"})
    r = download(store, tmp_path / "out", prefix="dat", keep_prefix=False)
    assert local_tree(tmp_path / "out") == {"a": b"1"} and r.copied == 1


def test_download_missing_prefix_names_it(store, tmp_path):
    put_tree(store, {"x/y": b"1"})
    with pytest.raises(NotFound, match="'nope/dir'"):
        download(store, tmp_path, prefix="nope/dir")


def test_download_overwrite_semantics(store, tmp_path):
    put_tree(store, {"a.txt": b"remote a", "b.txt": b"remote b"})
    (tmp_path / "a.txt").write_bytes(b"local")
    r = download(store, tmp_path, overwrite=False)
    assert (r.copied, r.skipped) == (1, 1)
    assert (tmp_path / "a.txt").read_bytes() == b"local"
    r = download(store, tmp_path, overwrite=True)
    assert (r.copied, r.skipped) == (2, 0)
    assert (tmp_path / "a.txt").read_bytes() == b"remote a"


def test_download_sets_remote_mtime(store, tmp_path):
    put_tree(store, {"f": b"x"})
    info = store.stat("f")
    download(store, tmp_path)
    assert abs(os.stat(tmp_path / "f").st_mtime - info.mtime) < 1e-3


def test_download_failure_on_one_file_others_copied(store, tmp_path):
    put_tree(store, {"ok1": b"1", "blocked": b"2", "ok2": b"3", "big": data_for("b", 3 * BLOCK)})
    # A directory already occupies one file's name: a real local failure, not a mock.
    (tmp_path / "blocked").mkdir()
    (tmp_path / "big").mkdir()
    r = download(store, tmp_path, overwrite=True, block_size=BLOCK)
    assert sorted(k for k, _ in r.failed) == ["big", "blocked"]
    assert "blocked" in r.failed[0][1] or "blocked" in r.failed[1][1]
    assert r.copied == 2
    assert (tmp_path / "ok1").read_bytes() == b"1" and (tmp_path / "ok2").read_bytes() == b"3"
    assert no_parts(tmp_path)


class _Interrupting(LocalBackend):
    """A local datastore whose reads raise KeyboardInterrupt after `after` ranged reads."""

    def __init__(self, root: str, after: int):
        super().__init__(root)
        self.after = after
        self.lock = threading.Lock()

    def read_range(self, path, offset, length, etag=None):
        with self.lock:
            self.after -= 1
            if self.after < 0:
                raise KeyboardInterrupt
        return super().read_range(path, offset, length, etag)


def test_interrupted_download_leaves_no_partial_file(local_config, tmp_path):
    LocalBackend(local_config.path).write_bytes("big.bin", data_for("big", 20 * BLOCK))
    backend = _Interrupting(local_config.path, after=5)
    with pytest.raises(KeyboardInterrupt):
        download(backend, tmp_path / "out", block_size=BLOCK, workers=2)
    assert not (tmp_path / "out" / "big.bin").exists()
    assert no_parts(tmp_path / "out")


class _ChangingOnce(LocalBackend):
    """A local datastore where `path` is rewritten (same size) after it was listed: at its first
    ranged read, before serving it (`before`) or right after (a large file, mid-way)."""

    def __init__(self, root: str, path: str, new: bytes, before: bool):
        super().__init__(root)
        self.path, self.new, self.before, self.done = path, new, before, False
        self.lock = threading.Lock()

    def _change(self, path):
        with self.lock:
            if path == self.path and not self.done:
                self.done = True
                self.write_bytes(path, self.new)

    def read_range(self, path, offset, length, etag=None):
        if self.before:
            self._change(path)
        data = super().read_range(path, offset, length, etag)
        if not self.before:
            self._change(path)
        return data


@pytest.mark.parametrize(
    "size,before", [(1000, True), (6 * BLOCK + 7, True), (6 * BLOCK + 7, False)]
)
def test_object_changing_mid_download_is_refetched_whole(local_config, tmp_path, size, before):
    old, new = data_for("old", size), data_for("new", size)
    LocalBackend(local_config.path).write_bytes("f", old)
    backend = _ChangingOnce(local_config.path, "f", new, before)
    r = download(backend, tmp_path / "out", block_size=BLOCK, workers=4)
    assert r.failed == [] and r.copied == 1 and r.bytes == size
    assert (tmp_path / "out" / "f").read_bytes() == new
    assert no_parts(tmp_path / "out")


class _Listing(LocalBackend):
    """A local datastore whose listing also reports hostile names (defence in depth)."""

    def walk(self, path="", first_page=None):
        yield from super().walk(path)
        for bad in ("../escape", "/abs", "a//b", "x/./y", "x/.."):
            yield ObjectInfo(bad, False, 1, '"e"', 0.0)


def test_escaping_names_are_skipped(local_config, tmp_path):
    LocalBackend(local_config.path).write_bytes("good", b"g")
    r = download(_Listing(local_config.path), tmp_path / "a" / "out")
    assert r.unsafe == 5 and r.copied == 1 and r.failed == []
    assert os.listdir(tmp_path / "a") == ["out"] and os.listdir(tmp_path / "a" / "out") == ["good"]
    assert sorted(os.listdir(tmp_path)) == ["a", "localstore"]


def test_file_clashing_with_directory_is_skipped():
    table = ListTable("", items=[ObjectInfo(p, False, 1) for p in ("a", "a/b", "c/d", "c")])
    result = TransferResult()
    mask = safe_mask(table, result)
    assert [table.name(i) for i in range(len(table)) if mask[i]] == ["a/b", "c/d"]
    assert result.unsafe == 2


def test_part_name_stays_within_name_max(tmp_path):
    long = "n" * 255
    assert len(os.path.basename(part_path(str(tmp_path / long)))) <= 255


# --- upload -------------------------------------------------------------------------------


def make_local_tree(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def remote_tree(backend: Backend, prefix: str = "") -> dict[str, bytes]:
    return {i.path: backend.read_all(i.path) for i in backend.walk(prefix)}


def test_upload_dir_odd_names_and_overwrite(store, tmp_path):
    files = {n: data_for(n) for n in ODD_NAMES} | {"big.bin": data_for("big", 3 << 20)}
    make_local_tree(tmp_path / "src", files)
    r = upload_dir(store, str(tmp_path / "src"), "up/load", show_progress=False)
    assert (r.copied, r.skipped, r.failed) == (len(files), 0, [])
    assert remote_tree(store) == {f"up/load/{k}": v for k, v in files.items()}

    (tmp_path / "src" / "plain.txt").write_bytes(b"changed")
    r = upload_dir(store, str(tmp_path / "src"), "up/load", overwrite=False)
    assert (r.copied, r.skipped) == (0, len(files))
    assert store.read_all("up/load/plain.txt") == files["plain.txt"]
    r = upload_dir(store, str(tmp_path / "src"), "up/load", overwrite=True)
    assert (r.copied, r.skipped) == (len(files), 0)
    assert store.read_all("up/load/plain.txt") == b"changed"


def test_upload_files_relative_root_and_basename(store, tmp_path):
    make_local_tree(tmp_path, {"r/a/x.txt": b"x", "r/b/y.txt": b"y"})
    paths = [str(tmp_path / "r/a/x.txt"), str(tmp_path / "r/b/y.txt")]
    r = upload_files(store, paths, relative_root=str(tmp_path / "r"), target_path="t")
    assert r.copied == 2
    r = upload_files(store, paths, target_path="flat")
    assert r.copied == 2
    assert remote_tree(store) == {
        "t/a/x.txt": b"x",
        "t/b/y.txt": b"y",
        "flat/x.txt": b"x",
        "flat/y.txt": b"y",
    }


def test_upload_then_download_round_trip(store, tmp_path):
    files = {n: data_for(n, 50_000) for n in ODD_NAMES}
    make_local_tree(tmp_path / "src", files)
    upload_dir(store, str(tmp_path / "src"))
    r = download(store, tmp_path / "back", keep_prefix=False, workers=3)
    assert r.copied == len(files)
    assert local_tree(tmp_path / "back") == files


def test_chunk_size_grows_for_large_files_unless_given():
    mib = 1 << 20
    assert chunk_size(100 * mib) == 8 * mib
    assert chunk_size(300 * mib) == 19 * mib  # about 16 ranges, in whole MiB
    assert chunk_size(1 << 30) == chunk_size(1 << 40) == 64 * mib
    assert chunk_size(1 << 30, 4 * mib) == 4 * mib


def test_download_progress_counts_files_listed_from_the_first_page(
    local_config, tmp_path, monkeypatch
):
    """download's bar reports files listed after the walk's first, small page (one request)."""
    from amlfs import transfer as transfer_mod
    from amlfs.progress import Progress

    backend = LocalBackend(local_config.path)
    put_tree(backend, {f"d/f{i:02d}": b"y" * i for i in range(12)})
    monkeypatch.setattr(transfer_mod, "FIRST_PAGE", 3)
    monkeypatch.setattr(LocalBackend, "page_size", 5)
    sizes: list[int | None] = []
    real_page = LocalBackend.list_page

    def counted(self, path, token=None, page_size=None):
        sizes.append(page_size)
        return real_page(self, path, token, page_size)

    reports: list[tuple[int, list]] = []
    monkeypatch.setattr(LocalBackend, "list_page", counted)
    monkeypatch.setattr(Progress, "listed", lambda self, n, b: reports.append((n, list(sizes))))
    r = download(backend, tmp_path / "out", "d", keep_prefix=False, show_progress=True)
    assert r.copied == 12
    assert reports[0] == (1, [3]) and reports[-1][0] == 12
    assert sizes == [3, None, None]  # 3 entries, then full pages of 5: 5 + 4
