"""Random write/truncate/read/fsync/reopen sequences through a live writable mount, checked against
a model file (a bytearray) after every step and remotely after every close (hypothesis)."""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amlfs.backends import open_backend

from .test_mount import FUSE_OK
from .test_writes import KINDS, RwMounts

pytestmark = [
    pytest.mark.fuse,
    pytest.mark.skipif(not FUSE_OK, reason="needs /dev/fuse and fusermount3"),
]

BLOCK = 4096  # small blocks: a few hundred bytes of writes cross several of them
MAX = 6 * BLOCK

offsets = st.integers(0, MAX)
ops = st.one_of(
    st.tuples(st.just("append"), st.integers(1, 2 * BLOCK)),
    st.tuples(st.just("pwrite"), offsets, st.integers(1, BLOCK)),
    st.tuples(st.just("truncate"), offsets),
    st.tuples(st.just("read"), offsets, st.integers(1, 2 * BLOCK)),
    st.tuples(st.just("fsync")),
    st.tuples(st.just("reopen"), st.sampled_from(["r+", "a", "w"])),
)


@pytest.fixture(params=list(KINDS))
def setup(request, tmp_path):
    config = request.getfixturevalue(KINDS[request.param])
    m = RwMounts(tmp_path, config)
    mp = m.mount(
        f"{config.name}:", "--rw", "--block-size", "4K", "--staging-dir", str(tmp_path / "stg")
    )
    backend = open_backend(config)
    yield mp, backend, request.param
    backend.close()
    m.cleanup()


_names = itertools.count()

_FLAGS = {
    "r+": os.O_RDWR,
    "a": os.O_RDWR | os.O_APPEND | os.O_CREAT,
    "w": os.O_RDWR | os.O_TRUNC | os.O_CREAT,
}


def _run(mp, backend, steps) -> None:
    name = f"f{next(_names)}"
    path = mp / name
    model = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    append = False
    counter = 0
    try:
        for step in steps:
            kind = step[0]
            if kind == "append" or (kind == "pwrite" and append):
                n = step[-1]
                counter += 1
                data = bytes([counter % 251]) * n
                os.lseek(fd, 0, os.SEEK_END)
                assert os.write(fd, data) == n
                model += data
            elif kind == "pwrite":
                _, off, n = step
                counter += 1
                data = bytes([counter % 251]) * n
                assert os.pwrite(fd, data, off) == n
                if off > len(model):
                    model += bytes(off - len(model))
                model[off : off + n] = data
            elif kind == "truncate":
                os.ftruncate(fd, step[1])
                if step[1] < len(model):
                    del model[step[1] :]
                else:
                    model += bytes(step[1] - len(model))
            elif kind == "read":
                _, off, n = step
                assert os.pread(fd, n, off) == bytes(model[off : off + n]), step
            elif kind == "fsync":
                os.fsync(fd)
                assert backend.read_all(name) == bytes(model)
            elif kind == "reopen":
                os.close(fd)
                fd = -1
                assert backend.read_all(name) == bytes(model)
                fd = os.open(path, _FLAGS[step[1]])
                append = step[1] == "a"
                if step[1] == "w":
                    model = bytearray()
            assert os.fstat(fd).st_size == len(model), step
    finally:
        if fd >= 0:
            os.close(fd)
    assert backend.read_all(name) == bytes(model)
    assert path.read_bytes() == bytes(model)


@settings(
    max_examples=int(os.environ.get("AMLFS_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=st.lists(ops, min_size=1, max_size=14))
def test_random_sequences_match_the_model(setup, steps):
    mp, backend, _ = setup
    _run(mp, backend, steps)
