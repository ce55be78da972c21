"""Errors users see: each carries a one-line message and the CLI exit code it maps to."""

from __future__ import annotations


class AmlfsError(Exception):
    """A failure with a clear one-line message. The CLI prints it and exits with `exit_code`."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(AmlfsError):
    """Bad input: unknown datastore, bad URI, bad option values, bad mountpoint (exit 2)."""

    exit_code = 2


class RegistryError(UsageError):
    """The registry file is missing a field, malformed, or unsafe (exit 2)."""
