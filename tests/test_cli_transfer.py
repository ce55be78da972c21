"""`amlfs upload`, `amlfs download` and `amlfs stage` through the CLI against Azurite: outputs,
summaries, exit codes (0 ok, 1 runtime failure, 2 bad usage) and no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from amlfs.backends import open_backend
from amlfs.cli import main

from .azurite import ACCOUNT, KEY


@pytest.fixture
def reg(tmp_path, blob_config):
    doc = {
        "default_datastore": "azb",
        "datastores": [
            {
                "name": "azb",
                "type": "azure_blob",
                "account_name": ACCOUNT,
                "container_name": blob_config.container_name,
                "account_url": blob_config.account_url,
                "protocol": "http",
                "credentials": {"account_key": KEY},
            }
        ],
    }
    path = tmp_path / "datastores.yaml"
    path.write_text(yaml.safe_dump(doc))
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def backend(blob_config):
    b = open_backend(blob_config)
    yield b
    b.close()


def amlfs(reg, *args):
    return CliRunner().invoke(main, ["--registry", reg, *args])


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    for name, data in {"a.txt": b"A", "sub dir/b+%.bin": b"B" * 5000, "ü/c": b"C"}.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def test_upload_download_round_trip(reg, src, tmp_path, backend):
    r = amlfs(reg, "upload", str(src), "azb:up")
    assert r.exit_code == 0, r.output
    assert "uploaded 3, skipped 0, failed 0" in r.stderr
    assert sorted(i.path for i in backend.walk()) == ["up/a.txt", "up/sub dir/b+%.bin", "up/ü/c"]

    r = amlfs(reg, "upload", str(src), ":up")  # again, default datastore: all exist
    assert r.exit_code == 0 and "uploaded 0, skipped 3" in r.stderr
    r = amlfs(reg, "upload", str(src / "a.txt"), "azb:one/two")
    assert r.exit_code == 0 and backend.read_all("one/two/a.txt") == b"A"

    out = tmp_path / "out"
    r = amlfs(reg, "download", "azb:up", str(out))
    assert r.exit_code == 0, r.output
    assert "downloaded 3" in r.stderr
    assert (out / "sub dir" / "b+%.bin").read_bytes() == b"B" * 5000
    r = amlfs(reg, "download", "azureml://datastores/azb/paths/up", str(out))
    assert r.exit_code == 0 and "downloaded 0, skipped 3" in r.stderr
    r = amlfs(reg, "download", "azb:up/a.txt", str(tmp_path / "single"), "--overwrite")
    assert r.exit_code == 0 and os.listdir(tmp_path / "single") == ["a.txt"]


def test_upload_overwrite_flag(reg, src, backend):
    backend.write_bytes("a.txt", b"old")
    assert amlfs(reg, "upload", str(src), "azb:").exit_code == 0
    assert backend.read_all("a.txt") == b"old"
    r = amlfs(reg, "upload", str(src), "azb:", "--overwrite")
    assert r.exit_code == 0 and "uploaded 3" in r.stderr
    assert backend.read_all("a.txt") == b"A"


def test_missing_path_is_exit_2_naming_it(reg, backend, tmp_path):
    backend.write_bytes("x/y", b"1")
    for cmd in ("download", "stage"):
        r = amlfs(reg, cmd, "azb:no/such", str(tmp_path / cmd))
        assert r.exit_code == 2, r.output
        assert "no/such" in r.stderr and "Traceback" not in r.output


def test_usage_errors_are_exit_2(reg, tmp_path):
    cases = [
        ("stage", "nosuch:x", str(tmp_path / "o")),  # unknown datastore
        ("stage", "bad name!:x", str(tmp_path / "o")),  # bad location
        ("stage", "azb:x", str(tmp_path / "o"), "--block-size", "12 parsecs"),
        ("download", "azb:x", str(tmp_path / "o"), "--workers", "0"),
    ]
    for args in cases:
        r = amlfs(reg, *args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output


def test_stage_sync_dry_run_delete(reg, backend, tmp_path):
    for name in ("d/a", "d/b c", "d/ü+%"):
        backend.write_bytes(name, name.encode())
    out = tmp_path / "out"
    r = amlfs(reg, "stage", "azb:d", str(out), "--dry-run")
    assert r.exit_code == 0
    assert sorted(r.stdout.splitlines()) == ["copy a", "copy b c", "copy ü+%"]
    assert not out.exists()

    r = amlfs(reg, "stage", "azb:d", str(out), "--verify")
    assert r.exit_code == 0, r.output
    assert "copied 3, skipped 0" in r.stderr and "verified 3 by Content-MD5" in r.stderr
    r = amlfs(reg, "stage", "azb:d", str(out))
    assert r.exit_code == 0 and "copied 0, skipped 3" in r.stderr

    backend.delete("d/a")
    r = amlfs(reg, "stage", "azb:d", str(out), "--delete", "--dry-run")
    assert r.stdout.splitlines() == ["delete a"] and (out / "a").exists()
    r = amlfs(reg, "stage", "azb:d", str(out), "--delete")
    assert r.exit_code == 0 and "deleted 1" in r.stderr
    assert sorted(n for n in os.listdir(out) if not n.startswith(".")) == ["b c", "ü+%"]


def test_stage_failure_lists_it_and_exits_1(reg, backend, tmp_path):
    for name in ("d/ok1", "d/blocked", "d/ok2"):
        backend.write_bytes(name, b"x")
    out = tmp_path / "out"
    (out / "blocked").mkdir(parents=True)
    (out / "blocked" / "f").write_bytes(b"mine")
    r = amlfs(reg, "stage", "azb:d", str(out))
    assert r.exit_code == 1
    assert "copied 2" in r.stderr and "failed 1" in r.stderr
    assert "amlfs: failed: blocked:" in r.stderr
    assert (out / "ok1").read_bytes() == b"x" and (out / "ok2").read_bytes() == b"x"


def test_real_process_exit_codes_and_progress_flag(reg, backend, tmp_path):
    backend.write_bytes("f", b"1" * 1000)
    base = [sys.executable, "-m", "amlfs", "--registry", reg]
    p = subprocess.run(
        [*base, "stage", "azb:", str(tmp_path / "o"), "--progress"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    assert "stage" in p.stderr and "1/1 files" in p.stderr  # the forced bar
    p = subprocess.run(
        [*base, "stage", "azb:nope", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr and "nope" in p.stderr


def test_a_no_change_stage_loads_only_what_it_uses(reg, src, tmp_path):
    """A no-change stage re-run of a Blob datastore starts without the Azure SDK, trio, the FUSE
    layer, the run machinery or the CSI server: start-up is most of its time."""
    assert amlfs(reg, "upload", str(src), ":d", "--no-progress").exit_code == 0
    out = tmp_path / "out"
    assert amlfs(reg, "stage", ":d", str(out), "--no-progress").exit_code == 0
    heavy = ("azure.storage", "azure.core", "trio", "pyfuse3", "amlfs.fs", "amlfs.run", "amlfs.csi")
    code = (
        "import sys\n"
        "from amlfs.cli import main\n"
        "try:\n"
        f"    main({['--registry', reg, 'stage', ':d', str(out), '--no-progress']!r})\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "skipped 3" in r.stderr, r.stderr
    assert r.stdout.strip() == "[]", r.stdout
