"""Progress reporting for transfers: a tqdm bar on stderr (files, bytes, throughput, ETA) and the
one-line summary printed when a transfer ends."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from .outcome import TransferResult


def should_show(show: bool | None, stream: TextIO | None = None) -> bool:
    """`show` forces the bar on (True) or off (False); None means "when stderr is a terminal"."""
    if show is not None:
        return show
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """Thread-safe counters of files and bytes, drawn as one tqdm bar when enabled.

    Many worker threads report at once; tqdm's own `update` is not atomic, so every update goes
    through one lock, and tqdm's `mininterval` keeps redraws (the costly part) rare.
    """

    def __init__(self, desc: str, enabled: bool, total_files: int = 0, total_bytes: int = 0):
        self.desc = desc
        self.enabled = enabled
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.files = 0
        self.bytes = 0
        self._lock = threading.Lock()
        self._bar = None
        self._last_postfix = 0.0
        if enabled:
            from tqdm import tqdm

            tty = should_show(None)
            self._bar = tqdm(
                total=total_bytes,
                desc=desc,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                # Not a terminal (--progress into a log): one line per update, not '\r' redraws.
                file=sys.stderr if tty else LineWriter(sys.stderr),
                mininterval=0.2 if tty else 1.0,
                dynamic_ncols=True,
                leave=True,
            )
            self._set_postfix()

    def _set_postfix(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{self.files}/{self.total_files} files", refresh=False)

    def listed(self, files: int, nbytes: int) -> None:
        """The listing that comes before the transfer has found `files` files (`nbytes` bytes)
        so far: shown on the bar until `set_total` gives the transfer's totals."""
        with self._lock:
            if self._bar is not None:
                now = time.monotonic()
                first = self._last_postfix == 0.0
                self._bar.set_postfix_str(f"listed {files} files ({human_bytes(nbytes)})", False)
                if first or now - self._last_postfix >= self._bar.mininterval:
                    self._last_postfix = now
                    self._bar.refresh()

    def set_total(self, files: int, nbytes: int) -> None:
        """Replace the totals (after the listing: what the transfer will copy)."""
        with self._lock:
            self.total_files = files
            self.total_bytes = nbytes
            if self._bar is not None:
                self._bar.total = nbytes
                self._last_postfix = 0.0
                self._set_postfix()
                self._bar.refresh()

    def add_total(self, files: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.total_files += files
            self.total_bytes += nbytes
            if self._bar is not None:
                self._bar.total = self.total_bytes
                self._set_postfix()

    def advance(self, nbytes: int) -> None:
        """`nbytes` more transferred (negative when a restarted file gives bytes back)."""
        with self._lock:
            self.bytes += nbytes
            if self._bar is not None:
                self._bar.update(nbytes)

    def file_done(self) -> None:
        with self._lock:
            self.files += 1
            if self._bar is not None:
                now = time.monotonic()
                if now - self._last_postfix >= 0.2 or self.files == self.total_files:
                    self._last_postfix = now
                    self._set_postfix()

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._set_postfix()
                self._bar.close()  # draws the final state once
                self._bar = None


class LineWriter:
    """A file for tqdm when stderr is not a terminal: each redraw becomes its own line, and a
    redraw identical to the previous line is dropped."""

    def __init__(self, stream: TextIO):
        self._stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").strip("\n")
        if line.strip() and line != self._last:
            self._last = line
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def summary_line(result: TransferResult, verb: str = "copied") -> str:
    """One line: counts, bytes, seconds and throughput, e.g. for the end of `amlfs stage`."""
    secs = max(result.seconds, 1e-9)
    parts = [f"{verb} {result.copied}", f"skipped {result.skipped}"]
    if result.deleted:
        parts.append(f"deleted {result.deleted}")
    parts.append(f"failed {len(result.failed)}")
    if result.unsafe:
        parts.append(f"unsafe names skipped {result.unsafe}")
    line = ", ".join(parts)
    line += (
        f"; {human_bytes(result.bytes)} in {result.seconds:.2f} s"
        f" ({human_bytes(result.bytes / secs)}/s)"
    )
    if result.verified or result.no_md5:
        line += f"; verified {result.verified} by Content-MD5, {result.no_md5} had no MD5"
    return line
