"""The parts of the write path that need no mount: the write budget (waiting takers), the part
buffer, and the staging area (its byte budget, ENOSPC, and naming what a dead daemon left)."""

from __future__ import annotations

import errno
import logging
import os

import pytest
import trio
import trio.testing
from pyfuse3 import FUSEError

from amlfs.fs.budget import MemoryBudget
from amlfs.fs.staging import StagingArea
from amlfs.fs.writebuffer import PartBuffer, WriteBudget


def test_buffer_cuts_parts_across_writes_without_losing_bytes():
    b = PartBuffer()
    writes = [os.urandom(n) for n in (5, 100, 3, 64, 1)]
    for w in writes:
        b.add(w)
    whole = b"".join(writes)
    assert len(b) == len(whole)
    out = b.take(50) + b.take(70) + b.take(len(b))
    assert out == whole
    assert len(b) == 0
    b.add(b"xy")
    assert b.clear() == 2 and len(b) == 0


def test_write_budget_makes_takers_wait_and_charges_the_memory_budget():
    memory = MemoryBudget(1 << 20)
    budget = WriteBudget(100, memory)
    order: list[str] = []

    async def main() -> None:
        await budget.take(80)
        assert memory.used["writes"] == 80

        async def second() -> None:
            await budget.take(50)  # does not fit until the first gives back
            order.append("second got it")

        async with trio.open_nursery() as n:
            n.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert order == []
            order.append("first gives")
            budget.give(80)
        assert budget.used == 50 and budget.peak == 80
        budget.give(50)
        # One taker larger than the whole budget goes through alone: never a deadlock.
        await budget.take(500)
        budget.give(500)
        assert memory.used["writes"] == 0

    trio.run(main)
    assert order == ["first gives", "second got it"]


def test_staging_budget_is_enospc_and_given_back(tmp_path):
    area = StagingArea(str(tmp_path), 1000)
    area.open()
    f = area.create("dir/file name")
    f.pwrite(b"a" * 600, 0)
    g = area.create("other")
    with pytest.raises(FUSEError) as e:
        g.pwrite(b"b" * 500, 0)
    assert e.value.errno == errno.ENOSPC
    f.truncate(100)
    g.pwrite(b"b" * 500, 0)
    assert area.used == 600
    assert f.pread(0, 200) == b"a" * 100
    f.close()
    g.close()
    assert area.used == 0
    area.close()
    assert not os.path.exists(area.dir)


def test_a_dead_daemons_staging_files_are_named_and_left(tmp_path, caplog):
    dead = tmp_path / "999999999"  # no such pid
    dead.mkdir()
    (dead / "ckpt%2Fmodel.pt.1").write_bytes(b"unsent")
    area = StagingArea(str(tmp_path), 1000)
    with caplog.at_level(logging.WARNING, logger="amlfs.fs.staging"):
        area.open()
    assert "'ckpt/model.pt' was being written by mount daemon 999999999" in caplog.text
    assert (dead / "ckpt%2Fmodel.pt.1").read_bytes() == b"unsent"
