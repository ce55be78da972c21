"""Run manifests: which files (at which ETags) each input of a run saw and each output committed,
with the command, its times and exit status -- written as JSON beside the run's state, checked
against the datastores (`verify`), and used to pin a later run, stage or mount to exactly those
files (`pinned_backend`).

Inputs are recorded from listings (name, size, ETag, Content-MD5, mtime), never by reading data.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic import write_atomic
from .backends.base import Backend, ObjectInfo, normpath
from .backends.pinned import PinnedBackend
from .errors import AmlfsError, UsageError
from .registry import DatastoreConfig, Registry

FORMAT = 1


@dataclass
class FileRecord:
    """One file as a listing showed it; `path` is the full datastore path."""

    path: str
    size: int
    etag: str | None
    content_md5: str | None = None  # base64, as the service shows it
    mtime: float = 0.0

    @classmethod
    def of(cls, info: ObjectInfo) -> FileRecord:
        md5 = base64.b64encode(info.content_md5).decode() if info.content_md5 else None
        return cls(info.path, info.size, info.etag, md5, info.mtime)

    def info(self) -> ObjectInfo:
        md5 = base64.b64decode(self.content_md5) if self.content_md5 else None
        return ObjectInfo(
            self.path, False, size=self.size, etag=self.etag, mtime=self.mtime, content_md5=md5
        )


@dataclass
class InputRecord:
    name: str
    datastore: str
    path: str
    mode: str
    files: list[FileRecord] = field(default_factory=list)


@dataclass
class OutputRecord:
    name: str
    datastore: str
    path: str
    mode: str
    files: list[FileRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    run_id: str
    command: list[str]
    start: str = ""
    end: str = ""
    exit_status: int | None = None
    inputs: list[InputRecord] = field(default_factory=list)
    outputs: list[OutputRecord] = field(default_factory=list)
    format: int = FORMAT

    def input(self, name: str) -> InputRecord:
        for rec in self.inputs:
            if rec.name == name:
                return rec
        known = ", ".join(r.name for r in self.inputs) or "none"
        raise UsageError(f"the manifest has no input {name!r} (its inputs: {known})")

    def find_input(self, source: str, registry: Registry) -> InputRecord:
        """The input named `source`, else the one at the location DATASTORE[:PATH] `source`."""
        if ":" not in source and any(r.name == source for r in self.inputs):
            return self.input(source)
        from .uri import parse_location

        known = ", ".join(f"{r.name} ({r.datastore}:{r.path})" for r in self.inputs) or "none"
        try:
            loc = parse_location(source)
            ds = registry.get(loc.datastore) if loc.datastore else registry.default_datastore()
        except AmlfsError:
            raise UsageError(
                f"the manifest has no input named or at {source!r} (its inputs: {known})"
            ) from None
        for rec in self.inputs:
            if rec.datastore == ds.name and rec.path == normpath(loc.path):
                return rec
        raise UsageError(f"the manifest has no input named or at {source!r} (its inputs: {known})")

    # --- JSON ----------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "manifest") -> Manifest:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise ValueError(f"unknown format {raw.get('format')!r}")

            def files(items: list[dict[str, Any]]) -> list[FileRecord]:
                return [FileRecord(**f) for f in items]

            return cls(
                run_id=raw["run_id"],
                command=list(raw["command"]),
                start=raw.get("start", ""),
                end=raw.get("end", ""),
                exit_status=raw.get("exit_status"),
                inputs=[InputRecord(**{**r, "files": files(r["files"])}) for r in raw["inputs"]],
                outputs=[OutputRecord(**{**r, "files": files(r["files"])}) for r in raw["outputs"]],
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UsageError(f"{where} is not an amlfs run manifest: {e}") from None

    @classmethod
    def load(cls, path: str) -> Manifest:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot read manifest {path}: {e.strerror}") from None
        return cls.from_json(text, path)

    def save(self, path: str) -> None:
        """Write atomically (a reader never sees half a manifest)."""
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        write_atomic(path, self.to_json().encode("utf-8"), durable=False)


# --- recording -----------------------------------------------------------------------------------


def record_listing(backend: Backend, path: str) -> list[FileRecord]:
    """Every file under `path` (a directory or one file) as the listing shows it now."""
    from .transfer import list_remote

    files, _ = list_remote(backend, path)
    return sorted((FileRecord.of(i) for i in files if not i.is_dir), key=lambda r: r.path)


def pinned_backend(inner: Backend, rec: InputRecord, source: str) -> PinnedBackend:
    """`inner` showing exactly the files of `rec` at their recorded ETags."""
    return PinnedBackend(
        inner, (f.info() for f in rec.files), f"{source}, input {rec.name!r}", root=rec.path
    )


# --- checking ------------------------------------------------------------------------------------


@dataclass
class Difference:
    input: str
    kind: str  # "changed", "missing", "added"
    path: str
    detail: str = ""


def verify_input(backend: Backend, rec: InputRecord) -> list[Difference]:
    """What differs between the record of one input and its datastore now (from one listing)."""
    from .backends.errors import NotFound

    try:
        now = {r.path: r for r in record_listing(backend, rec.path)}
    except NotFound:
        now = {}
    out = []
    for f in rec.files:
        cur = now.pop(f.path, None)
        if cur is None:
            out.append(Difference(rec.name, "missing", f.path))
        elif (cur.etag, cur.size) != (f.etag, f.size):
            detail = f"ETag {f.etag} -> {cur.etag}, size {f.size} -> {cur.size}"
            out.append(Difference(rec.name, "changed", f.path, detail))
    out += [Difference(rec.name, "added", p) for p in sorted(now)]
    return out


def verify(manifest: Manifest, registry: Registry) -> list[Difference]:
    from .backends import open_backend

    out: list[Difference] = []
    for rec in manifest.inputs:
        backend = open_backend(datastore_of(rec, registry))
        try:
            out += verify_input(backend, rec)
        finally:
            backend.close()
    return out


def datastore_of(rec: InputRecord | OutputRecord, registry: Registry) -> DatastoreConfig:
    try:
        return registry.get(rec.datastore)
    except AmlfsError as e:
        raise UsageError(f"input {rec.name!r} of the manifest: {e}") from None


def publish(manifest: Manifest, ds: DatastoreConfig, where: str) -> str:
    """Write `manifest` to datastore `ds`: at `where` when it names a .json file, else as
    `where`/RUN_ID.json; {run-id} in `where` is the run's id. Returns the path written."""
    from .backends import open_backend

    where = normpath(where.replace("{run-id}", manifest.run_id))
    dest = (
        where
        if where.endswith(".json")
        else "/".join(p for p in (where, manifest.run_id + ".json") if p)
    )
    backend = open_backend(ds)
    try:
        backend.write_bytes(dest, manifest.to_json().encode())
    finally:
        backend.close()
    return dest
