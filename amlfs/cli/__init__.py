"""The `amlfs` command line: parses, calls the library, prints. Subcommands live in sibling
modules, each registering its commands on `main`."""

from __future__ import annotations

# Importing the command modules registers their commands on `main`.
from . import browse, cache, csi, datastore, logs, manifest, mount, run, stage, transfer  # noqa: F401
from .common import main

__all__ = ["main"]
