"""`amlfs manifest verify MANIFEST`: does each input of a run manifest still match its datastore?"""

from __future__ import annotations

import sys

import click

from .common import AppContext, examples, main, pass_app


@main.group(
    "manifest",
    epilog=examples(
        "amlfs manifest verify ~/.local/state/amlfs/runs/RUN_ID/manifest.json",
        "amlfs manifest show --files run.json",
    ),
)
def manifest_group() -> None:
    """Run manifests: the files (with ETags) a run's inputs saw and its outputs committed."""


@manifest_group.command(
    "verify",
    epilog=examples(
        "amlfs manifest verify ~/.local/state/amlfs/runs/RUN_ID/manifest.json",
        "amlfs manifest verify run.json || amlfs run --pin run.json -- python train.py",
    ),
)
@click.argument("manifest", type=click.Path(dir_okay=False))
@pass_app
def verify_cmd(app: AppContext, manifest: str) -> None:
    """Check every input of MANIFEST against its datastore, from listings (no data is read).

    Prints one line per difference: `changed INPUT PATH (ETag old -> new, ...)`, `missing INPUT
    PATH`, `added INPUT PATH`, then a summary. Exit 0 when every input still matches, 1 when
    anything differs.
    """
    from ..manifest import Manifest, verify

    m = Manifest.load(manifest)
    diffs = verify(m, app.registry)
    for d in diffs:
        detail = f" ({d.detail})" if d.detail else ""
        click.echo(f"{d.kind} {d.input} {d.path}{detail}")
    files = sum(len(r.files) for r in m.inputs)
    if diffs:
        counts = {k: sum(d.kind == k for d in diffs) for k in ("changed", "missing", "added")}
        summary = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
        click.echo(
            f"amlfs: error: run {m.run_id}: inputs differ from the manifest: {summary}", err=True
        )
        sys.exit(1)
    click.echo(
        f"amlfs: run {m.run_id}: {len(m.inputs)} input(s), {files} file(s) match the manifest",
        err=True,
    )


@manifest_group.command(
    "show",
    epilog=examples("amlfs manifest show run.json", "amlfs manifest show --files run.json"),
)
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--files", is_flag=True, help="Every file, with its size and ETag.")
def show_cmd(manifest: str, files: bool) -> None:
    """Summarise MANIFEST: the run, its command and status, its inputs and outputs."""
    from ..manifest import Manifest

    m = Manifest.load(manifest)
    click.echo(f"run      {m.run_id}")
    click.echo(f"command  {' '.join(m.command)}")
    click.echo(f"start    {m.start}\nend      {m.end}\nstatus   {m.exit_status}")
    for kind, recs in (("input", m.inputs), ("output", m.outputs)):
        for r in recs:
            size = sum(f.size for f in r.files)
            click.echo(
                f"{kind:<8} {r.name} {r.mode} {r.datastore}:{r.path}"
                f" ({len(r.files)} files, {size} bytes)"
            )
            if files:
                for f in r.files:
                    click.echo(f"  {f.path}  {f.size}  {f.etag}")


def pinned_source(app: AppContext, manifest_file: str, source: str):
    """The datastore, path and backend wrapper of the manifest's input named (or located) by
    `source`."""
    from ..manifest import Manifest, datastore_of, pinned_backend

    m = Manifest.load(manifest_file)
    rec = m.find_input(source, app.registry)
    ds = datastore_of(rec, app.registry)
    return ds, rec.path, lambda backend: pinned_backend(backend, rec, f"manifest {manifest_file}")
