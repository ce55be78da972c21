"""A packed listing: the files of a datastore walk in a few flat arrays instead of one ObjectInfo
(and four strings) per file, so that a stage of a million files holds tens of megabytes.

Per file: the name's UTF-8 bytes (relative to the table's base) in one bytearray with an end
offset (4 bytes, 8 past 4 GiB of names), size (8), mtime (8), one flag byte, the ETag (8 bytes
when it has Azure's shape '"0x<hex>"', else kept packed on the side) and, when asked for, the
Content-MD5 (16). `index_of(name)` builds an open-addressing hash index on first use (4-8 bytes
per file). The table reads as a sequence of ObjectInfo built on demand.

Not thread-safe while it grows; reading a finished table from several threads is fine.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from .backends.base import ObjectInfo

__all__ = ["ListTable"]

_DIGITS = 0x1F  # flag bits 0-4: hex digits of a packed ETag (0: not packed)
_IS_DIR = 0x20
_HAS_MD5 = 0x40
_NO_ETAG = 0x80
_EMPTY = 0xFFFFFFFF  # a free slot of the 32-bit hash index


def _pack_etag(etag: str) -> tuple[int, int] | None:
    """('"0x<D uppercase hex digits>"' -> (value, D)) for D in 1..16, else None."""
    n = len(etag) - 4
    if 0 < n <= 16 and etag.startswith('"0x') and etag[-1] == '"':
        digits = etag[3:-1]
        try:
            value = int(digits, 16)
        except ValueError:
            return None
        if f"{value:0{n}X}" == digits:
            return value, n
    return None


class _SideStrings:
    """Strings for a few indices (appended in increasing index order), packed."""

    def __init__(self) -> None:
        self.at = array("Q")
        self.ends = array("Q")
        self.blob = bytearray()

    def add(self, i: int, s: str) -> None:
        self.blob += s.encode("utf-8", "surrogateescape")
        self.at.append(i)
        self.ends.append(len(self.blob))

    def get(self, i: int) -> str | None:
        k = bisect_left(self.at, i)
        if k == len(self.at) or self.at[k] != i:
            return None
        start = self.ends[k - 1] if k else 0
        return self.blob[start : self.ends[k]].decode("utf-8", "surrogateescape")

    def nbytes(self) -> int:
        return _array_bytes(self.at) + _array_bytes(self.ends) + len(self.blob)


def _array_bytes(a: array) -> int:
    return a.buffer_info()[1] * a.itemsize


class ListTable(Sequence[ObjectInfo]):
    """Files listed under `base` (see the module doc). `md5=False` drops Content-MD5s."""

    def __init__(self, base: str = "", *, md5: bool = True, items: Iterable[ObjectInfo] = ()):
        self.base = base
        self._head = base + "/" if base else ""
        self._keep_md5 = md5
        self._names = bytearray()
        self._ends = array("I")
        self.sizes = array("q")
        self._mtimes = array("d")
        self._flags = bytearray()
        self._etags = array("Q")
        self._md5 = bytearray()  # 16 bytes per file from the first file that has one
        self._md5_from = -1
        self._side_etags = _SideStrings()  # ETags of another shape
        self._odd_paths = _SideStrings()  # paths not below base (kept whole)
        self._index: array | None = None
        for info in items:
            self.append(info)

    # --- building ----------------------------------------------------------------------------

    def append(self, info: ObjectInfo) -> None:
        i = len(self._flags)
        path = info.path
        if path.startswith(self._head) and len(path) > len(self._head):
            name = path[len(self._head) :]
        else:
            name = ""
            self._odd_paths.add(i, path)
        self._names += name.encode("utf-8", "surrogateescape")
        end = len(self._names)
        if end > 0xFFFFFFFF and self._ends.typecode == "I":
            self._ends = array("Q", self._ends)
        self._ends.append(end)
        self.sizes.append(info.size)
        self._mtimes.append(info.mtime)
        flags = _IS_DIR if info.is_dir else 0
        etag = info.etag
        value = 0
        if etag is None:
            flags |= _NO_ETAG
        else:
            packed = _pack_etag(etag)
            if packed is None:
                self._side_etags.add(i, etag)
            else:
                value, digits = packed
                flags |= digits
        self._etags.append(value)
        md5 = info.content_md5
        if self._keep_md5 and (md5 is not None or self._md5_from >= 0):
            if self._md5_from < 0:
                self._md5_from = i
            if md5 is not None and len(md5) == 16:
                flags |= _HAS_MD5
                self._md5 += md5
            else:
                self._md5 += bytes(16)
        self._flags.append(flags)
        self._index = None

    # --- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._flags)

    @overload
    def __getitem__(self, i: int) -> ObjectInfo: ...
    @overload
    def __getitem__(self, i: slice) -> list[ObjectInfo]: ...
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.info(k) for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("ListTable index out of range")
        return self.info(i)

    def __iter__(self) -> Iterator[ObjectInfo]:
        for i in range(len(self)):
            yield self.info(i)

    def info(self, i: int, name: str | None = None) -> ObjectInfo:
        """Entry `i`; `name`: its name(i), when the caller has it already."""
        return ObjectInfo(
            self._head + name if name is not None else self.path(i),
            bool(self._flags[i] & _IS_DIR),
            self.sizes[i],
            self.etag(i),
            self._mtimes[i],
            self.md5(i),
        )

    def name(self, i: int) -> str | None:
        """The path relative to `base`; None for an entry that is not below it."""
        start = self._ends[i - 1] if i else 0
        end = self._ends[i]
        if start == end:
            return None
        return self._names[start:end].decode("utf-8", "surrogateescape")

    def path(self, i: int) -> str:
        name = self.name(i)
        if name is None:
            return self._odd_paths.get(i) or ""
        return self._head + name

    def etag(self, i: int) -> str | None:
        flags = self._flags[i]
        digits = flags & _DIGITS
        if digits:
            return f'"0x{self._etags[i]:0{digits}X}"'
        if flags & _NO_ETAG:
            return None
        return self._side_etags.get(i)

    def etag_is(self, i: int, etag: str | None) -> bool:
        flags = self._flags[i]
        digits = flags & _DIGITS
        if digits:
            packed = _pack_etag(etag) if etag is not None else None
            return packed == (self._etags[i], digits)
        return self.etag(i) == etag

    def md5(self, i: int) -> bytes | None:
        if not self._flags[i] & _HAS_MD5:
            return None
        k = (i - self._md5_from) * 16
        return bytes(self._md5[k : k + 16])

    def total_size(self) -> int:
        return sum(self.sizes)

    # --- lookup --------------------------------------------------------------------------------

    def index_of(self, name: str) -> int | None:
        """The index of the file named `name` (relative to base; the first of duplicates)."""
        index = self._index if self._index is not None else self._build_index()
        cap = len(index)
        if not cap:
            return None
        want = name.encode("utf-8", "surrogateescape")
        if not want:
            return None
        slot = hash(want) % cap
        names, ends = self._names, self._ends
        while True:
            i = index[slot]
            if i == _EMPTY or i == 0xFFFFFFFFFFFFFFFF:
                return None
            start = ends[i - 1] if i else 0
            if names[start : ends[i]] == want:
                return i
            slot = slot + 1 if slot + 1 < cap else 0

    def _build_index(self) -> array:
        n = len(self)
        code = "I" if n < _EMPTY else "Q"
        cap = n + n // 2 + 1 if n else 0
        empty = _EMPTY if code == "I" else 0xFFFFFFFFFFFFFFFF
        index = array(code, [empty]) * cap
        names, ends = self._names, self._ends
        start = 0
        for i in range(n):
            end = ends[i]
            if end != start:
                key = bytes(names[start:end])
                slot = hash(key) % cap
                while True:
                    j = index[slot]
                    if j == empty:
                        index[slot] = i
                        break
                    js = ends[j - 1] if j else 0
                    if names[js : ends[j]] == key:
                        break  # a duplicate name: the first one wins
                    slot = slot + 1 if slot + 1 < cap else 0
            start = end
        self._index = index
        return index

    def nbytes(self) -> int:
        """Bytes held by the table's arrays (what tracemalloc also counts, give or take)."""
        total = len(self._names) + len(self._flags) + len(self._md5)
        for a in (self._ends, self.sizes, self._mtimes, self._etags):
            total += _array_bytes(a)
        if self._index is not None:
            total += _array_bytes(self._index)
        return total + self._side_etags.nbytes() + self._odd_paths.nbytes()
