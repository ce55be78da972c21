"""`amlfs upload SRC DEST` and `amlfs download SRC DIR`, plus the option parsing and result
reporting that `amlfs stage` shares with them."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from .. import units
from ..filters import PathFilter
from ..progress import summary_line
from ..transfer import TransferResult, TransferStopped, download, upload_dir, upload_files
from .common import AppContext, examples, main, pass_app

#: failures listed on stderr before "... and N more"
MAX_LISTED = 20


def parse_size(text: str | None) -> int | None:
    """The --block-size of a transfer: '8M', '16MiB', '65536' -> bytes, 64 KiB to 1 GiB."""
    return None if text is None else units.parse_size(text, "--block-size", 64 << 10, 1 << 30)


def progress_option(f):
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Progress bar on stderr (default: when stderr is a terminal).",
    )(f)


def fsync_option(f):
    return click.option(
        "--fsync",
        is_flag=True,
        help="Make files durable on disk (syncfs) before they appear and before exiting.",
    )(f)


def block_size_option(f):
    return click.option(
        "--block-size",
        metavar="SIZE",
        help="Ranged-read size for large files (default 8M, up to 64M for big files).",
    )(f)


def filter_options(f):
    """--include/--exclude GLOB (repeatable) -> a `path_filter` PathFilter argument."""
    f = click.option(
        "--exclude",
        multiple=True,
        metavar="GLOB",
        help="Leave out files matching GLOB (repeatable; wins over --include).",
    )(f)
    return click.option(
        "--include",
        multiple=True,
        metavar="GLOB",
        help="Only files matching GLOB, on their path relative to the source ('*' crosses '/'; "
        "a GLOB without '/' also matches the file name, e.g. '*.jpg'). Repeatable.",
    )(f)


def path_filter(include: tuple[str, ...], exclude: tuple[str, ...]) -> PathFilter:
    return PathFilter(tuple(include), tuple(exclude))


def workers_option(f):
    return click.option(
        "--workers",
        type=click.IntRange(1, 512),
        default=None,
        help="Parallel requests (default 32).",
    )(f)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a transfer like Ctrl-C does: completed files are published, temps cleaned."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def report(result: TransferResult, verb: str = "copied") -> None:
    """The summary line, then every failure (once); exit 1 when any file failed."""
    click.echo(summary_line(result, verb), err=True)
    _list_failures(result)
    if result.failed:
        click.echo(f"amlfs: error: {len(result.failed)} file(s) failed", err=True)
        sys.exit(1)


def _list_failures(result: TransferResult) -> None:
    for name, why in result.failed[:MAX_LISTED]:
        click.echo(f"amlfs: failed: {name}: {why}", err=True)
    if len(result.failed) > MAX_LISTED:
        click.echo(f"amlfs: ... and {len(result.failed) - MAX_LISTED} more", err=True)


@contextmanager
def reported_stop(verb: str) -> Iterator[None]:
    """A run stopped early (TransferStopped): the summary, the failures listed before the stop,
    then the one line saying what stopped it and what to do; exit 1."""
    try:
        yield
    except TransferStopped as e:
        click.echo(summary_line(e.result, verb), err=True)
        _list_failures(e.result)
        click.echo(f"amlfs: error: {e}", err=True)
        sys.exit(1)


@main.command(
    epilog=examples(
        "amlfs upload data/ training:datasets/v1",
        "amlfs upload --overwrite labels.csv :datasets/v1",
    )
)
@click.argument("src", type=click.Path(exists=True))
@click.argument("dest")
@click.option("--overwrite", is_flag=True, help="Replace remote files that exist.")
@filter_options
@progress_option
@workers_option
@pass_app
def upload(
    app: AppContext, src: str, dest: str, overwrite: bool, include, exclude, progress, workers
) -> None:
    """Upload a local file or directory SRC to DEST (DATASTORE[:PATH] or azureml://...).

    A directory's contents go under PATH; a file becomes PATH/<its name>. Existing remote files
    are skipped unless --overwrite.
    """
    ds, path = app.location(dest)
    backend = app.backend(ds)
    try:
        with sigterm_as_interrupt(), reported_stop("uploaded"):
            if os.path.isdir(src):
                result = upload_dir(
                    backend,
                    src,
                    path,
                    overwrite=overwrite,
                    show_progress=progress,
                    workers=workers,
                    path_filter=path_filter(include, exclude),
                )
            else:
                result = upload_files(
                    backend,
                    [src],
                    target_path=path,
                    overwrite=overwrite,
                    show_progress=progress,
                    workers=workers,
                    path_filter=path_filter(include, exclude),
                )
    finally:
        backend.close()
    report(result, "uploaded")


@main.command(
    "download",
    epilog=examples(
        "amlfs download training:datasets/v1 ./v1",
        "amlfs download --overwrite :datasets/v1/labels.csv .",
    ),
)
@click.argument("src")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace local files that exist.")
@filter_options
@block_size_option
@fsync_option
@progress_option
@workers_option
@pass_app
def download_cmd(
    app: AppContext,
    src: str,
    dest: str,
    overwrite: bool,
    include,
    exclude,
    block_size,
    fsync,
    progress,
    workers,
) -> None:
    """Download SRC (DATASTORE[:PATH], a directory or one file) into the directory DEST.

    DEST holds the contents of PATH. Existing local files are skipped unless --overwrite.
    """
    bs = parse_size(block_size)
    ds, path = app.location(src)
    backend = app.backend(ds)
    try:
        with sigterm_as_interrupt(), reported_stop("downloaded"):
            result = download(
                backend,
                dest,
                prefix=path,
                overwrite=overwrite,
                show_progress=progress,
                keep_prefix=False,
                workers=workers,
                block_size=bs,
                durable=fsync,
                path_filter=path_filter(include, exclude),
            )
    finally:
        backend.close()
    report(result, "downloaded")
