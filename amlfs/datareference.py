"""DataReference: a path in a datastore and how a run gets it (mount or download)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .backends.base import normpath
from .errors import UsageError

if TYPE_CHECKING:
    from .workspace import Datastore

MODES = ("mount", "download")
ENV_PREFIXES = ("AZUREML_DATAREFERENCE_", "AMLFS_DATAREFERENCE_")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")


class DataReference:
    """A path on a datastore, materialised on the compute by mounting or downloading it.

    `str(ref)` is `$AZUREML_DATAREFERENCE_<name>`, as in Azure ML: wherever it appears in a run's
    arguments it is replaced by the local location.
    """

    def __init__(
        self,
        datastore: Datastore,
        data_reference_name: str | None = None,
        path_on_datastore: str | None = None,
        mode: str = "mount",
        path_on_compute: str | None = None,
        overwrite: bool = False,
    ):
        if mode not in MODES:
            raise UsageError(f"data reference mode must be 'mount' or 'download', not {mode!r}")
        self.datastore = datastore
        self.path_on_datastore = normpath(path_on_datastore)
        self.mode = mode
        self.path_on_compute = path_on_compute
        self.overwrite = overwrite
        if data_reference_name is None:
            # Stable: the same datastore and path always give the same name.
            data_reference_name = _slug(f"{datastore.name}_{self.path_on_datastore}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", data_reference_name):
            raise UsageError(
                f"data reference name {data_reference_name!r} must be letters, digits and '_'"
            )
        self.data_reference_name = data_reference_name

    def _with(self, **changes) -> DataReference:
        args = dict(
            datastore=self.datastore,
            data_reference_name=self.data_reference_name,
            path_on_datastore=self.path_on_datastore,
            mode=self.mode,
            path_on_compute=self.path_on_compute,
            overwrite=self.overwrite,
        )
        args.update(changes)
        return DataReference(**args)

    def as_mount(self, path_on_compute: str | None = None) -> DataReference:
        return self._with(mode="mount", path_on_compute=path_on_compute or self.path_on_compute)

    def as_download(
        self, path_on_compute: str | None = None, overwrite: bool = False
    ) -> DataReference:
        return self._with(
            mode="download",
            path_on_compute=path_on_compute or self.path_on_compute,
            overwrite=overwrite,
        )

    def path(
        self, path: str | None = None, data_reference_name: str | None = None
    ) -> DataReference:
        joined = "/".join(p for p in (self.path_on_datastore, normpath(path)) if p)
        return DataReference(
            self.datastore,
            data_reference_name,
            joined,
            self.mode,
            self.path_on_compute,
            self.overwrite,
        )

    @property
    def location(self) -> str:
        """`DATASTORE:PATH`, the form the CLI takes."""
        return f"{self.datastore.name}:{self.path_on_datastore}"

    def env_names(self) -> list[str]:
        return [p + self.data_reference_name for p in ENV_PREFIXES]

    def __str__(self) -> str:
        return "$" + ENV_PREFIXES[0] + self.data_reference_name

    def __repr__(self) -> str:
        return (
            f"DataReference(datastore={self.datastore.name!r}, "
            f"data_reference_name={self.data_reference_name!r}, "
            f"path_on_datastore={self.path_on_datastore!r}, mode={self.mode!r}, "
            f"path_on_compute={self.path_on_compute!r}, overwrite={self.overwrite!r})"
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataReference) and repr(self) == repr(other)

    def __hash__(self) -> int:
        return hash(repr(self))
