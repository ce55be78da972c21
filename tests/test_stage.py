"""Download mode (`stage`): sync semantics, resume after kill -9, --delete, --dry-run, --verify;
against Azurite (real SDK) and the local backend."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from amlfs import transfer as transfer_mod
from amlfs.backends import open_backend
from amlfs.backends.base import Backend
from amlfs.backends.blob import BlobBackend
from amlfs.backends.blobget import BlobFastPath
from amlfs.backends.errors import NotFound
from amlfs.backends.local import LocalBackend
from amlfs.filters import PathFilter
from amlfs.progress import Progress
from amlfs.stage import stage
from amlfs.stagestate import state_paths

from .test_transfer import BLOCK, ODD_NAMES, data_for, local_tree, no_parts, put_tree


@pytest.fixture(params=["local", "blob"])
def store(request) -> Backend:
    cfg = request.getfixturevalue("local_config" if request.param == "local" else "blob_config")
    backend = open_backend(cfg)
    backend.cfg = cfg
    yield backend
    backend.close()


def tree(root) -> dict[str, bytes]:
    """Everything in `root`: stage keeps its state outside, so DIR holds exactly the files."""
    return local_tree(root)


FILES = {
    **{f"ds/{n}": data_for(n, 3000) for n in ODD_NAMES},
    "ds/big.bin": data_for("big", 7 * BLOCK + 5),
    "ds/empty": b"",
}
WANT = {k.removeprefix("ds/"): v for k, v in FILES.items()}


def test_full_stage_then_rerun_skips(store, tmp_path):
    put_tree(store, FILES)
    out = tmp_path / "out"
    r = stage(store, "ds", out, block_size=BLOCK)
    assert (r.copied, r.skipped, r.failed, r.deleted) == (len(WANT), 0, [], 0)
    assert tree(out) == WANT and no_parts(out)
    assert r.bytes == sum(map(len, WANT.values()))
    r = stage(store, "ds", out, block_size=BLOCK)
    assert (r.copied, r.skipped, r.bytes) == (0, len(WANT), 0)
    snapshot, journal = state_paths(out)
    assert os.path.exists(snapshot) and not os.path.exists(journal)  # folded into the snapshot
    assert os.path.dirname(snapshot) == str(tmp_path)


def test_a_no_change_rerun_rewrites_no_state_and_a_change_does(store, tmp_path):
    """The snapshot already says what a no-change re-run would write (no rewrite, no fsync);
    a new file, a deleted one or a filter that leaves files out rewrites it."""
    put_tree(store, {"s/a": b"a", "s/b": b"bb", "s/c": b"ccc"})
    out = tmp_path / "out"
    stage(store, "s", out)
    stage(store, "s", out)  # may make the first run's claims durable (a syncfs): a rewrite
    snapshot, journal = state_paths(out)

    def ident() -> tuple[int, int]:
        st = os.stat(snapshot)
        return st.st_ino, st.st_mtime_ns

    before = ident()
    r = stage(store, "s", out)
    assert (r.copied, r.skipped) == (0, 3)
    assert ident() == before and not os.path.exists(journal)
    store.write_bytes("s/d", b"dddd")
    r = stage(store, "s", out)
    assert r.copied == 1 and ident() != before
    before = ident()
    store.delete("s/a")
    r = stage(store, "s", out)
    assert r.skipped == 3 and ident() != before
    before = ident()
    r = stage(store, "s", out, path_filter=PathFilter(exclude=("b",)))
    assert r.skipped == 2 and ident() != before
    stage(store, "s", out, path_filter=PathFilter(exclude=("b",)))  # durable claims, maybe
    before = ident()
    r = stage(store, "s", out, path_filter=PathFilter(exclude=("b",)))
    assert r.skipped == 2 and ident() == before
    # The snapshot kept only what the filtered run staged: 'b' is fetched again, once.
    r = stage(store, "s", out)
    assert (r.copied, r.skipped) == (1, 2)
    assert tree(out) == {"a": b"a", "b": b"bb", "c": b"ccc", "d": b"dddd"}  # no --delete


def test_workers_are_started_only_for_work_to_do(store, tmp_path, monkeypatch):
    """A no-change re-run starts no download thread; two small files start a few, not 32."""
    import threading

    from amlfs import fetch

    put_tree(store, {"w/a": b"a", "w/b": b"bb"})
    out = tmp_path / "out"
    started: list[str] = []
    real_start = threading.Thread.start

    def start(self):
        if self.name.startswith("amlfs-dl-"):
            started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    r = stage(store, "w", out, workers=32)
    assert r.copied == 2 and 1 <= len(started) <= 2 * fetch.DEFAULT_RANGE_WORKERS
    started.clear()
    r = stage(store, "w", out, workers=32)
    assert (r.copied, r.skipped) == (0, 2) and started == []


def test_remote_change_is_picked_up_even_at_equal_size(store, tmp_path):
    put_tree(store, FILES)
    out = tmp_path / "out"
    stage(store, "ds", out, block_size=BLOCK)
    before = os.stat(out / "plain.txt")
    time.sleep(1.1)  # Blob Last-Modified has 1 s resolution: only the ETag tells them apart
    store.write_bytes("ds/plain.txt", data_for("other", 3000))
    store.write_bytes("ds/new file", b"new")
    r = stage(store, "ds", out, block_size=BLOCK)
    assert (r.copied, r.skipped) == (2, len(WANT) - 1)
    assert (out / "plain.txt").read_bytes() == data_for("other", 3000)
    assert os.stat(out / "plain.txt").st_size == before.st_size
    assert (out / "new file").read_bytes() == b"new"


def test_local_change_is_repaired(store, tmp_path):
    put_tree(store, FILES)
    out = tmp_path / "out"
    stage(store, "ds", out)
    (out / "plain.txt").write_bytes(b"scribbled")
    (out / "with space.bin").unlink()
    r = stage(store, "ds", out)
    assert r.copied == 2 and tree(out) == WANT


def test_delete_and_dry_run(store, tmp_path):
    put_tree(store, FILES)
    out = tmp_path / "out"
    stage(store, "ds", out)
    (out / "extra").write_bytes(b"x")
    (out / "sub" / "dir").mkdir(parents=True)
    (out / "sub" / "dir" / "stale").write_bytes(b"y")
    store.delete("ds/plain.txt")
    store.write_bytes("ds/added", b"a")

    plan: list[tuple[str, str]] = []
    r = stage(store, "ds", out, delete=True, dry_run=True, on_plan=lambda a, n: plan.append((a, n)))
    assert sorted(plan) == [
        ("copy", "added"),
        ("delete", "extra"),
        ("delete", "plain.txt"),
        ("delete", "sub/dir/stale"),
    ]
    assert (r.copied, r.deleted) == (1, 3)
    assert (out / "extra").exists() and not (out / "added").exists()  # nothing changed

    r = stage(store, "ds", out)  # without --delete, extra local files stay
    assert (r.copied, r.deleted) == (1, 0) and (out / "extra").exists()

    r = stage(store, "ds", out, delete=True)
    assert (r.copied, r.deleted) == (0, 3)
    want = {k: v for k, v in WANT.items() if k != "plain.txt"} | {"added": b"a"}
    assert tree(out) == want
    assert not (out / "sub").exists()  # emptied directories go too


def test_empty_and_missing_prefix(store, tmp_path):
    r = stage(store, "", tmp_path / "root")  # an empty datastore: nothing to do, no error
    assert (r.copied, r.failed) == (0, []) and tree(tmp_path / "root") == {}
    put_tree(store, {"x/y": b"1"})
    with pytest.raises(NotFound, match="'no/such'"):
        stage(store, "no/such", tmp_path / "missing")


def test_single_file_prefix(store, tmp_path):
    put_tree(store, FILES)
    r = stage(store, "ds/a+b/c%20d.dat", tmp_path / "one")
    assert r.copied == 1 and tree(tmp_path / "one") == {"c%20d.dat": WANT["a+b/c%20d.dat"]}


def test_failure_on_one_file_others_copied(store, tmp_path):
    put_tree(store, FILES)
    out = tmp_path / "out"
    (out / "plain.txt").mkdir(parents=True)  # a directory occupies a file's name
    (out / "plain.txt" / "keep").write_bytes(b"k")
    r = stage(store, "ds", out, block_size=BLOCK)
    assert [k for k, _ in r.failed] == ["plain.txt"]
    assert r.copied == len(WANT) - 1
    got = tree(out)
    assert got.pop("plain.txt/keep") == b"k"
    assert got == {k: v for k, v in WANT.items() if k != "plain.txt"}
    assert no_parts(out)


def test_verify_counts_and_repairs(store, tmp_path):
    put_tree(store, FILES)
    out = tmp_path / "out"
    r = stage(store, "ds", out, verify=True, block_size=BLOCK)
    has_md5 = sum(1 for i in store.walk("ds") if i.content_md5)
    assert (r.verified, r.no_md5) == (has_md5, len(WANT) - has_md5)
    if not has_md5:
        return  # the local backend has no Content-MD5
    # Same size, same mtime, different bytes: only --verify notices.
    victim = next(i for i in store.walk("ds") if i.content_md5 and i.size)
    p = out / victim.path.removeprefix("ds/")
    st = os.stat(p)
    p.write_bytes(bytes(b ^ 1 for b in p.read_bytes()))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert stage(store, "ds", out).copied == 0
    r = stage(store, "ds", out, verify=True)
    assert r.copied == 1 and tree(out) == WANT


_KILLED_STAGE = textwrap.dedent(
    """
    import sys, time
    from amlfs.backends import open_backend
    from amlfs.registry import DatastoreConfig, Credentials
    from amlfs.stage import stage

    cfg = DatastoreConfig(**{**eval(sys.argv[1]), "credentials": Credentials(**eval(sys.argv[2]))})
    backend = open_backend(cfg)

    def slowed(read):
        def slow(*a, **kw):  # slow enough to be killed mid-way, however fast the service
            time.sleep(0.05)
            return read(*a, **kw)

        return slow

    backend.read_range_into = slowed(backend.read_range_into)
    backend.read_range_to_fd = slowed(backend.read_range_to_fd)
    stage(backend, "ds", sys.argv[3], workers=4, block_size=int(sys.argv[4]), show_progress=False)
    """
)


def test_kill_9_then_resume_is_byte_exact(store, tmp_path):
    files = {f"ds/small{i:02d}": data_for(str(i), 2000 + i) for i in range(30)}
    files["ds/zz big.bin"] = data_for("big", 40 * BLOCK + 1)
    put_tree(store, files)
    want = {k.removeprefix("ds/"): v for k, v in files.items()}
    out = tmp_path / "out"
    cfg = {k: v for k, v in vars(store.cfg).items() if k != "credentials"}
    creds = vars(store.cfg.credentials)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_STAGE, repr(cfg), repr(creds), str(out), str(BLOCK)],
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    journal = Path(state_paths(out)[1])
    deadline = time.monotonic() + 60
    # Kill once some small files and some chunks of the big one are durable, mid-way.
    while time.monotonic() < deadline and proc.poll() is None:
        lines = journal.read_bytes().splitlines() if journal.exists() else []
        if sum(b'"c"' in ln for ln in lines) >= 2 and sum(b'"f"' in ln for ln in lines) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "stage finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    done_before = {json.loads(ln).get("f") for ln in journal.read_bytes().splitlines()} - {None}
    assert len(done_before) >= 2
    assert not (out / "zz big.bin").exists()  # never a partial file under the real name
    for name in set(want) - done_before:
        p = out / name
        assert not p.exists() or p.read_bytes() == want[name]
    r = stage(store, "ds", out, block_size=BLOCK)
    assert r.failed == []
    assert tree(out) == want and no_parts(out)
    assert r.skipped >= len(done_before)
    # The big file resumed from its journalled chunks instead of starting over.
    assert r.bytes < sum(len(v) for k, v in want.items() if k not in done_before)


def test_concurrent_stage_into_same_dir_is_refused(local_config, tmp_path):
    import fcntl

    from amlfs.errors import AmlfsError

    backend = open_backend(local_config)
    backend.write_bytes("f", b"1")
    out = tmp_path / "out"
    out.mkdir()
    with open(state_paths(out)[1], "ab") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(AmlfsError, match="another amlfs stage"):
            stage(backend, "", out)
    assert stage(backend, "", out).copied == 1


def test_state_inside_dir_when_parent_is_not_writable(local_config, tmp_path, monkeypatch):
    backend = open_backend(local_config)
    backend.write_bytes("f", b"1")
    out = tmp_path / "ro" / "out"
    out.mkdir(parents=True)
    real_access = os.access
    # (Root may write anywhere, so the read-only parent is simulated.)
    monkeypatch.setattr(
        os, "access", lambda p, m: False if str(p) == str(out.parent) else real_access(p, m)
    )
    assert stage(backend, "", out).copied == 1
    assert stage(backend, "", out).skipped == 1
    assert sorted(os.listdir(out)) == [".amlfs-stage.json", "f"]
    assert os.listdir(out.parent) == ["out"]


@pytest.mark.parametrize("durable", [False, True])
def test_claims_without_fsync_are_dropped_after_a_restart(local_config, tmp_path, durable):
    backend = open_backend(local_config)
    put_tree(backend, {"a": b"1", "b": b"2"})
    out = tmp_path / "out"
    stage(backend, "", out, durable=durable)
    snapshot = Path(state_paths(out)[0])
    doc = json.loads(snapshot.read_text())
    # Simulate a machine restart: claims tagged with this boot now belong to another one.
    text = snapshot.read_text()
    if not durable:
        assert all(rec[3] for rec in doc["files"].values())  # tagged with the boot id
    text = text.replace(doc["files"]["a"][3] or "no-tag", "an-earlier-boot")
    snapshot.write_text(text)
    r = stage(backend, "", out)
    assert (r.copied, r.skipped) == ((0, 2) if durable else (2, 0))
    assert tree(out) == {"a": b"1", "b": b"2"}


def _record_page_sizes(store, page_size: int, monkeypatch) -> list[int | None]:
    """Full pages of `page_size` entries; the page size each listing request asks for, in
    order (None: the backend's full page)."""
    if isinstance(store, BlobBackend):
        owner: type = BlobFastPath
        store.page_size = page_size
    else:
        owner = LocalBackend
        monkeypatch.setattr(LocalBackend, "page_size", page_size)
    sizes: list[int | None] = []
    real_page = owner.list_page

    def counted(self, *args):
        sizes.append(args[2])  # walk passes (path or prefix, token or marker, page size)
        return real_page(self, *args)

    monkeypatch.setattr(owner, "list_page", counted)
    return sizes


def test_progress_counts_from_the_small_first_page(store, tmp_path, monkeypatch, capsys):
    """The listing's first request asks for a small page (then full pages), and stage's progress
    shows files listed as soon as that first page is in: counted in requests, not timed."""
    files = {f"many/f{i:03d}": b"x" * i for i in range(40)}
    put_tree(store, files)
    blob = isinstance(store, BlobBackend)
    monkeypatch.setattr(transfer_mod, "FIRST_PAGE", 4)
    sizes = _record_page_sizes(store, 10, monkeypatch)
    reports: list[tuple[int, int, list]] = []
    real_listed = Progress.listed

    def listed(self, n: int, nbytes: int) -> None:
        reports.append((n, nbytes, list(sizes)))
        real_listed(self, n, nbytes)

    monkeypatch.setattr(Progress, "listed", listed)
    r = stage(store, "many", tmp_path / "out", show_progress=True)
    assert r.copied == 40 and r.failed == []
    n, _, requests = reports[0]
    # The first report: after one small page (Blob's walk may have asked for the next one
    # already: it lists one page ahead).
    assert requests in ([[4], [4, 10]] if blob else [[4]]) and 1 <= n <= 4
    assert reports[-1][:2] == (40, sum(map(len, files.values())))
    # 4 + 10 + 10 + 10 + 6: full pages after the first.
    assert sizes == ([4, 10, 10, 10, 10] if blob else [4, None, None, None, None])
    assert "listed 1 files" in capsys.readouterr().err


def test_no_progress_no_listing_reports_and_no_small_first_page(store, tmp_path, monkeypatch):
    """Nobody watches: no reports, and the listing asks for full pages only (the small first
    page would cost a request, and a service may spend as long on it as on a full page)."""
    put_tree(store, {f"d/f{i}": b"a" * i for i in range(7)})
    calls: list[int] = []
    monkeypatch.setattr(Progress, "listed", lambda self, n, b: calls.append(n))
    sizes = _record_page_sizes(store, 5, monkeypatch)
    r = stage(store, "d", tmp_path / "out", show_progress=False)
    assert r.copied == 7 and calls == []
    assert sizes == ([5, 5] if isinstance(store, BlobBackend) else [None, None])
