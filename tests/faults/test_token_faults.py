"""Faults at the token endpoint (the AAD stand-in, tests/servers/aad.py) and at the DFS protocol
server, through the fault proxy speaking TLS: a few 429s from the token endpoint are waited out;
a token endpoint that keeps refusing ends the command with one line; the File share protocol
server's faults are retried like Azurite's."""

from __future__ import annotations

import dataclasses
from urllib.parse import urlsplit

import pytest

from amlfs.backends import open_backend

from ..servers.fixtures import make_adls_config, make_fileshare_config
from .conftest import Cli, check_tree, payload, write_registry
from .proxy import FaultProxy

BOUND = 120.0
FLAGS = ("--workers", "4", "--no-progress")


@pytest.fixture
def sp_setup(sp_env, tmp_path):
    """An ADLS datastore authenticated as a service principal, reached (storage and token
    endpoint alike) through a TLS fault proxy; seeded with a few files."""
    server, tls = sp_env.server, sp_env.tls
    ds = make_adls_config(server, auth="sp")
    seed = open_backend(make_adls_config(server, auth="key", filesystem=ds.filesystem))
    files = {f"d/t{i}.bin": payload(f"tok{i}", 30_000 + i) for i in range(4)}
    for name, data in files.items():
        seed.write_bytes(name, data)
    seed.close()
    proxy = FaultProxy(
        ("127.0.0.1", urlsplit(server.account_url).port), tls=(tls.cert, tls.key), rewrite_json=True
    )
    creds = dataclasses.replace(ds.credentials, authority_url=proxy.url(server.base_url))
    ds = dataclasses.replace(ds, account_url=proxy.url(server.account_url), credentials=creds)
    try:
        yield Cli(write_registry(tmp_path / "reg.yaml", ds), tmp_path), proxy, files
    finally:
        proxy.stop()


def test_token_endpoint_429s_are_waited_out(sp_setup, tmp_path):
    cli, proxy, files = sp_setup
    rule = proxy.add(
        "status",
        method="POST",
        path="/token",
        status=429,
        code="temporarily_unavailable",
        retry_after=1,
        count=2,
        json=True,
    )
    r, secs = cli.run("download", "adls:d", str(tmp_path / "out"), *FLAGS)
    assert r.returncode == 0, r.stderr
    assert rule.hits == 2
    assert secs < BOUND
    check_tree(tmp_path / "out", files)


def test_a_token_endpoint_that_keeps_refusing_is_one_line(sp_setup, tmp_path):
    cli, proxy, files = sp_setup
    proxy.add(
        "status",
        method="POST",
        path="/token",
        status=429,
        code="temporarily_unavailable",
        retry_after=1,
        json=True,
    )
    r, secs = cli.run("download", "adls:d", str(tmp_path / "out"), *FLAGS)
    assert r.returncode == 1
    assert secs < BOUND
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "service principal" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and "WARNING" not in r.stderr


@pytest.mark.parametrize(
    "fault",
    [
        dict(action="status", status=500, code="InternalError", method="GET", path="/d/", count=3),
        dict(action="reset", method="GET", path="/d/", count=3),
    ],
    ids=["500", "reset"],
)
def test_file_share_download_through_faults(fileshare_server, tmp_path, fault):
    ds = make_fileshare_config(fileshare_server)
    seed = open_backend(ds)
    files = {f"d/f{i}.bin": payload(f"fs{i}", 20_000 + 1000 * i) for i in range(5)}
    for name, data in files.items():
        seed.write_bytes(name, data)
    seed.close()
    proxy = FaultProxy(("127.0.0.1", urlsplit(ds.account_url).port))
    try:
        rule = proxy.add(**fault)
        faulty = dataclasses.replace(ds, account_url=proxy.url(ds.account_url))
        cli = Cli(write_registry(tmp_path / "reg.yaml", faulty), tmp_path)
        r, secs = cli.run("download", "fileshare:d", str(tmp_path / "out"), *FLAGS)
        assert r.returncode == 0, r.stderr
        assert rule.hits > 0
        assert secs < BOUND
        check_tree(tmp_path / "out", files)
    finally:
        proxy.stop()
