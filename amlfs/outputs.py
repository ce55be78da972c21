"""A run's outputs: where the command writes them (a local directory uploaded when it exits, or
a writable mount of the destination) and how they are committed, with every failure named.

`upload`: the directory is uploaded after the command exits, also when it failed (unless told
not to): its partial outputs (logs, the last checkpoint) often matter. `rw_mount`: the
destination is mounted with `amlfs mount --rw` for the command's lifetime; unmounting it, and its
daemon finishing its write-back, is the commit.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .backends.base import normpath
from .backends.errors import BackendError
from .errors import AmlfsError, UsageError
from .manifest import FileRecord, OutputRecord, record_listing

if TYPE_CHECKING:
    from .workspace import Datastore

log = logging.getLogger(__name__)

MODES = ("upload", "rw_mount")
ENV_PREFIXES = ("AZUREML_OUTPUT_", "AMLFS_OUTPUT_")
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: the SDK's placeholders in an output's destination path
RUN_ID = "{run-id}"
OUTPUT_NAME = "{output-name}"


@dataclass(frozen=True)
class Output:
    """Where an output goes: `path` on `datastore` (may hold {run-id} and {output-name})."""

    name: str
    datastore: Datastore
    path: str = ""
    mode: str = "upload"
    overwrite: bool = True
    source_globs: tuple[str, ...] = ()
    #: upload mode: the local directory the command writes (default: one per run and output)
    source: str | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise UsageError(f"output name {self.name!r} must be letters, digits and '_'")
        if self.mode not in MODES:
            raise UsageError(f"output mode must be 'upload' or 'rw_mount', not {self.mode!r}")

    def destination(self, run_id: str) -> str:
        return normpath(self.path.replace(RUN_ID, run_id).replace(OUTPUT_NAME, self.name))

    def env_names(self) -> list[str]:
        return [p + self.name for p in ENV_PREFIXES]

    def __str__(self) -> str:
        return "$" + ENV_PREFIXES[0] + self.name


@dataclass
class OutputResult:
    """What became of one output; `record` goes into the run's manifest."""

    output: Output
    record: OutputRecord
    summary: str = ""

    @property
    def failures(self) -> list[str]:
        return self.record.failures


@dataclass
class Prepared:
    """The outputs of one run, ready for the command: name -> local location."""

    outputs: list[Output]
    run_id: str
    locations: dict[str, str] = field(default_factory=dict)
    mounted: dict[str, str] = field(default_factory=dict)  # name -> mountpoint, not yet committed


def prepare(outputs: Sequence[Output], rundir: str, run_id: str, taken: Sequence[str]) -> Prepared:
    """Create each output's local directory or writable mount. On failure, what was mounted
    is undone before raising."""
    names = [o.name for o in outputs]
    for name in names:
        if names.count(name) > 1 or name in taken:
            raise UsageError(f"two inputs or outputs share the name {name!r}: give each its own")
    prepared = Prepared(list(outputs), run_id)
    try:
        for out in outputs:
            where = os.path.join(rundir, "outputs", out.name)
            if out.mode == "upload" and out.source:
                where = os.path.join(rundir, os.path.expanduser(out.source))
            if out.mode == "rw_mount":
                _mount_rw(out, where, run_id)
                prepared.mounted[out.name] = where
            else:
                os.makedirs(where, exist_ok=True)
                with os.scandir(where) as it:
                    if next(it, None) is not None:
                        # its files would be uploaded as this run's
                        raise UsageError(
                            f"output {out.name}: its directory {where} is not empty (left by an"
                            " earlier run?): empty it or use another --workdir"
                        )
            prepared.locations[out.name] = where
            log.info("output %s: %s at %s", out.name, out.mode, where)
    except BaseException:
        release(prepared)
        raise
    return prepared


def _mount_rw(out: Output, where: str, run_id: str) -> None:
    from .runmounts import mount

    dest = out.destination(run_id)  # the writable mount makes it when it is new
    registry = str(out.datastore.workspace.registry.path)
    mount(registry, f"{out.datastore.name}:{dest}", where, f"output {out.name}", extra=["--rw"])


def release(prepared: Prepared) -> None:
    """Undo writable mounts that were not committed (a run that never started its command)."""
    from .runmounts import unmount

    for where in prepared.mounted.values():
        unmount(where)
    prepared.mounted.clear()


def commit(
    prepared: Prepared,
    *,
    upload: bool,
    show_progress: bool | None = None,
    report: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> list[OutputResult]:
    """Commit every output (upload mode only when `upload`); never raises for one output's
    failure: each result lists its own. Once `stop` is set, uploads start no further file and
    later outputs are not committed (each records why)."""
    results = []
    for out in prepared.outputs:
        dest = out.destination(prepared.run_id)
        rec = OutputRecord(out.name, out.datastore.name, dest, out.mode)
        res = OutputResult(out, rec)
        try:
            if stop is not None and stop.is_set() and out.mode == "upload":
                rec.failures.append("not uploaded: interrupted")
            elif out.mode == "rw_mount":
                _commit_mount(prepared, out, res)
            elif upload:
                _commit_upload(prepared.locations[out.name], out, dest, res, show_progress, stop)
            else:
                res.summary = "not uploaded (the command failed and --no-upload-on-failure)"
        except (AmlfsError, BackendError, OSError) as e:
            rec.failures.append(str(e))
        results.append(res)
        if report:
            where = f"{out.datastore.name}:{dest}"
            report(f"amlfs: output {out.name} -> {where}: {res.summary or 'failed'}")
            for why in rec.failures[:20]:
                report(f"amlfs: output {out.name}: failed: {why}")
            if len(rec.failures) > 20:
                report(f"amlfs: output {out.name}: ... and {len(rec.failures) - 20} more")
    return results


def _commit_mount(prepared: Prepared, out: Output, res: OutputResult) -> None:
    from .runmounts import unmount_and_wait

    where = prepared.mounted.pop(out.name)
    why = unmount_and_wait(where)
    if why:
        res.record.failures.append(why)
        return
    backend = out.datastore.backend()
    try:
        res.record.files = record_listing(backend, res.record.path)
    finally:
        backend.close()
    res.summary = f"committed {len(res.record.files)} files"


def _local_files(src: str) -> set[str]:
    out = set()
    for dirpath, _, filenames in os.walk(src):
        for name in filenames:
            out.add(os.path.relpath(os.path.join(dirpath, name), src).replace(os.sep, "/"))
    return out


def _commit_upload(
    local: str,
    out: Output,
    dest: str,
    res: OutputResult,
    show_progress: bool | None,
    stop: threading.Event | None = None,
) -> None:
    from .filters import PathFilter
    from .outcome import TransferStopped
    from .progress import summary_line
    from .transfer import upload_dir

    if not os.path.isdir(local):
        res.record.failures.append(f"its directory {local} is gone: nothing to upload")
        return
    path_filter = PathFilter(tuple(out.source_globs))
    backend = out.datastore.backend()
    try:
        try:
            result = upload_dir(
                backend,
                local,
                dest,
                overwrite=out.overwrite,
                show_progress=show_progress,
                path_filter=path_filter,
                stop=stop,
            )
        except TransferStopped as e:
            result = e.result
            res.record.failures.append(f"stopped: {e}")
        res.summary = summary_line(result, "uploaded")
        res.record.failures += [f"{name}: {why}" for name, why in result.failed]
        if result.skipped and not out.overwrite:
            res.record.failures.append(
                f"{result.skipped} file(s) already exist at the destination and were not replaced"
                " (overwrite=False)"
            )
        failed = {name for name, _ in result.failed}
        mine = {rel for rel in _local_files(local) if path_filter.keeps(rel)} - failed
        base = dest + "/" if dest else ""
        res.record.files = [
            f
            for f in _listing_or_empty(backend, dest)
            if f.path.startswith(base) and f.path[len(base) :] in mine
        ]
    finally:
        backend.close()


def _listing_or_empty(backend, dest: str) -> list[FileRecord]:
    from .backends.errors import NotFound

    try:
        return record_listing(backend, dest)
    except NotFound:
        return []
