"""`preload`: after a volume is mounted, walk its tree once so that the daemon's attribute and
listing caches are warm before the workload's first pass (an epoch's os.walk, a dataset index).

A walk runs on its own thread of the plugin, best effort: bounded in entries (the mount's own
listing bound) and in time, stopped when its volume is unpublished, ended by the first error (it
is logged; the mount itself is unaffected). It does not survive a restart of the plugin.
"""

from __future__ import annotations

import logging
import os
import threading
import time

log = logging.getLogger(__name__)

#: a walk gives up after this long
TIME_BOUND = 600.0


class Preloader:
    def __init__(self) -> None:
        self._stops: dict[str, threading.Event] = {}
        self._guard = threading.Lock()

    def start(self, volume_id: str, target: str, max_entries: int) -> threading.Thread:
        stop = threading.Event()
        with self._guard:
            previous = self._stops.pop(target, None)
            if previous is not None:
                previous.set()
            self._stops[target] = stop
        t = threading.Thread(
            target=self._walk,
            args=(volume_id, target, max_entries, stop),
            name=f"preload {volume_id}",
            daemon=True,
        )
        t.start()
        return t

    def stop(self, target: str) -> None:
        with self._guard:
            stop = self._stops.pop(target, None)
        if stop is not None:
            stop.set()

    def _walk(self, volume_id: str, target: str, max_entries: int, stop: threading.Event) -> None:
        started = time.monotonic()
        deadline = started + TIME_BOUND
        count = 0
        pending = [target]
        why = "done"
        try:
            while pending:
                with os.scandir(pending.pop()) as it:
                    for entry in it:
                        if stop.is_set():
                            why = "stopped (unpublished)"
                            return
                        if count >= max_entries or time.monotonic() > deadline:
                            why = "stopped at its bound"
                            return
                        count += 1
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        else:
                            entry.stat(follow_symlinks=False)
        except OSError as e:
            why = f"stopped: {e.strerror}"
        finally:
            log.info(
                "volume %s: preloaded %d entries in %.1f s (%s)",
                volume_id,
                count,
                time.monotonic() - started,
                why,
            )
            with self._guard:
                if self._stops.get(target) is stop:
                    del self._stops[target]
