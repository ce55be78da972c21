"""Adaptive concurrency for the transfer engine: AIMD on the service's throttling signals.

Every request of a transfer runs through `Throttle.call`. When the service throttles (HTTP 503
ServerBusy, 429: `Throttled`), the number of requests allowed in flight is halved (at most once
per `cut_interval`, so that one burst of refusals is one cut), and no new request starts before
the Retry-After the service sent (`default_pause` without one); the refused request is tried
again, up to `attempts` times. Each success adds 1/limit, so the limit grows back by one per
round of requests: the request rate falls while the service is busy and recovers after.
Thread-safe: the engine's worker threads share one Throttle.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from .backends.errors import Throttled

log = logging.getLogger(__name__)

__all__ = ["Throttle"]

T = TypeVar("T")


class Throttle:
    def __init__(
        self,
        max_limit: int,
        *,
        attempts: int = 8,
        default_pause: float = 1.0,
        cut_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_limit = max(1, max_limit)
        self.limit = float(self.max_limit)
        self.attempts = attempts
        self.default_pause = default_pause
        self.cut_interval = cut_interval
        self.clock = clock
        self.active = 0
        self.throttled = 0
        self._pause_until = 0.0
        self._last_cut = -1e9
        self._cv = threading.Condition()

    def _acquire(self) -> None:
        with self._cv:
            while True:
                wait = self._pause_until - self.clock()
                if wait <= 0 and self.active < int(self.limit):
                    self.active += 1
                    return
                self._cv.wait(max(0.01, min(wait, 1.0)) if wait > 0 else 1.0)

    def _release(self, ok: bool) -> None:
        with self._cv:
            self.active -= 1
            if ok and self.limit < self.max_limit:
                self.limit = min(float(self.max_limit), self.limit + 1.0 / self.limit)
            self._cv.notify_all()

    def _throttled(self, e: Throttled) -> None:
        now = self.clock()
        pause = e.retry_after if e.retry_after is not None else self.default_pause
        with self._cv:
            self.throttled += 1
            self._pause_until = max(self._pause_until, now + pause)
            if now - self._last_cut >= self.cut_interval:
                self._last_cut = now
                self.limit = max(1.0, self.limit / 2)
                log.info("throttled (%s): %d requests in flight at most", e, int(self.limit))

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` within the limit; a Throttled failure is waited out and tried again."""
        for attempt in range(self.attempts):
            self._acquire()
            ok = False
            try:
                result = fn()
                ok = True
                return result
            except Throttled as e:
                self._throttled(e)
                if attempt == self.attempts - 1:
                    raise
            finally:
                self._release(ok)
        raise AssertionError("unreachable")
