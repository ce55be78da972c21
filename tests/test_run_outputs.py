"""Training run outputs: upload mode (after success, failure and SIGTERM) and rw_mount mode, the
exit status rules, and the SDK v1 `OutputFileDatasetConfig` shape -- on a local datastore, Blob
(Azurite) and ADLS Gen2 (tests/servers), checked byte for byte in the datastore."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest

from amlfs import Datastore, Workspace

from .azurite import ACCOUNT, KEY
from .servers.fixtures import make_adls_config


@pytest.fixture(autouse=True)
def _run_dirs(run_dirs_in_tmp_path):
    """Run directories kept by design land in the test's tmp_path (conftest.py)."""


WRITER = textwrap.dedent("""\
    import os, shutil, sys, time
    out, src, status = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sleep = float(sys.argv[4]) if len(sys.argv) > 4 else 0
    name = os.path.basename(out)
    if os.environ.get("AMLFS_OUTPUT_" + name) != out or os.environ.get("AZUREML_OUTPUT_" + name) != out:
        sys.exit(9)
    for d, _, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), src)
            os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(d, f), os.path.join(out, rel))
    if sleep:
        print("ready", flush=True)
        time.sleep(sleep)
    sys.exit(status)
""")

PAYLOAD = {
    "model.bin": os.urandom(300_000),
    "logs/train.log": b"epoch 1\nepoch 2\n",
    "ckpt/step 10+%.pt": os.urandom(1000),
}


needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse")
    or not any(
        os.access(os.path.join(d, "fusermount3"), os.X_OK) for d in os.environ["PATH"].split(":")
    ),
    reason="needs /dev/fuse and fusermount3",
)


def make_store(request, kind: str, tmp_path) -> tuple[str, Datastore]:
    """(registry path, the datastore 'data') on `kind` of storage."""
    reg = str(tmp_path / "ws.yaml")
    ws = Workspace.from_config(reg)
    if kind == "local":
        Datastore.register_local(ws, "data", str(tmp_path / "store"), create_if_not_exists=True)
    elif kind == "blob":
        az = request.getfixturevalue("azurite")
        container = request.getfixturevalue("container")
        Datastore.register_azure_blob_container(
            ws, "data", container, ACCOUNT, account_key=KEY, account_url=az.account_url
        )
    else:
        cfg = make_adls_config(request.getfixturevalue("adls_server"))
        ws.registry.add(replace(cfg, name="data"))
        ws.registry.save()
    ws = Workspace.from_config(reg)
    return reg, Datastore(ws, "data")


@pytest.fixture(params=["local", "blob", "adls"])
def store(request, tmp_path):
    return make_store(request, request.param, tmp_path)


@pytest.fixture(params=["local", "blob"])
def rw_store(request, tmp_path):
    """Writable mounts exist for Blob and local datastores."""
    return make_store(request, request.param, tmp_path)


@pytest.fixture
def payload_dir(tmp_path):
    src = tmp_path / "payload"
    for rel, data in PAYLOAD.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (tmp_path / "writer.py").write_text(WRITER)
    return src


def amlfs(reg: str, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amlfs", "--registry", reg, *args],
        capture_output=True,
        text=True,
        timeout=180,
        **kw,
    )


def remote_files(ds: Datastore, prefix: str) -> dict[str, bytes]:
    from amlfs.backends import NotFound

    b = ds.backend()
    try:
        return {
            i.path[len(prefix) + 1 :]: b.read_all(i.path)
            for i in b.walk(prefix)
            if i.path.startswith(prefix + "/")
        }
    except NotFound:
        return {}
    finally:
        b.close()


def run_manifest(stderr: str) -> dict:
    line = next(ln for ln in stderr.splitlines() if ": manifest /" in ln)
    with open(line.rpartition(" manifest ")[2]) as f:
        return json.load(f)


def check_output_record(ds: Datastore, manifest: dict, name: str, prefix: str) -> None:
    """The manifest's output lists exactly the committed files, with their ETags now."""
    rec = next(o for o in manifest["outputs"] if o["name"] == name)
    b = ds.backend()
    try:
        listed = {i.path: (i.size, i.etag) for i in b.walk(prefix)}
    finally:
        b.close()
    assert {f["path"]: (f["size"], f["etag"]) for f in rec["files"]} == listed
    assert rec["failures"] == []


def writer_cmd(tmp_path, payload_dir, status: int = 0, sleep: float = 0) -> list[str]:
    args = [sys.executable, str(tmp_path / "writer.py"), "{m}", str(payload_dir), str(status)]
    return args + ([str(sleep)] if sleep else [])


def test_upload_output_after_success(store, payload_dir, tmp_path):
    reg, ds = store
    p = amlfs(reg, "run", "-o", "m=data:out/{run-id}", "--", *writer_cmd(tmp_path, payload_dir))
    assert p.returncode == 0, p.stderr
    m = run_manifest(p.stderr)
    prefix = f"out/{m['run_id']}"
    assert remote_files(ds, prefix) == PAYLOAD
    assert f"output m -> data:{prefix}: uploaded 3" in p.stderr
    check_output_record(ds, m, "m", prefix)
    assert m["exit_status"] == 0 and m["command"][-3] == "{m}"


def test_upload_output_after_failure_and_opt_out(store, payload_dir, tmp_path):
    reg, ds = store
    p = amlfs(reg, "run", "-o", "m=data:failed", "--", *writer_cmd(tmp_path, payload_dir, 3))
    assert p.returncode == 3, p.stderr
    assert remote_files(ds, "failed") == PAYLOAD
    assert run_manifest(p.stderr)["exit_status"] == 3
    p = amlfs(
        reg,
        "run",
        "--no-upload-on-failure",
        "-o",
        "m=data:skipped",
        "--",
        *writer_cmd(tmp_path, payload_dir, 4),
    )
    assert p.returncode == 4, p.stderr
    assert remote_files(ds, "skipped") == {}
    assert "not uploaded" in p.stderr


def test_upload_output_after_sigterm(store, payload_dir, tmp_path):
    reg, ds = store
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--registry", reg, "run", "-o", "m=data:term", "--"]
        + writer_cmd(tmp_path, payload_dir, 0, sleep=60),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(120)
    stderr = proc.stderr.read()
    assert rc == 128 + signal.SIGTERM, stderr
    assert remote_files(ds, "term") == PAYLOAD
    assert run_manifest(stderr)["exit_status"] == 128 + signal.SIGTERM


def test_a_second_interrupt_stops_the_output_upload_and_keeps_the_rest(request, tmp_path):
    """The first SIGINT after the command ended (a terminal's Ctrl-C reaches both) leaves the
    upload running; a second one stops it: exit 130, and every file is either in the datastore
    or in the kept run directory."""
    reg, ds = make_store(request, "local", tmp_path)
    n = 10_000
    make = f"import os; [open(os.path.join('{{m}}', f'f{{i:05d}}'), 'w').write(str(i)) for i in range({n})]"
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--registry", reg, "run", "-o", "m=data:stop", "--"]
        + [sys.executable, "-c", make],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    dest = tmp_path / "store" / "stop"
    deadline = time.monotonic() + 120
    while not (dest.is_dir() and any(dest.iterdir())):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    seen = []  # stderr up to the first signal's answer: the second one comes after it
    while not seen or "interrupt again to stop" not in seen[-1]:
        line = proc.stderr.readline()
        assert line, "".join(seen)  # ended without answering the first signal
        seen.append(line)
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(120)
    stderr = "".join(seen) + proc.stderr.read()
    assert rc == 130, stderr
    kept = next(ln for ln in stderr.splitlines() if "output commit was stopped; kept under" in ln)
    local = os.path.join(kept.rpartition(" ")[2], "outputs", "m")
    uploaded = {p.name for p in dest.iterdir()}
    assert 0 < len(uploaded) < n  # stopped part way
    assert uploaded | set(os.listdir(local)) == {f"f{i:05d}" for i in range(n)}
    assert all((dest / f).read_text() == str(int(f[1:])) for f in uploaded)


def test_success_with_failed_output_exits_1_with_failure_listed(tmp_path):
    reg = str(tmp_path / "ws.yaml")
    Workspace.from_config(reg).registry.save()
    p = amlfs(
        reg, "run", "-o", "m=:gone", "-o", "k=:kept", "--", "sh", "-c", "rm -r {m}; echo x > {k}/f"
    )
    assert p.returncode == 1, p.stderr
    assert "output m: failed:" in p.stderr and "is gone" in p.stderr
    assert "the command succeeded but 1 output failure" in p.stderr
    kept = next(ln for ln in p.stderr.splitlines() if "kept under" in ln).rpartition(" ")[2]
    assert open(os.path.join(kept, "outputs", "k", "f")).read() == "x\n"
    # a failed command keeps its own status, the failure listed all the same
    p = amlfs(reg, "run", "-o", "m=:gone", "--", "sh", "-c", "rm -r {m}; exit 5")
    assert p.returncode == 5 and "output m: failed:" in p.stderr


def test_names_that_prefix_each_other_are_substituted_whole(tmp_path):
    from amlfs.run import substitute

    ds = Workspace.from_config(str(tmp_path / "ws.yaml")).get_default_datastore()
    from amlfs.outputs import Output

    outs = [Output("m", ds, "a"), Output("model", ds, "b")]
    locs = {"m": "/m", "model": "/model"}
    args = ["$AZUREML_OUTPUT_model", "$AZUREML_OUTPUT_m", "{model}/{m}"]
    assert substitute(args, [], locs, outs) == ["/model", "/m", "/model//m"]


def test_an_output_directory_left_by_an_earlier_run_is_refused(tmp_path):
    reg = str(tmp_path / "ws.yaml")
    Workspace.from_config(reg).registry.save()
    work = tmp_path / "work"
    p = amlfs(reg, "run", "--workdir", str(work), "-o", "m=:w", "--", "sh", "-c", "echo 1 > {m}/a")
    assert p.returncode == 0, p.stderr
    p = amlfs(reg, "run", "--workdir", str(work), "-o", "m=:w2", "--", "true")
    assert p.returncode == 2 and "is not empty" in p.stderr
    assert (work / "outputs" / "m" / "a").read_text() == "1\n"


def test_bad_output_specs_exit_2(tmp_path):
    reg = str(tmp_path / "ws.yaml")
    Workspace.from_config(reg).registry.save()
    p = amlfs(reg, "run", "-o", "m=:x@copy", "--", "true")
    assert p.returncode == 2 and "@upload" in p.stderr and "@rw_mount" in p.stderr
    p = amlfs(reg, "run", "-o", "bad name=:x", "--", "true")
    assert p.returncode == 2 and "NAME=DATASTORE" in p.stderr
    p = amlfs(reg, "run", "-i", "m=:x@download", "-o", "m=:y", "--", "true")
    assert p.returncode == 2 and "share the name 'm'" in p.stderr
    p = amlfs(reg, "run", "-o", "m=:y", "--", "echo", "{n}")
    assert p.returncode == 2 and "{m}" in p.stderr


def test_sdk_v1_output_snippet_as_written(tmp_path, monkeypatch, payload_dir):
    """`OutputFileDatasetConfig(destination=(datastore, 'outputdataset/{run-id}')).as_upload()`
    passed as a script argument, as in the SDK v1 docs."""
    monkeypatch.chdir(tmp_path)
    os.makedirs("src")
    with open("src/train.py", "w") as f:
        f.write(
            "import argparse, os\n"
            "p = argparse.ArgumentParser()\n"
            "p.add_argument('--output_path')\n"
            "a = p.parse_args()\n"
            "os.makedirs(a.output_path, exist_ok=True)\n"
            "open(os.path.join(a.output_path, 'model.txt'), 'w').write('weights')\n"
            "open(os.path.join(a.output_path, 'notes.md'), 'w').write('skip me')\n"
        )
    workspace = Workspace.from_config(str(tmp_path / "ws.yaml"))
    datastore = workspace.get_default_datastore()

    from amlfs.data import OutputFileDatasetConfig
    from amlfs.train import Estimator

    output = OutputFileDatasetConfig(destination=(datastore, "outputdataset/{run-id}"))
    est = Estimator(
        source_directory="src",
        entry_script="train.py",
        arguments=["--output_path", output.as_upload(source_globs=["*.txt"])],
        compute_target="local",
    )
    run = est.run()
    assert run.get_status() == "Completed", run.result.failures
    assert remote_files(datastore, f"outputdataset/{run.id}") == {"model.txt": b"weights"}
    details = run.get_details()
    assert details["runId"] == run.id and details["status"] == "Completed"
    (out,) = details["outputs"]
    assert out["name"] == output.name and out["path"] == f"outputdataset/{run.id}"
    assert out["mode"] == "upload" and out["files"] == 1 and out["failures"] == []
    assert os.path.exists(details["manifest"])


def test_estimator_outputs_overwrite_false_conflict_is_a_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("src")
    with open("src/t.py", "w") as f:
        f.write("import os, sys\nopen(os.path.join(sys.argv[1], 'a'), 'w').write('new')\n")
    ds = Workspace.from_config(str(tmp_path / "ws.yaml")).get_default_datastore()
    b = ds.backend()
    b.write_bytes("fixed/a", b"old")
    b.close()

    from amlfs.data import OutputFileDatasetConfig
    from amlfs.train import Estimator

    out = OutputFileDatasetConfig("model", destination=(ds, "fixed")).as_upload()
    est = Estimator("src", "t.py", arguments=[out], outputs=[out])
    run = est.run()
    assert run.returncode == 1 and run.get_status() == "Failed"
    assert "overwrite=False" in run.result.failures[0]
    assert remote_files(ds, "fixed") == {"a": b"old"}
    run = Estimator("src", "t.py", arguments=[out.as_upload(overwrite=True)]).run()
    assert run.returncode == 0 and remote_files(ds, "fixed") == {"a": b"new"}


@needs_fuse
def test_rw_mount_output_after_success_and_failure(rw_store, payload_dir, tmp_path):
    reg, ds = rw_store
    b = ds.backend()
    b.write_bytes("rw/keep/.placeholder", b"")
    b.write_bytes("rw2/keep/.placeholder", b"")
    b.close()
    p = amlfs(reg, "run", "-o", "m=data:rw/keep@rw_mount", "--", *writer_cmd(tmp_path, payload_dir))
    assert p.returncode == 0, p.stderr
    got = remote_files(ds, "rw/keep")
    got.pop(".placeholder", None)
    assert got == PAYLOAD
    check_output_record(ds, run_manifest(p.stderr), "m", "rw/keep")
    p = amlfs(
        reg, "run", "-o", "m=data:rw2/keep@rw_mount", "--", *writer_cmd(tmp_path, payload_dir, 3)
    )
    assert p.returncode == 3, p.stderr
    got = remote_files(ds, "rw2/keep")
    got.pop(".placeholder", None)
    assert got == PAYLOAD


@needs_fuse
def test_rw_mount_output_after_sigterm(rw_store, payload_dir, tmp_path):
    reg, ds = rw_store
    b = ds.backend()
    b.write_bytes("rwt/m/.placeholder", b"")
    b.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "amlfs", "--registry", reg, "run", "-o", "m=data:rwt/m@rw_mount"]
        + ["--", *writer_cmd(tmp_path, payload_dir, 0, sleep=60)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(180) == 128 + signal.SIGTERM
    got = remote_files(ds, "rwt/m")
    got.pop(".placeholder", None)
    assert got == PAYLOAD


@needs_fuse
def test_rw_mount_output_to_a_new_run_id_path(rw_store, payload_dir, tmp_path):
    reg, ds = rw_store
    p = amlfs(
        reg,
        "run",
        "-o",
        "m=data:models/{run-id}@rw_mount",
        "--",
        *writer_cmd(tmp_path, payload_dir),
    )
    assert p.returncode == 0, p.stderr
    m = run_manifest(p.stderr)
    prefix = f"models/{m['run_id']}"
    assert remote_files(ds, prefix) == PAYLOAD
    check_output_record(ds, m, "m", prefix)
