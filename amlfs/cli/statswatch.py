"""`amlfs stats --watch`: a mount's counters redrawn every few seconds with their rates."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import click

from ..progress import human_bytes

#: counters that are levels, not running totals: shown without a rate
GAUGES = frozenset({"inodes", "open_files", "cache_bytes", "cache_inflight_bytes"})


def rates(before: Mapping[str, int], after: Mapping[str, int], seconds: float) -> dict[str, float]:
    """Per-second increase of every running total between two snapshots."""
    out = {}
    for name, value in after.items():
        if name in GAUGES or not isinstance(value, int | float):
            continue
        out[name] = max(0.0, (value - before.get(name, 0)) / max(seconds, 1e-9))
    return out


def render(counters: Mapping[str, int], per_second: Mapping[str, float]) -> list[str]:
    lines = [f"{'COUNTER':<28} {'VALUE':>14}  RATE"]
    for name, value in sorted(counters.items()):
        rate = per_second.get(name)
        if rate is None:
            shown = ""
        elif "bytes" in name:
            shown = f"{human_bytes(rate)}/s"
        else:
            shown = f"{rate:.1f}/s"
        lines.append(f"{name:<28} {value:>14}  {shown}")
    return lines


def watch(
    read: Callable[[], dict],
    interval: float,
    count: int | None,
    clear: bool,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    emit: Callable[[str], None] = click.echo,
) -> None:
    """Print the counters every `interval` s, with rates since the previous update, `count`
    times (None: until Ctrl-C). `read()` returns the mount's facts."""
    before, t0 = read().get("counters", {}), clock()
    shown = 0
    while count is None or shown < count:
        sleep(interval)
        facts = read()
        after, t1 = facts.get("counters", {}), clock()
        if clear:
            click.clear()
        head = f"{facts.get('datastore')}:{facts.get('path') or ''} at {facts.get('mountpoint')}"
        emit(f"{head}  (every {interval:g} s; rates over the last {t1 - t0:.1f} s)")
        for line in render(after, rates(before, after, t1 - t0)):
            emit(line)
        before, t0 = after, t1
        shown += 1
