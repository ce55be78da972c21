"""The registry file: a list of datastores (schema.py) and the name of the default one.

Loading validates every datastore and refuses a file that holds secrets but is readable by group
or others; saving is atomic (temp file, fsync, rename) and always leaves the file at mode 0600.
Secret values never appear in an error message or a repr.
"""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .atomic import write_atomic
from .errors import AmlfsError, RegistryError, UsageError
from .schema import (
    ADLS,
    BLOB,
    DATASTORE_NAME_RE,
    DEFAULT_NAME,
    FILE,
    LOCAL,
    TYPES,
    Credentials,
    DatastoreConfig,
    _suggest,
    datastore_to_dict,
    parse_datastore,
    redact_connection_string,
)

# The data model is re-exported: callers find everything about datastores here.
__all__ = [
    "ADLS",
    "BLOB",
    "DATASTORE_NAME_RE",
    "DEFAULT_NAME",
    "FILE",
    "LOCAL",
    "TYPES",
    "Credentials",
    "DatastoreConfig",
    "Registry",
    "datastore_to_dict",
    "default_local_root",
    "load_datastore_yaml",
    "parse_datastore",
    "redact_connection_string",
    "resolve_registry_path",
]

log = logging.getLogger(__name__)


# --- paths ---------------------------------------------------------------------------------------


def _xdg_dir(var: str, fallback: str) -> Path:
    # The XDG spec says relative values are invalid and must be ignored.
    value = os.environ.get(var, "")
    return Path(value) if os.path.isabs(value) else Path(fallback).expanduser()


def resolve_registry_path(path: str | None = None) -> Path:
    """`path` if given, else $AMLFS_REGISTRY, else $XDG_CONFIG_HOME/amlfs/datastores.yaml."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("AMLFS_REGISTRY")
    if env:
        return Path(env).expanduser()
    return _xdg_dir("XDG_CONFIG_HOME", "~/.config") / "amlfs" / "datastores.yaml"


def default_local_root() -> Path:
    """Where the embedded default datastore keeps its data: $XDG_DATA_HOME/amlfs/workspaceblobstore."""
    return _xdg_dir("XDG_DATA_HOME", "~/.local/share") / "amlfs" / DEFAULT_NAME


def _embedded_default() -> DatastoreConfig:
    return DatastoreConfig(
        name=DEFAULT_NAME,
        type=LOCAL,
        description="the embedded local default datastore",
        path=str(default_local_root()),
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice (PyYAML silently keeps the last one)."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False):
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        with suppress(TypeError):  # unhashable keys are reported by construct_mapping
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def _read_yaml(path: Path) -> tuple[Any, os.stat_result]:
    """The parsed document at `path` and the stat of the file actually read."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
    except IsADirectoryError:
        raise RegistryError(f"{path}: is a directory, not a YAML file") from None
    except OSError as e:
        raise RegistryError(f"cannot read {path}: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RegistryError(f"{path}: not valid UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader), st  # noqa: S506 -- a SafeLoader
    except yaml.YAMLError as e:
        # Only the position and the problem: the snippet str(e) shows could hold a secret.
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or "not valid YAML"
        raise RegistryError(f"{path}: {where}invalid YAML: {problem}") from None


def load_datastore_yaml(path: str) -> DatastoreConfig:
    """One datastore from an Azure ML v2 datastore YAML file (for `datastore create -f`)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise RegistryError(f"{p}: no such file")
    data, _st = _read_yaml(p)
    if not isinstance(data, dict):
        raise RegistryError(f"{p}: expected a datastore mapping (name, type, ...) at the top level")
    return parse_datastore(data, str(p))


# --- the registry --------------------------------------------------------------------------------

_TOP_LEVEL = ("default_datastore", "datastores")
_HEADER = (
    "# amlfs datastore registry: Azure ML v2 datastore YAML, one entry per datastore.\n"
    "# It may hold secrets: keep it mode 0600 (amlfs refuses it otherwise).\n"
)


@dataclass
class Registry:
    """The registered datastores (insertion-ordered) and the name of the default one."""

    path: Path
    datastores: dict[str, DatastoreConfig]
    default: str

    @classmethod
    def load(cls, path: str | None = None) -> Registry:
        """The registry at `path` (see resolve_registry_path). A missing file gives a new registry
        holding only the embedded local `workspaceblobstore`, not written until save()."""
        p = resolve_registry_path(path)
        if not p.exists() and not p.is_symlink():
            log.debug("no registry at %s: starting with the embedded default datastore", p)
            return cls(p, {DEFAULT_NAME: _embedded_default()}, DEFAULT_NAME)
        data, st = _read_yaml(p)
        reg = cls._from_document(p, data)
        if st.st_mode & 0o077 and any(
            ds.credentials.holds_secret() for ds in reg.datastores.values()
        ):
            mode = st.st_mode & 0o777
            raise RegistryError(
                f"permissions {mode:04o} for '{p}' are too open: it holds secrets; run: chmod 600 {p}"
            )
        return reg

    @classmethod
    def _from_document(cls, p: Path, data: Any) -> Registry:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RegistryError(
                f"{p}: expected a mapping with 'default_datastore' and 'datastores'"
            )
        for key in data:
            if key not in _TOP_LEVEL:
                raise RegistryError(
                    f"{p}: unknown top-level key {key!r}{_suggest(str(key), _TOP_LEVEL)}"
                )
        entries = data.get("datastores") or []
        if not isinstance(entries, list):
            raise RegistryError(f"{p}: 'datastores' must be a list of datastore mappings")
        datastores: dict[str, DatastoreConfig] = {}
        for i, entry in enumerate(entries):
            ds = parse_datastore(entry, str(p), index=i)
            if ds.name in datastores:
                raise RegistryError(
                    f"{p}: datastore {ds.name!r}: field 'name' is used by two datastores"
                )
            datastores[ds.name] = ds
        if not datastores:
            datastores[DEFAULT_NAME] = _embedded_default()
        default = data.get("default_datastore")
        if default is None:
            default = DEFAULT_NAME if DEFAULT_NAME in datastores else next(iter(datastores))
        if not isinstance(default, str) or default not in datastores:
            raise RegistryError(
                f"{p}: default_datastore {default!r} is not one of the datastores "
                f"(known: {', '.join(datastores)})"
            )
        return cls(p, datastores, default)

    def to_document(self) -> dict:
        return {
            "default_datastore": self.default,
            "datastores": [datastore_to_dict(ds) for ds in self.datastores.values()],
        }

    def save(self) -> None:
        """Write the registry atomically at mode 0600 (the parent directory 0700 if created).

        A symlinked registry file is written through to its target, so dotfile links survive.
        """
        if self.default not in self.datastores:
            raise AmlfsError(
                f"cannot save {self.path}: the default datastore {self.default!r} is missing"
            )
        target = Path(os.path.realpath(self.path))
        text = _HEADER + yaml.safe_dump(
            self.to_document(), sort_keys=False, default_flow_style=False, allow_unicode=True
        )
        try:
            if not target.parent.exists():
                target.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
                os.chmod(target.parent, 0o700)  # mkdir's mode is filtered by the umask
            write_atomic(target, text.encode("utf-8"))  # 0600: the secrets are never readable
            dirfd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        except OSError as e:
            raise AmlfsError(f"cannot write registry {self.path}: {e.strerror or e}") from None
        log.debug("saved registry %s (%d datastores)", target, len(self.datastores))

    def get(self, name: str) -> DatastoreConfig:
        try:
            return self.datastores[name]
        except KeyError:
            raise UsageError(
                f"unknown datastore {name!r} in {self.path} (known: {', '.join(self.datastores)})"
            ) from None

    def default_datastore(self) -> DatastoreConfig:
        return self.get(self.default)

    def add(self, ds: DatastoreConfig, overwrite: bool = False, make_default: bool = False) -> None:
        """Register `ds` (validated by the same rules as the file; stored in normalised form)."""
        ds = parse_datastore(datastore_to_dict(ds), str(self.path))
        if ds.name in self.datastores and not overwrite:
            raise UsageError(
                f"datastore {ds.name!r} already exists in {self.path}; use --overwrite to replace it"
            )
        self.datastores[ds.name] = ds
        if make_default:
            self.default = ds.name

    def remove(self, name: str) -> None:
        """Unregister `name`. The default cannot be removed: another must become default first."""
        self.get(name)
        if name == self.default:
            others = [n for n in self.datastores if n != name]
            hint = (
                f"make another one the default first (set-default, e.g. {others[0]!r})"
                if others
                else "register another datastore and make it the default first"
            )
            raise UsageError(f"cannot remove datastore {name!r}: it is the default; {hint}")
        del self.datastores[name]

    def set_default(self, name: str) -> None:
        self.get(name)
        self.default = name
