"""Where a mount daemon logs, and how `amlfs mounts` and `amlfs logs` find it again.

The daemon logs to the journal when systemd runs it (its stderr is the stream named by
$JOURNAL_STREAM), to stderr when that is a terminal (`amlfs mount -f` by hand), to --log-file when
given, else to a per-mount file under $XDG_STATE_HOME/amlfs/logs (~/.local/state/amlfs/logs),
rotated at LOG_BYTES with BACKUPS old files, removed after KEEP_DAYS unused. Each daemon records its choice in a small JSON file
beside the logs, keyed by the mountpoint, so that other commands can tell the user where to look.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import UsageError

log = logging.getLogger(__name__)

LOG_BYTES = 4 << 20
BACKUPS = 3
#: logs of mountpoints unused this long are removed when a daemon starts (temporary mountpoints)
KEEP_DAYS = 30
FILE, JOURNAL, STDERR = "file", "journal", "stderr"
_LOG_NAME_RE = re.compile(r"\.(log(\.\d+)?|where)$")  # MOUNT.log, MOUNT.log.1, MOUNT.where
_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
_JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the journal adds time and pid


@dataclass(frozen=True)
class LogTarget:
    """Where one mount's daemon logs: a file, the journal (of one service invocation), stderr."""

    kind: str
    path: str | None = None
    invocation: str | None = None

    def describe(self) -> str:
        if self.kind == FILE:
            return str(self.path)
        if self.kind == JOURNAL:
            return f"journal ({journal_command(self)[1]})" if self.invocation else "journal"
        return "stderr of its terminal"


def logs_dir() -> Path:
    """$XDG_STATE_HOME/amlfs/logs (a relative $XDG_STATE_HOME is ignored, as the spec says)."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path("~/.local/state").expanduser()
    return base / "amlfs" / "logs"


def _canonical(mountpoint: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(mountpoint)))


def _key(mountpoint: str) -> str:
    """A file name for a mountpoint, one-to-one: '/mnt/my-data' -> 'mnt-my%2Ddata'."""
    path = _canonical(mountpoint).strip("/") or "root"
    return quote(path.replace("-", "\0"), safe="/").replace("/", "-").replace("%00", "%2D")


def default_log_path(mountpoint: str) -> Path:
    return logs_dir() / f"{_key(mountpoint)}.log"


def _record_path(mountpoint: str) -> Path:
    return logs_dir() / f"{_key(mountpoint)}.where"


def _journal_is_stderr() -> bool:
    """True when stderr is the journal stream systemd gave us (not just inherited variables)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return bool(stream) and (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def choose_target(mountpoint: str, log_file: str | None) -> LogTarget:
    if log_file:
        return LogTarget(FILE, os.path.abspath(log_file))
    if _journal_is_stderr():
        return LogTarget(JOURNAL, invocation=os.environ.get("INVOCATION_ID") or None)
    try:
        if sys.stderr.isatty():
            return LogTarget(STDERR)
    except (AttributeError, ValueError):
        pass
    return LogTarget(FILE, str(default_log_path(mountpoint)))


def _file_handler(path: str) -> logging.Handler:
    parent = os.path.dirname(path)
    try:
        if not os.path.isdir(parent) and Path(parent).is_relative_to(logs_dir()):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        return logging.handlers.RotatingFileHandler(
            path, maxBytes=LOG_BYTES, backupCount=BACKUPS, encoding="utf-8"
        )
    except OSError as e:
        raise UsageError(
            f"cannot open log file {path}: {e.strerror}; pass --log-file FILE somewhere writable"
        ) from None


def configure_daemon(mountpoint: str, debug: bool, log_file: str | None = None) -> LogTarget:
    """Send the daemon's logging where `choose_target` says, and record that for other commands.
    Uncaught exceptions are logged too (a background daemon's stderr may be /dev/null)."""
    prune()  # first: a reused mountpoint's old log must not be removed once it is open
    target = choose_target(mountpoint, log_file)
    if target.kind == FILE:
        handler = _file_handler(str(target.path))
        handler.setFormatter(logging.Formatter(_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(_JOURNAL_FORMAT if target.kind == JOURNAL else _FORMAT)
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    # The daemon's own lifecycle lines are worth keeping in a service log.
    logging.getLogger("amlfs").setLevel(logging.DEBUG if debug else logging.INFO)
    previous_hook = sys.excepthook

    def log_uncaught(kind, value, tb):
        logging.getLogger("amlfs").critical("uncaught exception", exc_info=(kind, value, tb))
        previous_hook(kind, value, tb)

    sys.excepthook = log_uncaught
    _record(mountpoint, target)
    return target


def prune(now: float | None = None) -> int:
    """Remove the logs and records of mountpoints not used for KEEP_DAYS and not mounted now
    (best effort); the number of files removed."""
    cutoff = (time.time() if now is None else now) - KEEP_DAYS * 86400
    removed = 0
    try:
        from .fs.control import list_mounts

        live = {_key(m.mountpoint) for m in list_mounts()}  # a quiet mount keeps its log
    except Exception:  # noqa: BLE001 - no mount table: prune by age alone
        live = set()
    try:
        with os.scandir(logs_dir()) as it:
            for entry in it:
                if _LOG_NAME_RE.sub("", entry.name) in live:
                    continue
                try:
                    if entry.is_file() and entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    continue
    except OSError:
        pass
    return removed


def _record(mountpoint: str, target: LogTarget) -> None:
    """Write where the mount at `mountpoint` logs (atomically; a failure only costs the hint)."""
    path = _record_path(mountpoint)
    try:
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".where.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump({"mountpoint": _canonical(mountpoint), **asdict(target)}, f)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot record where %s logs in %s: %s", mountpoint, path, e.strerror)


def find_target(mountpoint: str) -> LogTarget | None:
    """Where the last daemon mounted at `mountpoint` logs (None if no daemon recorded it)."""
    try:
        data = json.loads(_record_path(mountpoint).read_text())
        return LogTarget(data["kind"], data.get("path"), data.get("invocation"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def journal_command(target: LogTarget, follow: bool = False, lines: int | None = None) -> list[str]:
    cmd = ["journalctl", "--no-pager", "-o", "short-iso"]
    if target.invocation:
        cmd.append(f"_SYSTEMD_INVOCATION_ID={target.invocation}")
    if lines is not None:
        cmd += ["-n", str(lines)]
    return cmd + (["-f"] if follow else [])


def tail_lines(path: str, lines: int | None) -> list[str]:
    """The last `lines` lines of the log at `path` (all of them for None), older files first."""
    out: list[str] = []
    for p in [f"{path}.{i}" for i in range(BACKUPS, 0, -1)] + [path]:
        try:
            with open(p, encoding="utf-8", errors="replace") as f:
                out.extend(f.read().splitlines())
        except FileNotFoundError:
            continue
    return out if lines is None else out[-lines:] if lines else []


def follow(
    path: str, emit: Callable[[str], None], poll: float = 0.25, stop: Callable[[], bool] = bool
) -> None:
    """Print lines appended to `path` from now on, across rotations, until `stop()` is true."""
    for line in _follow(path, poll, stop):
        emit(line)


def _follow(path: str, poll: float, stop: Callable[[], bool]) -> Iterator[str]:
    f, ino, first, partial = None, None, True, ""
    try:
        while not stop():
            if f is None:
                try:
                    f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
                except FileNotFoundError:
                    first = False  # a file that appears later is read from its start
                    time.sleep(poll)
                    continue
                ino = os.fstat(f.fileno()).st_ino
                if first:
                    f.seek(0, os.SEEK_END)
                first = False
            chunk = f.read()
            if chunk:
                *lines, partial = (partial + chunk).split("\n")
                yield from lines
                continue
            try:
                rotated = os.stat(path).st_ino != ino
            except FileNotFoundError:
                rotated = True
            if rotated:  # RotatingFileHandler renamed it: the new file is read from its start
                f.close()
                f = None
                continue
            time.sleep(poll)
    finally:
        if f is not None:
            f.close()
