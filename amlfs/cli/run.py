"""`amlfs run`: a command with datastore inputs mounted or downloaded, cleaned up on every exit."""

from __future__ import annotations

import re
import sys

import click

from ..datareference import DataReference
from ..errors import UsageError
from ..run import run_with_inputs
from ..workspace import Datastore, Workspace
from .common import AppContext, main, pass_app

INPUT_RE = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<loc>.+?)(?:@(?P<mode>mount|download))?$"
)


def parse_input(app: AppContext, spec: str) -> DataReference:
    m = INPUT_RE.match(spec)
    if not m:
        raise UsageError(f"bad input {spec!r}: expected NAME=DATASTORE[:PATH][@mount|@download]")
    ds_config, path = app.location(m["loc"])
    ds = Datastore(Workspace(app.registry), ds_config)
    return DataReference(ds, m["name"], path, mode=m["mode"] or "mount")


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=DATASTORE[:PATH][@MODE]",
    help="An input, mounted (default) or downloaded; {NAME} in ARGS becomes its path.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Where inputs go (default: a temporary per-run directory, removed after).",
)
@click.option("--progress/--no-progress", default=None, help="Download progress on stderr.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def run(app: AppContext, inputs, workdir, progress, command):
    """Run COMMAND with datastore inputs; exits with COMMAND's status.

    Each input's location is in {NAME} within ARGS and in $AZUREML_DATAREFERENCE_NAME and
    $AMLFS_DATAREFERENCE_NAME. Mounts are undone on success, failure, Ctrl-C and SIGTERM.
    """
    refs = [parse_input(app, spec) for spec in inputs]
    result = run_with_inputs(list(command), refs, workdir=workdir, show_progress=progress)
    sys.exit(result.returncode)
