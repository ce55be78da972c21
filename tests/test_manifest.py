"""Run manifests: contents against the datastore's listing, `amlfs manifest verify` after a
change, and pinned runs, stages and mounts that refuse a changed object and never show its new
bytes -- on a local datastore, Blob (Azurite) and ADLS Gen2 (tests/servers)."""

from __future__ import annotations

import base64
import errno
import json
import os
import subprocess

import pytest

from amlfs import Workspace

from .test_run_outputs import amlfs, needs_fuse, remote_files, run_manifest
from .test_run_outputs import store as store  # noqa: F401 - the fixture

INPUTS = {
    "in/keep.bin": os.urandom(200_000),
    "in/sub/changed.txt": b"old bytes\n",
    "in/sub/deleted.txt": b"to be deleted\n",
}
NEW = b"NEW-BYTES-MUST-NOT-BE-READ\n"


@pytest.fixture
def data(store):
    reg, ds = store
    b = ds.backend()
    for path, payload in INPUTS.items():
        b.write_bytes(path, payload)
    b.close()
    return reg, ds


def change_the_data(ds) -> None:
    b = ds.backend()
    b.write_bytes("in/sub/changed.txt", NEW)
    b.delete("in/sub/deleted.txt")
    b.write_bytes("in/added.txt", NEW)
    b.close()


def record(reg: str, mode: str, tmp_path) -> str:
    """Run once with input `a` = data:in in `mode`; the path of its manifest."""
    p = amlfs(reg, "run", "-i", f"a=data:in@{mode}", "--", "ls", "{a}")
    assert p.returncode == 0, p.stderr
    m = run_manifest(p.stderr)
    path = str(tmp_path / f"manifest-{mode}.json")
    with open(path, "w") as f:
        json.dump(m, f)
    return path


@pytest.mark.parametrize("mode", ["download", pytest.param("mount", marks=needs_fuse)])
def test_manifest_records_every_input_file_from_the_listing(data, tmp_path, mode):
    reg, ds = data
    p = amlfs(reg, "run", "-i", f"a=data:in@{mode}", "-o", "o=data:out", "--", "sh", "-c",
              "cp {a}/keep.bin {o}/; exit 4")  # fmt: skip
    assert p.returncode == 4, p.stderr
    m = run_manifest(p.stderr)
    (rec,) = m["inputs"]
    assert (rec["name"], rec["datastore"], rec["path"], rec["mode"]) == ("a", "data", "in", mode)
    b = ds.backend()
    listing = list(b.walk("in"))
    b.close()
    want = {
        i.path: {
            "path": i.path,
            "size": i.size,
            "etag": i.etag,
            "content_md5": base64.b64encode(i.content_md5).decode() if i.content_md5 else None,
            "mtime": i.mtime,
        }
        for i in listing
    }
    assert {f["path"]: f for f in rec["files"]} == want
    assert set(want) == set(INPUTS)
    assert m["exit_status"] == 4 and m["command"] == ["sh", "-c", "cp {a}/keep.bin {o}/; exit 4"]
    assert m["start"] <= m["end"] and m["start"].endswith("Z")
    (out,) = m["outputs"]
    assert [f["path"] for f in out["files"]] == ["out/keep.bin"]


def test_verify_after_a_change(data, tmp_path):
    reg, ds = data
    manifest = record(reg, "download", tmp_path)
    p = amlfs(reg, "manifest", "verify", manifest)
    assert p.returncode == 0 and p.stdout == "" and "3 file(s) match" in p.stderr, p.stderr
    change_the_data(ds)
    p = amlfs(reg, "manifest", "verify", manifest)
    assert p.returncode == 1, p.stderr
    lines = sorted(p.stdout.splitlines())
    assert lines[0] == "added a in/added.txt"
    assert lines[1].startswith("changed a in/sub/changed.txt (ETag ")
    assert lines[2] == "missing a in/sub/deleted.txt"
    assert "1 changed, 1 missing, 1 added" in p.stderr


@pytest.mark.parametrize("mode", ["download", pytest.param("mount", marks=needs_fuse)])
def test_pinned_run_refuses_a_changed_object_and_never_reads_it(data, tmp_path, mode):
    reg, ds = data
    manifest = record(reg, mode, tmp_path)
    change_the_data(ds)
    script = "ls -R {a}; cat {a}/keep.bin | wc -c; cat {a}/sub/changed.txt"
    p = amlfs(reg, "run", "--pin", manifest, "--", "sh", "-c", script)
    assert p.returncode != 0
    assert "NEW-BYTES" not in p.stdout and "NEW-BYTES" not in p.stderr
    if mode == "download":
        assert p.returncode == 1
        assert "in/sub/changed.txt" in p.stderr and "changed since manifest" in p.stderr
    else:
        # the mount shows exactly the manifest: the added file is not there, the deleted one is
        assert "added.txt" not in p.stdout and "deleted.txt" in p.stdout
        assert f"{len(INPUTS['in/keep.bin'])}\n" in p.stdout
        assert "Stale file handle" in p.stderr


def test_pinned_stage_refuses_a_changed_object(data, tmp_path):
    reg, ds = data
    manifest = record(reg, "download", tmp_path)
    change_the_data(ds)
    dest = tmp_path / "staged"
    p = amlfs(reg, "stage", "--manifest", manifest, "a", str(dest))
    assert p.returncode == 1
    assert "sub/changed.txt" in p.stderr and "refusing to read the new version" in p.stderr
    assert "sub/deleted.txt" in p.stderr and "deleted since" in p.stderr
    files = {
        os.path.relpath(os.path.join(d, f), dest)
        for d, _, fs in os.walk(dest)
        for f in fs
        if not f.startswith(".amlfs")
    }
    assert files == {"keep.bin"}
    assert (dest / "keep.bin").read_bytes() == INPUTS["in/keep.bin"]
    # by location too, and an input the manifest does not have is a usage error
    p = amlfs(reg, "stage", "--manifest", manifest, "data:in", str(tmp_path / "again"))
    assert p.returncode == 1 and "refusing" in p.stderr
    p = amlfs(reg, "stage", "--manifest", manifest, "nope", str(tmp_path / "x"))
    assert p.returncode == 2 and "no input" in p.stderr


@needs_fuse
def test_pinned_mount_needs_no_listing_and_refuses_changes(data, tmp_path):
    reg, ds = data
    manifest = record(reg, "download", tmp_path)
    change_the_data(ds)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    p = amlfs(reg, "mount", "--manifest", manifest, "a", str(mnt))
    assert p.returncode == 0, p.stderr
    try:
        # the listing is the manifest's: the deleted file shows, the added one does not
        assert sorted(os.listdir(mnt)) == ["keep.bin", "sub"]
        assert sorted(os.listdir(mnt / "sub")) == ["changed.txt", "deleted.txt"]
        assert (mnt / "keep.bin").read_bytes() == INPUTS["in/keep.bin"]
        for name in ("changed.txt", "deleted.txt"):
            with pytest.raises(OSError) as e:
                (mnt / "sub" / name).read_bytes()
            assert e.value.errno == errno.ESTALE
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False)


def test_manifest_to_a_datastore(data, tmp_path):
    reg, ds = data
    p = amlfs(reg, "run", "-i", "a=data:in@download", "--manifest-to", "data:manifests", "--",
              "true")  # fmt: skip
    assert p.returncode == 0, p.stderr
    m = run_manifest(p.stderr)
    stored = remote_files(ds, "manifests")
    assert json.loads(stored[f"{m['run_id']}.json"]) == m


def test_bad_manifest_is_a_usage_error(tmp_path):
    reg = str(tmp_path / "ws.yaml")
    Workspace.from_config(reg).registry.save()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for args in (["manifest", "verify", str(bad)], ["run", "--pin", str(bad), "--", "true"]):
        p = amlfs(reg, *args)
        assert p.returncode == 2 and "not an amlfs run manifest" in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    p = amlfs(reg, "manifest", "verify", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "cannot read manifest" in p.stderr


def test_pinned_backend_view(local_config):
    """The view's tree, pages and refusals, straight from the record (no service call)."""
    from amlfs.backends import open_backend
    from amlfs.backends.base import ObjectInfo
    from amlfs.backends.errors import NotADirectory, NotFound
    from amlfs.backends.pinned import NotAsPinned, PinnedBackend, ReadOnly

    inner = open_backend(local_config)
    inner.write_bytes("d/x", b"x")
    inner.write_bytes("d/y/z", b"zz")
    x, z = inner.stat("d/x"), inner.stat("d/y/z")
    files = [
        x,
        z,
        ObjectInfo("d/y", False, size=1, etag='"clash"'),
        ObjectInfo("e", False, 3, '"e"'),
    ]
    view = PinnedBackend(inner, files, "test", root="d")
    assert view.stat("d").is_dir and view.stat("d/y").is_dir and view.stat("").is_dir
    assert view.stat("d/x") == x
    page, token = view.list_page("", page_size=1)
    assert [e.path for e in page] == ["d"] and token == "1"
    page, token = view.list_page("", token)
    assert [e.path for e in page] == ["e"] and token is None
    assert [(e.path, e.is_dir) for e in view.list_dir("d")] == [("d/x", False), ("d/y", True)]
    assert sorted(i.path for i in view.walk("d")) == ["d/x", "d/y/z"]
    with pytest.raises(NotADirectory):
        view.list_page("d/x")
    with pytest.raises(NotFound):
        view.stat("d/new")
    assert view.read_range("d/y/z", 0, 10) == b"zz"
    inner.write_bytes("d/x", b"changed")
    with pytest.raises(NotAsPinned, match="changed since test"):
        view.read_range("d/x", 0, 10)
    with pytest.raises(NotAsPinned, match="deleted since test"):
        view.read_range("e", 0, 10)
    with pytest.raises(ReadOnly):
        view.write_bytes("d/new", b"")
    with pytest.raises(ReadOnly):
        view.delete("d/x")
    view.close()
