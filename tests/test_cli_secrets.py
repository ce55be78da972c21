"""Secrets off the command line: '-' reads stdin (a hidden prompt on a terminal), @FILE a file;
what was read is what the registry holds, and the value never shows in output."""

from __future__ import annotations

import os
import pty
import sys

import yaml
from click.testing import CliRunner

from amlfs.cli import main

from .azurite import ACCOUNT, KEY


def _register(reg, azurite, container, *creds, input=None):
    args = ["--registry", reg, "datastore", "register", "blob", "s", "--account-name", ACCOUNT]
    args += ["--container-name", container, "--account-url", azurite.account_url, *creds]
    return CliRunner().invoke(main, args, input=input)


def _stored(reg) -> dict:
    with open(reg) as f:
        return yaml.safe_load(f)["datastores"][-1]["credentials"]


def test_account_key_from_stdin_is_verified_and_stored(tmp_path, azurite, container):
    reg = str(tmp_path / "r.yaml")
    r = _register(reg, azurite, container, "--account-key", "-", input=KEY + "\n")
    assert r.exit_code == 0, r.output
    assert _stored(reg) == {"account_key": KEY} and KEY not in r.output


def test_sas_token_from_file(tmp_path, azurite, container):
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    sas = generate_container_sas(
        ACCOUNT, container, account_key=KEY, permission=ContainerSasPermissions(read=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )  # fmt: skip
    secret = tmp_path / "sas.txt"
    secret.write_text("?" + sas + "\n")
    reg = str(tmp_path / "r.yaml")
    r = _register(reg, azurite, container, "--sas-token", f"@{secret}")
    assert r.exit_code == 0, r.output
    assert _stored(reg) == {"sas_token": sas}


def test_client_secret_from_stdin(tmp_path):
    reg = str(tmp_path / "r.yaml")
    args = ["--registry", reg, "datastore", "register", "adls", "a", "--account-name", "acct"]
    args += ["--filesystem", "f", "--tenant-id", "t", "--client-id", "c"]
    r = CliRunner().invoke(main, [*args, "--client-secret", "-", "--no-verify"], input="s3cret\n")
    assert r.exit_code == 0, r.output
    assert _stored(reg)["client_secret"] == "s3cret" and "s3cret" not in r.output


def test_secret_source_errors_are_usage(tmp_path, azurite, container):
    reg = str(tmp_path / "r.yaml")
    r = _register(reg, azurite, container, "--account-key", f"@{tmp_path}/missing")
    assert r.exit_code == 2 and "--account-key" in r.output and "missing" in r.output, r.output
    r = _register(reg, azurite, container, "--account-key", "-", input="\n")
    assert r.exit_code == 2 and "empty" in r.output, r.output
    args = ["--registry", reg, "datastore", "register", "adls", "a", "--account-name", "acct"]
    args += ["--filesystem", "f", "--tenant-id", "t", "--client-id", "c", "--client-secret", "-"]
    r = CliRunner().invoke(main, [*args, "--connection-string", "-"], input="x\n")
    assert r.exit_code == 2 and "only one secret" in r.output, r.output
    assert not os.path.exists(reg)


def test_hidden_prompt_on_a_terminal(tmp_path, azurite, container):
    reg = str(tmp_path / "r.yaml")
    argv = [sys.executable, "-m", "amlfs", "--registry", reg, "datastore", "register", "blob"]
    argv += ["s", "--account-name", ACCOUNT, "--container-name", container]
    argv += ["--account-url", azurite.account_url, "--account-key", "-"]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execv(sys.executable, argv)
    out = b""
    while b"account key:" not in out.lower():
        chunk = os.read(fd, 1024)
        assert chunk, out
        out += chunk
    os.write(fd, KEY.encode() + b"\n")
    while True:
        try:
            chunk = os.read(fd, 1024)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert KEY.encode() not in out  # not echoed
    assert _stored(reg) == {"account_key": KEY}
