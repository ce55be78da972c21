"""`amlfs ls`, `cat`, `rm` and the --include/--exclude filters, through the CLI against Azurite
and a local datastore; `stats --watch` rates."""

from __future__ import annotations

import json

import pytest
import yaml
from click.testing import CliRunner

from amlfs.backends import open_backend
from amlfs.cli import main
from amlfs.cli.statswatch import rates, render, watch

from .azurite import ACCOUNT, KEY

TREE = {"a.txt": b"A", "img/cat.jpg": b"C" * 3000, "img/dog.jpg": b"D" * 5, "img/x/y.png": b"Y"}


@pytest.fixture(params=["blob", "local"])
def store(request, tmp_path, blob_config, local_config):
    cfg = blob_config if request.param == "blob" else local_config
    cfg.name = "s"
    b = open_backend(cfg)
    for name, data in TREE.items():
        b.write_bytes(f"d/{name}", data)
    entry = {"name": "s", "type": cfg.type}
    if cfg.type == "local":
        entry["path"] = cfg.path
    else:
        entry.update(account_name=ACCOUNT, container_name=cfg.container_name,
                     account_url=cfg.account_url, protocol="http", credentials={"account_key": KEY})  # fmt: skip
    reg = tmp_path / "reg.yaml"
    reg.write_text(yaml.safe_dump({"default_datastore": "s", "datastores": [entry]}))
    reg.chmod(0o600)
    yield str(reg), b
    b.close()


def amlfs(reg, *args):
    return CliRunner().invoke(main, ["--registry", reg, *args])


def test_ls_plain_long_recursive_json(store):
    reg, _ = store
    r = amlfs(reg, "ls", "s:d")
    assert r.exit_code == 0 and r.output.split() == ["img/", "a.txt"], r.output
    r = amlfs(reg, "ls", "-l", "s:d/img")
    rows = [line.split() for line in r.output.splitlines()]
    assert [row[0] for row in rows] == ["-", "2.9K", "5"] and rows[0][-1] == "x/", r.output
    r = amlfs(reg, "ls", "-R", ":d")
    assert r.output.split() == sorted(TREE), r.output
    r = amlfs(reg, "ls", "--json", "s:d/img/cat.jpg")
    (row,) = [json.loads(line) for line in r.output.splitlines()]
    assert row["path"] == "d/img/cat.jpg" and row["size"] == 3000 and row["type"] == "file"
    r = amlfs(reg, "ls", "s:nope")
    assert r.exit_code == 2 and "s:nope does not exist" in r.output


def test_cat_files_and_refuses_directories(store):
    reg, _ = store
    r = amlfs(reg, "cat", "s:d/a.txt", "s:d/img/dog.jpg")
    assert r.exit_code == 0 and r.stdout_bytes == b"A" + b"D" * 5
    r = amlfs(reg, "cat", "s:d/img")
    assert r.exit_code == 2 and "is a directory" in r.output


def test_rm_file_dir_dry_run_and_root(store):
    reg, backend = store
    r = amlfs(reg, "rm", "s:d/img")
    assert r.exit_code == 2 and "use -r" in r.output
    r = amlfs(reg, "rm", "-r", "--dry-run", "s:d/img")
    assert r.exit_code == 0 and "would remove d/img/cat.jpg" in r.output
    assert len(list(backend.walk("d"))) == 4
    r = amlfs(reg, "rm", "-r", "s:")
    assert r.exit_code == 2 and "--force" in r.output
    r = amlfs(reg, "rm", "-r", "s:d/img")
    assert r.exit_code == 0 and "removed 3 file(s)" in r.output, r.output
    r = amlfs(reg, "rm", "s:d/a.txt")
    assert r.exit_code == 0 and list(backend.walk("")) == []
    backend.write_bytes("z", b"z")
    r = amlfs(reg, "rm", "-r", "--force", "s:")
    assert r.exit_code == 0 and list(backend.walk("")) == []


def test_include_exclude_for_download_stage_upload(store, tmp_path):
    reg, backend = store
    r = amlfs(
        reg, "download", "--include", "*.jpg", "--exclude", "dog*", "s:d", str(tmp_path / "dl")
    )
    assert r.exit_code == 0, r.output
    got = sorted(
        str(p.relative_to(tmp_path / "dl")) for p in (tmp_path / "dl").rglob("*") if p.is_file()
    )
    assert got == ["img/cat.jpg"]
    out = tmp_path / "st"
    assert amlfs(reg, "stage", "s:d", str(out)).exit_code == 0
    (out / "local-only.txt").write_text("keep me")
    r = amlfs(
        reg,
        "stage",
        "--delete",
        "--exclude",
        "img/*",
        "--exclude",
        "local-only.txt",
        "s:d",
        str(out),
    )
    assert r.exit_code == 0 and (out / "local-only.txt").exists() and (out / "img/cat.jpg").exists()
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "keep.csv").write_text("k")
    (src / "sub" / "skip.tmp").write_text("s")
    r = amlfs(reg, "upload", "--exclude", "*.tmp", str(src), "s:up")
    assert r.exit_code == 0, r.output
    assert sorted(i.path for i in backend.walk("up")) == ["up/keep.csv"]


def test_stats_watch_rates_on_an_injected_clock():
    snapshots = iter(
        [
            {"counters": {"bytes_fetched": 0, "requests.read": 0, "inodes": 5}},
            {"counters": {"bytes_fetched": 4 << 20, "requests.read": 10, "inodes": 7}},
            {"counters": {"bytes_fetched": 4 << 20, "requests.read": 12, "inodes": 7}},
        ]
    )
    now = iter([0.0, 2.0, 4.0])
    lines: list[str] = []
    watch(
        lambda: next(snapshots), 2.0, 2, clear=False,
        clock=lambda: next(now), sleep=lambda s: None, emit=lines.append,
    )  # fmt: skip
    text = "\n".join(lines)
    assert "2.0 MiB/s" in text and "5.0/s" in text and "1.0/s" in text
    assert rates({"inodes": 1}, {"inodes": 9}, 1.0) == {}
    assert render({"x": 1}, {"x": 0.5})[1].endswith("0.5/s")
