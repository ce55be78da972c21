"""The fsspec filesystem (amlfs.remotefs) against Azurite: paths, listing, ranged ETag-pinned
reads with read-ahead, whole-file writes, cat/get/put/rm, pickling without secrets, and the
pandas / pyarrow readers going through `azureml://` URLs."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle
import subprocess
import sys

import fsspec
import pytest

from amlfs.registry import Registry
from amlfs.remotefs import AmlfsFileSystem, AzureMLFileSystem
from amlfs.remotefs import paths as rpaths
from amlfs.remotefs.blocks import BlockReader

from .azurite import KEY

pytestmark = pytest.mark.azurite


def write_registry(path, *configs) -> str:
    reg = Registry.load(str(path))
    for ds in configs:
        reg.add(ds, overwrite=True)
    reg.save()
    return str(path)


@pytest.fixture
def registry(tmp_path, blob_config, local_config):
    return write_registry(tmp_path / "datastores.yaml", blob_config, local_config)


@pytest.fixture
def fs(registry):
    fs = AzureMLFileSystem(registry=registry, skip_instance_cache=True, block_size=64 << 10)
    yield fs
    fs.close()


def url(path: str) -> str:
    return f"azureml://datastores/azblob/paths/{path}"


# --- paths and registration -------------------------------------------------------------------


@pytest.mark.parametrize(
    "given, stripped",
    [
        ("azureml://datastores/d/paths/a/b.csv", "d/a/b.csv"),
        ("azureml://datastores/d/paths/", "d"),
        ("azureml://datastores/d", "d"),
        ("azureml://datastores/d/paths/a%20b/c%25.csv", "d/a b/c%.csv"),
        (
            "azureml://subscriptions/s/resourcegroups/r/workspaces/w/datastores/d/paths/x/",
            "d/x",
        ),
        ("amlfs://d/a/b.csv", "d/a/b.csv"),
        ("amlfs://d/a%20b", "d/a%20b"),
        ("d/a/b.csv", "d/a/b.csv"),
        ("/d/a/", "d/a"),
        ("azureml://datastores", ""),
    ],
)
def test_strip(given, stripped):
    assert rpaths.strip(given) == stripped
    assert AzureMLFileSystem._strip_protocol(given) == stripped


@pytest.mark.parametrize("bad", ["azureml://nope/d", "azureml://datastores/d/files/x"])
def test_strip_refuses_unknown_forms(bad):
    with pytest.raises(ValueError, match="expected azureml://datastores/NAME/paths/PATH"):
        rpaths.strip(bad)


def test_unstrip_round_trips():
    fs = AzureMLFileSystem(skip_instance_cache=True)
    for p in ["d/a b/c%.csv", "d/x/part.*.parquet", "d"]:
        assert fs._strip_protocol(fs.unstrip_protocol(p)) == p
    assert AmlfsFileSystem(skip_instance_cache=True).unstrip_protocol("d/x") == "amlfs://d/x"


def test_entry_points_register_both_protocols():
    assert fsspec.get_filesystem_class("azureml") is AzureMLFileSystem
    assert fsspec.get_filesystem_class("amlfs") is AmlfsFileSystem


def test_import_loads_neither_trio_nor_pyfuse3():
    code = (
        "import sys, fsspec, amlfs.remotefs; fsspec.filesystem('azureml');"
        "print(sorted(m for m in ('trio', 'pyfuse3') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pickle_holds_the_registry_path_not_the_secret(fs, registry):
    fs.pipe_file(url("a.txt"), b"x")  # opens the backend: the credential is live in memory
    blob = pickle.dumps(fs)
    assert KEY.encode() not in blob and KEY[:20].encode() not in blob
    assert registry.encode() in blob
    clone = pickle.loads(blob)
    clone.close()  # a fresh instance of its own, resolving the credential from the registry
    assert clone.cat_file(url("a.txt")) == b"x"


def test_unknown_datastore_is_file_not_found(fs, registry, blob_config):
    with pytest.raises(FileNotFoundError, match="unknown datastore 'nosuch'.*known: "):
        fs.info("azureml://datastores/nosuch/paths/x")
    assert not fs.exists("azureml://datastores/nosuch/paths/x")
    # A datastore registered after the instance loaded the registry is found.
    write_registry(registry, dataclasses.replace(blob_config, name="later"))
    fs.pipe_file("amlfs://later/x", b"1")
    assert fs.cat_file("azureml://datastores/azblob/paths/x") == b"1"


# --- listing ----------------------------------------------------------------------------------


def test_ls_info_find(fs):
    for p in ["top.txt", "d/one.bin", "d/two.bin", "d/sub/three.bin"]:
        fs.pipe_file(url(p), p.encode())
    assert {e["name"] for e in fs.ls("azureml://datastores")} >= {"azblob", "loc"}
    entries = fs.ls(url(""), detail=True)
    assert [(e["name"], e["type"]) for e in entries] == [
        ("azblob/d", "directory"),
        ("azblob/top.txt", "file"),
    ]
    assert fs.ls(url("d"), detail=False) == ["azblob/d/one.bin", "azblob/d/sub", "azblob/d/two.bin"]
    info = fs.info(url("d/one.bin"))
    assert info["type"] == "file" and info["size"] == len("d/one.bin") and info["etag"]
    assert fs.info(url("d/sub"))["type"] == "directory"
    assert fs.ls(url("top.txt"), detail=False) == ["azblob/top.txt"]
    assert fs.find(url("d")) == ["azblob/d/one.bin", "azblob/d/sub/three.bin", "azblob/d/two.bin"]
    assert fs.find(url("d"), withdirs=True) == [
        "azblob/d",
        "azblob/d/one.bin",
        "azblob/d/sub",
        "azblob/d/sub/three.bin",
        "azblob/d/two.bin",
    ]
    assert fs.find(url("d"), maxdepth=1) == ["azblob/d/one.bin", "azblob/d/two.bin"]
    assert fs.glob(url("d/*.bin")) == ["azblob/d/one.bin", "azblob/d/two.bin"]
    assert fs.find(url("nothing")) == []
    with pytest.raises(FileNotFoundError):
        fs.info(url("nothing"))
    with pytest.raises(FileNotFoundError):
        fs.ls(url("nothing"))


# --- reads ------------------------------------------------------------------------------------


def test_read_sequential_and_random(fs):
    data = os.urandom(1_000_003)
    fs.pipe_file(url("big.bin"), data)
    with fs.open(url("big.bin"), "rb") as f:
        got = b"".join(iter(lambda: f.read(10_000), b""))
        cache = f.cache
        assert got == data
        assert cache.hits > cache.misses  # read-ahead served most sequential reads
        for off, n in [(999_990, 100), (0, 1), (65_535, 2), (300_000, 200_000)]:
            f.seek(off)
            assert f.read(n) == data[off : off + n]
        f.seek(-5, 2)
        assert f.read() == data[-5:]
    assert fs.cat_file(url("big.bin")) == data
    assert fs.cat_file(url("big.bin"), start=-10) == data[-10:]
    assert fs.cat_file(url("big.bin"), start=70_000, end=200_001) == data[70_000:200_001]
    with fs.open(url("big.bin"), "rb") as f:
        f.seek(len(data))
        assert f.read(10) == b""


def test_read_is_pinned_to_the_etag_seen_at_open(fs):
    fs.pipe_file(url("moving.bin"), b"a" * 300_000)
    with fs.open(url("moving.bin"), "rb", cache_options={"readahead": 0}) as f:
        assert f.read(10) == b"a" * 10
        fs.pipe_file(url("moving.bin"), b"b" * 300_000)
        f.seek(200_000)
        with pytest.raises(OSError) as e:
            f.read(10)
        assert e.value.errno == errno.ESTALE


def test_open_a_directory_or_a_missing_file(fs):
    fs.pipe_file(url("d/x"), b"1")
    with pytest.raises(IsADirectoryError):
        fs.open(url("d"), "rb")
    with pytest.raises(FileNotFoundError):
        fs.open(url("missing"), "rb")
    with pytest.raises(ValueError, match="not supported"):
        fs.open(url("d/x"), "ab")


def test_block_reader_failure_is_retried_on_the_next_read():
    calls = []

    def fetch(offset, buf, abort):
        calls.append(offset)
        if len(calls) == 1:
            raise OSError(errno.EIO, "boom")
        buf[:] = b"z" * len(buf)
        return len(buf)

    reader = BlockReader(fetch, 100, 16, lambda fn: fn(), max_readahead=0)
    with pytest.raises(OSError, match="boom"):
        reader._fetch(0, 10)
    assert reader._fetch(0, 10) == b"z" * 10
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader._fetch(0, 10)


def test_block_reader_reads_ahead_forward_and_exactly_elsewhere():
    data = bytes(range(256)) * 64  # 16 KiB
    fetched = []

    def fetch(offset, buf, abort):
        fetched.append((offset, len(buf)))
        buf[:] = data[offset : offset + len(buf)]
        return len(buf)

    reader = BlockReader(fetch, len(data), 1024, lambda fn: fn(), max_readahead=4)
    assert reader._fetch(16_000, 16_100) == data[16_000:16_100]  # a footer-like probe
    assert fetched == [(16_000, 100)]
    fetched.clear()
    out = b"".join(reader._fetch(o, o + 100) for o in range(0, 4000, 100))
    assert out == data[:4000]
    # Forward reads: whole blocks, fetched ahead (up to 4 blocks past the read), once each.
    offsets = [o for o, _ in fetched]
    assert len(offsets) == len(set(offsets)) and all(n == 1024 for _, n in fetched)
    assert max(offsets) >= 4 * 1024 and reader.hits > 30
    assert reader._fetch(9000, 9000 + 2048) == data[9000:11048]  # a large jump: blocks
    # read_buffer (pyarrow's zero-copy read): cached blocks copied, missing ones received in place
    fetched.clear()
    got = reader.read_buffer(8000, 14_500)
    assert isinstance(got, bytearray) and got == data[8000:14_500]
    assert (14 * 1024, 14_500 - 14 * 1024) in fetched  # only the part of the last block read
    assert min(o for o, _ in fetched) == 11 * 1024  # blocks 7-10 came from the cache
    assert reader.read_buffer(14_500, 20_000) == data[14_500:]
    reader.close()


def test_read_buffer_of_a_remote_file(fs):
    data = os.urandom(700_000)
    fs.pipe_file(url("rb.bin"), data)
    with fs.open(url("rb.bin"), "rb") as f:
        assert f.read(1000) == data[:1000]
        assert f.read_buffer(300_000) == data[1000:301_000]
        f.seek(650_000)
        assert f.read_buffer() == data[650_000:]
        assert f.read_buffer(10) == b""


# --- writes -----------------------------------------------------------------------------------


def test_write_is_committed_whole_on_close(fs):
    chunk = os.urandom(100_000)
    with fs.open(url("w/out.bin"), "wb") as f:
        for _ in range(30):  # past the spool's memory part? no: past one block_size buffer
            f.write(chunk)
        assert not fs.exists(url("w/out.bin"))  # nothing visible before close
    assert fs.cat_file(url("w/out.bin")) == chunk * 30
    with fs.open(url("w/text.txt"), "w") as f:
        f.write("héllo\n")
    assert fs.cat_file(url("w/text.txt")) == "héllo\n".encode()


def test_a_write_that_raises_leaves_nothing(fs):
    fs.pipe_file(url("keep.txt"), b"old")
    with pytest.raises(RuntimeError):
        with fs.open(url("keep.txt"), "wb") as f:
            f.write(b"half of the new")
            raise RuntimeError("writer failed")
    assert fs.cat_file(url("keep.txt")) == b"old"
    with pytest.raises(RuntimeError):
        with fs.open(url("keep.txt"), "w", encoding="utf-8") as f:
            f.write("half of the new text")
            raise RuntimeError("writer failed")
    assert fs.cat_file(url("keep.txt")) == b"old"
    f = fs.open(url("dropped.txt"), "wb")
    f.write(b"never closed")
    del f
    assert not fs.exists(url("dropped.txt"))


def test_exclusive_create(fs):
    fs.pipe_file(url("x.txt"), b"1")
    with pytest.raises(FileExistsError):
        fs.open(url("x.txt"), "xb")
    with pytest.raises(FileExistsError):
        fs.pipe_file(url("x.txt"), b"2", mode="create")
    assert fs.cat_file(url("x.txt")) == b"1"


def test_transaction_commits_at_its_end(fs):
    with fs.transaction:
        with fs.open(url("t/a"), "wb") as f:
            f.write(b"A")
        assert not fs.exists(url("t/a"))
    assert fs.cat_file(url("t/a")) == b"A"


# --- put, get, copy, rm ------------------------------------------------------------------------


def test_put_get_copy_rm(fs, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.bin").write_bytes(os.urandom(300_000))
    (src / "sub" / "b.txt").write_bytes(b"bee")
    fs.put(str(src), url("up"), recursive=True)
    assert fs.find(url("up")) == ["azblob/up/a.bin", "azblob/up/sub/b.txt"]
    dst = tmp_path / "dst"
    fs.get(url("up"), str(dst), recursive=True)
    assert (dst / "a.bin").read_bytes() == (src / "a.bin").read_bytes()
    assert (dst / "sub" / "b.txt").read_bytes() == b"bee"
    assert not [n for n in os.listdir(dst) if n.endswith(".part")]
    fs.copy(url("up/a.bin"), "azureml://datastores/loc/paths/copied.bin")
    assert fs.cat_file("amlfs://loc/copied.bin") == (src / "a.bin").read_bytes()
    fs.rm(url("up"), recursive=True)
    assert not fs.exists(url("up"))
    assert fs.find(url("")) == []
    with pytest.raises(FileNotFoundError):
        fs.rm(url("up/a.bin"))


def test_get_of_a_missing_file_leaves_nothing(fs, tmp_path):
    with pytest.raises(FileNotFoundError):
        fs.get_file(url("missing.bin"), str(tmp_path / "out.bin"))
    assert os.listdir(tmp_path) == ["datastores.yaml"] or "out.bin" not in os.listdir(tmp_path)


# --- pandas and pyarrow -------------------------------------------------------------------------


def test_pandas_read_csv_and_parquet_by_url(fs, registry):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"x": range(1000), "y": [f"v{i}" for i in range(1000)]})
    opts = {"registry": registry}
    df.to_csv(url("t/frame.csv"), index=False, storage_options=opts)
    back = pd.read_csv(url("t/frame.csv"), storage_options=opts)
    pd.testing.assert_frame_equal(back, df)
    df.to_parquet("amlfs://azblob/t/frame.parquet", storage_options=opts)
    back = pd.read_parquet("amlfs://azblob/t/frame.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(back, df)


def test_pyarrow_parquet_and_dataset(fs):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    table = pa.table({"k": [i % 3 for i in range(30_000)], "v": list(range(30_000))})
    for part in range(3):
        with fs.open(url(f"ds/part={part}/data.parquet"), "wb") as f:
            pq.write_table(table.filter(pa.compute.equal(table["k"], part)), f, row_group_size=4000)
    one = pq.read_table(url("ds/part=1/data.parquet"), filesystem=fs)
    assert one.num_rows == 10_000 and set(one["k"].to_pylist()) == {1}
    # pyarrow takes stripped paths beside an fsspec filesystem (it compares the names the
    # filesystem lists against the base it was given): url_to_fs gives both.
    dfs, base = fsspec.core.url_to_fs(url("ds"), registry=fs.registry_path)
    assert base == "azblob/ds"
    dataset = pds.dataset(base, filesystem=dfs, format="parquet", partitioning="hive")
    got = dataset.to_table().sort_by("v")
    assert got.num_rows == 30_000 and got["v"].to_pylist() == list(range(30_000))
    assert dataset.to_table(filter=pds.field("part") == 2).num_rows == 10_000


# --- the other backends: File share and ADLS Gen2 (the protocol servers of tests/servers) ------


@pytest.mark.parametrize("kind", ["fileshare", "adls"])
def test_file_share_and_adls_datastores(kind, request, tmp_path):
    config = request.getfixturevalue(f"{kind}_config")
    registry = write_registry(tmp_path / "datastores.yaml", config)
    fs = AzureMLFileSystem(registry=registry, skip_instance_cache=True, block_size=64 << 10)
    base = f"azureml://datastores/{config.name}/paths"
    data = os.urandom(300_001)
    with fs.open(f"{base}/d/big.bin", "wb") as f:
        f.write(data)
    fs.pipe_file(f"{base}/d/sub/small.txt", b"small")
    assert fs.ls(f"{base}/d", detail=False) == [f"{config.name}/d/big.bin", f"{config.name}/d/sub"]
    assert fs.find(f"{base}/d") == [f"{config.name}/d/big.bin", f"{config.name}/d/sub/small.txt"]
    assert fs.info(f"{base}/d/big.bin")["size"] == len(data)
    with fs.open(f"{base}/d/big.bin", "rb") as f:
        assert b"".join(iter(lambda: f.read(7000), b"")) == data
        f.seek(123_456)
        assert f.read(1000) == data[123_456:124_456]
    assert fs.cat_file(f"{base}/d/big.bin", start=-100) == data[-100:]
    fs.get(f"{base}/d/big.bin", str(tmp_path / "big.bin"))
    assert (tmp_path / "big.bin").read_bytes() == data
    fs.rm(f"{base}/d/big.bin")
    assert not fs.exists(f"{base}/d/big.bin")
    fs.close()
