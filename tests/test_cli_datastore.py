"""`amlfs datastore ...` through the real CLI: exit codes, messages, redaction, 0600 files."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import yaml
from click.testing import CliRunner

from amlfs.cli import main
from amlfs.registry import Registry

from .azurite import ACCOUNT, KEY


@pytest.fixture
def reg(tmp_path):
    return str(tmp_path / "reg" / "datastores.yaml")


def run(reg, *args, input=None):
    result = CliRunner().invoke(main, ["--registry", reg, *args], input=input)
    return result


def test_new_registry_has_local_default(reg):
    r = CliRunner().invoke(main, ["datastore", "list"])  # the default path: need not exist
    assert r.exit_code == 0, r.output
    assert r.output.split() == ["*", "workspaceblobstore", "Local"]


@pytest.mark.parametrize(
    "args",
    [
        ("datastore", "list"),
        ("datastore", "show", "workspaceblobstore"),
        ("datastore", "set-default", "workspaceblobstore"),
        ("datastore", "remove", "x"),
        ("upload", __file__, ":x"),
        ("ls", ":"),
        ("cat", ":x"),
        ("rm", ":x"),
        ("download", ":x", "out"),
        ("stage", ":x", "out"),
        ("run", "-i", "a=:x@download", "--", "true"),
    ],
)
def test_missing_registry_is_an_error_naming_it(reg, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run(reg, *args)
    assert r.exit_code == 2, r.output
    assert f"registry {reg} does not exist" in r.output and len(r.output.splitlines()) == 1
    r = CliRunner().invoke(main, args, env={"AMLFS_REGISTRY": reg})
    assert r.exit_code == 2 and reg in r.output, r.output
    assert not os.path.exists(reg)


def test_register_and_create_say_they_created_the_registry(reg, tmp_path):
    r = run(reg, "datastore", "register", "local", "l1", "--path", str(tmp_path))
    assert r.exit_code == 0 and f"created the registry {reg}" in r.output, r.output
    r = run(reg, "datastore", "register", "local", "l2", "--path", str(tmp_path))
    assert r.exit_code == 0 and "created" not in r.output, r.output
    f = tmp_path / "l3.yml"
    f.write_text(f"name: l3\ntype: local\npath: {tmp_path}\n")
    other = str(tmp_path / "other.yaml")
    r = run(other, "datastore", "create", "-f", str(f))
    assert r.exit_code == 0 and f"created the registry {other}" in r.output, r.output


def test_register_blob_show_redacts_and_file_is_0600(reg, azurite, container):
    r = run(
        reg,
        "datastore",
        "register",
        "blob",
        "azb",
        "--account-name",
        ACCOUNT,
        "--container-name",
        container,
        "--account-key",
        KEY,
        "--account-url",
        azurite.account_url,
        "--protocol",
        "http",
        "--default",
    )
    assert r.exit_code == 0, r.output
    assert "(default)" in r.output
    assert stat.S_IMODE(os.stat(reg).st_mode) == 0o600
    r = run(reg, "datastore", "show", "azb")
    assert r.exit_code == 0, r.output
    assert KEY not in r.output and KEY[:12] not in r.output
    shown = yaml.safe_load(r.output)
    assert shown["container_name"] == container and shown["type"] == "azure_blob"
    r = run(reg, "datastore", "list")
    assert "* azb" in r.output


def test_register_twice_needs_overwrite(reg, tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    assert run(reg, "datastore", "register", "local", "l1", "--path", str(d)).exit_code == 0
    r = run(reg, "datastore", "register", "local", "l1", "--path", str(d))
    assert r.exit_code == 2 and "l1" in r.output
    assert (
        run(reg, "datastore", "register", "local", "l1", "--path", str(d), "--overwrite").exit_code
        == 0
    )


def test_create_from_v2_yaml_and_set_default_remove(reg, tmp_path):
    f = tmp_path / "blob.yml"
    f.write_text(
        textwrap.dedent("""\
        $schema: https://azuremlschemas.azureedge.net/latest/azureBlob.schema.json
        name: blob_example
        type: azure_blob
        description: Datastore pointing to a blob container.
        account_name: mytestblobstore
        container_name: data-container
        credentials:
          account_key: XXXxxxXXXxXXXXxxXXXXXxXXXXXxXxxXxXXXxXXXxXXxxxXXxxXXXxXxXXXxxXxxXXXXxxxxxXXxxxxxxXXxxXXX
        """)
    )
    r = run(reg, "datastore", "create", "-f", str(f), "--no-verify")
    assert r.exit_code == 0, r.output
    r = run(reg, "datastore", "create", "-f", str(f), "--name", "second", "--no-verify")
    assert r.exit_code == 0, r.output
    assert run(reg, "datastore", "set-default", "second").exit_code == 0
    listing = run(reg, "datastore", "list").output
    assert "* second" in listing and "  blob_example" in listing
    r = run(reg, "datastore", "remove", "blob_example")
    assert r.exit_code == 0
    assert "blob_example" not in run(reg, "datastore", "list").output


def test_unknown_datastore_exit_2_one_line(reg):
    Registry.load(reg).save()
    r = run(reg, "datastore", "show", "nope")
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "Traceback" not in r.output


def test_conflicting_credentials_exit_2(reg):
    r = run(
        reg,
        "datastore",
        "register",
        "blob",
        "x",
        "--account-name",
        "a",
        "--container-name",
        "c",
        "--account-key",
        "k",
        "--sas-token",
        "s",
    )
    assert r.exit_code == 2 and "at most one" in r.output


def test_bad_registry_file_exit_2_names_file(tmp_path):
    reg = tmp_path / "bad.yaml"
    reg.write_text("datastores:\n  - name: x\n    type: azure_blob\n")
    os.chmod(reg, 0o600)
    r = CliRunner().invoke(main, ["--registry", str(reg), "datastore", "list"])
    assert r.exit_code == 2
    assert str(reg) in r.output and "Traceback" not in r.output


def test_console_script_runs_without_traceback(reg):
    """The installed entry point, as a user runs it."""
    Registry.load(reg).save()
    exe = os.path.join(os.path.dirname(sys.executable), "amlfs")
    p = subprocess.run(
        [exe, "--registry", reg, "datastore", "show", "missing"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.startswith("amlfs: error:") and "Traceback" not in p.stderr


def _register_blob(reg, azurite, container, *extra, key=KEY, url=None):
    return run(
        reg,
        "datastore", "register", "blob", "chk", "--account-name", ACCOUNT,
        "--container-name", container, "--account-key", key,
        "--account-url", url or azurite.account_url, *extra,
    )  # fmt: skip


@pytest.mark.parametrize(
    "case, expected",
    [
        ("wrong key", "authentication failed"),
        ("missing container", "not found"),
        ("unreachable", "unreachable"),
        ("file share on a blob-only host", "does this endpoint serve Azure Files?"),
    ],
)
def test_register_verifies_and_says_what_failed(reg, azurite, container, case, expected):
    from .azurite import free_port

    if case == "wrong key":
        r = _register_blob(reg, azurite, container, key=base64.b64encode(b"k" * 64).decode())
    elif case == "missing container":
        r = _register_blob(reg, azurite, "nosuchcontainer")
    elif case == "unreachable":
        r = _register_blob(reg, azurite, container, url=f"http://127.0.0.1:{free_port()}/x")
    else:
        r = run(
            reg,
            "datastore", "register", "file", "chk", "--account-name", ACCOUNT,
            "--share-name", "share", "--account-key", KEY, "--account-url", azurite.account_url,
        )  # fmt: skip
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "--no-verify" in lines[0], r.output
    assert "chk" not in run(reg, "datastore", "list").output


def test_register_verified_and_offline(reg, azurite, container):
    assert _register_blob(reg, azurite, container).exit_code == 0
    r = _register_blob(reg, azurite, "nosuchcontainer", "--overwrite", "--no-verify")
    assert r.exit_code == 0, r.output
    assert "nosuchcontainer" in run(reg, "datastore", "show", "chk").output


def test_bad_field_names_the_datastore_once(reg):
    r = run(
        reg,
        "datastore", "register", "blob", "zz", "--account-name", ACCOUNT,
        "--container-name", "c", "--account-key", "k", "--description", "7", "--no-verify",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = run(reg, "upload", __file__, "zz:")
    assert r.exit_code in (1, 2) and "base64" in r.output, r.output  # one line, no traceback
    assert len(r.output.strip().splitlines()) == 1, r.output
    r = run(
        reg,
        "datastore", "register", "blob", "zz", "--account-name", "BAD", "--container-name", "c",
        "--overwrite", "--no-verify",
    )  # fmt: skip
    assert r.exit_code == 2
    assert r.output.count("datastore 'zz'") == 1 and "account_name" in r.output, r.output
