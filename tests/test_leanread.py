"""Lean File share and ADLS Gen2 reads (leanread.py) against the protocol servers, compared with
the SDK's reads of the same files: the same bytes, the same errors (type and message), the pin
(ETag) honoured, one ranged GET per read, aborts and token auth."""

from __future__ import annotations

import os
import tempfile
import threading

import pytest

from amlfs.backends.adls import AdlsBackend
from amlfs.backends.base import Abort, join
from amlfs.backends.errors import Aborted, BackendError
from amlfs.backends.fileshare import FileShareBackend
from tests.servers.fixtures import (  # noqa: F401
    adls_server,
    adls_tls,
    fileshare_server,
    make_adls_config,
    make_fileshare_config,
    sp_env,
    unique,
)

NAMES = ["plain.bin", "with space/x y", "ünï/日本.dat", "a+b", "p%20q", "semi;colon", "d/e/f"]
DATA = bytes(range(256)) * 300 + b"tail"  # 76,804 bytes


def _pair(kind: str, server, auth: str):
    """(lean backend, SDK backend) on the same share / filesystem."""
    if kind == "fileshare":
        ds = make_fileshare_config(server, auth=auth)
        cls = FileShareBackend
    else:
        ds = make_adls_config(server, auth=auth)
        cls = AdlsBackend
    lean, sdk = cls.from_config(ds), cls.from_config(ds, lean=False)
    assert lean._lean is not None and sdk._lean is None
    return lean, sdk


@pytest.fixture(params=["fileshare-key", "fileshare-sas", "adls-key", "adls-sas"])
def pair(request, fileshare_server, adls_server):  # noqa: F811
    kind, auth = request.param.split("-")
    server = fileshare_server if kind == "fileshare" else adls_server
    lean, sdk = _pair(kind, server, auth)
    yield lean, sdk, server
    lean.close()
    sdk.close()


def _outcome(fn):
    try:
        return ("ok", fn())
    except BackendError as e:
        return (type(e).__name__, str(e))


def test_same_bytes_as_the_sdk(pair):
    lean, sdk, _ = pair
    base = unique("b")
    size = len(DATA)
    for i, name in enumerate(NAMES):
        data = DATA[i:]
        info = lean.write_bytes(join(base, name), data)
        p = join(base, name)
        n = len(data)
        for offset, length in [(0, n), (3, 5), (1000, 40000), (n - 2, 10), (n, 10), (n + 9, 4)]:
            for etag in (None, info.etag):
                want = sdk.read_range(p, offset, length, etag)
                assert lean.read_range(p, offset, length, etag) == want == data[offset:][:length]
        assert lean.read_range(p, 5, 0) == b""
    assert size > 65536  # more than one receive


def test_read_into_and_to_fd(pair):
    lean, sdk, _ = pair
    p = join(unique("b"), "f.bin")
    info = lean.write_bytes(p, DATA)
    buf = memoryview(bytearray(len(DATA) + 100))
    seen: list[int] = []
    n = lean.read_range_into(p, 0, buf, info.etag, progress=seen.append)
    assert n == len(DATA) and bytes(buf[:n]) == DATA
    assert seen and seen[-1] == n and seen == sorted(seen)
    with tempfile.TemporaryFile() as f:
        fd = f.fileno()
        assert lean.read_range_to_fd(p, 100, 50000, fd, 7, info.etag) == 50000
        assert sdk.read_range_to_fd(p, 100, 50000, fd, 50007, info.etag) == 50000
        assert os.pread(fd, 100007, 0) == bytes(7) + DATA[100:50100] * 2


def test_same_errors_as_the_sdk(pair):
    lean, sdk, _ = pair
    base = unique("e")
    p = join(base, "f.bin")
    old = lean.write_bytes(p, b"old contents")
    lean.write_bytes(join(base, "dir/inner"), b"x")
    new = lean.write_bytes(p, b"new contents!")
    assert old.etag != new.etag
    cases = [
        (p, 0, 4, old.etag),  # replaced since it was pinned: Changed
        (p, 13, 4, old.etag),  # at the end, pinned to an old ETag: Changed (via the SDK path)
        (join(base, "missing"), 0, 4, None),  # NotFound
        (join(base, "nodir/missing"), 0, 4, None),
        (join(base, "dir"), 0, 4, None),  # a directory: IsADirectory
        (p, 0, 100, new.etag),  # fine, short
    ]
    for path, offset, length, etag in cases:
        mine = _outcome(lambda: lean.read_range(path, offset, length, etag))  # noqa: B023
        theirs = _outcome(lambda: sdk.read_range(path, offset, length, etag))  # noqa: B023
        assert mine == theirs, (path, offset, etag)
        buf = memoryview(bytearray(length))
        into = _outcome(lambda: bytes(buf[: lean.read_range_into(path, offset, buf, etag)]))  # noqa: B023
        assert into == theirs
    assert _outcome(lambda: lean.read_range(p, 0, 4, old.etag))[0] == "Changed"
    assert _outcome(lambda: lean.read_range(join(base, "dir"), 0, 4))[0] == "IsADirectory"


def test_one_ranged_get_per_read(pair):
    lean, _, server = pair
    p = join(unique("g"), "f.bin")
    info = lean.write_bytes(p, DATA)
    before = len(server.requests)
    assert lean.read_range(p, 0, len(DATA), info.etag) == DATA
    assert [m for m, _ in server.requests[before:]] == ["GET"]


def test_abort_ends_a_read(pair):
    lean, _, _ = pair
    p = join(unique("a"), "f.bin")
    lean.write_bytes(p, DATA)
    abort = Abort()
    abort.cancel()
    with pytest.raises(Aborted):
        lean.read_range_into(p, 0, memoryview(bytearray(10)), abort=abort)
    # cancelled from another thread mid-read: the call ends with Aborted or completes
    abort = Abort()
    done = threading.Event()

    def progress(n: int) -> None:
        abort.cancel()
        done.set()

    try:
        lean.read_range_into(p, 0, memoryview(bytearray(len(DATA))), progress=progress, abort=abort)
    except Aborted:
        pass
    assert done.is_set()
    assert lean.read_range(p, 0, 4) == DATA[:4]  # the client still works


def test_adls_token_reads(sp_env):  # noqa: F811
    lean, sdk = _pair("adls", sp_env.server, "sp")
    try:
        info = lean.write_bytes("t/f.bin", DATA)
        assert lean.read_range("t/f.bin", 10, 1000, info.etag) == DATA[10:1010]
        assert lean.read_range("t/f.bin", 10, 1000) == sdk.read_range("t/f.bin", 10, 1000)
    finally:
        lean.close()
        sdk.close()
