"""Throttling: under sustained 503 ServerBusy with Retry-After, the transfer engine honours the
Retry-After, lowers its request rate (AIMD concurrency, amlfs.throttle) and recovers after the
storm; measured in requests per second through the fault proxy."""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from amlfs.backends.blob import BlobBackend
from amlfs.credentials import resolve_credential
from amlfs.fetch import Downloader, DownloadJob
from amlfs.transfer import list_remote

from .proxy import Rule

log = logging.getLogger(__name__)

FILES = 900
WORKERS = 16
LATENCY = 0.1
STORM = (1.5, 6.0)  # seconds after the start: the 503 storm


def _rate(proxy, t0: float, a: float, b: float) -> float:
    n = sum(
        1 for e in list(proxy.log) if e.method == "GET" and "/t/" in e.path and a <= e.t - t0 < b
    )
    return n / (b - a)


def test_503_server_busy_lowers_the_request_rate_then_recovers(
    proxy, direct, faulty, tmp_path, record_property
):
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: direct.write_bytes(f"t/f{i:04d}", os.urandom(2048)), range(FILES)))
    # The engine's own throttle is the retry layer here (no inner retries of the lean client).
    backend = BlobBackend(
        faulty.account_url,
        faulty.container_name,
        resolve_credential(faulty),
        account_name=faulty.account_name,
        retry_total=0,
    )
    files, base = list_remote(backend, "t")
    jobs = [DownloadJob(f, str(tmp_path / "o" / f.name), f.name) for f in files]
    proxy.add("latency", seconds=LATENCY, method="GET", path="/t/")
    dl = Downloader(backend, str(tmp_path / "o"), workers=WORKERS)
    lowest = [dl.throttle.limit]
    storm = Rule("status", method="GET", path="/t/", status=503, code="ServerBusy", retry_after=1)

    def conduct(t0: float, done: threading.Event) -> None:
        while not done.wait(0.05):
            t = time.monotonic() - t0
            lowest[0] = min(lowest[0], dl.throttle.limit)
            if STORM[0] <= t < STORM[1] and storm not in proxy.rules:
                proxy.rules.insert(0, storm)
            elif t >= STORM[1] and storm in proxy.rules:
                proxy.rules.remove(storm)

    done = threading.Event()
    t0 = time.monotonic()
    conductor = threading.Thread(target=conduct, args=(t0, done))
    conductor.start()
    try:
        result = dl.run(jobs)
    finally:
        done.set()
        conductor.join()
        backend.close()
    end = time.monotonic() - t0
    assert not result.failed, result.failed[:3]
    assert result.copied == FILES
    before = _rate(proxy, t0, 0.3, STORM[0])
    during = _rate(proxy, t0, STORM[0] + 1.0, STORM[1])
    # Recovery is additive (a success at a time): measured from 2.5 s after the storm, as a
    # slow machine (a CI run at half speed) was still ramping up at 1.5 s.
    after = _rate(proxy, t0, STORM[1] + 2.5, min(end, STORM[1] + 5.0))
    record_property("requests_per_second", (round(before), round(during), round(after)))
    log.warning("requests/s before %.0f, during %.0f, after %.0f", before, during, after)
    assert storm.hits > 0 and dl.throttle.throttled > 0
    assert lowest[0] <= WORKERS / 4
    assert during < before / 3
    assert after > before / 2  # recovered
    # Retry-After (1 s) honoured: after the first 503 no new request for most of a second,
    # beyond the ones already in flight when it came.
    first = min(e.t for e in list(proxy.log) if e.action == "status")
    quiet = sum(
        1 for e in list(proxy.log) if e.method == "GET" and first + 0.3 <= e.t < first + 0.9
    )
    assert quiet <= WORKERS
    for job in jobs[:50]:
        assert os.path.getsize(job.dest) == 2048
