"""Training runs: inputs mounted and downloaded, through the CLI and the Estimator, with cleanup
after success, failure and SIGTERM (checked in /proc/mounts)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from amlfs import Datastore, Workspace

from .azurite import ACCOUNT, KEY

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse")
    or not any(
        os.access(os.path.join(d, "fusermount3"), os.X_OK) for d in os.environ["PATH"].split(":")
    ),
    reason="needs /dev/fuse and fusermount3",
)


@pytest.fixture(autouse=True)
def _run_dirs(run_dirs_in_tmp_path):
    """Run directories kept by design land in the test's tmp_path (conftest.py)."""


TRAIN = textwrap.dedent("""\
    import argparse, hashlib, json, os, sys, time
    p = argparse.ArgumentParser()
    p.add_argument("--data_dir")
    p.add_argument("--out")
    p.add_argument("--fail", action="store_true")
    p.add_argument("--sleep", type=float, default=0)
    a = p.parse_args()
    roots = [a.data_dir] if a.data_dir else []
    roots += sorted(v for k, v in os.environ.items() if k.startswith("AZUREML_DATAREFERENCE_"))
    result = {}
    for root in roots:
        h = hashlib.sha256()
        n = 0
        for d, dirs, files in sorted(os.walk(root)):
            dirs.sort()
            for f in sorted(files):
                full = os.path.join(d, f)
                h.update(os.path.relpath(full, root).encode())
                h.update(open(full, "rb").read())
                n += 1
        result[root] = {"files": n, "sha256": h.hexdigest()}
    result["env"] = {k: v for k, v in os.environ.items() if "DATAREFERENCE" in k}
    with open(a.out, "w") as f:
        json.dump(result, f)
    if a.sleep:
        print("ready", flush=True)
        time.sleep(a.sleep)
    sys.exit(3 if a.fail else 0)
""")

FILES = {"train/a.bin": os.urandom(100_000), "train/sub/b.txt": b"hello", "train/c d+%.csv": b"1,2"}


def digest(files: dict[str, bytes], prefix: str) -> dict:
    h = hashlib.sha256()
    base = prefix + "/" if prefix else ""
    items = sorted((p[len(base) :], v) for p, v in files.items() if p.startswith(base))

    # os.walk order: files of a directory before its subdirectories
    def key(item):
        parts = item[0].split("/")
        return (parts[:-1], parts[-1])

    for rel, data in sorted(items, key=key):
        h.update(rel.encode())
        h.update(data)
    return {"files": len(items), "sha256": h.hexdigest()}


@pytest.fixture(params=["local", "blob"])
def workspace(request, tmp_path):
    reg = tmp_path / "ws.yaml"
    ws = Workspace.from_config(str(reg))
    if request.param == "local":
        ds = Datastore.register_local(
            ws, "data", str(tmp_path / "store"), create_if_not_exists=True
        )
    else:
        az = request.getfixturevalue("azurite")
        container = request.getfixturevalue("container")
        ds = Datastore.register_azure_blob_container(
            ws, "data", container, ACCOUNT, account_key=KEY, account_url=az.account_url
        )
    b = ds.backend()
    for path, data in FILES.items():
        b.write_bytes(path, data)
    b.close()
    ws = Workspace.from_config(str(reg))
    return ws, ds, str(reg)


def mounts_under(path: str) -> list[str]:
    with open("/proc/mounts") as f:
        return [ln.split()[1] for ln in f if ln.split()[1].startswith(path)]


@pytest.fixture
def script(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(TRAIN)
    return src


@needs_fuse
@pytest.mark.parametrize("mode", ["mount", "download"])
def test_estimator_script_params(workspace, script, tmp_path, mode):
    from amlfs.train import Estimator

    ws, ds, _ = workspace
    ref = ds.path("train")
    ref = ref.as_mount() if mode == "mount" else ref.as_download()
    out = tmp_path / "out.json"
    est = Estimator(
        source_directory=str(script),
        entry_script="train.py",
        script_params={"--data_dir": ref, "--out": str(out)},
        compute_target="local",
        workdir=str(tmp_path / "run"),
    )
    run = est.run()
    assert run.returncode == 0 and run.get_status() == "Completed"
    result = json.loads(out.read_text())
    location = str(tmp_path / "run" / "inputs" / ref.data_reference_name)
    assert result[location] == digest(FILES, "train")
    assert result["env"]["AZUREML_DATAREFERENCE_" + ref.data_reference_name] == location
    assert result["env"]["AMLFS_DATAREFERENCE_" + ref.data_reference_name] == location
    assert mounts_under(str(tmp_path)) == []


@needs_fuse
def test_estimator_inputs_list_mount_and_download(workspace, script, tmp_path):
    from amlfs.train import Estimator

    ws, ds, _ = workspace
    out = tmp_path / "out.json"
    inputs = [
        ds.path("train/sub", data_reference_name="one").as_mount(),
        ds.path("train", data_reference_name="two").as_download(path_on_compute="dl"),
    ]
    est = Estimator(
        source_directory=str(script),
        entry_script="train.py",
        inputs=inputs,
        arguments=["--out", str(out)],
        workdir=str(tmp_path / "r"),
    )
    assert est.run().returncode == 0
    result = json.loads(out.read_text())
    assert result[str(tmp_path / "r" / "inputs" / "one")] == digest(FILES, "train/sub")
    assert result[str(tmp_path / "r" / "dl")] == digest(FILES, "train")
    assert mounts_under(str(tmp_path)) == []


def test_estimator_rejects_remote_compute(workspace, script):
    from amlfs import UsageError
    from amlfs.train import Estimator

    with pytest.raises(UsageError, match="compute_target='local'"):
        Estimator(
            source_directory=str(script), entry_script="train.py", compute_target="gpu-cluster"
        )


def test_datareference_names_and_repr(workspace):
    ws, ds, _ = workspace
    ref = ds.path("./foo").as_download()
    assert ref.data_reference_name == "data_foo" and ref.mode == "download"
    assert str(ref) == "$AZUREML_DATAREFERENCE_data_foo"
    assert "path_on_datastore='foo'" in repr(ref) and "mode='download'" in repr(ref)
    assert ds.as_mount().data_reference_name == "data"
    assert ds.path("foo") == ds.path("foo")


def amlfs_cmd(reg):
    return [sys.executable, "-m", "amlfs", "--registry", reg]


@needs_fuse
@pytest.mark.parametrize("mode", ["mount", "download"])
def test_cli_run_substitutes_and_cleans_up(workspace, script, tmp_path, mode):
    ws, ds, reg = workspace
    out = tmp_path / "out.json"
    p = subprocess.run(
        amlfs_cmd(reg)
        + [
            "run",
            "-i",
            f"d=data:train@{mode}",
            "--workdir",
            str(tmp_path / "w"),
            "--",
            sys.executable,
            str(script / "train.py"),
            "--data_dir",
            "{d}",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    result = json.loads(out.read_text())
    assert result[str(tmp_path / "w" / "inputs" / "d")] == digest(FILES, "train")
    assert mounts_under(str(tmp_path)) == []


@needs_fuse
def test_cli_run_failure_status_and_cleanup(workspace, script, tmp_path):
    ws, ds, reg = workspace
    p = subprocess.run(
        amlfs_cmd(reg)
        + [
            "run",
            "-i",
            "d=data:train",
            "--workdir",
            str(tmp_path / "w"),
            "--",
            sys.executable,
            str(script / "train.py"),
            "--data_dir",
            "{d}",
            "--out",
            str(tmp_path / "o.json"),
            "--fail",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 3
    assert (tmp_path / "o.json").exists()
    assert mounts_under(str(tmp_path)) == []


@needs_fuse
def test_cli_run_sigterm_unmounts(workspace, script, tmp_path):
    ws, ds, reg = workspace
    proc = subprocess.Popen(
        amlfs_cmd(reg)
        + [
            "run",
            "-i",
            "d=data:train",
            "--workdir",
            str(tmp_path / "w"),
            "--",
            sys.executable,
            str(script / "train.py"),
            "--data_dir",
            "{d}",
            "--out",
            str(tmp_path / "o.json"),
            "--sleep",
            "60",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    assert mounts_under(str(tmp_path)) == [str(tmp_path / "w" / "inputs" / "d")]
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(60)
    assert rc == 128 + signal.SIGTERM
    assert mounts_under(str(tmp_path)) == []


def test_cli_run_bad_input_spec_exit_2(tmp_path):
    p = subprocess.run(
        amlfs_cmd(str(tmp_path / "r.yaml")) + ["run", "-i", "no-equals", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "NAME=DATASTORE" in p.stderr


def test_cli_run_unknown_datastore_exit_2(tmp_path):
    Workspace.from_config(str(tmp_path / "r.yaml")).registry.save()
    p = subprocess.run(
        amlfs_cmd(str(tmp_path / "r.yaml")) + ["run", "-i", "x=nope:a", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "nope" in p.stderr


def test_cli_run_download_local_default_no_fuse(tmp_path):
    """Download mode needs no FUSE: runs everywhere."""
    reg = str(tmp_path / "r.yaml")
    ws = Workspace.from_config(reg)
    ws.registry.save()
    ds = ws.get_default_datastore()
    b = ds.backend()
    b.write_bytes("x/y.txt", b"payload")
    b.close()
    p = subprocess.run(
        amlfs_cmd(reg)
        + [
            "run",
            "-i",
            "d=:x@download",
            "--",
            "sh",
            "-c",
            'cat "$AZUREML_DATAREFERENCE_d/y.txt"; exit 7',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 7 and p.stdout == "payload"


@needs_fuse
def test_guide_training_examples_as_written(workspace, tmp_path, monkeypatch):
    """The guide's last section, with `amlfs` imports and compute_target='local'."""
    ws, ds, _ = workspace
    monkeypatch.chdir(tmp_path)
    os.makedirs("your code directory")
    with open("your code directory/train.py", "w") as f:
        f.write(
            TRAIN.replace('p.add_argument("--out")', 'p.add_argument("--out", default="out.json")')
        )
    ds1, ds2 = ds, ws.get_default_datastore()
    b = ds2.backend()
    b.write_bytes("foo/x.txt", b"default datastore data")
    b.close()
    compute_target = "local"

    from amlfs.train.estimator import Estimator

    script_params = {"--data_dir": ds.as_mount()}

    est = Estimator(
        source_directory="your code directory",
        script_params=script_params,
        compute_target=compute_target,
        entry_script="train.py",
    )
    assert est.run().returncode == 0
    result = json.loads((tmp_path / "your code directory" / "out.json").read_text())
    mounted = [k for k in result if k != "env"]
    assert len(mounted) == 1 and result[mounted[0]] == digest(FILES, "")

    est = Estimator(
        source_directory="your code directory",
        compute_target=compute_target,
        entry_script="train.py",
        inputs=[ds1.as_mount(), ds2.path(path="./foo").as_download()],
    )
    assert est.run().returncode == 0
    result = json.loads((tmp_path / "your code directory" / "out.json").read_text())
    env = result["env"]
    assert set(env) == {
        f"{p}{n}"
        for p in ("AZUREML_DATAREFERENCE_", "AMLFS_DATAREFERENCE_")
        for n in ("data", "workspaceblobstore_foo")
    }
    downloaded = env["AZUREML_DATAREFERENCE_workspaceblobstore_foo"]
    assert result[downloaded]["files"] == 1
    assert result[env["AZUREML_DATAREFERENCE_data"]]["files"] == len(FILES)
    assert mounts_under("/tmp/amlfs-run-") == []


def _saved_registry(tmp_path) -> str:
    reg = str(tmp_path / "r.yaml")
    Workspace.from_config(reg).registry.save()
    return reg


def _cli_run(reg: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        amlfs_cmd(reg) + ["run", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_run_bad_mode_exit_2_names_valid_modes(tmp_path):
    p = _cli_run(_saved_registry(tmp_path), "-i", "train=:data@copy", "--", "true")
    assert p.returncode == 2, p.stderr
    assert "'@copy'" in p.stderr and "@mount" in p.stderr and "@download" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_cli_run_path_with_at_sign_and_explicit_mode(tmp_path):
    reg = _saved_registry(tmp_path)
    ds = Workspace.from_config(reg).get_default_datastore()
    b = ds.backend()
    b.write_bytes("v@2/f.txt", b"at")
    b.close()
    p = _cli_run(reg, "-i", "d=:v@2@download", "--", "cat", "{d}/f.txt")
    assert p.returncode == 0 and p.stdout == "at", p.stderr


def test_cli_run_unknown_placeholder_exit_2_shell_vars_alone(tmp_path):
    reg = _saved_registry(tmp_path)
    p = _cli_run(reg, "--", "echo", "{trian}")
    assert p.returncode == 2 and "{trian}" in p.stderr, p.stderr
    p = _cli_run(reg, "--", "sh", "-c", "echo ${HOME:+ok}")
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr


def test_cli_run_command_not_found_127_not_executable_126(tmp_path):
    reg = _saved_registry(tmp_path)
    p = _cli_run(reg, "--", "no-such-command-amlfs")
    assert p.returncode == 127 and "command not found" in p.stderr, p.stderr
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    p = _cli_run(reg, "--", str(script))
    assert p.returncode == 126 and "not executable" in p.stderr, p.stderr


@needs_fuse
def test_mount_input_from_a_registry_never_saved(tmp_path, monkeypatch):
    """$AMLFS_REGISTRY naming a file not yet written: the embedded default still mounts."""
    from amlfs.run import run_with_inputs

    monkeypatch.setenv("AMLFS_REGISTRY", str(tmp_path / "not-yet.yaml"))
    ws = Workspace.from_config()
    ds = ws.get_default_datastore()
    b = ds.backend()
    b.write_bytes("m/f.txt", b"mounted")
    b.close()
    ref = ds.path("m").as_mount()
    result = run_with_inputs(
        ["sh", "-c", f'cat "${ref.env_names()[0]}/f.txt" > {tmp_path}/out'],
        [ref],
        workdir=str(tmp_path / "run"),
    )
    assert result.returncode == 0 and (tmp_path / "out").read_bytes() == b"mounted"
    assert not (tmp_path / "not-yet.yaml").exists()
