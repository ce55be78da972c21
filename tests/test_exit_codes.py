"""The one exit-code rule, checked for every command: 0 success, 1 a runtime failure (here: a
wrong account key on Azurite), 2 bad usage (a bad option, an unknown datastore, a path that does
not exist). A new command without rows here fails `test_every_command_is_covered`."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from amlfs.cli import main
from amlfs.fs import control

from .azurite import ACCOUNT, KEY
from .test_mount import FUSE_OK


@pytest.fixture(autouse=True)
def _run_dirs(run_dirs_in_tmp_path):
    """Run directories kept by design land in the test's tmp_path (conftest.py)."""


WRONG_KEY = base64.b64encode(b"w" * 64).decode()


@pytest.fixture
def env(tmp_path, azurite, container):
    """A registry: `loc` (default, local, holding d/f.txt) and `bad` (Azurite, a wrong key)."""
    root = tmp_path / "loc"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("hello")
    reg = tmp_path / "reg.yaml"
    blob = {
        "type": "azure_blob", "account_name": ACCOUNT, "container_name": container,
        "account_url": azurite.account_url, "protocol": "http",
    }  # fmt: skip
    reg.write_text(
        yaml.safe_dump(
            {
                "default_datastore": "loc",
                "datastores": [
                    {"name": "loc", "type": "local", "path": str(root)},
                    {"name": "bad", **blob, "credentials": {"account_key": WRONG_KEY}},
                ],
            }
        )
    )
    reg.chmod(0o600)
    good = tmp_path / "good.yml"
    good.write_text(yaml.safe_dump({"name": "g", "type": "local", "path": str(root)}))
    wrong = tmp_path / "wrong.yml"
    wrong.write_text(
        yaml.safe_dump({"name": "w", **blob, "credentials": {"account_key": WRONG_KEY}})
    )
    (tmp_path / "mnt").mkdir()
    return {
        "reg": str(reg), "tmp": tmp_path, "root": root, "url": azurite.account_url,
        "container": container, "good": str(good), "wrong": str(wrong),
    }  # fmt: skip


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amlfs", "--registry", env["reg"], *args],
        capture_output=True, text=True, timeout=120, cwd=env["tmp"],
    )  # fmt: skip


def _blob(kind, env, *extra):
    return ["datastore", "register", kind, "x", "--account-name", ACCOUNT, "--account-url",
            env["url"], *extra]  # fmt: skip


def _manifest(env, etag: str | None = None) -> str:
    """A run manifest of input `a` = loc:d (d/f.txt at its ETag now, or at `etag`)."""
    from dataclasses import replace

    from amlfs.backends.local import LocalBackend
    from amlfs.manifest import FileRecord, InputRecord, Manifest

    rec = FileRecord.of(LocalBackend(str(env["root"])).stat("d/f.txt"))
    rec = replace(rec, etag=etag) if etag else rec
    path = env["tmp"] / f"manifest-{etag is None}.json"
    Manifest("run_x", ["true"], inputs=[InputRecord("a", "loc", "d", "download", [rec])]).save(
        str(path)
    )
    return str(path)


# (command, [(expected exit, args-builder)]). Each builder gets the env and returns argv.
CASES: dict[str, list] = {
    "datastore register blob": [
        (0, lambda e: _blob("blob", e, "--container-name", e["container"], "--account-key", KEY)),
        (
            1,
            lambda e: _blob(
                "blob", e, "--container-name", e["container"], "--account-key", WRONG_KEY
            ),
        ),
        (2, lambda e: _blob("blob", e, "--account-key", KEY)),  # no --container-name
    ],
    "datastore register file": [
        (0, lambda e: _blob("file", e, "--share-name", "s", "--account-key", KEY, "--no-verify")),
        (
            1,
            lambda e: _blob("file", e, "--share-name", "s", "--account-key", KEY),
        ),  # no File service
        (2, lambda e: _blob("file", e, "--account-key", KEY)),
    ],
    "datastore register adls": [
        (0, lambda e: _blob("adls", e, "--filesystem", "f", "--account-key", KEY, "--no-verify")),
        (1, lambda e: _blob("adls", e, "--filesystem", e["container"], "--account-key", WRONG_KEY)),
        (2, lambda e: _blob("adls", e, "--filesystem", "f", "--tenant-id", "t")),
    ],
    "datastore register local": [
        (0, lambda e: ["datastore", "register", "local", "l", "--path", str(e["root"])]),
        (2, lambda e: ["datastore", "register", "local", "l", "--path", str(e["tmp"] / "none")]),
    ],
    "datastore create": [
        (0, lambda e: ["datastore", "create", "-f", e["good"]]),
        (1, lambda e: ["datastore", "create", "-f", e["wrong"]]),
        (2, lambda e: ["datastore", "create", "-f", str(e["tmp"] / "none.yml")]),
    ],
    "datastore list": [
        (0, lambda e: ["datastore", "list"]),
        (2, lambda e: ["datastore", "list", "x"]),
    ],
    "datastore show": [
        (0, lambda e: ["datastore", "show", "loc"]),
        (2, lambda e: ["datastore", "show", "nope"]),
    ],
    "datastore set-default": [
        (0, lambda e: ["datastore", "set-default", "bad"]),
        (2, lambda e: ["datastore", "set-default", "nope"]),
    ],
    "datastore remove": [
        (0, lambda e: ["datastore", "remove", "bad"]),
        (2, lambda e: ["datastore", "remove", "loc"]),  # the default
    ],
    "upload": [
        (0, lambda e: ["upload", str(e["root"] / "d"), "loc:up"]),
        (1, lambda e: ["upload", str(e["root"] / "d"), "bad:up"]),
        (2, lambda e: ["upload", str(e["tmp"] / "none"), "loc:up"]),
    ],
    "download": [
        (0, lambda e: ["download", "loc:d", "out"]),
        (1, lambda e: ["download", "bad:d", "out"]),
        (2, lambda e: ["download", "loc:none", "out"]),
    ],
    "stage": [
        (0, lambda e: ["stage", "loc:d", "out"]),
        (1, lambda e: ["stage", "bad:d", "out"]),
        (2, lambda e: ["stage", "loc:none", "out"]),
    ],
    "run": [
        (0, lambda e: ["run", "-i", "a=loc:d@download", "--", "cat", "{a}/f.txt"]),
        (1, lambda e: ["run", "-i", "a=bad:d@download", "--", "true"]),
        (2, lambda e: ["run", "-i", "a=loc:none@download", "--", "true"]),
        (3, lambda e: ["run", "--", "sh", "-c", "exit 3"]),
        (127, lambda e: ["run", "--", "no-such-command-amlfs"]),
    ],
    "cache warm": [
        (1, lambda e: ["cache", "warm", "bad:d"]),
        (2, lambda e: ["cache", "warm", "nope:d"]),
    ],
    "cache ls": [(0, lambda e: ["cache", "ls"])],
    "cache du": [(0, lambda e: ["cache", "du"])],
    "cache prune": [
        (0, lambda e: ["cache", "prune", "0"]),
        (2, lambda e: ["cache", "prune", "lots"]),
    ],
    "cache clear": [
        (0, lambda e: ["cache", "clear"]),
        (2, lambda e: ["cache", "clear", "--cache-dir", e["reg"]]),  # a file, not a directory
    ],
    # serving runs until SIGTERM (tests/test_csi.py); here only the refusal of a bad endpoint
    "csi": [
        (2, lambda e: ["csi", "--endpoint", "tcp://x", "--state-dir", str(e["tmp"] / "csi")]),
    ],
    "manifest verify": [
        (0, lambda e: ["manifest", "verify", _manifest(e)]),
        (1, lambda e: ["manifest", "verify", _manifest(e, '"changed"')]),
        (2, lambda e: ["manifest", "verify", str(e["tmp"] / "none.json")]),
    ],
    "manifest show": [
        (0, lambda e: ["manifest", "show", "--files", _manifest(e)]),
        (2, lambda e: ["manifest", "show", str(e["tmp"] / "none.json")]),
    ],
    "ls": [
        (0, lambda e: ["ls", "-lR", "loc:d"]),
        (1, lambda e: ["ls", "bad:d"]),
        (2, lambda e: ["ls", "loc:none"]),
    ],
    "cat": [
        (0, lambda e: ["cat", "loc:d/f.txt"]),
        (1, lambda e: ["cat", "bad:d/f.txt"]),
        (2, lambda e: ["cat", "loc:none"]),
    ],
    "rm": [
        (0, lambda e: ["rm", "-r", "--dry-run", "loc:d"]),
        (1, lambda e: ["rm", "bad:d/f.txt"]),
        (2, lambda e: ["rm", "loc:none"]),
        (2, lambda e: ["rm", "-r", "loc:"]),
    ],
    "logs": [(2, lambda e: ["logs", str(e["tmp"])])],
    "mounts": [(0, lambda e: ["mounts"]), (2, lambda e: ["mounts", "--bad"])],
    "stats": [(2, lambda e: ["stats", str(e["tmp"])])],
    "unmount": [(2, lambda e: ["unmount", str(e["tmp"])])],
    "mount": [
        (1, lambda e: ["mount", "bad:d", str(e["tmp"] / "mnt")]),
        (2, lambda e: ["mount", "loc:none", str(e["tmp"] / "mnt")]),
        (2, lambda e: ["mount", "loc:d", str(e["tmp"] / "nomnt")]),
    ],
}


def _leaf_commands(group: click.Group, prefix: str = "") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _leaf_commands(cmd, f"{prefix}{name} ")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_every_command_is_covered():
    main.load_all()
    assert sorted(_leaf_commands(main)) == sorted(CASES)


@pytest.mark.parametrize(
    "command, code, build",
    [(c, code, b) for c, rows in CASES.items() for code, b in rows],
    ids=[f"{c}-{code}-{i}" for c, rows in CASES.items() for i, (code, _) in enumerate(rows)],
)
def test_exit_code(env, command, code, build):
    r = cli(env, *build(env))
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    if code in (1, 2):
        lines = r.stderr.strip().splitlines()
        assert lines and lines[-1].startswith(("amlfs: error: ", "Error: ")), r.stderr


@pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3")
def test_exit_codes_of_a_live_mount(env):
    mp = str(Path(env["tmp"], "mnt"))
    try:
        assert cli(env, "mount", "loc:d", mp).returncode == 0
        watch = ["stats", "--watch", "--interval", "0.2", "--count", "2", mp]
        for args in (["stats", mp], ["logs", mp], ["mounts"], watch):
            r = cli(env, *args)
            assert r.returncode == 0, (args, r.stderr)
        assert r.stdout.count("RATE") == 2 and "/s" in r.stdout, r.stdout
        assert cli(env, "mount", "loc:d", mp).returncode == 2  # already mounted
        assert cli(env, "unmount", mp).returncode == 0
    finally:
        if control.find_mount(mp) is not None:
            subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True)
    assert not os.path.ismount(mp)
