"""`amlfs run`: a command with datastore inputs mounted or downloaded and outputs uploaded or
written through a writable mount, cleaned up on every exit, recorded in a manifest."""

from __future__ import annotations

import re
import sys

import click

from ..datareference import MODES, DataReference
from ..errors import UsageError
from ..outputs import MODES as OUTPUT_MODES
from ..outputs import Output
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


def parse_output(app: AppContext, spec: str) -> Output:
    """NAME=DATASTORE[:PATH][@rw_mount|@upload]; PATH may hold {run-id} and {output-name}."""
    m = INPUT_RE.match(spec)
    if not m:
        raise UsageError(f"bad output {spec!r}: expected NAME=DATASTORE[:PATH][@upload|@rw_mount]")
    mode = m["mode"]
    if mode is not None and mode not in OUTPUT_MODES:
        raise UsageError(
            f"bad mode {'@' + mode!r} in output {spec!r}: use @upload or @rw_mount"
            " (a path with '@' in it ends with an explicit @upload or @rw_mount)"
        )
    ds_config, path = app.location(m["loc"])
    ds = Datastore(Workspace(app.registry), ds_config)
    return Output(m["name"], ds, path, mode=mode or "upload")


def pinned_inputs(app: AppContext, manifest_file: str):
    """The inputs of a manifest as DataReferences, and their pins."""
    from ..manifest import Manifest

    manifest = Manifest.load(manifest_file)
    ws = Workspace(app.registry)
    refs, pins = [], {}
    for rec in manifest.inputs:
        ds = Datastore(ws, app.registry.get(rec.datastore))
        refs.append(DataReference(ds, rec.name, rec.path, mode=rec.mode))
        pins[rec.name] = (manifest_file, rec)
    return refs, pins


def check_placeholders(command: tuple[str, ...], names: list[str]) -> None:
    """UsageError for a {NAME} in the arguments that names no input (a typo would otherwise
    reach the command literally)."""
    for arg in command:
        for m in PLACEHOLDER_RE.finditer(arg):
            if m[1] not in names:
                known = ", ".join("{" + n + "}" for n in names) or "none (no -i or -o given)"
                raise UsageError(
                    f"unknown placeholder {m[0]} in argument {arg!r}: the inputs and outputs"
                    f" are {known}"
                )


@main.command(
    context_settings={"ignore_unknown_options": True},
    epilog=examples(
        "amlfs run -i train=training:images -- python train.py --data {train}",
        "amlfs run -i d=training:images -o model=training:models/{run-id} -- python train.py"
        " --data {d} --out {model}",
        "amlfs run --pin ~/.local/state/amlfs/runs/RUN_ID/manifest.json -- python train.py",
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
    "-o",
    "--output",
    "outputs",
    multiple=True,
    metavar="NAME=DATASTORE[:PATH][@MODE]",
    help="An output: a local directory uploaded to PATH when COMMAND exits (@upload, the "
    "default, replacing files of the same name) or PATH mounted writable (@rw_mount); {NAME} "
    "in the command becomes its local path; {run-id} in PATH the run's id. Repeatable.",
)
@click.option(
    "--upload-on-failure/--no-upload-on-failure",
    default=True,
    help="Upload @upload outputs also when COMMAND fails (default: yes).",
)
@click.option(
    "--pin",
    "pin",
    type=click.Path(dir_okay=False),
    metavar="MANIFEST",
    help="Take the inputs of a run manifest, each in its recorded mode and name, exactly as "
    "recorded: a file changed since is refused, files added since are not shown.",
)
@click.option(
    "--manifest-to",
    metavar="DATASTORE[:PATH]",
    help="Also write the run's manifest there (as PATH if it ends in .json, else as "
    "PATH/RUN_ID.json).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    help="Where inputs go (default: a temporary per-run directory, removed after).",
)
@click.option("--progress/--no-progress", default=None, help="Download progress on stderr.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_app
def run(
    app: AppContext,
    inputs,
    outputs,
    upload_on_failure,
    pin,
    manifest_to,
    workdir,
    progress,
    command,
):
    """Run COMMAND with datastore inputs and outputs; exits with COMMAND's status.

    Each input's local path replaces {NAME} in the arguments and is exported as
    $AZUREML_DATAREFERENCE_NAME and $AMLFS_DATAREFERENCE_NAME; each output's as
    $AZUREML_OUTPUT_NAME and $AMLFS_OUTPUT_NAME. A {NAME} that is neither is an error (a
    shell's ${VAR} is left alone). Outputs are committed when COMMAND exits, also after a
    failure or SIGTERM (the command is terminated first), with a summary per output; a second
    Ctrl-C or SIGTERM during that commit stops the uploads (exit 128 + the signal) and keeps
    the outputs not uploaded in the run directory, named on stderr. Mounts are undone on
    success, failure, Ctrl-C and SIGTERM. Every run writes a manifest (the files each
    input saw and each output committed, with ETags) under ~/.local/state/amlfs/runs/RUN_ID/.

    Exit status: COMMAND's; 1 when it succeeded but an output could not be committed (the
    failures listed); 127 if it is not found, 126 if it cannot be executed; 2 for bad usage.
    """
    refs, pins = pinned_inputs(app, pin) if pin else ([], {})
    refs += [parse_input(app, spec) for spec in inputs]
    outs = [parse_output(app, spec) for spec in outputs]
    names = [r.data_reference_name for r in refs] + [o.name for o in outs]
    check_placeholders(command, names)
    target = None
    if manifest_to:
        ds_config, path = app.location(manifest_to)
        target = (Datastore(Workspace(app.registry), ds_config), path)
    result = run_with_inputs(
        list(command),
        refs,
        outputs=outs,
        workdir=workdir,
        show_progress=progress,
        pins=pins,
        upload_on_failure=upload_on_failure,
        manifest_to=target,
        report=lambda line: click.echo(line, err=True),
    )
    sys.exit(result.returncode)
