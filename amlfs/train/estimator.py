"""Estimator: the Azure ML SDK's way to run a training script with datastore inputs, here on the
local compute (this machine)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..datareference import DataReference
from ..errors import UsageError
from ..run import RunResult, run_with_inputs

SUPPORTED_COMPUTE = ("local",)


@dataclass
class Run:
    """A finished run (runs execute synchronously on the local compute)."""

    result: RunResult

    @property
    def returncode(self) -> int:
        return self.result.returncode

    def wait_for_completion(self, show_output: bool = True) -> Run:
        return self

    wait = wait_for_completion

    def get_status(self) -> str:
        return "Completed" if self.returncode == 0 else "Failed"


class Estimator:
    def __init__(
        self,
        source_directory: str,
        entry_script: str,
        script_params: Mapping[str, object] | None = None,
        inputs: Sequence[DataReference] | None = None,
        compute_target: object = "local",
        environment_variables: Mapping[str, str] | None = None,
        arguments: Sequence[object] | None = None,
        python: str | None = None,
        workdir: str | None = None,
    ):
        target = getattr(compute_target, "name", compute_target)
        if target not in SUPPORTED_COMPUTE:
            raise UsageError(
                f"compute target {target!r} is not supported: amlfs runs on this machine; "
                "use compute_target='local'"
            )
        self.source_directory = os.path.abspath(source_directory)
        script = os.path.join(self.source_directory, entry_script)
        if not os.path.isfile(script):
            raise UsageError(f"entry script {script} does not exist")
        self.entry_script = entry_script
        self.script_params = dict(script_params or {})
        self.arguments = list(arguments or [])
        self.environment_variables = dict(environment_variables or {})
        self.python = python or sys.executable
        self.workdir = workdir
        refs: dict[str, DataReference] = {}
        for value in [*self.script_params.values(), *self.arguments, *(inputs or [])]:
            if isinstance(value, DataReference):
                refs.setdefault(value.data_reference_name, value)
        self.inputs = list(refs.values())

    def _argv(self) -> list[str]:
        argv = [self.python, self.entry_script]
        for key, value in self.script_params.items():
            argv.append(str(key))
            if value is not None and value is not True:
                argv.append(str(value))
        argv.extend(str(a) for a in self.arguments)
        return argv

    def run(self, show_progress: bool | None = None) -> Run:
        result = run_with_inputs(
            self._argv(),
            self.inputs,
            workdir=self.workdir,
            cwd=self.source_directory,
            env=self.environment_variables,
            show_progress=show_progress,
        )
        return Run(result)

    submit = run
