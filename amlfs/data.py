"""`from amlfs.data import OutputFileDatasetConfig`: a run's output as in the Azure ML SDK v1
(`azureml.data.OutputFileDatasetConfig`), committed by amlfs.outputs."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .errors import UsageError
from .outputs import ENV_PREFIXES, NAME_RE, Output

if TYPE_CHECKING:
    from .workspace import Datastore

#: the SDK's destination when none is given (on the workspace's default datastore)
DEFAULT_PATH = "dataset/{run-id}/{output-name}"

__all__ = ["OutputFileDatasetConfig"]


class OutputFileDatasetConfig:
    """Where a run writes an output and how it gets there.

    `destination=(datastore, 'path/{run-id}')`: {run-id} and {output-name} are replaced when the
    run starts (default: the default datastore, 'dataset/{run-id}/{output-name}'). Pass it in a
    run's arguments or script_params (it becomes the local directory) or in `outputs=`.
    `.as_upload(overwrite=False, source_globs=None)`: written to a local directory, uploaded when
    the script exits (also when it fails). `.as_mount()`: the destination mounted writable
    (`amlfs mount --rw`). Unlike the SDK, upload is the default mode.
    """

    def __init__(
        self,
        name: str | None = None,
        destination: tuple[Datastore, str | None] | None = None,
        source: str | None = None,
        partition_format: str | None = None,
    ):
        if partition_format is not None:
            raise UsageError("partition_format is not supported by amlfs outputs")
        if name is None:
            name = "output_" + secrets.token_hex(4)
        if not NAME_RE.fullmatch(name):
            raise UsageError(f"output name {name!r} must be letters, digits and '_'")
        if destination is not None and (
            not isinstance(destination, (tuple, list)) or len(destination) != 2
        ):
            raise UsageError("destination must be a tuple (datastore, path)")
        self.name = name
        self.destination = tuple(destination) if destination is not None else None
        self.source = source
        self.mode = "upload"
        self.overwrite = False
        self.source_globs: tuple[str, ...] = ()

    def _copy(self, **changes) -> OutputFileDatasetConfig:
        new = OutputFileDatasetConfig(self.name, self.destination, self.source)
        new.mode, new.overwrite, new.source_globs = self.mode, self.overwrite, self.source_globs
        for key, value in changes.items():
            setattr(new, key, value)
        return new

    def as_mount(self, disable_metadata_cache: bool = False) -> OutputFileDatasetConfig:
        """Write through a writable mount of the destination (rw_mount)."""
        return self._copy(mode="rw_mount")

    def as_upload(
        self, overwrite: bool = False, source_globs: Sequence[str] | None = None
    ) -> OutputFileDatasetConfig:
        """Write locally; upload when the run ends. overwrite=False: a file that already exists
        at the destination is not replaced, and the run reports it as a failure.
        source_globs: only the files matching these globs are uploaded."""
        if isinstance(source_globs, str):
            source_globs = [source_globs]
        return self._copy(
            mode="upload", overwrite=overwrite, source_globs=tuple(source_globs or ())
        )

    def output(self) -> Output:
        """The output as amlfs runs commit it."""
        if self.destination is None:
            from .workspace import Workspace

            datastore, path = Workspace.from_config().get_default_datastore(), DEFAULT_PATH
        else:
            datastore, path = self.destination
        return Output(
            self.name,
            datastore,
            path or "",
            mode=self.mode,
            overwrite=self.overwrite,
            source_globs=self.source_globs,
            source=self.source,
        )

    def __str__(self) -> str:
        return "$" + ENV_PREFIXES[0] + self.name

    def __repr__(self) -> str:
        where = (
            "default datastore"
            if self.destination is None
            else (f"{self.destination[0].name}:{self.destination[1] or ''}")
        )
        return (
            f"OutputFileDatasetConfig(name={self.name!r}, destination={where!r},"
            f" mode={self.mode!r}, overwrite={self.overwrite!r})"
        )
