"""One validated mount configuration: built once from the command line (flags and `-o` options),
handed to the daemon whole (as JSON on its stdin when it runs in the background: no argv round
trip), and the one source of every figure the daemon uses.

Every size option goes through one parser (units.parse_size). Combinations that cannot work are
refused or clamped here with a one-line note, never discovered later: a block cache must hold a
few blocks, so a cache smaller than `MIN_BLOCKS_CACHED` blocks gets smaller blocks.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import UsageError
from ..units import FOREVER, GiB, KiB, MiB, human, parse_seconds, parse_size
from .datapath import DataPathConfig
from .diskcache import default_cache_dir
from .diskcache import default_size as default_disk_size
from .inodes import ENTRY_BYTES, Timeouts
from .operations import OperationsConfig
from .writable import WriteConfig

#: the block cache holds at least this many blocks (one read, one ahead, room for a second reader)
MIN_BLOCKS_CACHED = 4
MIN_BLOCK = 64 * KiB
#: The kernel's read-ahead for the mount. The FUSE default (128 KiB) makes a sequential reader
#: send 128 KiB requests, each ~0.1 ms of Python here; 4 MiB makes them 1 MiB (FUSE's max_pages)
#: and cut the daemon's CPU per GiB by a quarter (measured: 8194 -> 1026 requests per GiB, 1.27
#: -> 0.95 s). Larger (8-16 MiB) let the kernel's speculative requests outrun our own window
#: and split blocks into more, smaller GETs.
READ_AHEAD = 4 * MiB
#: the share of the memory budget that cached listings may hold at most
LISTING_SHARE = 4


@dataclass(frozen=True)
class MountConfig:
    """Everything a mount daemon needs besides the datastore: sizes in bytes, times in seconds."""

    block_size: int = 8 * MiB  # bytes per storage request (one block = one GET)
    cache_bytes: int = 1 * GiB  # the memory budget: cached blocks, fetch buffers, listings
    timeouts: Timeouts = field(default_factory=Timeouts)
    read_timeout: float = 60.0  # every request is answered within this, from its arrival
    read_ahead: int = READ_AHEAD  # the kernel's read-ahead on the mount's bdi; 0 = its default
    fuse_options: tuple[str, ...] = ()  # passed to libfuse: allow_other, noatime...
    nonempty: bool = False  # mount over a non-empty directory
    max_threads: int = 32  # concurrent storage calls (data and metadata)
    max_inflight: int = 16  # concurrent block fetches of the data path
    max_tasks: int = 99  # concurrent FUSE requests
    listing_prefetch: int = 4  # directories listed ahead at a time; 0 = none
    listing_pages_ahead: int = 1  # pages a background listing fetches before a reader asks
    listing_queue: int = 256  # directories queued for background listing
    debug: bool = False
    log_file: str | None = None
    # --- writable mounts (`amlfs mount --rw`; see writable.py) ----------------------------------
    rw: bool = False
    write_buffer_bytes: int = 256 * MiB  # memory for write buffers (filled or in flight)
    # Staging files of out-of-order writes (None: $XDG_CACHE_HOME/amlfs/staging; from options:
    # CACHE_DIR/staging, beside the disk cache's chunks).
    staging_dir: str | None = None
    staging_bytes: int = 4 * GiB  # disk for staging files; a write past it gets ENOSPC
    commit_timeout: float = 600.0  # bound on one commit (close, fsync)
    unmount_timeout: float = 60.0  # unmount/SIGTERM wait this long for pending commits
    # --- the persistent disk cache (diskcache.py, disktier.py) --------------------------------
    disk_cache: bool = (
        True  # keep fetched blocks on disk, shared with other mounts (--no-disk-cache)
    )
    cache_dir: str = ""  # where (absolute; resolved when built from options)
    disk_cache_bytes: int = 0  # its size cap (resolved when built from options)
    preload: bool = False  # hydrate the whole mounted path into the disk cache after mounting

    @property
    def max_listing_entries(self) -> int:
        """A directory with more entries is streamed to its readers but not kept for lookups;
        all cached listings together stay within a quarter of the budget."""
        return max(10_000, min(1_000_000, self.cache_bytes // LISTING_SHARE // ENTRY_BYTES))

    # --- building ------------------------------------------------------------------------------

    @classmethod
    def from_options(
        cls,
        *,
        block_size: str | None = None,
        cache_size: str | None = None,
        attr_timeout: str | None = None,
        list_timeout: str | None = None,
        negative_timeout: str | None = None,
        read_timeout: str | None = None,
        read_ahead: str | None = None,
        immutable: bool = False,
        fuse_options: tuple[str, ...] = (),
        nonempty: bool = False,
        debug: bool = False,
        log_file: str | None = None,
        rw: bool = False,
        write_buffer_size: str | None = None,
        staging_dir: str | None = None,
        staging_size: str | None = None,
        commit_timeout: str | None = None,
        unmount_timeout: str | None = None,
        cache_dir: str | None = None,
        disk_cache_size: str | None = None,
        no_disk_cache: bool = False,
        preload: bool = False,
    ) -> tuple[MountConfig, list[str]]:
        """Parse and validate option values as given (None: the default). Returns the config
        and one-line notes about what was adjusted. UsageError for anything unusable."""
        bs = parse_size(block_size or "8MiB", "--block-size", 4 * KiB, 256 * MiB)
        cache = parse_size(cache_size or "1GiB", "--cache-size", 1 * MiB, 1 << 50)
        attr = parse_seconds(attr_timeout or "60", "--attr-timeout")
        lst = parse_seconds(list_timeout or repr(attr), "--list-timeout")
        neg = parse_seconds(negative_timeout or "5", "--negative-timeout")
        rt = parse_seconds(read_timeout or "60", "--read-timeout", allow_forever=False)
        if rt <= 0:
            raise UsageError("bad --read-timeout: must be more than zero seconds")
        ra = parse_size(read_ahead or "4MiB", "--read-ahead", 0, 1 * GiB)
        timeouts = (
            Timeouts.immutable()
            if immutable or attr >= FOREVER
            else Timeouts(attr=attr, listing=lst, negative=neg)
        )
        wb = parse_size(write_buffer_size or "256MiB", "--write-buffer-size", 1 * MiB, 1 << 50)
        sb = parse_size(staging_size or "4GiB", "--staging-size", 0, 1 << 60)
        ct = parse_seconds(commit_timeout or "600", "--commit-timeout", allow_forever=False)
        ut = parse_seconds(unmount_timeout or "60", "--unmount-timeout", allow_forever=False)
        if ct <= 0:
            raise UsageError("bad --commit-timeout: must be more than zero seconds")
        if not rw and (write_buffer_size or staging_dir or staging_size or commit_timeout):
            raise UsageError("write options need --rw (the mount is read-only without it)")
        cdir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
        if os.path.exists(cdir) and not os.path.isdir(cdir):
            raise UsageError(f"bad --cache-dir {cdir}: not a directory")
        if disk_cache_size is not None:
            dsize = parse_size(disk_cache_size, "--disk-cache-size", 1 * MiB, 1 << 60)
        else:
            dsize = default_disk_size(cdir)
        if preload and no_disk_cache:
            raise UsageError("--preload fills the disk cache: it cannot go with --no-disk-cache")
        config = cls(
            rw=rw,
            write_buffer_bytes=wb,
            # out-of-order writes are staged beside the disk cache unless told otherwise
            staging_dir=os.path.abspath(os.path.expanduser(staging_dir or f"{cdir}/staging")),
            staging_bytes=sb,
            commit_timeout=ct,
            unmount_timeout=ut,
            disk_cache=not no_disk_cache,
            cache_dir=cdir,
            disk_cache_bytes=dsize,
            preload=preload,
            block_size=bs,
            cache_bytes=cache,
            timeouts=timeouts,
            read_timeout=rt,
            read_ahead=ra,
            fuse_options=tuple(fuse_options),
            nonempty=nonempty,
            debug=debug,
            log_file=log_file,
        )
        return config.checked(block_size_given=block_size is not None)

    def checked(self, block_size_given: bool = True) -> tuple[MountConfig, list[str]]:
        """This config made consistent, and notes about what had to change."""
        notes: list[str] = []
        config = self
        if self.block_size * MIN_BLOCKS_CACHED > self.cache_bytes:
            bs = self.block_size
            while bs > MIN_BLOCK and bs * MIN_BLOCKS_CACHED > self.cache_bytes:
                bs //= 2
            bs = max(MIN_BLOCK, bs)
            if bs * MIN_BLOCKS_CACHED > self.cache_bytes:
                raise UsageError(
                    f"--cache-size {human(self.cache_bytes)} is too small: it must hold"
                    f" {MIN_BLOCKS_CACHED} blocks of at least {human(MIN_BLOCK)}"
                )
            why = "--block-size" if block_size_given else "the default block size"
            notes.append(
                f"--cache-size {human(self.cache_bytes)} holds fewer than {MIN_BLOCKS_CACHED}"
                f" blocks of {why} {human(self.block_size)}: using {human(bs)} blocks"
            )
            config = replace(config, block_size=bs)
        return config, notes

    # --- what the parts of the daemon are given ------------------------------------------------

    def datapath(self) -> DataPathConfig:
        return DataPathConfig(
            block_size=self.block_size,
            cache_bytes=self.cache_bytes,
            read_timeout=self.read_timeout,
            max_inflight=self.max_inflight,
        )

    def operations(self) -> OperationsConfig:
        return OperationsConfig(
            timeouts=self.timeouts,
            request_timeout=self.read_timeout,
            small_file_size=self.block_size,
            listing_prefetch=self.listing_prefetch,
            listing_prefetch_queue=self.listing_queue,
            listing_pages_ahead=self.listing_pages_ahead,
            max_listing_entries=self.max_listing_entries,
        )

    def writes(self) -> WriteConfig:
        from .staging import default_staging_dir

        return WriteConfig(
            write_buffer_bytes=self.write_buffer_bytes,
            staging_dir=self.staging_dir or default_staging_dir(),
            staging_bytes=self.staging_bytes,
            commit_timeout=self.commit_timeout,
            unmount_timeout=self.unmount_timeout,
            block_size=self.block_size,
        )

    def describe(self) -> dict[str, Any]:
        """The figures `amlfs stats` shows."""
        return {
            "block_size": self.block_size,
            "cache_bytes": self.cache_bytes,
            "attr_timeout": self.timeouts.attr,
            "immutable": self.timeouts.is_immutable,
            "read_timeout": self.read_timeout,
            "max_listing_entries": self.max_listing_entries,
            "max_inflight": self.max_inflight,
            "rw": self.rw,
            **(
                {
                    "write_buffer_bytes": self.write_buffer_bytes,
                    "staging_bytes": self.staging_bytes,
                    "unmount_timeout": self.unmount_timeout,
                }
                if self.rw
                else {}
            ),
            "disk_cache": self.disk_cache,
            "preload": self.preload,
        }

    # --- handing it to a background daemon -----------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> MountConfig:
        try:
            raw = json.loads(text)
            raw["timeouts"] = Timeouts(**raw["timeouts"])
            raw["fuse_options"] = tuple(raw["fuse_options"])
            return cls(**raw)
        except (ValueError, KeyError, TypeError) as e:
            raise UsageError(f"bad mount configuration on stdin: {e}") from None
