"""Small things a new user hits: upload modes in a local datastore, a DNS failure that names the
host, quick-start progress bars one per line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import yaml

from amlfs.backends import Transient, open_backend
from amlfs.registry import BLOB, Credentials, DatastoreConfig

from .azurite import KEY


def test_upload_into_local_datastore_keeps_mode_bits_minus_group_other_write(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    modes = {"run.sh": 0o775, "data.csv": 0o664, "private": 0o600, "plain": 0o644}
    for name, mode in modes.items():
        (src / name).write_text(name)
        (src / name).chmod(mode)
    root = tmp_path / "store"
    root.mkdir()
    reg = tmp_path / "r.yaml"
    reg.write_text(
        yaml.safe_dump({"datastores": [{"name": "l", "type": "local", "path": str(root)}]})
    )
    r = subprocess.run(
        [sys.executable, "-m", "amlfs", "--registry", str(reg), "upload", str(src), "l:up"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = {n: stat.S_IMODE(os.stat(root / "up" / n).st_mode) for n in modes}
    assert got == {"run.sh": 0o755, "data.csv": 0o644, "private": 0o600, "plain": 0o644}


def test_dns_failure_of_the_sdk_transport_names_the_host():
    """What the File and ADLS clients see (requests/urllib3), without their minute of retries."""
    import requests

    from amlfs.backends.failures import unresolved_host

    with pytest.raises(requests.ConnectionError) as e:
        requests.get("http://other-host.invalid:10000/x", timeout=10)
    assert unresolved_host(e.value, "file share 's' at http://x.invalid") == "other-host.invalid"
    assert unresolved_host(OSError("connection refused"), "at http://h") is None


def test_unresolvable_host_is_named_by_the_blob_backend():
    ds = DatastoreConfig(
        name="x", type=BLOB, account_name="devstoreaccount1", protocol="http",
        account_url="http://no-such-host.invalid:10000/devstoreaccount1",
        credentials=Credentials(account_key=KEY), container_name="c",
    )  # fmt: skip
    backend = open_backend(ds)
    try:
        with pytest.raises(Transient) as e:
            backend.check_access()
    finally:
        backend.close()
    assert "host name 'no-such-host.invalid' could not be resolved" in str(e.value)
    assert "gaierror" not in str(e.value)


def test_progress_into_a_pipe_is_one_line_per_update_and_100_once(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 100_000)
    reg = tmp_path / "r.yaml"
    root = tmp_path / "store"
    root.mkdir()
    reg.write_text(
        yaml.safe_dump({"datastores": [{"name": "l", "type": "local", "path": str(root)}]})
    )
    base = [sys.executable, "-m", "amlfs", "--registry", str(reg)]
    for args in (
        ["upload", "--progress", str(src), "l:p"],
        ["download", "--progress", "l:p", str(tmp_path / "o")],
    ):
        r = subprocess.run([*base, *args], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "\r" not in r.stderr
        assert sum("100%" in line for line in r.stderr.splitlines()) == 1, r.stderr


def test_python_download_keeps_prefix_cli_puts_contents(tmp_path):
    from amlfs import Workspace

    reg = str(tmp_path / "r.yaml")
    ws = Workspace.from_config(reg)
    ws.registry.save()
    ds = ws.get_default_datastore()
    src = tmp_path / "data"
    src.mkdir()
    (src / "a.txt").write_text("a")
    ds.upload(src_dir=str(src), target_path="data")
    ds.download(target_path=str(tmp_path / "py"), prefix="data")
    assert (tmp_path / "py" / "data" / "a.txt").read_text() == "a"
    r = subprocess.run(
        [sys.executable, "-m", "amlfs", "--registry", reg, "download", ":data", str(tmp_path / "cli")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli" / "a.txt").read_text() == "a"


def test_setup_is_silent_once_installed():
    """scripts/setup.sh --test prints nothing (no npm notices, no pip chatter) when up to date."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    if not (repo / "node_modules" / ".bin" / "azurite-blob").exists():
        pytest.skip("the test tools are not installed")
    r = subprocess.run(
        [str(repo / "scripts" / "setup.sh"), "--test"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "npm notice" not in r.stderr, (r.stdout, r.stderr)
