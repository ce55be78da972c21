"""fsspec path forms: `azureml://datastores/NAME/paths/PATH` (optionally workspace-qualified, as
Azure ML writes it), `amlfs://NAME/PATH`, and the stripped form fsspec passes around, `NAME/PATH`.

The datastore name is the first segment of a stripped path: '' is the registry (its datastores
are the top-level directories), 'NAME' a datastore's root. `azureml://` paths are
percent-decoded, as Azure ML writes them (and as the amlfs CLI reads them), and percent-encoded
again on the way out; `amlfs://` paths are taken as written, like `s3://` keys.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

AZUREML = "azureml://"
AMLFS = "amlfs://"

#: left as they are when an azureml:// URL is written: what Azure ML leaves, and glob characters
_SAFE = "/=-_.~!$&'()*+,;:@[]"


def _unquote(text: str, url: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise ValueError(f"{url}: not valid percent-encoded UTF-8") from None


def _strip_azureml(url: str) -> str:
    segs = url[len(AZUREML) :].split("/")
    i = 0
    if segs[0].lower() == "subscriptions":
        # Workspace-qualified: the local registry stands in for the workspace.
        if len(segs) < 6 or segs[2].lower() != "resourcegroups" or segs[4].lower() != "workspaces":
            raise ValueError(f"{url}: expected azureml://datastores/NAME/paths/PATH")
        i = 6
    if len(segs) < i + 2 or segs[i].lower() != "datastores" or not segs[i + 1]:
        if len(segs) == i + 1 and segs[i].lower() in ("datastores", ""):
            return ""  # the registry itself: its datastores
        raise ValueError(f"{url}: expected azureml://datastores/NAME/paths/PATH")
    name = _unquote(segs[i + 1], url)
    tail = segs[i + 2 :]
    if not tail or tail == [""]:
        return name
    if tail[0].lower() != "paths":
        raise ValueError(f"{url}: expected azureml://datastores/NAME/paths/PATH")
    path = _unquote("/".join(tail[1:]), url).strip("/")
    return f"{name}/{path}" if path else name


def strip(path: str) -> str:
    """The stripped form `NAME/PATH` of any accepted form ('' for the registry)."""
    lowered = path[:10].lower()
    if lowered.startswith(AZUREML):
        return _strip_azureml(path)
    if lowered.startswith(AMLFS):
        path = path[len(AMLFS) :]
    elif lowered.startswith(("azureml::", "amlfs::")):
        path = path.split("::", 1)[1]
    return path.strip("/")


def split(path: str) -> tuple[str, str]:
    """(datastore name, path inside it) of a stripped path."""
    name, _, rel = path.partition("/")
    return name, rel


def to_azureml(path: str) -> str:
    name, rel = split(path)
    if not name:
        return "azureml://datastores"
    url = f"azureml://datastores/{quote(name, safe='')}"
    return f"{url}/paths/{quote(rel, safe=_SAFE)}" if rel else url


def to_amlfs(path: str) -> str:
    return f"{AMLFS}{path}"
