"""`amlfs download` and `amlfs stage` under network and server faults injected on the wire
(tests/faults/proxy.py in front of Azurite): transient faults are retried and give byte-exact
trees; persistent ones exit 1 with each failure listed once, no partial file under a real name,
within a bounded time; failures that are the same for every file stop the run with one line."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ..azurite import free_port, start_azurite
from .conftest import Cli, blob_config, check_tree, payload, real_files, write_registry

FLAGS = ("--block-size", "256K", "--workers", "8", "--no-progress")
#: the documented bound of a transfer of this small data set under a retried fault
BOUND = 90.0


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


TRANSIENT = {
    "http-500": dict(action="status", status=500, code="InternalError", path="/d/", count=4),
    # 3 in a row: the backend's own retries (1 + 3 attempts a request, the one retry layer)
    "http-500-listing": dict(action="status", status=500, code="InternalError", count=3),
    "503-server-busy": dict(
        action="status", status=503, code="ServerBusy", retry_after=1, path="/d/", count=4
    ),
    "reset-on-request": dict(action="reset", path="/d/", count=4),
    "reset-mid-body": dict(action="reset_body", after=100_000, path="big/", count=3),
    "body-cut": dict(action="cut", after=50_000, path="big/", count=3),
    "latency": dict(action="latency", seconds=0.3, method="GET"),
    "bandwidth-cap": dict(action="bandwidth", rate=3e6, path="big/"),
}


#: stage shares the engine with download: it runs under a few of the faults only (suite time)
CASES = [(f, "download") for f in sorted(TRANSIENT)] + [
    (f, "stage") for f in ("http-500", "reset-mid-body", "body-cut")
]


@pytest.mark.parametrize(("fault", "command"), CASES)
def test_transient_faults_are_retried_to_a_byte_exact_tree(
    cli: Cli, proxy, seeded, tmp_path, command, fault
):
    rule = proxy.add(**TRANSIENT[fault])
    r, secs = cli.run(command, "faulty:d", str(tmp_path / "out"), *FLAGS)
    assert r.returncode == 0, r.stderr
    assert rule.hits > 0, "the fault never happened"
    assert secs < BOUND
    assert "WARNING" not in r.stderr
    check_tree(tmp_path / "out", seeded)


def test_reset_of_new_and_open_connections(cli: Cli, proxy, seeded, tmp_path):
    proxy.reset_new = 3
    slow = proxy.add("bandwidth", rate=1e6, path="big/")
    done = threading.Event()
    resets = []

    def reset_open():
        deadline = time.monotonic() + 30
        while not done.is_set() and time.monotonic() < deadline:
            if slow.hits and proxy.open_connections():
                resets.append(proxy.reset_open())
                return
            time.sleep(0.05)

    t = threading.Thread(target=reset_open)
    t.start()
    try:
        r, secs = cli.run("download", "faulty:d", str(tmp_path / "out"), *FLAGS)
    finally:
        done.set()
        t.join()
    assert r.returncode == 0, r.stderr
    assert resets and resets[0] > 0
    assert proxy.count("-") == 3  # the 3 new connections reset at accept
    assert secs < BOUND
    check_tree(tmp_path / "out", seeded)


@pytest.mark.parametrize("command", ["download", "stage"])
def test_persistent_failure_of_one_file_is_listed_once_then_resumed(
    cli: Cli, proxy, seeded, tmp_path, command
):
    out = tmp_path / "out"
    proxy.add("status", status=500, code="InternalError", method="GET", path=r"s03\.bin|l1\.bin")
    r, secs = cli.run(command, "faulty:d", str(out), *FLAGS)
    assert r.returncode == 1, r.stderr
    assert secs < BOUND
    assert "WARNING" not in r.stderr
    for name in ("s03.bin", "l1.bin"):
        assert sum(name in line for line in r.stderr.splitlines()) == 1, r.stderr
    assert _errors(r.stderr)[-1].endswith("2 file(s) failed")
    have = real_files(out)
    assert "s03.bin" not in have and "big/l1.bin" not in have
    assert len(have) == len(seeded) - 2
    # One retry layer: the backend's 1 + 3 attempts; the engine does not repeat them.
    assert proxy.count("GET", r"s03\.bin") == 4
    # The fault ends: the same command completes the tree.
    proxy.clear()
    extra = () if command == "stage" else ("--overwrite",)
    r, _ = cli.run(command, "faulty:d", str(out), *FLAGS, *extra)
    assert r.returncode == 0, r.stderr
    check_tree(out, seeded)


@pytest.mark.parametrize("command", ["download", "stage"])
def test_a_listing_that_keeps_failing_ends_after_one_retry_budget(
    cli: Cli, proxy, seeded, tmp_path, command
):
    """A page is retried by the backend alone (1 + 3 attempts, ~7 s): the listing is not started
    again from the top by the engine, so the run ends within one retry budget."""
    proxy.add("status", status=500, code="InternalError", path="comp=list")
    r, secs = cli.run(command, "faulty:d", str(tmp_path / "out"), *FLAGS)
    assert r.returncode == 1, r.stderr
    assert proxy.count("GET", "comp=list") == 4
    assert secs < BOUND
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("the service failed (HTTP 500 InternalError)")
    assert not (tmp_path / "out").exists() or not real_files(tmp_path / "out")


def test_stall_before_headers_and_mid_body_end_by_the_read_timeout(
    cli: Cli, proxy, seeded, tmp_path
):
    """The lean client's 30 s socket timeout ends a stalled request; the retry succeeds."""
    stall = proxy.add("stall", method="GET", path=r"s05\.bin", count=1, seconds=90)
    mid = proxy.add("stall_body", path=r"l0\.bin", after=100_000, count=1, seconds=90)
    r, secs = cli.run("download", "faulty:d", str(tmp_path / "out"), *FLAGS)
    assert r.returncode == 0, r.stderr
    assert stall.hits == 1 and mid.hits == 1
    assert secs < 30 + BOUND
    check_tree(tmp_path / "out", seeded)


def test_object_replaced_mid_read_gives_the_new_object(cli: Cli, proxy, direct, seeded, tmp_path):
    """A 412 (If-Match) mid-transfer: the file is fetched again, pinned to the new ETag."""
    proxy.add("bandwidth", rate=500_000, path=r"l0\.bin")
    new = payload("replacement", (3 << 20) + 777)
    result = {}
    t = threading.Thread(
        target=lambda: result.update(r=cli.run("download", "faulty:d", str(tmp_path / "o"), *FLAGS))
    )
    t.start()
    deadline = time.monotonic() + 60
    while proxy.count("GET", r"l0\.bin") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    direct.write_bytes("d/big/l0.bin", new)
    proxy.clear()
    t.join(BOUND * 2)
    r, secs = result["r"]
    assert r.returncode == 0, r.stderr
    assert secs < BOUND
    assert (tmp_path / "o" / "big" / "l0.bin").read_bytes() == new
    check_tree(tmp_path / "o", {**seeded, "d/big/l0.bin": new})


def test_object_deleted_mid_read_fails_that_file_only(cli: Cli, proxy, direct, seeded, tmp_path):
    proxy.add("bandwidth", rate=500_000, path=r"l0\.bin")
    result = {}
    t = threading.Thread(
        target=lambda: result.update(r=cli.run("stage", "faulty:d", str(tmp_path / "o"), *FLAGS))
    )
    t.start()
    deadline = time.monotonic() + 60
    while proxy.count("GET", r"l0\.bin") == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    direct.delete("d/big/l0.bin")
    proxy.clear()
    t.join(BOUND * 2)
    r, secs = result["r"]
    assert r.returncode == 1, r.stderr
    assert secs < BOUND
    assert "was deleted during the transfer" in r.stderr
    have = real_files(tmp_path / "o")
    assert "big/l0.bin" not in have and len(have) == len(seeded) - 1


# --- failures that are the same for every file: one line, an early stop ---------------------


def test_dns_failure_of_the_account_host(tmp_path):
    ds = blob_config("http://amlfs-no-such-host.invalid:10000/devstoreaccount1", "data")
    cli = Cli(write_registry(tmp_path / "reg.yaml", ds), tmp_path)
    r, secs = cli.run("download", "faulty:d", str(tmp_path / "out"), *FLAGS)
    assert r.returncode == 1
    assert secs < BOUND
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "amlfs-no-such-host.invalid" in lines[0], r.stderr
    assert not (tmp_path / "out").exists() or not real_files(tmp_path / "out")


def test_wrong_key_and_missing_container_are_one_line(azurite, container, seeded, tmp_path):
    bad = blob_config(azurite.account_url, container, "badkey")
    bad.credentials.account_key = "QUJD" * 22  # a well-formed key of the wrong account
    gone = blob_config(azurite.account_url, "no-such-container", "gone")
    cli = Cli(write_registry(tmp_path / "reg.yaml", bad, gone), tmp_path)
    # A refused credential is a runtime failure (1); a container that does not exist is a
    # path that does not exist (2), as for every command (README, "Exit status").
    for spec, words, code in (("badkey:d", "access denied", 1), ("gone:d", "does not exist", 2)):
        for command in ("download", "stage"):
            r, secs = cli.run(command, spec, str(tmp_path / command), *FLAGS)
            assert r.returncode == code, r.stderr
            assert secs < BOUND
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1 and words in lines[0], r.stderr


def test_a_refusal_of_every_file_stops_the_run_early(cli: Cli, proxy, direct, tmp_path):
    """Every blob GET refused as an unsupported API version (Azurite's 400 InvalidHeaderValue):
    the run stops after the first refusals instead of failing each of 200 files."""
    for i in range(200):
        direct.write_bytes(f"d/many/f{i:03d}", b"x" * 100)
    proxy.add("status", status=400, code="InvalidHeaderValue", method="GET", path="/d/many/")
    r, secs = cli.run("download", "faulty:d", str(tmp_path / "out"), *FLAGS)
    assert r.returncode == 1
    assert secs < BOUND
    errors = _errors(r.stderr)
    assert len(errors) == 1 and "API version" in errors[0], r.stderr
    assert "WARNING" not in r.stderr
    assert proxy.count("GET", "/d/many/") < 50
    assert not real_files(tmp_path / "out")


# --- the server killed and restarted ------------------------------------------------------------


def _wait_persisted(workdir: str, marker: bytes, timeout: float = 30) -> None:
    """Azurite saves its metadata database every few seconds: wait until `marker` is in it, so
    that a SIGKILL loses nothing we seeded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in Path(workdir).glob("__azurite_db_blob__*"):
            if marker in p.read_bytes():
                return
        time.sleep(0.2)
    raise AssertionError("Azurite did not persist the seeded blobs")


def test_azurite_killed_mid_stage_then_restarted_resumes(tmp_path):
    port = free_port()
    az = start_azurite(in_memory=False, port=port)
    try:
        az.service().create_container("data")
        files = {}
        ds = blob_config(az.account_url, "data")
        from amlfs.backends import open_backend

        b = open_backend(ds)
        for i in range(16):
            name = f"d/k{i:02d}.bin"
            files[name] = payload(name, 300_000)
            b.write_bytes(name, files[name])
        b.close()
        _wait_persisted(az.workdir, b"k15.bin")
        from .proxy import FaultProxy

        proxy = FaultProxy(("127.0.0.1", port))
        try:
            proxy.add("bandwidth", rate=300_000, method="GET", path="/d/k")
            cli = Cli(
                write_registry(tmp_path / "r.yaml", blob_config(proxy.url(az.account_url), "data")),
                tmp_path,
            )
            result = {}
            t = threading.Thread(
                target=lambda: result.update(
                    r=cli.run("stage", "faulty:d", str(tmp_path / "o"), *FLAGS[:2])
                )
            )
            t.start()
            deadline = time.monotonic() + 60
            while proxy.count("GET", "/d/k") < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            az.proc.kill()
            az.proc.wait()
            proxy.reset_open()
            t.join(BOUND * 2)
            r, secs = result["r"]
            assert r.returncode == 1, r.stderr
            assert secs < BOUND
            assert "WARNING" not in r.stderr
            for rel, size in real_files(tmp_path / "o").items():
                assert size == len(files["d/" + rel])  # complete files only
            # Restarted on the same port and data: the stage completes.
            az = start_azurite(in_memory=False, port=port, workdir=az.workdir)
            proxy.clear()
            r, _ = cli.run("stage", "faulty:d", str(tmp_path / "o"), *FLAGS)
            assert r.returncode == 0, r.stderr
            check_tree(tmp_path / "o", files)
        finally:
            proxy.stop()
    finally:
        az.stop()
