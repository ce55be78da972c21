"""The plugin's state directory: one subdirectory per published target path, holding what a
restarted plugin needs to find and adopt the mount it made, and the secret material its daemon
reads (never on a command line):

    STATE/volumes/KEY/record.json    volume id, target, fingerprint, daemon pid (no secrets)
    STATE/volumes/KEY/registry.yaml  the one datastore the daemon mounts, with its credential (0600)
    STATE/volumes/KEY/token          the workload identity token, rewritten on republish (0600)
    STATE/volumes/KEY/daemon.log     the daemon's log

KEY is derived from the target path, which kubelet keeps unique per volume and pod. Every file is
written atomically (temp file, fsync, rename) at mode 0600 in 0700 directories.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import write_atomic

log = logging.getLogger(__name__)


@dataclass
class Record:
    volume_id: str
    target_path: str
    fingerprint: str
    datastore: str  # the daemon's datastore name (its mount's source is NAME:PATH)
    path: str
    pid: int | None = None
    cache_bytes: int = 0  # the daemon's memory budget, counted against the plugin's


class StateDir:
    def __init__(self, root: str):
        self.root = Path(root)
        self.volumes = self.root / "volumes"
        self.volumes.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        os.chmod(self.volumes, 0o700)

    def dir_for(self, target_path: str) -> Path:
        key = hashlib.sha256(os.path.normpath(target_path).encode()).hexdigest()[:24]
        return self.volumes / key

    def prepare(self, target_path: str) -> Path:
        d = self.dir_for(target_path)
        d.mkdir(mode=0o700, exist_ok=True)
        return d

    def load(self, target_path: str) -> Record | None:
        return self._read(self.dir_for(target_path) / "record.json")

    def save(self, record: Record) -> None:
        d = self.prepare(record.target_path)
        write_private(d / "record.json", json.dumps(asdict(record), sort_keys=True).encode())

    def remove(self, target_path: str) -> None:
        shutil.rmtree(self.dir_for(target_path), ignore_errors=True)

    def records(self) -> list[Record]:
        out = []
        for d in sorted(self.volumes.iterdir()):
            rec = self._read(d / "record.json")
            if rec is not None:
                out.append(rec)
        return out

    @staticmethod
    def _read(path: Path) -> Record | None:
        try:
            return Record(**json.loads(path.read_bytes()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.warning("ignoring unreadable state %s: %s", path, e)
            return None


def write_private(path: Path, data: bytes) -> None:
    """Write `path` atomically at mode 0600, on disk before it appears."""
    write_atomic(path, data)
