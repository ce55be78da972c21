"""Training runs on this machine: materialise DataReferences (mount or download), prepare the
outputs (amlfs.outputs), run a command with their locations in its arguments and environment,
commit the outputs, write the run's manifest (amlfs.manifest), and always clean up the mounts."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import outputs as outs
from .backends.errors import BackendError, NotFound
from .datareference import DataReference
from .errors import AmlfsError, UsageError
from .manifest import InputRecord, Manifest, pinned_backend, record_listing
from .outputs import Output, OutputResult
from .runmounts import mount, unmount

if TYPE_CHECKING:
    from .workspace import Datastore

log = logging.getLogger(__name__)

#: an input pinned to a manifest: (the manifest's file, its record of the input)
Pin = tuple[str, InputRecord]


class Terminated(Exception):
    """SIGTERM arrived while inputs were being materialised."""


class CommandNotFound(AmlfsError):
    """The command to run does not exist (a shell's 127)."""

    exit_code = 127


class CommandNotExecutable(AmlfsError):
    """The command exists but cannot be executed (a shell's 126)."""

    exit_code = 126


@dataclass
class RunDir:
    """Where a run's inputs go: a directory we created (and remove) or one the user named."""

    path: str
    owned: bool

    @classmethod
    def create(cls, workdir: str | None) -> RunDir:
        if workdir:
            os.makedirs(workdir, exist_ok=True)
            return cls(os.path.abspath(workdir), owned=False)
        return cls(tempfile.mkdtemp(prefix="amlfs-run-"), owned=True)

    def location_for(self, ref: DataReference) -> str:
        if ref.path_on_compute:
            return os.path.join(self.path, os.path.expanduser(ref.path_on_compute))
        return os.path.join(self.path, "inputs", ref.data_reference_name)


def new_run_id() -> str:
    """A run's id, as Azure ML's: unique, sortable by start time, safe in paths."""
    return time.strftime("run_%Y%m%d_%H%M%S_", time.gmtime()) + secrets.token_hex(4)


def runs_dir() -> Path:
    """Where each run's manifest goes: $XDG_STATE_HOME/amlfs/runs/RUN_ID/, beside the logs."""
    from .logs import logs_dir

    return logs_dir().parent / "runs"


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def _download(
    ref: DataReference, rec: InputRecord, where: str, source: str, show_progress: bool | None
) -> None:
    from .stage import stage

    # Through the record: exactly the files listed (and recorded) at their listed ETags.
    backend = pinned_backend(ref.datastore.backend(), rec, source)
    try:
        result = stage(backend, ref.path_on_datastore, where, show_progress=show_progress)
    finally:
        backend.close()
    if result.failed:
        more = len(result.failed) - 3
        whys = "; ".join(why for _, why in result.failed[:3]) + (
            f"; and {more} more" if more > 0 else ""
        )
        raise AmlfsError(
            f"input {ref.data_reference_name}: {len(result.failed)} files failed to download: {whys}"
        )


def _record(ref: DataReference) -> InputRecord:
    backend = ref.datastore.backend()
    try:
        files = record_listing(backend, ref.path_on_datastore)
    except NotFound as e:
        raise UsageError(f"input {ref.data_reference_name}: {e}") from None
    except BackendError as e:
        raise AmlfsError(f"input {ref.data_reference_name}: {e}") from None
    finally:
        backend.close()
    return InputRecord(
        ref.data_reference_name, ref.datastore.name, ref.path_on_datastore, ref.mode, files
    )


@contextlib.contextmanager
def materialize(
    refs: Sequence[DataReference],
    rundir: RunDir,
    show_progress: bool | None = None,
    pins: Mapping[str, Pin] | None = None,
    records: list[InputRecord] | None = None,
) -> Iterator[dict[str, str]]:
    """Mount or download each reference; yield {name: local path}; unmount on every way out.

    Each input's files are recorded (appended to `records`) from one listing; a download takes
    exactly those files. An input named in `pins` is taken from its manifest record instead:
    no listing, and exactly its files at their recorded ETags.
    """
    pins = pins or {}
    names = [r.data_reference_name for r in refs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"two inputs share the name {sorted(dup)[0]!r}: give each its own name")
    mounted: list[str] = []
    try:
        locations: dict[str, str] = {}
        for ref in refs:
            where = rundir.location_for(ref)
            label = f"input {ref.data_reference_name}"
            pin = pins.get(ref.data_reference_name)
            rec = pin[1] if pin else _record(ref)
            rec = InputRecord(rec.name, rec.datastore, rec.path, ref.mode, rec.files)
            registry = str(ref.datastore.workspace.registry.path)
            if ref.mode == "mount" and pin:
                manifest = os.path.abspath(pin[0])
                mount(registry, rec.name, where, label, extra=["--manifest", manifest])
                mounted.append(where)
            elif ref.mode == "mount":
                mount(registry, ref.location, where, label)
                mounted.append(where)
            else:
                source = f"manifest {pin[0]}" if pin else "the run's listing"
                _download(ref, rec, where, source, show_progress)
            if records is not None:
                records.append(rec)
            locations[ref.data_reference_name] = where
            log.info("input %s: %s at %s", ref.data_reference_name, ref.mode, where)
        yield locations
    finally:
        for where in reversed(mounted):
            unmount(where)
        if rundir.owned:
            shutil.rmtree(rundir.path, ignore_errors=True)


def _named(
    refs: Sequence[DataReference], outputs: Sequence[Output]
) -> list[tuple[str, str, list[str]]]:
    """(name, its `str()` form, its environment names) of every input and output, the longest
    names first (so that `$AZUREML_OUTPUT_m` is not replaced inside `$AZUREML_OUTPUT_model`)."""
    items = [(r.data_reference_name, str(r), r.env_names()) for r in refs]
    items += [(o.name, str(o), o.env_names()) for o in outputs]
    return sorted(items, key=lambda item: -len(item[0]))


def substitute(
    args: Sequence[str],
    refs: Sequence[DataReference],
    locations: Mapping[str, str],
    outputs: Sequence[Output] = (),
) -> list[str]:
    """Replace `{NAME}`, `$AZUREML_DATAREFERENCE_NAME` and `$AZUREML_OUTPUT_NAME` in each
    argument by the input's or output's location."""
    out = []
    for arg in args:
        for name, text, _ in _named(refs, outputs):
            loc = locations[name]
            arg = arg.replace("{" + name + "}", loc).replace(text, loc)
        out.append(arg)
    return out


def environment(
    refs: Sequence[DataReference],
    locations: Mapping[str, str],
    extra: Mapping[str, str] | None,
    outputs: Sequence[Output] = (),
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    for name, _, env_names in _named(refs, outputs):
        for var in env_names:
            env[var] = locations[name]
    return env


@dataclass
class RunResult:
    """`returncode`: the command's status, or 1 when it succeeded but an output (or the
    manifest) could not be committed; `failures` says what."""

    returncode: int
    locations: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    command_status: int | None = None
    outputs: list[OutputResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    manifest_path: str | None = None


def run_with_inputs(
    command: Sequence[str],
    refs: Sequence[DataReference],
    *,
    outputs: Sequence[Output] = (),
    workdir: str | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    show_progress: bool | None = None,
    run_id: str | None = None,
    pins: Mapping[str, Pin] | None = None,
    upload_on_failure: bool = True,
    manifest_to: tuple[Datastore, str] | None = None,
    report: Callable[[str], None] | None = None,
) -> RunResult:
    """Materialise `refs`, prepare `outputs`, run `command` (arguments substituted), commit
    the outputs, write the manifest; return the exit status (see RunResult).

    SIGTERM and SIGINT are passed on to the command; the outputs are committed after it ends
    (upload mode: also when it failed, unless not `upload_on_failure`); whatever happens,
    mounts are undone before this returns. A command killed by a signal gives 128 + the signal
    number, as a shell does. `report` is given the summary lines (the CLI prints them).

    While the outputs are committed, a first SIGINT/SIGTERM is answered with a message and the
    commit goes on (a terminal's Ctrl-C, or a process group's SIGTERM, reaches the command and
    amlfs at once: that one must not cut the upload short); a second one stops the upload, and
    the run directory, with the outputs that were not uploaded, is kept and named.
    """
    if not command:
        raise UsageError("no command to run")
    names = [r.data_reference_name for r in refs] + [o.name for o in outputs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UsageError(f"two inputs or outputs share the name {dup[0]!r}: give each its own")
    run_id = run_id or new_run_id()
    manifest = Manifest(run_id, list(command), start=_utc(time.time()))
    result = RunResult(1, run_id=run_id, manifest=manifest)
    child: list[subprocess.Popen] = []
    committing: list[int] = []  # signals received while committing the outputs
    stop = threading.Event()  # set by the second of them: the uploads start no further file

    def on_signal(signum, _frame):
        if child and child[0].returncode is not None:
            committing.append(signum)
            if len(committing) > 1:
                stop.set()
                return
            if report:
                report("amlfs: committing the outputs; interrupt again to stop (the outputs"
                       " not uploaded are then kept locally)")  # fmt: skip
        elif child:
            with contextlib.suppress(ProcessLookupError):
                child[0].send_signal(signum)
        else:
            raise Terminated(signum)

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rundir = RunDir.create(workdir)
        with materialize(refs, rundir, show_progress, pins, manifest.inputs) as locations:
            taken = [r.data_reference_name for r in refs]
            prepared = outs.prepare(outputs, rundir.path, run_id, taken)
            try:
                locations = {**locations, **prepared.locations}
                argv = substitute(command, refs, locations, outputs)
                log.info("run %s: running %s", run_id, argv)
                child.append(_start(argv, cwd, environment(refs, locations, env, outputs)))
            except BaseException:
                outs.release(prepared)
                raise
            rc = child[0].wait()
            result.returncode = result.command_status = 128 - rc if rc < 0 else rc
            result.locations = dict(locations)
            owned, rundir.owned = rundir.owned, False  # the outputs' only copy until committed
            result.outputs = outs.commit(
                prepared,
                upload=result.returncode == 0 or upload_on_failure,
                show_progress=show_progress,
                report=report,
                stop=stop,
            )
            if stop.is_set():
                result.returncode = 128 + committing[-1]
                if report:
                    report(f"amlfs: the output commit was stopped; kept under {rundir.path}")
            elif owned and any(o.failures and o.output.mode == "upload" for o in result.outputs):
                if report:
                    report(f"amlfs: the outputs that failed to upload are kept under {rundir.path}")
            else:
                rundir.owned = owned
    except Terminated as t:
        result.returncode = 128 + t.args[0]
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    manifest.end = _utc(time.time())
    manifest.exit_status = result.command_status
    manifest.outputs = [o.record for o in result.outputs]
    result.failures = [f"output {o.output.name}: {f}" for o in result.outputs for f in o.failures]
    _write_manifest(result, manifest_to, report)
    if result.returncode == 0 and result.failures:  # (a stopped commit kept 128 + signal)
        result.returncode = 1
        if report:
            report(f"amlfs: error: the command succeeded but {len(result.failures)} output"
                   " failure(s) happened (listed above)")  # fmt: skip
    return result


def _start(argv: list[str], cwd: str | None, env: dict[str, str]) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, cwd=cwd, env=env)
    except FileNotFoundError:
        raise CommandNotFound(
            f"{argv[0]}: command not found (check the name, or give its full path)"
        ) from None
    except PermissionError:
        raise CommandNotExecutable(
            f"{argv[0]}: permission denied: not executable (chmod +x it, or run it"
            " through its interpreter)"
        ) from None
    except OSError as e:
        raise CommandNotExecutable(f"cannot run {argv[0]}: {e.strerror}") from None


def _write_manifest(
    result: RunResult,
    manifest_to: tuple[Datastore, str] | None,
    report: Callable[[str], None] | None,
) -> None:
    """The manifest beside the run's state, and on `manifest_to`; a failure to write either is
    one of the run's failures."""
    from .manifest import publish

    assert result.manifest is not None
    path = runs_dir() / result.run_id / "manifest.json"
    try:
        result.manifest.save(str(path))
        result.manifest_path = str(path)
        if report:
            report(f"amlfs: run {result.run_id}: manifest {path}")
    except OSError as e:
        result.failures.append(f"manifest: cannot write {path}: {e.strerror}")
    if manifest_to is not None:
        ds, where = manifest_to
        try:
            dest = publish(result.manifest, ds.config, where)
            if report:
                report(f"amlfs: run {result.run_id}: manifest also at {ds.name}:{dest}")
        except (AmlfsError, BackendError) as e:
            result.failures.append(f"manifest: cannot write it to {ds.name}:{where}: {e}")
