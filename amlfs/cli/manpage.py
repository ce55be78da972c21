"""The amlfs(1) man page, generated from the click commands (their help, options, examples):
`python -m amlfs.cli.manpage > amlfs.1`; scripts/setup.sh installs it."""

from __future__ import annotations

import datetime as dt
import sys
from importlib.metadata import version

import click

from . import main


def _roff(text: str) -> str:
    """Escape text for roff: backslashes, and a leading '.' or "'" that would be a request."""
    out = []
    for line in text.replace("\\", "\\e").splitlines():
        out.append("\\&" + line if line.startswith((".", "'")) else line)
    return "\n".join(out)


def _paragraphs(text: str) -> str:
    """click help text to roff: '\\b' blocks verbatim (.nf), other paragraphs filled."""
    out = []
    for block in text.strip().split("\n\n"):
        if block.lstrip().startswith("\b"):
            body = block.split("\n", 1)[1] if "\n" in block else ""
            out += [
                ".PP",
                ".nf",
                _roff("\n".join(line.strip() for line in body.splitlines())),
                ".fi",
            ]
        else:
            out += [".PP", _roff(" ".join(line.strip() for line in block.splitlines()))]
    return "\n".join(out)


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name in sorted(group.commands):
        cmd = group.commands[name]
        if cmd.hidden:
            continue
        out.append((f"{prefix} {name}", cmd))
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix} {name}")
    return out


def _section(path: str, cmd: click.Command, ctx: click.Context) -> str:
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    lines = [f'.SS "{path}"', f".B {path}", _roff(usage)]
    if cmd.help:
        lines.append(_paragraphs(cmd.help.split("\f")[0]))
    for param in cmd.params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        lines += [".TP", f".B {_roff(opts)}", _roff(help_text)]
    if cmd.epilog:
        lines.append(_paragraphs(cmd.epilog))
    return "\n".join(lines)


def render() -> str:
    """The whole page: the root command, then every subcommand, each with its examples."""
    root = click.Context(main, info_name="amlfs")
    today = dt.date.today().isoformat()
    head = [
        f'.TH AMLFS 1 "{today}" "amlfs {version("amlfs")}" "User Commands"',
        ".SH NAME",
        "amlfs \\- " + _roff((main.help or "").split("\n")[0].partition(": ")[2]),
        ".SH SYNOPSIS",
        ".B amlfs",
        "[\\-\\-registry PATH] [\\-\\-debug] COMMAND [ARGS]...",
        ".SH DESCRIPTION",
        _paragraphs((main.help or "").split("\n", 1)[1] if "\n" in (main.help or "") else ""),
        ".SH GLOBAL OPTIONS",
    ]
    for param in main.params:
        record = param.get_help_record(root)
        if record:
            head += [".TP", f".B {_roff(record[0])}", _roff(record[1])]
    head += [".SH COMMANDS"]
    sections = []
    main.load_all()
    for path, cmd in _commands(main, "amlfs"):
        ctx = click.Context(cmd, info_name=path, parent=root)
        sections.append(_section(path, cmd, ctx))
    tail = [
        ".SH EXIT STATUS",
        "0 success; 1 a runtime failure (auth, network, a service error, some files failed);",
        "2 bad usage, an unknown datastore, a bad or missing registry, or a path that does not",
        "exist. \\fBamlfs run\\fR exits with its command's status (127 not found, 126 not",
        "executable).",
        ".SH FILES",
        ".TP",
        ".I ~/.config/amlfs/datastores.yaml",
        "The registry ($XDG_CONFIG_HOME; --registry or $AMLFS_REGISTRY name another).",
        ".TP",
        ".I ~/.local/state/amlfs/logs/",
        "Mount daemon logs ($XDG_STATE_HOME), one per mountpoint.",
        ".SH SHELL COMPLETION",
        'eval "$(_AMLFS_COMPLETE=bash_source amlfs)" in ~/.bashrc (zsh_source, fish_source).',
    ]
    return "\n".join([*head, *sections, *tail]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
