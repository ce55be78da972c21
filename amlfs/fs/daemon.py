"""The mount daemon: checks the source, mounts, serves FUSE requests under trio until unmounted
or signalled, and always leaves the mountpoint clean.

It stays in the foreground: `amlfs mount` without --foreground starts it as a detached child
(see control.py) and learns over a status pipe whether it came up. Under systemd (Type=notify) it
sends READY=1 once the mount is live and STOPPING=1 on the way down.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pyfuse3
import trio

from ..backends.base import Backend, ObjectInfo, normpath, retry
from ..backends.bridge import TrioBackend
from ..backends.errors import BackendError, NotFound
from ..errors import AmlfsError, UsageError
from ..registry import DatastoreConfig
from .config import MountConfig
from .diskcache import ChunkStore, default_cache_dir, default_size
from .disktier import DiskTier, store_id
from .notify import sd_notify
from .operations import Operations
from .preload import Preloader
from .stats import Stats

log = logging.getLogger(__name__)

FSTYPE = "fuse.amlfs"
SUBTYPE = "amlfs"
#: After SIGTERM, requests still waiting on the storage get this long before they are cancelled.
SHUTDOWN_GRACE = 5.0
#: a storage socket silent for 1/SOCKET_SHARE of --read-timeout is given up (and retried)
SOCKET_SHARE = 2
BDI_DIR = "/sys/class/bdi"
_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


class StatusPipe:
    """The daemon's side of the pipe a background `amlfs mount` waits on: one line, then EOF.

    "ready PID" when the mount is live, or "error CODE MESSAGE" when it could not start.
    """

    def __init__(self, fd: int | None):
        self.fd = fd

    def _send(self, line: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, (line.replace("\n", " ") + "\n").encode())
            os.close(self.fd)
        except OSError:
            pass  # the parent gave up waiting; nothing to tell
        self.fd = None

    def ready(self) -> None:
        self._send(f"ready {os.getpid()}")

    def error(self, code: int, message: str) -> None:
        self._send(f"error {code} {message}")


def check_source(
    backend: Backend, ds: DatastoreConfig, path: str, create: bool = False
) -> ObjectInfo:
    """The directory to mount, or a clear error: UsageError when it is missing or a file. With
    `create` (a writable mount) a missing directory is made, with its parents: an output path
    such as `runs/{run-id}` is new on every run."""
    path = normpath(path)
    # The mount's backend does not retry (the daemon does, per request): retry these here.
    retry(backend.check_access, attempts=4)
    try:
        info = retry(lambda: backend.stat(path), attempts=4)
    except NotFound:
        if not create:
            raise UsageError(f"path {path!r} does not exist in datastore {ds.name!r}") from None
        _make_dirs(backend, path)
        return ObjectInfo(path=path, is_dir=True, mtime=time.time())
    if not info.is_dir:
        raise UsageError(f"path {path!r} in datastore {ds.name!r} is a file, not a directory")
    return ObjectInfo(path=path, is_dir=True, mtime=info.mtime)


def _make_dirs(backend: Backend, path: str) -> None:
    from ..backends.errors import AlreadyExists
    from ..backends.writers import writer_for

    writer = writer_for(backend)
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        try:
            retry(functools.partial(writer.mkdir, "/".join(parts[:i])), attempts=4)
        except AlreadyExists:
            pass


# pyfuse3 passes mount options as ASCII: anything else in the fsname (and '%' itself) is
# percent-encoded here and decoded by control.all_mounts.
FSNAME_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def fuse_options(ds: DatastoreConfig, path: str, extra: list[str], rw: bool = False) -> set[str]:
    # libfuse splits options at commas and honours backslash escapes.
    source = quote(f"{ds.name}:{path}", safe=FSNAME_SAFE)
    source = source.replace("\\", "\\\\").replace(",", "\\,")
    opts = {f"fsname={source}", f"subtype={SUBTYPE}", "rw" if rw else "ro", "default_permissions"}
    opts.update(extra)
    return opts


def mount_device(
    mountpoint: str, mountinfo: str = "/proc/self/mountinfo"
) -> tuple[int, int] | None:
    """(major, minor) of the filesystem mounted last at `mountpoint`, or None.

    Read from mountinfo, not os.stat: before pyfuse3.main runs, a stat of our own mountpoint
    would wait forever for the daemon that is making it.
    """
    want = os.fsencode(os.path.abspath(mountpoint))
    found = None
    with open(mountinfo, "rb") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 4:
                point = _OCTAL_ESCAPE.sub(lambda m: bytes([int(m[1], 8)]), fields[4])
                if point == want:
                    found = fields[2]  # the last one is on top
    if found is None:
        return None
    major, _, minor = found.partition(b":")
    return int(major), int(minor)


def set_read_ahead(
    mountpoint: str,
    nbytes: int,
    *,
    bdi_dir: str = BDI_DIR,
    mountinfo: str = "/proc/self/mountinfo",
) -> bool:
    """Set the kernel's read-ahead for the FUSE mount at `mountpoint`; False if it cannot be.

    FUSE's INIT reply can only lower the bdi's read-ahead below the kernel's 128 KiB default,
    so raising it takes sysfs, which takes root: anyone else keeps the default (logged at debug).
    """
    try:
        dev = mount_device(mountpoint, mountinfo)
        if dev is None:
            log.debug("no mount at %s in mountinfo: read-ahead left as it is", mountpoint)
            return False
        path = os.path.join(bdi_dir, f"{dev[0]}:{dev[1]}", "read_ahead_kb")
        with open(path, "w") as f:
            f.write(str(nbytes // 1024))
    except (OSError, ValueError) as e:
        log.debug("cannot set the kernel's read-ahead to %d KiB (%s): left at its default",
                  nbytes // 1024, e)  # fmt: skip
        return False
    log.debug("kernel read-ahead for %s set to %d KiB", mountpoint, nbytes // 1024)
    return True


def disk_tier(ds: DatastoreConfig, config: MountConfig, stats: Stats) -> DiskTier | None:
    """The mount's disk tier, or None (--no-disk-cache, a `local` datastore)."""
    sid = store_id(ds)
    if not config.disk_cache or sid is None:
        return None
    cache_dir = config.cache_dir or default_cache_dir()
    cap = config.disk_cache_bytes or default_size(cache_dir)
    store = ChunkStore(cache_dir, cap)
    log.info("disk cache at %s, at most %d bytes", store.root, cap)
    return DiskTier(store, sid, ds.name, config.block_size, stats,
                    max_pending=config.cache_bytes // 4)  # fmt: skip


def run_mount(
    ds: DatastoreConfig,
    path: str,
    mountpoint: str,
    config: MountConfig,
    status_fd: int | None = None,
    wrap: Callable[[Backend], Backend] | None = None,
) -> None:
    """Mount `path` of datastore `ds` at `mountpoint` and serve it until unmounted or signalled.
    `wrap`: the daemon serves `wrap(backend)` (a view of the datastore, e.g. pinned to a run
    manifest) instead of the datastore's backend.

    Raises AmlfsError/BackendError (after telling the status pipe) when the mount cannot start.
    """
    status = StatusPipe(status_fd)
    try:
        _run(ds, normpath(path), os.path.abspath(mountpoint), config, status, wrap)
    except AmlfsError as e:
        status.error(e.exit_code, str(e))
        raise
    except BackendError as e:
        status.error(1, str(e))
        raise
    except BaseException as e:
        status.error(1, f"the mount daemon failed: {e!r}")
        raise


def _run(
    ds: DatastoreConfig,
    path: str,
    mountpoint: str,
    config: MountConfig,
    status: StatusPipe,
    wrap: Callable[[Backend], Backend] | None = None,
) -> None:
    from ..backends import open_backend
    from .datapath import DataPath

    # One retry layer: the daemon's, inside each request's bound; none in the backend. A socket
    # that stays silent for half the bound is given up, so that one dead pooled connection
    # leaves time for a retry on a fresh one within the same request.
    backend = open_backend(
        ds, retry_total=0, read_timeout=max(1.0, config.read_timeout / SOCKET_SHARE)
    )
    if wrap is not None:
        backend = wrap(backend)
    try:
        root = check_source(backend, ds, path, create=config.rw)
        tb = TrioBackend(backend, max_threads=config.max_threads)
        stats = Stats()
        disk = disk_tier(ds, config, stats)
        datapath = DataPath(tb, config.datapath(), stats, disk=disk)
        preload = None
        if config.preload and disk is not None:
            preload = Preloader(tb, disk, datapath.budget, stats, block_size=config.block_size,
                                slot=datapath.fetcher.background_slot)  # fmt: skip
        started = time.time()
        live: dict[str, Any] = {"read_ahead": None}  # what _when_live managed to set

        def describe() -> dict[str, Any]:
            return {
                "pid": os.getpid(),
                "datastore": ds.name,
                "type": ds.type,
                "path": path,
                "mountpoint": mountpoint,
                "started": started,
                **config.describe(),
                "read_ahead": live["read_ahead"],
                "memory": datapath.budget.snapshot(),
                "disk": disk.describe() if disk is not None else None,
                "preload": dict(preload.progress) if preload is not None else None,
            }

        ops = _operations(tb, datapath, root, stats, config, describe)
        opts = fuse_options(ds, path, list(config.fuse_options), rw=config.rw)
        try:
            pyfuse3.init(ops, mountpoint, opts)
        except RuntimeError as e:
            if "session_new" in str(e):
                raise UsageError(f"FUSE refused the mount options {config.fuse_options}") from None
            raise AmlfsError(f"cannot mount at {mountpoint}: {e}") from None
        log.info("mounted %s:%s at %s (pid %d)", ds.name, path, mountpoint, os.getpid())
        try:
            trio.run(_serve, ops, datapath, config, status, mountpoint, live, preload, path)
        except BaseException:
            log.exception("the mount daemon failed; unmounting")
            raise
        finally:
            sd_notify("STOPPING=1")
            ops.close()
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)
            if disk is not None:
                disk.close()
    finally:
        backend.close()


def _operations(
    tb: TrioBackend,
    datapath: Any,
    root: ObjectInfo,
    stats: Stats,
    config: MountConfig,
    describe: Any,
) -> Operations:
    """The request handlers: read-only, or with the write path (--rw)."""
    if not config.rw:
        return Operations(tb, datapath, root, stats, config.operations(), describe=describe)
    from ..backends.writers import writer_for
    from .writable import WritableOperations

    return WritableOperations(
        tb,
        datapath,
        root,
        stats,
        config.operations(),
        describe=describe,
        writer=writer_for(tb.sync),
        write_config=config.writes(),
    )


async def _serve(
    ops: Operations,
    datapath: Any,
    config: MountConfig,
    status: StatusPipe,
    mountpoint: str,
    live: dict[str, Any],
    preload: Preloader | None,
    path: str,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(datapath.run)
        await nursery.start(ops.run)
        grace = SHUTDOWN_GRACE + (config.unmount_timeout if config.rw else 0)
        nursery.start_soon(_watch_signals, nursery.cancel_scope, grace)
        nursery.start_soon(_when_live, ops, config, status, mountpoint, live)
        if preload is not None:
            nursery.start_soon(_preload_when_live, ops, preload, path)
        await pyfuse3.main(max_tasks=config.max_tasks)
        drain = getattr(ops, "drain", None)
        if drain is not None:
            lost = await drain()
            if lost:
                log.error(
                    "%d file(s) were not committed: %s", len(lost), ", ".join(map(repr, lost))
                )
        nursery.cancel_scope.cancel()


async def _when_live(
    ops: Operations, config: MountConfig, status: StatusPipe, mountpoint: str, live: dict
) -> None:
    # The kernel applies its INIT reply's read-ahead to the bdi when it receives the reply,
    # overwriting any earlier setting: set ours after that. pyfuse3 calls ops.init() just
    # before replying, and the reply is written before this task next runs.
    await ops.initialized.wait()
    await trio.lowlevel.checkpoint()
    if config.read_ahead > 0 and set_read_ahead(mountpoint, config.read_ahead):
        live["read_ahead"] = config.read_ahead
    status.ready()
    sd_notify(f"READY=1\nSTATUS=serving {ops.table.root.path or '/'}\nMAINPID={os.getpid()}")


async def _preload_when_live(ops: Operations, preload: Preloader, path: str) -> None:
    await ops.initialized.wait()
    await preload.run(path)


async def _watch_signals(scope: trio.CancelScope, grace: float = SHUTDOWN_GRACE) -> None:
    # SIGHUP would kill us without unmounting; a daemon has no terminal to hang up on.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: unmounting", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            pyfuse3.terminate()
            break
        # Requests stuck on the storage get a grace period, then are cancelled; a second
        # signal cancels them at once.
        with trio.move_on_after(grace):
            async for _ in signals:
                break
        scope.cancel()
