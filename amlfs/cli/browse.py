"""`amlfs ls`, `amlfs cat` and `amlfs rm`: look at a datastore and remove from it."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..backends import Backend, NotFound, ObjectInfo
from ..browse import copy_to, entries, plan_removal, remove
from ..errors import AmlfsError, UsageError
from ..progress import human_bytes
from ..transfer import relative_name
from .common import AppContext, examples, main, pass_app


@contextmanager
def _opened(app: AppContext, location: str) -> Iterator[tuple[Backend, str, str]]:
    """(backend, path, 'datastore:path') for `location`; a missing path is one clear line."""
    ds, path = app.location(location)
    shown = f"{ds.name}:{path}"
    backend = app.backend(ds)
    try:
        yield backend, path, shown
    except NotFound:
        parent = path.rstrip("/").rpartition("/")[0]
        raise UsageError(
            f"{shown} does not exist (`amlfs ls {ds.name}:{parent}` shows what is there)"
        ) from None
    finally:
        backend.close()


def _short_size(n: int) -> str:
    """ls -h style: 512, 4.0K, 1.2M, 3.4G."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{int(value)}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)


def _mtime(info: ObjectInfo) -> str:
    if not info.mtime:
        return "-"
    return dt.datetime.fromtimestamp(info.mtime, dt.UTC).strftime("%Y-%m-%d %H:%M")


@main.command(
    "ls",
    epilog=examples(
        "amlfs ls training:images", "amlfs ls -lR :datasets/v1", "amlfs ls --json training:"
    ),
)
@click.argument("location", default=":", metavar="LOCATION")
@click.option("-l", "long_", is_flag=True, help="Size, modification time (UTC) and name.")
@click.option("-R", "--recursive", is_flag=True, help="Every file below, by its relative path.")
@click.option("--bytes", "exact", is_flag=True, help="With -l: sizes in bytes, not 4.0K/1.2M.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry.")
@pass_app
def ls(app: AppContext, location: str, long_: bool, recursive: bool, exact: bool, as_json: bool):
    """List LOCATION (DATASTORE[:PATH], default: the default datastore's root).

    A directory's entries (directories first, with a trailing '/'), or a file itself.
    """
    with _opened(app, location) as (backend, path, _shown):
        base = path.strip("/")
        for info in entries(backend, path, recursive):
            name = relative_name(info.path, base) if info.path != base else info.name
            if as_json:
                row = {"path": info.path, "name": name, "type": "dir" if info.is_dir else "file"}
                if not info.is_dir:
                    row.update(size=info.size, mtime=info.mtime or None, etag=info.etag)
                click.echo(json.dumps(row))
                continue
            shown = name + "/" if info.is_dir else name
            if long_:
                size = "-" if info.is_dir else str(info.size) if exact else _short_size(info.size)
                click.echo(f"{size:>8}  {_mtime(info):<16}  {shown}")
            else:
                click.echo(shown)


@main.command(
    "cat",
    epilog=examples("amlfs cat training:labels.csv", "amlfs cat :config/a.yaml :config/b.yaml"),
)
@click.argument("locations", nargs=-1, required=True, metavar="LOCATION...")
@pass_app
def cat(app: AppContext, locations: tuple[str, ...]):
    """Write the files at LOCATION... to stdout, in order."""
    out = sys.stdout.buffer
    for location in locations:
        with _opened(app, location) as (backend, path, shown):
            copy_to(backend, path, out, shown)
    out.flush()


@main.command(
    "rm",
    epilog=examples(
        "amlfs rm training:tmp/old.bin",
        "amlfs rm -r --dry-run training:tmp",
        "amlfs rm -r --force scratch:",
    ),
)
@click.argument("location", metavar="LOCATION")
@click.option("-r", "--recursive", is_flag=True, help="Remove a directory and everything in it.")
@click.option("--dry-run", is_flag=True, help="Print what would be removed; remove nothing.")
@click.option("--force", is_flag=True, help="Allow removing everything in the datastore (with -r).")
@click.option("-v", "--verbose", is_flag=True, help="Print each file as it is removed.")
@pass_app
def rm(app: AppContext, location: str, recursive: bool, dry_run: bool, force: bool, verbose: bool):
    """Remove the file at LOCATION, or with -r a directory and everything in it.

    The datastore's root is refused without --force. amlfs removes files: on Azure Files,
    ADLS and local datastores the emptied directories stay (Blob has no directories to keep).
    """
    with _opened(app, location) as (backend, path, shown):
        plan = plan_removal(backend, path, recursive, force, shown)
        if dry_run:
            for name in plan.files:
                click.echo(f"would remove {name}")
            click.echo(
                f"would remove {len(plan.files)} file(s), {human_bytes(plan.bytes)}, from {shown}",
                err=True,
            )
            return
        done = remove(backend, plan, on_removed=click.echo if verbose else (lambda name: None))
    removed = len(done.files) - len(done.failed)
    click.echo(f"removed {removed} file(s) from {shown}", err=True)
    if done.failed:
        for name, why in done.failed[:20]:
            click.echo(f"amlfs: failed: {name}: {why}", err=True)
        raise AmlfsError(f"{len(done.failed)} file(s) in {shown} could not be removed")
