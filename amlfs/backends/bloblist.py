"""The body of a Blob `List Blobs` response, parsed for the lean client (blobget.py).

The SDK's generic XML deserialiser costs ~0.9 s of CPU per 5000-entry page; this reads only the
fields a listing needs (name, size, ETag, Last-Modified, Content-MD5, metadata) in ~50 ms.
Entities ('&amp;', '&lt;') are the XML parser's job; names the service had to percent-encode
(Encoded="true", for characters XML cannot carry) are decoded here, as the SDK does.
"""

from __future__ import annotations

import base64
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import unquote


@dataclass
class ContentSettings:
    content_md5: bytes | None = None


@dataclass
class ListedBlob:
    """One `<Blob>` of a listing, with the attribute names of the SDK's BlobProperties."""

    name: str
    size: int
    etag: str | None
    last_modified: datetime | None
    content_settings: ContentSettings
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class ListedPrefix:
    """One `<BlobPrefix>` of a listing by delimiter: `name` ends with the delimiter."""

    name: str


# A page's blobs mostly share a handful of Last-Modified values: parse each once.
_dates: dict[str, datetime] = {}
_dates_lock = threading.Lock()


def _date(text: str) -> datetime:
    value = _dates.get(text)
    if value is None:
        value = parsedate_to_datetime(text)
        with _dates_lock:
            if len(_dates) > 10_000:
                _dates.clear()
            _dates[text] = value
    return value


def parse_listing(body: bytes) -> tuple[list[ListedBlob | ListedPrefix], str]:
    """A page's blobs and prefixes in document order, and its NextMarker ('' on the last)."""
    root = ET.fromstring(body)
    out: list[ListedBlob | ListedPrefix] = []
    items = root.find("Blobs")
    # Direct children, and only the properties used: a third less CPU than a generic walk.
    for item in items if items is not None else ():
        name = ""
        size = 0
        etag = modified = md5 = None
        meta: dict[str, str] = {}
        for el in item:
            tag = el.tag
            if tag == "Name":
                name = el.text or ""
                if el.get("Encoded", "").lower() == "true":
                    name = unquote(name)
            elif tag == "Properties":
                for p in el:
                    ptag = p.tag
                    if ptag == "Content-Length":
                        size = int(p.text or 0)
                    elif ptag == "Etag":
                        etag = p.text
                    elif ptag == "Last-Modified":
                        modified = p.text
                    elif ptag == "Content-MD5":
                        md5 = p.text
            elif tag == "Metadata":
                meta = {m.tag: m.text or "" for m in el}
        if item.tag == "BlobPrefix":
            out.append(ListedPrefix(name))
        elif item.tag == "Blob":
            out.append(
                ListedBlob(
                    name=name,
                    size=size,
                    etag=etag,
                    last_modified=_date(modified) if modified else None,
                    content_settings=ContentSettings(base64.b64decode(md5) if md5 else None),
                    metadata=meta,
                )
            )
    return out, root.findtext("NextMarker") or ""
