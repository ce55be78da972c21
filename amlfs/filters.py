"""--include/--exclude: which files of a transfer plan take part, decided by glob patterns on
their path relative to the transfer's source (applied to the plan before the engine runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class PathFilter:
    """A file is kept when it matches an include pattern (or there is none) and no exclude
    pattern. Patterns are fnmatch globs on the relative path ('*' also crosses '/'); a pattern
    without '/' also matches the file's own name, so '*.jpg' and 'cat.jpg' work at any depth."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def keeps(self, rel: str) -> bool:
        if self.include and not _any(self.include, rel):
            return False
        return not _any(self.exclude, rel)

    def select(self, items: Iterable[T], rel: Callable[[T], str]) -> list[T]:
        """The items whose relative path `rel(item)` the filter keeps, in order."""
        return [item for item in items if self.keeps(rel(item))] if self else list(items)


KEEP_ALL = PathFilter()


def _any(patterns: tuple[str, ...], rel: str) -> bool:
    name = rel.rpartition("/")[2]
    return any(fnmatchcase(rel, p) or ("/" not in p and fnmatchcase(name, p)) for p in patterns)
