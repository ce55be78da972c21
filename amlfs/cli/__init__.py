"""The `amlfs` command line: parses, calls the library, prints. Subcommands live in sibling
modules, each registering its commands on `main` when it is imported: `main` imports a command's
module when that command runs (common.COMMAND_MODULES)."""

from __future__ import annotations

from .common import main

__all__ = ["main"]
