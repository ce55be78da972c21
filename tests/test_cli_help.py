"""Help teaches the tool: every command's --help ends with examples, every option says what it
does, and the man page generated from the same help covers every command and renders cleanly."""

from __future__ import annotations

import shutil
import subprocess

import click
import pytest
from click.testing import CliRunner

from amlfs.cli import main
from amlfs.cli.common import COMMAND_MODULES
from amlfs.cli.manpage import render

main.load_all()


def _all(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _all(cmd, (*path, name))
        else:
            out.append((*path, name))
    return out


COMMANDS = _all(main)


def _command(path: tuple[str, ...]) -> click.Command:
    cmd: click.Command = main
    for name in path:
        cmd = cmd.commands[name]  # type: ignore[attr-defined]
    return cmd


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "amlfs")
def test_help_ends_with_examples_and_describes_every_option(path):
    r = CliRunner().invoke(main, [*path, "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    lines = [line.strip() for line in r.output.rstrip().splitlines()]
    tail = lines[lines.index("Examples:") + 1 :]
    assert 2 <= len(tail) <= 3 and all(line.startswith("amlfs") for line in tail), r.output
    cmd = _command(path)
    undocumented = [
        p.opts[0] for p in cmd.params if isinstance(p, click.Option) and not p.hidden and not p.help
    ]
    assert undocumented == []


def test_each_command_is_loaded_from_the_module_that_defines_it():
    """`main` imports a command's module when the command runs: the map must name every
    command, and the right module (a new command missing from it would never be found)."""
    defined = {
        name: cmd.callback.__module__.rsplit(".", 1)[-1]
        for name, cmd in main.commands.items()
        if cmd.callback is not None
    }
    assert defined == COMMAND_MODULES
    assert main.list_commands(click.Context(main)) == sorted(COMMAND_MODULES)


def test_man_page_covers_every_command_and_renders_cleanly(tmp_path):
    page = render()
    for path in COMMANDS[1:]:
        assert f'.SS "amlfs {" ".join(path)}"' in page
    assert "_AMLFS_COMPLETE" in page and ".SH EXIT STATUS" in page
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    f = tmp_path / "amlfs.1"
    f.write_text(page)
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(f)], capture_output=True)
    assert r.returncode == 0 and r.stderr == b"", r.stderr


def test_completion_script_is_generated():
    r = subprocess.run(
        ["amlfs"], env={"_AMLFS_COMPLETE": "bash_source", "PATH": _bin_path()},
        capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0 and "_amlfs_completion" in r.stdout, r.stderr


def _bin_path() -> str:
    import os
    import sys

    return os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
