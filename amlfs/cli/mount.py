"""`amlfs mount`, `amlfs unmount`, `amlfs mounts` and `amlfs stats`."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field

import click

from ..errors import UsageError
from .common import AppContext, examples, main, pass_app

# FUSE and kernel mount options passed through to libfuse as they are.
_FUSE_FLAGS = {
    "allow_other", "allow_root", "auto_unmount", "default_permissions", "dev", "nodev", "suid",
    "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "norelatime", "strictatime",
    "nostrictatime", "lazytime", "nolazytime", "sync", "async", "dirsync",
}  # fmt: skip
_FUSE_VALUED = {"max_read", "context", "fscontext", "defcontext", "rootcontext"}
# fstab and mount(8) options that mean nothing to FUSE ("rw" alone is not --rw: an fstab line
# asks for a writable mount with -o amlfs_rw).
_IGNORED = {"rw", "ro", "defaults", "_netdev", "nofail", "auto", "noauto", "user", "users",
            "nouser", "owner", "group"}  # fmt: skip
# amlfs settings that may also come as -o NAME=VALUE (so that an /etc/fstab line can set them).
_AMLFS_VALUED = {
    "cache_size", "block_size", "attr_timeout", "list_timeout", "negative_timeout",
    "read_timeout", "log_file", "registry", "read_ahead", "write_buffer_size", "staging_dir",
    "staging_size", "commit_timeout", "unmount_timeout", "cache_dir", "disk_cache_size",
}  # fmt: skip


@dataclass
class ParsedOptions:
    fuse: list[str] = field(default_factory=list)
    amlfs: dict[str, str] = field(default_factory=dict)
    nonempty: bool = False
    immutable: bool = False
    debug: bool = False
    rw: bool = False
    no_disk_cache: bool = False
    preload: bool = False


def parse_o(values: tuple[str, ...]) -> ParsedOptions:
    """Split `-o a,b=c` values into FUSE options and amlfs settings; UsageError for unknown ones."""
    out = ParsedOptions()
    for value in values:
        for opt in filter(None, (o.strip() for o in value.split(","))):
            name, eq, arg = opt.partition("=")
            if name in _IGNORED or name.startswith("x-") or name == "comment":
                continue
            if name == "nonempty" and not eq:
                out.nonempty = True
            elif name == "immutable" and not eq:
                out.immutable = True
            elif name == "debug" and not eq:
                out.debug = True
            elif name == "amlfs_rw" and not eq:
                out.rw = True
            elif name == "no_disk_cache" and not eq:
                out.no_disk_cache = True
            elif name == "preload" and not eq:
                out.preload = True
            elif name in _FUSE_FLAGS and not eq:
                out.fuse.append(name)
            elif name in _FUSE_VALUED and eq and arg:
                out.fuse.append(opt)
            elif name in _AMLFS_VALUED and eq and arg:
                out.amlfs[name] = arg
            elif name in ("fsname", "subtype"):
                raise UsageError(f"mount option {name!r} is set by amlfs and cannot be changed")
            else:
                raise UsageError(f"unknown mount option {opt!r}")
    return out


@main.command(
    "mount",
    epilog=examples(
        "amlfs mount training:images /mnt/images",
        "amlfs mount --immutable --cache-size 4G :datasets/v1 /mnt/v1",
        "amlfs mount -o allow_other,registry=/etc/amlfs/datastores.yaml training: /mnt/training",
    ),
)
@click.argument("source", metavar="DATASTORE[:PATH]")
@click.argument("mountpoint")
@click.option("-f", "--foreground", is_flag=True, help="Stay attached (for systemd, debugging).")
@click.option("--cache-size", metavar="SIZE", help="Memory for cached blocks (default 1GiB).")
@click.option("--block-size", metavar="SIZE", help="Bytes per storage request (default 8MiB).")
@click.option(
    "--attr-timeout",
    metavar="SECONDS|forever",
    help="Trust attributes this long (default 60); 'forever': the dataset is immutable.",
)
@click.option(
    "--list-timeout", metavar="SECONDS|forever", help="Trust directory listings this long."
)
@click.option("--negative-timeout", metavar="SECONDS", help="Remember missing names (default 5).")
@click.option("--immutable", is_flag=True, help="The dataset never changes: cache forever.")
@click.option("--read-timeout", metavar="SECONDS", help="A read past this gets EIO (default 60).")
@click.option(
    "--read-ahead",
    metavar="SIZE",
    help="The kernel's read-ahead for the mount, needs root (default 4MiB; 0: the kernel's).",
)
@click.option("--rw", is_flag=True, help="Writable: files can be created, written, renamed.")
@click.option(
    "--write-buffer-size", metavar="SIZE", help="--rw: memory for write buffers (default 256MiB)."
)
@click.option(
    "--staging-dir",
    type=click.Path(file_okay=False),
    help="--rw: where out-of-order writes are staged (default CACHE_DIR/staging).",
)
@click.option("--staging-size", metavar="SIZE", help="--rw: disk for staging files (default 4GiB).")
@click.option(
    "--commit-timeout", metavar="SECONDS", help="--rw: bound on one commit (default 600)."
)
@click.option(
    "--unmount-timeout",
    metavar="SECONDS",
    help="--rw: unmount waits this long for pending commits (default 60).",
)
@click.option(
    "--cache-dir",
    metavar="DIR",
    help="The persistent disk cache, shared with other mounts (default ~/.cache/amlfs).",
)
@click.option(
    "--disk-cache-size",
    metavar="SIZE",
    help="Cap of the disk cache (default the smaller of 50GiB and a fifth of its filesystem).",
)
@click.option("--no-disk-cache", is_flag=True, help="Keep nothing on disk: memory cache only.")
@click.option(
    "--preload",
    is_flag=True,
    help="After mounting, fill the disk cache with the whole path in the background.",
)
@click.option("-o", "options", multiple=True, metavar="OPT[,OPT...]", help="Mount options.")
@click.option("--debug", is_flag=True, help="Log every request (to --log-file or stderr).")
@click.option("--log-file", type=click.Path(dir_okay=False), help="The daemon's log.")
@click.option(
    "--timeout",
    metavar="SECONDS",
    type=float,
    default=30.0,
    help="Wait this long for the mount to go live (default 30).",
)
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False),
    metavar="MANIFEST",
    help="Mount an input of a run manifest exactly as recorded (SOURCE: the input's name or "
    "location): no listings; a file changed since is refused (ESTALE), files added are not shown.",
)
@click.option("--status-fd", type=int, hidden=True)
@click.option("--config-stdin", is_flag=True, hidden=True)
@pass_app
def mount(
    app: AppContext,
    source: str,
    mountpoint: str,
    foreground: bool,
    cache_size: str | None,
    block_size: str | None,
    attr_timeout: str | None,
    list_timeout: str | None,
    negative_timeout: str | None,
    immutable: bool,
    read_timeout: str | None,
    read_ahead: str | None,
    rw: bool,
    write_buffer_size: str | None,
    staging_dir: str | None,
    staging_size: str | None,
    commit_timeout: str | None,
    unmount_timeout: str | None,
    cache_dir: str | None,
    disk_cache_size: str | None,
    no_disk_cache: bool,
    preload: bool,
    options: tuple[str, ...],
    debug: bool,
    log_file: str | None,
    timeout: float,
    manifest: str | None,
    status_fd: int | None,
    config_stdin: bool,
) -> None:
    """Mount a datastore (or a directory of it) at MOUNTPOINT: read-only, or writable with
    --rw (see SEMANTICS.md for what a writable mount guarantees).

    Returns once the mount is live; the daemon keeps running in the background until
    `amlfs unmount MOUNTPOINT`. Mount options (-o): allow_other, allow_root, auto_unmount,
    nonempty, immutable, debug, amlfs_rw (--rw), no_disk_cache, preload, the kernel's
    nodev/nosuid/noexec/noatime..., and every long option above as NAME=VALUE (cache_size=2G,
    attr_timeout=forever, registry=FILE, ...).
    """
    from ..fs.config import MountConfig
    from ..fs.daemon import StatusPipe

    status = StatusPipe(status_fd)
    try:
        if config_stdin:  # a background daemon: `amlfs mount` has validated everything
            config = MountConfig.from_json(sys.stdin.read())
        else:
            o = parse_o(options)
            if "registry" in o.amlfs:  # an /etc/fstab line names its registry this way
                app.registry_path = o.amlfs["registry"]

            def pick(flag: str | None, name: str) -> str | None:
                return flag if flag is not None else o.amlfs.get(name)

            log_file = pick(log_file, "log_file")
            config, notes = MountConfig.from_options(
                block_size=pick(block_size, "block_size"),
                cache_size=pick(cache_size, "cache_size"),
                attr_timeout=pick(attr_timeout, "attr_timeout"),
                list_timeout=pick(list_timeout, "list_timeout"),
                negative_timeout=pick(negative_timeout, "negative_timeout"),
                read_timeout=pick(read_timeout, "read_timeout"),
                read_ahead=pick(read_ahead, "read_ahead"),
                # a pinned mount cannot change: cache for ever
                immutable=immutable or o.immutable or manifest is not None,
                fuse_options=tuple(o.fuse),
                nonempty=o.nonempty,
                debug=debug or o.debug or app.debug,
                log_file=os.path.abspath(log_file) if log_file else None,
                rw=rw or o.rw,
                write_buffer_size=pick(write_buffer_size, "write_buffer_size"),
                staging_dir=pick(staging_dir, "staging_dir"),
                staging_size=pick(staging_size, "staging_size"),
                commit_timeout=pick(commit_timeout, "commit_timeout"),
                unmount_timeout=pick(unmount_timeout, "unmount_timeout"),
                cache_dir=pick(cache_dir, "cache_dir"),
                disk_cache_size=pick(disk_cache_size, "disk_cache_size"),
                no_disk_cache=no_disk_cache or o.no_disk_cache,
                preload=preload or o.preload,
            )
            for note in notes:
                click.echo(f"amlfs: {note}", err=True)
        wrap = None
        if manifest is not None:
            from .manifest import pinned_source

            ds, path, wrap = pinned_source(app, manifest, source)
        else:
            ds, path = app.location(source)
    except UsageError as e:
        status.error(e.exit_code, str(e))
        raise

    from ..fs import control

    if foreground:
        from ..fs.daemon import run_mount

        try:
            _configure_daemon_logging(config.debug, config.log_file, mountpoint)
            mountpoint = control.validate_mountpoint(mountpoint, nonempty=config.nonempty)
        except UsageError as e:
            status.error(e.exit_code, str(e))
            raise
        run_mount(ds, path, mountpoint, config, status_fd=status.fd, wrap=wrap)
        return

    from ..backends import open_backend
    from ..fs.daemon import check_source

    mountpoint = control.validate_mountpoint(mountpoint, nonempty=config.nonempty)
    backend = open_backend(ds)
    if wrap is not None:
        backend = wrap(backend)
    try:
        if config.rw:
            from ..backends.writers import writer_for

            writer_for(backend)  # Unsupported: said here, before a daemon starts
        check_source(backend, ds, path, create=config.rw)
    finally:
        backend.close()
    argv = [sys.executable, "-m", "amlfs"]
    if app.registry_path:
        argv += ["--registry", os.path.abspath(app.registry_path)]
    # Pass the resolved datastore name so that a default-datastore change cannot race us; the
    # configuration goes whole on the daemon's stdin.
    argv += ["mount", "--foreground", "--config-stdin"]
    if manifest is not None:
        argv += ["--manifest", os.path.abspath(manifest), "--", source, mountpoint]
    else:
        argv += ["--", f"{ds.name}:{path}", mountpoint]
    from ..logs import default_log_path

    # The daemon's stderr (what is printed before its logging is set up) goes to its log too.
    daemon_log = config.log_file or str(default_log_path(mountpoint))
    if not config.log_file:
        try:
            os.makedirs(os.path.dirname(daemon_log), mode=0o700, exist_ok=True)
        except OSError:
            daemon_log = None  # the daemon says why it cannot log there
    control.start_background(
        argv, mountpoint, daemon_log, timeout=timeout, stdin=config.to_json().encode()
    )


def _configure_daemon_logging(debug: bool, log_file: str | None, mountpoint: str) -> None:
    from ..logs import configure_daemon

    configure_daemon(mountpoint, debug, log_file)


@main.command(
    "unmount", epilog=examples("amlfs unmount /mnt/images", "amlfs unmount --lazy /mnt/images")
)
@click.argument("mountpoint", type=click.Path())
@click.option("-z", "--lazy", is_flag=True, help="Detach now, even while files are open.")
def unmount(mountpoint: str, lazy: bool) -> None:
    """Unmount an amlfs mount (also one whose daemon died)."""
    from ..fs import control

    control.unmount(mountpoint, lazy=lazy)


@main.command("mounts", epilog=examples("amlfs mounts", "amlfs mounts --json"))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per mount.")
def mounts(as_json: bool) -> None:
    """List amlfs mounts: datastore, path, mountpoint, daemon pid, state, where it logs."""
    from ..errors import AmlfsError
    from ..fs import control
    from ..logs import find_target

    rows = []
    for m in control.list_mounts():
        try:
            pid, state = control.read_facts(m.mountpoint, timeout=2.0).get("pid"), "live"
        except AmlfsError as e:
            pid, state = None, "dead" if "dead" in str(e) else "unresponsive"
        rows.append(
            {
                "datastore": m.datastore,
                "path": m.path,
                "mountpoint": m.mountpoint,
                "pid": pid,
                "state": state,
                "log": (t.describe() if (t := find_target(m.mountpoint)) else None),
            }
        )
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    if not rows:
        return
    table = [("DATASTORE", "PATH", "MOUNTPOINT", "PID", "STATE", "LOG")]
    for r in rows:
        pid = "-" if r["pid"] is None else str(r["pid"])
        table.append(
            (r["datastore"], r["path"] or "/", r["mountpoint"], pid, r["state"], r["log"] or "-")
        )
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        click.echo(
            "  ".join(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)) + "  " + row[5]
        )


@main.command(
    "stats",
    epilog=examples(
        "amlfs stats /mnt/images",
        "amlfs stats --watch --interval 1 /mnt/images",
        "amlfs stats --json /mnt/images",
    ),
)
@click.argument("mountpoint", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="The raw JSON document.")
@click.option("-w", "--watch", is_flag=True, help="Redraw with per-second rates until Ctrl-C.")
@click.option(
    "--interval",
    metavar="SECONDS",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="With --watch: seconds between updates.",
)
@click.option("--count", type=click.IntRange(min=1), help="With --watch: stop after COUNT updates.")
def stats(mountpoint: str, as_json: bool, watch: bool, interval: float, count: int | None) -> None:
    """Live counters of a mount: requests, bytes fetched, cache hits, errors by errno."""
    from ..fs import control

    entry = control.find_mount(mountpoint)
    if entry is None:
        raise UsageError(f"{os.path.abspath(mountpoint)} is not an amlfs mount")
    if watch:
        from .statswatch import watch as watch_counters

        try:
            watch_counters(
                lambda: control.read_facts(entry.mountpoint),
                interval,
                count,
                clear=sys.stdout.isatty(),
            )
        except KeyboardInterrupt:
            pass
        return
    facts = control.read_facts(entry.mountpoint)
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True))
        return
    counters = facts.pop("counters", {})
    for key in ("datastore", "path", "mountpoint", "pid"):
        click.echo(f"{key:<24} {facts.get(key)}")
    disk = facts.get("disk")
    if disk:
        from ..units import human

        used = "scanning" if disk.get("used") is None else human(disk["used"])
        click.echo(f"{'disk_cache':<24} {disk['dir']} {used} of {human(disk['capacity'])}"
                   f" ({disk['state']})")  # fmt: skip
    else:
        click.echo(f"{'disk_cache':<24} off")
    for key, value in sorted((facts.get("preload") or {}).items()):
        click.echo(f"{'preload.' + key:<24} {value}")
    for key, value in sorted(counters.items()):
        click.echo(f"{key:<24} {value}")
