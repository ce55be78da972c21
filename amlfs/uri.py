"""Location specs: `DATASTORE[:PATH]`, `:PATH` (the default datastore) and Azure ML URIs
`azureml://[subscriptions/S/resourcegroups/R/workspaces/W/]datastores/NAME/paths/PATH`."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import unquote

from .backends.base import normpath
from .backends.errors import InvalidName
from .errors import UsageError
from .registry import DATASTORE_NAME_RE

log = logging.getLogger(__name__)

AZUREML = "azureml://"
_FORMS = "expected DATASTORE[:PATH], :PATH or azureml://datastores/NAME/paths/PATH"
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class Location:
    """A place in a datastore. `datastore` None means the registry's default datastore;
    `path` is normalised: no leading or trailing '/', '' is the root."""

    datastore: str | None
    path: str

    def __str__(self) -> str:
        return f"{self.datastore or ''}:{self.path}"


def _shown(spec: str) -> str:
    # A URL's query string is usually a SAS token: never echo it.
    if _SCHEME_RE.match(spec) and "?" in spec:
        spec = spec.split("?", 1)[0] + "?***"
    return repr(spec)


def _bad(spec: str, why: str) -> UsageError:
    return UsageError(f"bad location {_shown(spec)}: {why}")


def _check_name(name: str, spec: str) -> str:
    if not DATASTORE_NAME_RE.match(name):
        raise _bad(
            spec,
            f"{name!r} is not a datastore name (1-255 letters, digits, underscores); "
            "write DATASTORE:PATH, or :PATH for the default datastore",
        )
    return name


def _clean_path(path: str, spec: str) -> str:
    if "\0" in path:
        raise _bad(spec, "the path contains a NUL character")
    try:
        return normpath(path)
    except InvalidName:
        raise _bad(spec, "'..' segments are not allowed") from None


def _parse_azureml(spec: str) -> Location:
    unknown = _bad(spec, f"unknown azureml:// form; {_FORMS}")
    segs = spec[len(AZUREML) :].split("/")
    i = 0
    if segs[0].lower() == "subscriptions":
        # The workspace-qualified form: the workspace parts name the Azure ML workspace, which
        # the local registry stands in for.
        if (
            len(segs) < 6
            or segs[2].lower() != "resourcegroups"
            or segs[4].lower() != "workspaces"
            or not (segs[1] and segs[3] and segs[5])
        ):
            raise unknown
        i = 6
    if len(segs) < i + 2 or segs[i].lower() != "datastores" or not segs[i + 1]:
        raise unknown
    try:
        name = unquote(segs[i + 1], errors="strict")
    except UnicodeDecodeError:
        raise _bad(spec, "the datastore name is not valid percent-encoded UTF-8") from None
    tail = segs[i + 2 :]
    if not tail or tail == [""]:
        raw_path = ""
    elif tail[0].lower() == "paths":
        raw_path = "/".join(tail[1:])
    else:
        raise unknown
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        raise _bad(spec, "the path is not valid percent-encoded UTF-8") from None
    return Location(_check_name(name, spec), _clean_path(path, spec))


def parse_location(spec: str) -> Location:
    """Parse a location spec into a datastore name (None = default) and a normalised path.

    Raises UsageError, naming the spec, for an empty spec, a bad datastore name, '..' segments
    or an unknown azureml:// form.
    """
    if not spec:
        raise UsageError(f"empty location: {_FORMS}")
    lowered = spec.lower()
    if lowered.startswith(AZUREML):
        return _parse_azureml(spec)
    if lowered.startswith("azureml:"):
        # azureml:NAME:VERSION names a data asset, which needs the Azure ML service.
        raise _bad(spec, f"data asset references are not supported; {_FORMS}")
    if _SCHEME_RE.match(spec):
        raise _bad(
            spec,
            "only azureml:// URIs are supported; register the storage as a datastore "
            "and use DATASTORE:PATH",
        )
    name, _sep, path = spec.partition(":")
    if not name:
        return Location(None, _clean_path(path, spec))
    return Location(_check_name(name, spec), _clean_path(path, spec))
