"""An Azure Files (SMB share, REST API) test server: the subset amlfs uses, strictly.

Shares; directories (create, properties, delete, list with NextMarker paging and the extended
listing fields); files (create, put range, set properties (resize), get with Range, properties,
delete, rename). Names are case-insensitive and case-preserving, and Azure's invalid characters
are refused, as on Azure.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape, quoteattr

from .auth import Authenticator, Principal
from .common import (
    Request,
    Response,
    StorageError,
    ThreadedServer,
    TLSFiles,
    bare_etag,
    check_if_match,
    fail,
    iso8601,
    new_etag,
    ranged_body,
    rfc1123,
    xml_error,
)

ACCOUNT = "amlfsfiles"
KEY = base64.b64encode(b"amlfs file share test server key, not a secret!!").decode()

_INVALID = set('"\\/:|<>*?') | {chr(c) for c in range(32)}


@dataclass
class Node:
    name: str
    is_dir: bool
    etag: str = field(default_factory=new_etag)
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)
    file_id: str = field(default_factory=lambda: str(uuid.uuid4().int >> 64))
    data: bytearray = field(default_factory=bytearray)
    children: dict[str, Node] = field(default_factory=dict)  # key: casefolded name

    def touch(self) -> None:
        self.etag = new_etag()
        self.modified = time.time()


@dataclass
class Share:
    name: str
    root: Node
    etag: str = field(default_factory=new_etag)
    modified: float = field(default_factory=time.time)


def _key(name: str) -> str:
    return name.casefold()


def _not_found(code: str = "ResourceNotFound") -> StorageError:
    return fail(code)


def _type_mismatch() -> StorageError:
    return fail("ResourceTypeMismatch")


class FileShareServer:
    """One storage account's File service. `max_page` caps listing pages (Azure: 5000)."""

    def __init__(
        self,
        account: str = ACCOUNT,
        key: str = KEY,
        max_page: int = 5000,
        tls: TLSFiles | None = None,
    ):
        self.account = account
        self.key = key
        self.max_page = max_page
        self.auth = Authenticator(account, key, "file")
        self.shares: dict[str, Share] = {}
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []  # (method, path?query) log, for tests
        self._http = ThreadedServer(self.handle, xml_error, tls)

    # --- lifecycle and test helpers --------------------------------------------------------------

    def start(self) -> FileShareServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    @property
    def account_url(self) -> str:
        return f"{self._http.base_url}/{self.account}"

    def create_share(self, name: str) -> None:
        with self.lock:
            self.shares.setdefault(name, Share(name, Node("", True)))

    def put_file(self, share: str, path: str, data: bytes) -> str:
        """Create (with parents) or replace a file directly; returns its new ETag."""
        with self.lock:
            self.create_share(share)
            node = self.shares[share].root
            *dirs, leaf = path.split("/")
            for d in dirs:
                node = node.children.setdefault(_key(d), Node(d, True))
            f = node.children.get(_key(leaf))
            if f is None:
                f = node.children[_key(leaf)] = Node(leaf, False)
            f.data = bytearray(data)
            f.touch()
            return f.etag

    # --- dispatch --------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        self.requests.append(
            (req.method, req.raw_path + ("?" + "&".join(sorted(req.query)) if req.query else ""))
        )
        if not req.segments or req.segments[0] != self.account:
            raise fail("InvalidUri")
        principal = self.auth.authenticate(req)
        segs = req.segments[1:]
        if segs and segs[-1] == "":
            segs = segs[:-1]
        with self.lock:
            if not segs:
                raise fail(
                    "InvalidQueryParameterValue", "Service-level operations are not served here."
                )
            share_name, path = segs[0], segs[1:]
            for seg in path:
                if (
                    not seg
                    or any(c in _INVALID for c in seg)
                    or len(seg) > 255
                    or seg.endswith(".")
                ):
                    raise fail("InvalidResourceName")
            if req.q("restype") == "share":
                return self._share_op(req, principal, share_name)
            share = self.shares.get(share_name)
            if share is None:
                raise _not_found("ShareNotFound")
            if req.q("restype") == "directory":
                return self._dir_op(req, principal, share, path)
            if not path:
                raise fail("InvalidQueryParameterValue")
            return self._file_op(req, principal, share, path)

    def _lookup(self, share: Share, path: list[str]) -> tuple[Node | None, Node | None]:
        """(parent directory, node) for `path`; a missing ancestor raises ParentNotFound."""
        node = share.root
        for seg in path[:-1]:
            node = node.children.get(_key(seg))
            if node is None or not node.is_dir:
                raise _not_found("ParentNotFound")
        if not path:
            return None, share.root
        return node, node.children.get(_key(path[-1]))

    # --- shares ----------------------------------------------------------------------------------

    def _share_op(self, req: Request, principal: Principal, name: str) -> Response:
        share = self.shares.get(name)
        if req.method == "PUT" and not req.q("comp"):
            self.auth.authorize(principal, "cw", "container", account_only=True)
            if share is not None:
                raise fail("ShareAlreadyExists")
            share = self.shares[name] = Share(name, Node("", True))
            return Response(201, {"ETag": share.etag, "Last-Modified": rfc1123(share.modified)})
        if req.method in ("GET", "HEAD") and not req.q("comp"):
            self.auth.authorize(principal, "r", "container")
            if share is None:
                raise _not_found("ShareNotFound")
            return Response(
                200,
                {
                    "ETag": share.etag,
                    "Last-Modified": rfc1123(share.modified),
                    "x-ms-share-quota": "5120",
                    "x-ms-enabled-protocols": "SMB",
                },
            )
        if req.method == "DELETE":
            self.auth.authorize(principal, "d", "container", account_only=True)
            if self.shares.pop(name, None) is None:
                raise _not_found("ShareNotFound")
            return Response(202)
        raise fail("UnsupportedHttpVerb")

    # --- directories -----------------------------------------------------------------------------

    def _dir_headers(self, node: Node) -> dict[str, str]:
        return {
            "ETag": node.etag,
            "Last-Modified": rfc1123(node.modified),
            "x-ms-file-attributes": "Directory",
            "x-ms-file-id": node.file_id,
            "x-ms-file-creation-time": iso8601(node.created),
            "x-ms-file-last-write-time": iso8601(node.modified),
            "x-ms-file-change-time": iso8601(node.modified),
            "x-ms-file-permission-key": "4066528134148476695*1",
            "x-ms-server-encrypted": "true",
        }

    def _dir_op(
        self, req: Request, principal: Principal, share: Share, path: list[str]
    ) -> Response:
        comp = req.q("comp")
        if req.method == "GET" and comp == "list":
            self.auth.authorize(principal, "l", "container")
            parent, node = self._lookup(share, path)
            if node is None:
                raise _not_found()
            if not node.is_dir:
                raise _type_mismatch()
            return self._list(req, share, path, node)
        if req.method == "PUT" and comp == "rename":
            return self._rename(req, principal, share, path, want_dir=True)
        if req.method in ("GET", "HEAD") and not comp:
            self.auth.authorize(principal, "r", "container")
            _, node = self._lookup(share, path)
            if node is None:
                raise _not_found()
            if not node.is_dir:
                raise _type_mismatch()
            return Response(200, self._dir_headers(node))
        if req.method == "PUT" and not comp:
            self.auth.authorize(principal, "cw", "container")
            parent, node = self._lookup(share, path)
            if parent is None:
                raise fail("ResourceAlreadyExists")
            if node is not None:
                raise fail("ResourceAlreadyExists")
            node = parent.children[_key(path[-1])] = Node(path[-1], True)
            parent.touch()
            return Response(201, self._dir_headers(node))
        if req.method == "DELETE" and not comp:
            self.auth.authorize(principal, "d", "container")
            parent, node = self._lookup(share, path)
            if parent is None:
                raise fail("InvalidResourceName", "The root directory cannot be deleted.")
            if node is None:
                raise _not_found()
            if not node.is_dir:
                raise _type_mismatch()
            if node.children:
                raise fail("DirectoryNotEmpty")
            del parent.children[_key(path[-1])]
            parent.touch()
            return Response(202)
        raise fail("InvalidQueryParameterValue")

    def _list(self, req: Request, share: Share, path: list[str], node: Node) -> Response:
        include = {s.strip().lower() for s in (req.q("include") or "").split(",") if s.strip()}
        extended = (req.header("x-ms-file-extended-info") or "").lower() == "true"
        prefix = req.q("prefix") or ""
        try:
            maxresults = int(req.q("maxresults") or 5000)
        except ValueError:
            maxresults = 0
        if maxresults < 1:
            raise fail("OutOfRangeQueryParameterValue")
        page = min(maxresults, self.max_page)
        marker = req.q("marker") or ""
        after = base64.urlsafe_b64decode(marker.encode()).decode() if marker else None
        keys = sorted(k for k, n in node.children.items() if n.name.startswith(prefix))
        if after is not None:
            keys = [k for k in keys if k >= after]
        chunk, rest = keys[:page], keys[page:]
        out = []
        for k in chunk:
            child = node.children[k]
            tag = "Directory" if child.is_dir else "File"
            props = "" if child.is_dir else f"<Content-Length>{len(child.data)}</Content-Length>"
            if "timestamps" in include:
                props += (
                    f"<CreationTime>{iso8601(child.created)}</CreationTime>"
                    f"<LastAccessTime>{iso8601(child.modified)}</LastAccessTime>"
                    f"<LastWriteTime>{iso8601(child.modified)}</LastWriteTime>"
                    f"<ChangeTime>{iso8601(child.modified)}</ChangeTime>"
                    f"<Last-Modified>{rfc1123(child.modified)}</Last-Modified>"
                )
            if "etag" in include:
                props += f"<Etag>{escape(child.etag)}</Etag>"
            item = f"<Name>{escape(child.name)}</Name>"
            if extended:
                item = f"<FileId>{child.file_id}</FileId>" + item
            item += f"<Properties>{props}</Properties>"
            if "attributes" in include:
                item += f"<Attributes>{'Directory' if child.is_dir else 'Archive'}</Attributes>"
            if "permissionkey" in include:
                item += "<PermissionKey>4066528134148476695*1</PermissionKey>"
            out.append(f"<{tag}>{item}</{tag}>")
        next_marker = base64.urlsafe_b64encode(rest[0].encode()).decode() if rest else ""
        dir_path = "/".join(path)
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f"<EnumerationResults ServiceEndpoint={quoteattr(self.account_url + '/')} "
            f"ShareName={quoteattr(share.name)} DirectoryPath={quoteattr(dir_path)}>"
            + (f"<Marker>{escape(marker)}</Marker>" if marker else "")
            + (f"<Prefix>{escape(prefix)}</Prefix>" if prefix else "")
            + f"<MaxResults>{page}</MaxResults>"
            + (f"<DirectoryId>{node.file_id}</DirectoryId>" if extended else "")
            + "<Entries>"
            + "".join(out)
            + "</Entries>"
            + f"<NextMarker>{next_marker}</NextMarker></EnumerationResults>"
        )
        return Response(200, {"Content-Type": "application/xml"}, body.encode())

    # --- files -----------------------------------------------------------------------------------

    def _file_headers(self, node: Node) -> dict[str, str]:
        return {
            "ETag": node.etag,
            "Last-Modified": rfc1123(node.modified),
            "x-ms-type": "File",
            "Content-Type": "application/octet-stream",
            "x-ms-file-attributes": "Archive",
            "x-ms-file-id": node.file_id,
            "x-ms-file-creation-time": iso8601(node.created),
            "x-ms-file-last-write-time": iso8601(node.modified),
            "x-ms-file-change-time": iso8601(node.modified),
            "x-ms-file-permission-key": "4066528134148476695*1",
            "x-ms-server-encrypted": "true",
        }

    def _file_op(
        self, req: Request, principal: Principal, share: Share, path: list[str]
    ) -> Response:
        comp = req.q("comp")
        if req.method == "PUT" and comp == "rename":
            return self._rename(req, principal, share, path, want_dir=False)
        if req.method == "PUT" and not comp:
            self.auth.authorize(principal, "cw", "object")
            if req.header("x-ms-type") != "file":
                raise fail("MissingRequiredHeader")
            try:
                size = int(req.header("x-ms-content-length") or "")
            except ValueError:
                raise fail("MissingRequiredHeader") from None
            parent, node = self._lookup(share, path)
            if node is not None and node.is_dir:
                raise _type_mismatch()
            if node is None:
                node = parent.children[_key(path[-1])] = Node(path[-1], False)
                parent.touch()
            node.data = bytearray(size)  # Create File replaces an existing file's content
            node.touch()
            return Response(201, self._file_headers(node))
        if req.method == "PUT" and comp == "properties":
            # Set File Properties: x-ms-content-length resizes (zeros past the old end).
            self.auth.authorize(principal, "w", "object")
            _, node = self._lookup(share, path)
            if node is None:
                raise _not_found()
            if node.is_dir:
                raise _type_mismatch()
            length = req.header("x-ms-content-length")
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    raise fail("InvalidHeaderValue") from None
                if n < 0:
                    raise fail("InvalidHeaderValue")
                node.data = node.data[:n] + bytearray(max(0, n - len(node.data)))
            node.touch()
            return Response(200, self._file_headers(node))
        if req.method == "PUT" and comp == "range":
            self.auth.authorize(principal, "w", "object")
            _, node = self._lookup(share, path)
            if node is None:
                raise _not_found()
            if node.is_dir:
                raise _type_mismatch()
            rng = req.header("x-ms-range") or req.header("range") or ""
            try:
                a, b = (int(x) for x in rng.removeprefix("bytes=").split("-"))
            except ValueError:
                raise fail("InvalidHeaderValue") from None
            if b < a or b >= len(node.data):
                raise fail("InvalidRange")
            if (req.header("x-ms-write") or "").lower() == "clear":
                node.data[a : b + 1] = bytes(b - a + 1)
            else:
                if len(req.body) != b - a + 1:
                    raise fail("InvalidHeaderValue")
                node.data[a : b + 1] = req.body
            node.touch()
            return Response(201, {"ETag": node.etag, "Last-Modified": rfc1123(node.modified)})
        if req.method in ("GET", "HEAD") and not comp:
            self.auth.authorize(principal, "r", "object")
            _, node = self._lookup(share, path)
            if node is None:
                raise _not_found()
            if node.is_dir:
                raise _type_mismatch()
            # Azure Files has no If-Match on Get File; clients compare the returned ETag.
            headers = self._file_headers(node)
            if req.method == "HEAD":
                return Response(200, {**headers, "Content-Length": str(len(node.data))})
            return ranged_body(req, node.data, headers)
        if req.method == "DELETE" and not comp:
            self.auth.authorize(principal, "d", "object")
            parent, node = self._lookup(share, path)
            if node is None:
                raise _not_found()
            if node.is_dir:
                raise _type_mismatch()
            del parent.children[_key(path[-1])]
            parent.touch()
            return Response(202)
        raise fail("InvalidQueryParameterValue")

    def _rename(
        self, req: Request, principal: Principal, share: Share, dst: list[str], want_dir: bool
    ) -> Response:
        self.auth.authorize(principal, "w", "container" if want_dir else "object")
        source = req.header("x-ms-file-rename-source")
        if not source:
            raise fail("MissingRequiredHeader")
        src_segs = [unquote(s) for s in urlsplit(source).path.split("/")[1:]]
        if src_segs[:2] != [self.account, share.name] or len(src_segs) < 3:
            raise fail("InvalidHeaderValue")
        src = src_segs[2:]
        sparent, snode = self._lookup(share, src)
        if snode is None:
            raise _not_found()
        if snode.is_dir != want_dir:
            raise _type_mismatch()
        dparent, dnode = self._lookup(share, dst)
        replace = (req.header("x-ms-file-rename-replace-if-exists") or "").lower() == "true"
        if dnode is not None and dnode is not snode:
            if not replace or dnode.is_dir:
                raise fail("ResourceAlreadyExists")
            check_if_match(req, dnode.etag)
        del sparent.children[_key(src[-1])]
        snode.name = dst[-1]
        dparent.children[_key(dst[-1])] = snode
        sparent.touch()
        dparent.touch()
        snode.modified = time.time()
        headers = self._dir_headers(snode) if want_dir else self._file_headers(snode)
        return Response(200, headers)

    def etag_of(self, share: str, path: str) -> str:
        with self.lock:
            _, node = self._lookup(self.shares[share], path.split("/"))
            assert node is not None
            return bare_etag(node.etag)
