"""amlfs: Azure ML datastores as local directories.

The Python API follows the Azure ML SDK v1 datastore guide:

    from amlfs import Workspace, Datastore
    ws = Workspace.from_config()
    ds = ws.get_default_datastore()
    ds.upload(src_dir="data", target_path="data", overwrite=True, show_progress=True)
"""

from __future__ import annotations

from .errors import AmlfsError, UsageError
from .workspace import Datastore, Workspace

__all__ = ["AmlfsError", "Datastore", "UsageError", "Workspace"]
__version__ = "0.1.0"
