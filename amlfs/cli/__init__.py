"""The `amlfs` command line: parses, calls the library, prints. Subcommands live in sibling
modules, each registering its commands on `main`."""

from __future__ import annotations

from .common import main

# Importing the command modules registers their commands on `main`.
from . import datastore as _datastore  # noqa: E402,F401

__all__ = ["main"]

for _mod in ("transfer", "mount", "stage", "run"):
    try:
        __import__(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _e:  # a command module not written yet
        if _e.name != f"{__name__}.{_mod}":
            raise
