"""Download jobs made from a packed listing when the engine asks for them (amlfs.fetch), so that a
download or a stage of a million files never holds a million job objects: what is kept per file
is the listing's packed entry and one byte of plan."""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator

from .fetch import DownloadJob
from .listtable import ListTable

__all__ = ["IndexedJob", "TableJobs"]


class IndexedJob(DownloadJob):
    """A download job that knows its listing index (stage's packed state records use it)."""

    __slots__ = ("index",)


class TableJobs(Collection[DownloadJob]):
    """A job for each listing entry `i` with `plan[i] == code`: the file `lead + name(i)` under
    `root` (`lead`: a path kept in front of the names, e.g. the listing's base), `resume[i]` its
    chunks already in a part file."""

    def __init__(
        self,
        table: ListTable,
        plan: bytearray,
        code: int,
        root: str,
        lead: str = "",
        resume: dict[int, frozenset[int]] | None = None,
    ):
        self.table, self.plan, self.code, self.root = table, plan, code, root
        self.lead = lead
        self.resume = resume or {}
        self._code = bytes([code])

    def __len__(self) -> int:
        return self.plan.count(self._code)

    def __contains__(self, job: object) -> bool:
        i = getattr(job, "index", None)
        return isinstance(i, int) and 0 <= i < len(self.plan) and self.plan[i] == self.code

    def indices(self) -> Iterator[int]:
        plan, code = self.plan, self._code
        i = plan.find(code)
        while i >= 0:
            yield i
            i = plan.find(code, i + 1)

    def _rel(self, i: int) -> tuple[str, str]:
        """(entry i's name below the listing's base, its path below `root`)."""
        name = self.table.name(i)
        assert name is not None  # a planned entry has a safe name below the base
        return name, self.lead + name

    def dest(self, i: int) -> str:
        """The local path of entry `i`'s file."""
        return os.path.join(self.root, self._rel(i)[1])

    def __iter__(self) -> Iterator[DownloadJob]:
        t, resume = self.table, self.resume
        none: frozenset[int] = frozenset()
        prefix = os.path.join(self.root, "")
        for i in self.indices():
            name, rel = self._rel(i)
            job = IndexedJob(t.info(i, name), prefix + rel, rel, resume.get(i, none))
            job.index = i
            yield job
