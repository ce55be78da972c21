"""`amlfs run`: a command with datastore inputs mounted or downloaded, cleaned up on every exit."""

from __future__ import annotations

import re
import sys

import click

from ..datareference import MODES, DataReference
from ..errors import UsageError
from ..run import run_with_inputs
from ..workspace import Datastore, Workspace
from .common import AppContext, examples, main, pass_app

NAME_RE = r"[A-Za-z_][A-Za-z0-9_]*"
INPUT_RE = re.compile(rf"^(?P<name>{NAME_RE})=(?P<loc>.+?)(?:@(?P<mode>[^@/:]*))?$")
# {NAME} not preceded by '$' (a shell's ${VAR} is left alone)
PLACEHOLDER_RE = re.compile(rf"(?<!\$)\{{({NAME_RE})\}}")


def parse_input(app: AppContext, spec: str) -> DataReference:
    """NAME=DATASTORE[:PATH][@MODE]; the last '@word' is the mode (a path holding '@' ends with
    an explicit @mount or @download)."""
    m = INPUT_RE.match(spec)
    if not m:
        raise UsageError(f"bad input {spec!r}: expected NAME=DATASTORE[:PATH][@mount|@download]")
    mode = m["mode"]
    if mode is not None and mode not in MODES:
        raise UsageError(
            f"bad mode {'@' + mode!r} in input {spec!r}: use @mount or @download"
            " (a path with '@' in it ends with an explicit @mount or @download)"
        )
    ds_config, path = app.location(m["loc"])
    ds = Datastore(Workspace(app.registry), ds_config)
    return DataReference(ds, m["name"], path, mode=mode or "mount")


def check_placeholders(command: tuple[str, ...], names: list[str]) -> None:
    """UsageError for a {NAME} in the arguments that names no input (a typo would otherwise
    reach the command literally)."""
    for arg in command:
        for m in PLACEHOLDER_RE.finditer(arg):
            if m[1] not in names:
                known = ", ".join("{" + n + "}" for n in names) or "none (no -i given)"
                raise UsageError(
                    f"unknown placeholder {m[0]} in argument {arg!r}: the inputs are {known}"
                )


@main.command(
    context_settings={"ignore_unknown_options": True},
    epilog=examples(
        "amlfs run -i train=training:images -- python train.py --data {train}",
        "amlfs run -i labels=:labels@download -- sh -c 'wc -l \"$AMLFS_DATAREFERENCE_labels\"/*'",
        "amlfs run -i a=ds:x@mount -i b=ds:y@download --workdir /tmp/job -- ./job.sh {a} {b}",
    ),
)
@click.option(
    "-i",
    "--input",
    "inputs",
    multiple=True,
    metavar="NAME=DATASTORE[:PATH][@MODE]",
    help="An input, mounted (@mount, the default) or downloaded (@download); {NAME} in the "
    "command becomes its local path. Repeat for more inputs.",
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

    Each input's local path replaces {NAME} in the arguments and is exported as
    $AZUREML_DATAREFERENCE_NAME and $AMLFS_DATAREFERENCE_NAME. A {NAME} that is no input is an
    error (a shell's ${VAR} is left alone). Mounts are undone on success, failure, Ctrl-C and
    SIGTERM. Exit status: COMMAND's; 127 if it is not found, 126 if it cannot be executed; 2 for
    a bad input.
    """
    refs = [parse_input(app, spec) for spec in inputs]
    check_placeholders(command, [r.data_reference_name for r in refs])
    result = run_with_inputs(list(command), refs, workdir=workdir, show_progress=progress)
    sys.exit(result.returncode)
