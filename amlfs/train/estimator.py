"""Estimator: the Azure ML SDK's way to run a training script with datastore inputs and outputs,
here on the local compute (this machine)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..data import OutputFileDatasetConfig
from ..datareference import DataReference
from ..errors import UsageError
from ..outputs import Output
from ..run import RunResult, new_run_id, run_with_inputs

log = logging.getLogger(__name__)

SUPPORTED_COMPUTE = ("local",)


@dataclass
class Run:
    """A finished run (runs execute synchronously on the local compute)."""

    result: RunResult
    inputs: list[DataReference]
    outputs: list[Output]

    @property
    def id(self) -> str:
        return self.result.run_id

    @property
    def returncode(self) -> int:
        return self.result.returncode

    def wait_for_completion(self, show_output: bool = True) -> Run:
        return self

    wait = wait_for_completion

    def get_status(self) -> str:
        return "Completed" if self.returncode == 0 else "Failed"

    def get_details(self) -> dict[str, Any]:
        """As the SDK's: id, status, times, and where each input came from and output went."""
        m = self.result.manifest
        outputs = {o.output.name: o for o in self.result.outputs}
        return {
            "runId": self.id,
            "status": self.get_status(),
            "startTimeUtc": m.start if m else None,
            "endTimeUtc": m.end if m else None,
            "exitStatus": self.result.command_status,
            "inputs": [
                {
                    "name": r.data_reference_name,
                    "datastore": r.datastore.name,
                    "path": r.path_on_datastore,
                    "mode": r.mode,
                    "files": len(rec.files) if (rec := _record(m, r.data_reference_name)) else 0,
                }
                for r in self.inputs
            ],
            "outputs": [
                {
                    "name": o.name,
                    "datastore": o.datastore.name,
                    "path": o.destination(self.id),
                    "mode": o.mode,
                    "files": len(res.record.files) if (res := outputs.get(o.name)) else 0,
                    "failures": list(res.failures) if res else [],
                }
                for o in self.outputs
            ],
            "failures": list(self.result.failures),
            "manifest": self.result.manifest_path,
        }


def _record(manifest, name: str):
    for rec in manifest.inputs if manifest else []:
        if rec.name == name:
            return rec
    return None


class Estimator:
    def __init__(
        self,
        source_directory: str,
        entry_script: str,
        script_params: Mapping[str, object] | None = None,
        inputs: Sequence[DataReference] | None = None,
        outputs: Sequence[OutputFileDatasetConfig | Output] | None = None,
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
        outs: dict[str, OutputFileDatasetConfig | Output] = {}
        for value in [*self.script_params.values(), *self.arguments, *(outputs or [])]:
            if isinstance(value, (OutputFileDatasetConfig, Output)):
                outs.setdefault(value.name, value)
        self.outputs = [
            o.output() if isinstance(o, OutputFileDatasetConfig) else o for o in outs.values()
        ]

    def _argv(self) -> list[str]:
        argv = [self.python, self.entry_script]
        for key, value in self.script_params.items():
            argv.append(str(key))
            if value is not None and value is not True:
                argv.append(str(value))
        argv.extend(str(a) for a in self.arguments)
        return argv

    def run(self, show_progress: bool | None = None) -> Run:
        """Run the script here and now; outputs are committed and the manifest written before
        this returns (summaries logged at INFO, output failures at WARNING and in
        `get_details()`)."""
        result = run_with_inputs(
            self._argv(),
            self.inputs,
            outputs=self.outputs,
            workdir=self.workdir,
            cwd=self.source_directory,
            env=self.environment_variables,
            show_progress=show_progress,
            run_id=new_run_id(),
            report=log.info,
        )
        for failure in result.failures:
            log.warning("run %s: %s", result.run_id, failure)
        return Run(result, self.inputs, self.outputs)

    submit = run
