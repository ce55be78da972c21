"""`amlfs stage DATASTORE[:PATH] DIR`: download mode, a resumable verified sync into DIR."""

from __future__ import annotations

import click

from ..stage import stage
from .common import AppContext, examples, main, pass_app
from .transfer import (
    block_size_option,
    filter_options,
    fsync_option,
    parse_size,
    path_filter,
    progress_option,
    report,
    reported_stop,
    sigterm_as_interrupt,
    workers_option,
)


@main.command(
    "stage",
    epilog=examples(
        "amlfs stage training:images /data/images",
        "amlfs stage --delete --dry-run :datasets/v1 /data/v1",
        "amlfs stage --verify --workers 64 azureml://datastores/training/paths/images /data/images",
    ),
)
@click.argument("src")
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--delete", is_flag=True, help="Remove local files that no longer exist remotely.")
@click.option(
    "--dry-run", is_flag=True, help="Print what would be copied and deleted; change nothing."
)
@click.option("--verify", is_flag=True, help="Check Content-MD5 where the service has one.")
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False),
    metavar="MANIFEST",
    help="Stage an input of a run manifest exactly as recorded (SRC: the input's name or "
    "location): no listing; a file changed since fails, files added since are left out.",
)
@filter_options
@block_size_option
@fsync_option
@progress_option
@workers_option
@pass_app
def stage_cmd(
    app: AppContext,
    src: str,
    dest: str,
    delete: bool,
    dry_run: bool,
    verify: bool,
    manifest: str | None,
    include,
    exclude,
    block_size,
    fsync,
    progress,
    workers,
) -> None:
    """Make DEST hold exactly the files under SRC (DATASTORE[:PATH] or azureml://...).

    Files unchanged since the last stage (same remote ETag and size, local copy untouched) are
    skipped; an interrupted stage resumes where it stopped. A missing PATH is an error (exit 2);
    exit 1 also when any file failed, after copying all the others.
    """
    bs = parse_size(block_size)
    if manifest is not None:
        from .manifest import pinned_source

        ds, path, wrap = pinned_source(app, manifest, src)
        backend = wrap(app.backend(ds))
    else:
        ds, path = app.location(src)
        backend = app.backend(ds)

    def plan(action: str, name: str) -> None:
        click.echo(f"{action} {name}")

    try:
        with sigterm_as_interrupt(), reported_stop("would copy" if dry_run else "copied"):
            result = stage(
                backend,
                path,
                dest,
                delete=delete,
                dry_run=dry_run,
                verify=verify,
                workers=workers,
                block_size=bs,
                show_progress=progress,
                durable=fsync,
                on_plan=plan,
                path_filter=path_filter(include, exclude),
            )
    finally:
        backend.close()
    report(result, "would copy" if dry_run else "copied")
