"""`amlfs cache`: the persistent disk cache of mounts: warm, ls, du, prune, clear."""

from __future__ import annotations

import sys

import click

from ..errors import UsageError
from .common import AppContext, examples, main, pass_app


def _dir(cache_dir: str | None) -> str:
    import os

    from ..fs.diskcache import default_cache_dir

    path = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"bad --cache-dir {path}: not a directory")
    return path


cache_dir_option = click.option(
    "--cache-dir",
    metavar="DIR",
    help="The cache directory (default ~/.cache/amlfs, as for `amlfs mount`).",
)


@main.group(
    "cache",
    epilog=examples(
        "amlfs cache warm training:images",
        "amlfs cache ls",
        "amlfs cache prune 10G",
    ),
)
def cache() -> None:
    """The disk cache that mounts share: what it holds, filling it ahead, emptying it.

    Safe while mounts are using it: they only ever read whole, checked chunks.
    """


@cache.command(
    "warm",
    epilog=examples(
        "amlfs cache warm training:images/train",
        "amlfs cache warm --cache-dir /var/cache/amlfs --block-size 4M :datasets/v1",
    ),
)
@click.argument("source", metavar="DATASTORE[:PATH]")
@cache_dir_option
@click.option("--disk-cache-size", metavar="SIZE", help="The cache's cap (as for `amlfs mount`).")
@click.option(
    "--block-size",
    metavar="SIZE",
    help="The block size of the mounts that will read it (default 8MiB, as `amlfs mount`).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Blocks fetched at once.",
)
@pass_app
def warm_cmd(
    app: AppContext,
    source: str,
    cache_dir: str | None,
    disk_cache_size: str | None,
    block_size: str | None,
    workers: int,
) -> None:
    """Fill the disk cache with every file under SOURCE, without a mount (e.g. before a job).

    Exit 1 when some files could not be cached (changed meanwhile, failed, no room).
    """
    from ..fs.config import MountConfig
    from ..fs.preload import warm

    config, notes = MountConfig.from_options(
        block_size=block_size, cache_dir=cache_dir, disk_cache_size=disk_cache_size
    )
    for note in notes:
        click.echo(f"amlfs: {note}", err=True)
    from ..backends.base import normpath
    from ..fs.daemon import check_source

    ds, path = app.location(source)
    path = normpath(path)
    backend = app.backend(ds)
    try:
        check_source(backend, ds, path)
    except BaseException:
        backend.close()
        raise
    tty = sys.stderr.isatty()

    def show(p: dict) -> None:
        if tty and p["state"] == "running":
            click.echo(
                f"\r{p['files_done']}/{p['files_total']} files,"
                f" {p['bytes_done']}/{p['bytes_total']} bytes",
                err=True,
                nl=False,
            )

    try:
        result = warm(
            backend,
            ds,
            path,
            cache_dir=config.cache_dir,
            capacity=config.disk_cache_bytes,
            block_size=config.block_size,
            workers=workers,
            on_progress=show,
        )
    finally:
        backend.close()
    if tty:
        click.echo("", err=True)
    if result["state"] != "done":
        raise UsageError(f"cannot warm {source}: {result['state']}")
    fetched = result["counters"].get("bytes_fetched", 0)
    click.echo(
        f"cached {result['files_done']} files, {result['bytes_done']} bytes"
        f" ({fetched} fetched, the rest already cached) in {result['disk']['dir']}"
    )
    if result["files_failed"]:
        click.echo(f"amlfs: {result['files_failed']} files could not be cached", err=True)
        sys.exit(1)


@cache.command("ls", epilog=examples("amlfs cache ls", "amlfs cache ls --json"))
@cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per storage location.")
def ls_cmd(cache_dir: str | None, as_json: bool) -> None:
    """What is cached, per storage location (datastore, endpoint, container): chunks, bytes."""
    import json

    from ..fs.diskcache import ChunkStore

    store = ChunkStore(_dir(cache_dir), 1)
    rows = []
    for name, doc, use in store.stores():
        rows.append({"id": name, **doc, "chunks": use.chunks, "bytes": use.bytes})
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    from ..units import human

    for r in rows:
        where = f"{r.get('endpoint', '?')}/{r.get('container', '?')}"
        click.echo(
            f"{r.get('datastore', '?'):<16} {human(r['bytes']):>10} {r['chunks']:>8} chunks  {where}"
        )


@cache.command(
    "du", epilog=examples("amlfs cache du", "amlfs cache du -b --cache-dir /var/cache/amlfs")
)
@cache_dir_option
@click.option("-b", "--bytes", "in_bytes", is_flag=True, help="Print the size in bytes.")
def du_cmd(cache_dir: str | None, in_bytes: bool) -> None:
    """The disk cache's total size and where it is."""
    from ..fs.diskcache import ChunkStore
    from ..units import human

    store = ChunkStore(_dir(cache_dir), 1)
    total = sum(use.bytes for _, _, use in store.stores())
    click.echo(f"{total if in_bytes else human(total)}\t{store.root}")


@cache.command("prune", epilog=examples("amlfs cache prune 10G", "amlfs cache prune 0"))
@click.argument("size", metavar="SIZE")
@cache_dir_option
def prune_cmd(size: str, cache_dir: str | None) -> None:
    """Evict the least recently used chunks until the cache holds at most SIZE."""
    from ..fs.diskcache import ChunkStore
    from ..units import human, parse_size

    target = parse_size(size, "SIZE", 0, 1 << 62)
    store = ChunkStore(_dir(cache_dir), 1 << 62)
    freed = store.prune(target)
    click.echo(f"freed {human(freed)}; {human(store.used)} left in {store.root}")


@cache.command(
    "clear", epilog=examples("amlfs cache clear", "amlfs cache clear --cache-dir /var/cache/amlfs")
)
@cache_dir_option
def clear_cmd(cache_dir: str | None) -> None:
    """Remove everything the disk cache holds (mounts using it refetch what they need)."""
    from ..fs.diskcache import ChunkStore

    store = ChunkStore(_dir(cache_dir), 1)
    store.clear()
    click.echo(f"cleared {store.root}")
