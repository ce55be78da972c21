"""`amlfs logs MOUNTPOINT`: print or follow the log of a mount's daemon (see amlfs/logs.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import click

from ..errors import AmlfsError, UsageError
from ..logs import FILE, JOURNAL, find_target, follow, journal_command, tail_lines
from .common import examples, main


@main.command("logs", epilog=examples("amlfs logs /mnt/data", "amlfs logs -n 50 -f /mnt/data"))
@click.argument("mountpoint", type=click.Path())
@click.option("-f", "--follow", "follow_", is_flag=True, help="Keep printing new lines (Ctrl-C).")
@click.option(
    "-n",
    "--lines",
    type=click.IntRange(0),
    default=None,
    help="Print only the last N lines (default: all that are kept).",
)
def logs(mountpoint: str, follow_: bool, lines: int | None) -> None:
    """Print the log of the daemon that mounts (or last mounted) MOUNTPOINT.

    A daemon logs to the journal when systemd runs it, to --log-file when given, else to
    $XDG_STATE_HOME/amlfs/logs/MOUNT.log (~/.local/state/amlfs/logs), rotated at 4 MiB with three
    old files kept. `amlfs mounts` shows where each mount logs.
    """
    where = os.path.realpath(os.path.abspath(os.path.expanduser(mountpoint)))
    target = find_target(where)
    if target is None:
        raise UsageError(
            f"no amlfs daemon has logged for {where}: mount it first (`amlfs mounts` lists mounts)"
        )
    if target.kind == JOURNAL:
        cmd = journal_command(target, follow=follow_, lines=lines)
        if shutil.which(cmd[0]) is None:
            raise AmlfsError(f"the mount at {where} logs to the journal, but journalctl is missing")
        sys.exit(subprocess.call(cmd))
    if target.kind != FILE or not target.path:
        raise AmlfsError(f"the daemon of {where} logs to the terminal it was started from")
    if not os.path.exists(target.path):
        raise AmlfsError(f"the log of {where}, {target.path}, does not exist (yet)")
    for line in tail_lines(target.path, lines):
        click.echo(line)
    if follow_:
        try:
            follow(target.path, click.echo)
        except KeyboardInterrupt:
            pass
