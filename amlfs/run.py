"""Training runs on this machine: materialise DataReferences (mount or download), run a command
with their locations in its arguments and environment, and always clean up the mounts."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .datareference import DataReference
from .errors import AmlfsError, UsageError

log = logging.getLogger(__name__)

MOUNT_TIMEOUT = 120


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


def _amlfs_cli(registry_path: str) -> list[str]:
    # A registry never saved holds only the embedded default, which the child finds without one.
    named = ["--registry", registry_path] if os.path.exists(registry_path) else []
    return [sys.executable, "-m", "amlfs", *named]


def _mount(ref: DataReference, where: str) -> None:
    registry = str(ref.datastore.workspace.registry.path)
    os.makedirs(where, exist_ok=True)
    cmd = _amlfs_cli(registry) + ["mount", ref.location, where]
    # Without --registry (a registry never saved), $AMLFS_REGISTRY must not name a missing file.
    env = {k: v for k, v in os.environ.items() if k != "AMLFS_REGISTRY" or "--registry" in cmd}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=MOUNT_TIMEOUT, env=env)
    if p.returncode != 0:
        message = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "mount failed"
        message = message.removeprefix("amlfs: error: ")
        err = UsageError if p.returncode == 2 else AmlfsError
        raise err(f"input {ref.data_reference_name}: {message}")


def _unmount(where: str) -> None:
    # A plain fusermount3 -u first; lazy as the fallback so that a busy mount never lingers.
    for args in (["-u"], ["-u", "-z"]):
        p = subprocess.run(["fusermount3", *args, where], capture_output=True, text=True)
        if p.returncode == 0:
            return
    log.warning("could not unmount %s: %s", where, p.stderr.strip())


def _download(ref: DataReference, where: str, show_progress: bool | None) -> None:
    from .stage import stage

    backend = ref.datastore.backend()
    try:
        result = stage(backend, ref.path_on_datastore, where, show_progress=show_progress)
    finally:
        backend.close()
    if result.failed:
        names = ", ".join(p for p, _ in result.failed[:5])
        raise AmlfsError(
            f"input {ref.data_reference_name}: {len(result.failed)} files failed to download ({names})"
        )


@contextlib.contextmanager
def materialize(
    refs: Sequence[DataReference], rundir: RunDir, show_progress: bool | None = None
) -> Iterator[dict[str, str]]:
    """Mount or download each reference; yield {name: local path}; unmount on every way out."""
    names = [r.data_reference_name for r in refs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(f"two inputs share the name {sorted(dup)[0]!r}: give each its own name")
    mounted: list[str] = []
    try:
        locations: dict[str, str] = {}
        for ref in refs:
            where = rundir.location_for(ref)
            if ref.mode == "mount":
                _mount(ref, where)
                mounted.append(where)
            else:
                _download(ref, where, show_progress)
            locations[ref.data_reference_name] = where
            log.info("input %s: %s at %s", ref.data_reference_name, ref.mode, where)
        yield locations
    finally:
        for where in reversed(mounted):
            _unmount(where)
        if rundir.owned:
            shutil.rmtree(rundir.path, ignore_errors=True)


def substitute(
    args: Sequence[str], refs: Sequence[DataReference], locations: Mapping[str, str]
) -> list[str]:
    """Replace `{NAME}` and `$AZUREML_DATAREFERENCE_NAME` in each argument by its location."""
    out = []
    for arg in args:
        for ref in refs:
            loc = locations[ref.data_reference_name]
            arg = arg.replace("{" + ref.data_reference_name + "}", loc).replace(str(ref), loc)
        out.append(arg)
    return out


def environment(
    refs: Sequence[DataReference], locations: Mapping[str, str], extra: Mapping[str, str] | None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    for ref in refs:
        for name in ref.env_names():
            env[name] = locations[ref.data_reference_name]
    return env


@dataclass
class RunResult:
    returncode: int
    locations: dict[str, str] = field(default_factory=dict)


def run_with_inputs(
    command: Sequence[str],
    refs: Sequence[DataReference],
    *,
    workdir: str | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    show_progress: bool | None = None,
) -> RunResult:
    """Materialise `refs`, run `command` (arguments substituted), return its exit status.

    SIGTERM and SIGINT are passed on to the command; whatever happens, mounts are undone before
    this returns. A command killed by a signal gives 128 + the signal number, as a shell does.
    """
    if not command:
        raise UsageError("no command to run")
    child: list[subprocess.Popen] = []

    def on_signal(signum, _frame):
        if child:
            with contextlib.suppress(ProcessLookupError):
                child[0].send_signal(signum)
        else:
            raise Terminated(signum)

    old = {}
    if threading.current_thread() is threading.main_thread():
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rundir = RunDir.create(workdir)
        with materialize(refs, rundir, show_progress) as locations:
            argv = substitute(command, refs, locations)
            log.info("running %s", argv)
            try:
                child.append(subprocess.Popen(argv, cwd=cwd, env=environment(refs, locations, env)))
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
            rc = child[0].wait()
            return RunResult(128 - rc if rc < 0 else rc, dict(locations))
    except Terminated as t:
        signum = t.args[0]
        return RunResult(128 + signum)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
