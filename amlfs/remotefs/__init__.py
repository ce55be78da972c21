"""amlfs datastores as an fsspec filesystem: `azureml://datastores/NAME/paths/PATH` and
`amlfs://NAME/PATH` (registered by entry point; needs the `amlfs[fsspec]` extra).

Importing this package imports neither trio nor pyfuse3: it is loaded inside pandas, pyarrow and
Dask worker processes that have no FUSE mount.
"""

from __future__ import annotations

from .filesystem import AmlfsFileSystem, AzureMLFileSystem

__all__ = ["AmlfsFileSystem", "AzureMLFileSystem"]
