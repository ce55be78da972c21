"""Sizes and durations as users write them: one parser for every size and time option."""

from __future__ import annotations

import re

from .errors import UsageError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
#: A timeout that means "never expires" (the kernel caps it; ten years is plenty).
FOREVER = 10 * 365 * 86400.0

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_FOREVER_WORDS = ("forever", "inf", "infinity", "immutable")


def parse_size(text: str, what: str, low: int = 0, high: int = 1 << 50) -> int:
    """'8M', '16MiB', '1G', '65536' -> bytes (K/M/G/T are powers of 1024), within [low, high];
    UsageError naming `what` (the option) otherwise."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"bad {what} {text!r}: expected bytes, or a size like 8M or 1GiB")
    n = int(m[1]) * 1024 ** " kmgt".index(m[2].lower() or " ")
    if not low <= n <= high:
        raise UsageError(f"bad {what} {text!r}: must be between {human(low)} and {human(high)}")
    return n


def human(n: int) -> str:
    """Bytes in the largest binary unit that keeps them whole: 8MiB, 1536KiB, 100B."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or n % 1024 or unit == "TiB":
            return f"{n}B" if unit == "B" else f"{n}{unit}"
        n //= 1024
    return str(n)


def parse_seconds(text: str, what: str, allow_forever: bool = True) -> float:
    """'60', '0.5', 'forever' -> seconds (FOREVER for the words meaning never)."""
    if allow_forever and text.strip().lower() in _FOREVER_WORDS:
        return FOREVER
    try:
        value = float(text)
    except ValueError:
        hint = " or 'forever'" if allow_forever else ""
        raise UsageError(f"bad {what} {text!r}: expected seconds{hint}") from None
    if not 0 <= value:  # also refuses NaN
        raise UsageError(f"bad {what} {text!r}: must be zero or more seconds")
    return min(value, FOREVER)
