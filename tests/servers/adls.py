"""An ADLS Gen2 test server: a hierarchical-namespace account serving, on one URL, both the DFS
REST API (filesystem create, List Paths with x-ms-continuation, path create / append / flush /
rename / delete) and the Blob calls the datalake SDK routes to the Blob endpoint (container
create/properties, blob properties, ranged download with If-Match). DFS errors are JSON, Blob
errors XML, as on Azure. Optionally TLS with an AAD stand-in for service-principal tokens, and
an ACL hook (`deny`) that refuses paths with 403 AuthorizationPermissionMismatch.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import unquote

from .aad import Directory
from .auth import Authenticator, Principal, TokenStore
from .common import (
    Request,
    Response,
    StorageError,
    ThreadedServer,
    TLSFiles,
    bare_etag,
    check_if_match,
    fail,
    json_error,
    new_etag,
    ranged_body,
    rfc1123,
    xml_error,
)

ACCOUNT = "amlfsadls"
KEY = base64.b64encode(b"amlfs ADLS Gen2 test server key -- not a secret").decode()


@dataclass
class Node:
    is_dir: bool
    etag: str = field(default_factory=new_etag)
    created: float = field(default_factory=time.time)
    modified: float = field(default_factory=time.time)
    data: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(
        default_factory=dict
    )  # appended (position -> data), unflushed

    def touch(self) -> None:
        self.etag = new_etag()
        self.modified = time.time()


@dataclass
class Filesystem:
    name: str
    paths: dict[str, Node] = field(default_factory=dict)  # full path -> node ('' is not stored)
    etag: str = field(default_factory=new_etag)
    modified: float = field(default_factory=time.time)


def is_dfs(req: Request) -> bool:
    """Whether a request is a DFS endpoint call (JSON errors) rather than a Blob one (XML)."""
    return (
        req.q("resource") is not None
        or req.q("action") is not None
        or req.method == "PATCH"
        or req.header("x-ms-rename-source") is not None
        or (req.method == "DELETE" and req.q("recursive") is not None)
    )


def _render_error(err: StorageError, request_id: str, req: Request) -> bytes:
    return (json_error if is_dfs(req) else xml_error)(err, request_id)


def _check_exists_condition(req: Request, node: Node) -> None:
    # DFS answers "create only if absent" (If-None-Match: *) on an existing path with 409.
    if (req.header("if-none-match") or "").strip() == "*":
        raise fail("PathAlreadyExists")
    check_if_match(req, node.etag)


def _filetime(ts: float) -> str:
    return str(int(ts * 10_000_000) + 116444736000000000)


class AdlsServer:
    """One HNS storage account. `max_page` caps List Paths pages (Azure: 5000)."""

    def __init__(
        self,
        account: str = ACCOUNT,
        key: str = KEY,
        max_page: int = 5000,
        tls: TLSFiles | None = None,
        aad: Directory | None = None,
    ):
        self.account = account
        self.key = key
        self.max_page = max_page
        self.aad = aad
        tokens: TokenStore | None = aad.tokens if aad else None
        self.auth = Authenticator(account, key, "blob", tokens)
        self.filesystems: dict[str, Filesystem] = {}
        self.denied: dict[tuple[str, str], bool] = {}  # (fs, path) -> applies to shared key too
        self.lock = threading.RLock()
        self.requests: list[tuple[str, str]] = []
        self._http = ThreadedServer(self.handle, _render_error, tls)

    # --- lifecycle and test helpers --------------------------------------------------------------

    def start(self) -> AdlsServer:
        self._http.start()
        return self

    def stop(self) -> None:
        self._http.stop()

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def account_url(self) -> str:
        return f"{self._http.base_url}/{self.account}"

    def create_filesystem(self, name: str) -> None:
        with self.lock:
            self.filesystems.setdefault(name, Filesystem(name))

    def put_file(self, fs: str, path: str, data: bytes) -> str:
        with self.lock:
            self.create_filesystem(fs)
            f = self.filesystems[fs]
            self._make_parents(f, path)
            node = f.paths.get(path)
            if node is None:
                node = f.paths[path] = Node(False)
            node.data = bytearray(data)
            node.touch()
            return bare_etag(node.etag)

    def deny(self, fs: str, path: str, shared_key_too: bool = False) -> None:
        """Refuse `path` and everything below it, as an ACL without r-x for the caller would.
        Azure applies ACLs to OAuth principals only (a shared key is a superuser); with
        `shared_key_too` the refusal also applies to shared-key and SAS requests."""
        self.denied[(fs, path.strip("/"))] = shared_key_too

    # --- dispatch --------------------------------------------------------------------------------

    def handle(self, req: Request) -> Response:
        self.requests.append(
            (req.method, req.raw_path + ("?" + "&".join(sorted(req.query)) if req.query else ""))
        )
        if self.aad is not None and self.aad.handles(req):
            return self.aad.handle(req, self.base_url)
        if not req.segments or req.segments[0] != self.account:
            raise fail("InvalidUri")
        principal = self.auth.authenticate(req)
        segs = req.segments[1:]
        if segs and segs[-1] == "":
            segs = segs[:-1]
        if not segs:
            raise fail(
                "InvalidQueryParameterValue", "Service-level operations are not served here."
            )
        with self.lock:
            fs_name, path = segs[0], "/".join(segs[1:])
            if not path:
                return self._filesystem_op(req, principal, fs_name)
            fs = self.filesystems.get(fs_name)
            if fs is None:
                raise (fail("FilesystemNotFound") if is_dfs(req) else fail("ContainerNotFound"))
            self._check_acl(principal, fs_name, path)
            if is_dfs(req):
                return self._dfs_path_op(req, principal, fs, path)
            return self._blob_op(req, principal, fs, path)

    def _check_acl(self, principal: Principal, fs: str, path: str) -> None:
        for (dfs, dpath), everyone in self.denied.items():
            if dfs != fs or not (path == dpath or path.startswith(dpath + "/") or dpath == ""):
                continue
            if principal.kind == "bearer" or everyone:
                raise fail("AuthorizationPermissionMismatch")

    def _make_parents(self, fs: Filesystem, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            p = "/".join(parts[:i])
            node = fs.paths.get(p)
            if node is None:
                fs.paths[p] = Node(True)
            elif not node.is_dir:
                raise fail("PathConflict")

    # --- filesystems -----------------------------------------------------------------------------

    def _filesystem_op(self, req: Request, principal: Principal, name: str) -> Response:
        fs = self.filesystems.get(name)
        dfs = req.q("resource") == "filesystem"
        if not dfs and req.q("restype") != "container":
            raise fail("InvalidQueryParameterValue")
        missing = fail("FilesystemNotFound") if dfs else fail("ContainerNotFound")
        if req.method == "PUT" and not req.q("comp"):
            self.auth.authorize(principal, "cw", "container", account_only=True)
            if fs is not None:
                if dfs:
                    raise fail("FilesystemAlreadyExists")
                raise fail("ContainerAlreadyExists")
            fs = self.filesystems[name] = Filesystem(name)
            return Response(201, {"ETag": fs.etag, "Last-Modified": rfc1123(fs.modified)})
        if fs is None:
            raise missing
        if req.method == "GET" and dfs:
            self.auth.authorize(principal, "l", "container")
            return self._list_paths(req, principal, fs)
        if req.method in ("GET", "HEAD") and not req.q("comp"):
            self.auth.authorize(principal, "r", "container")
            return Response(
                200,
                {
                    "ETag": fs.etag,
                    "Last-Modified": rfc1123(fs.modified),
                    "x-ms-namespace-enabled": "true",
                },
            )
        if req.method == "DELETE":
            self.auth.authorize(principal, "d", "container", account_only=True)
            del self.filesystems[name]
            return Response(202)
        raise fail("UnsupportedHttpVerb")

    def _list_paths(self, req: Request, principal: Principal, fs: Filesystem) -> Response:
        directory = (req.q("directory") or "").strip("/")
        recursive = (req.q("recursive") or "").lower()
        if recursive not in ("true", "false"):
            raise fail("MissingRequiredQueryParameter")
        try:
            max_results = int(req.q("maxResults") or 5000)
        except ValueError:
            max_results = 0
        if max_results < 1:
            raise fail("InvalidQueryParameterValue")
        if directory:
            self._check_acl(principal, fs.name, directory)
            node = fs.paths.get(directory)
            if node is None:
                raise fail("PathNotFound")
            if not node.is_dir:
                names = [directory]  # List Paths on a file lists that file
            else:
                prefix = directory + "/"
                names = [
                    p
                    for p in fs.paths
                    if p.startswith(prefix) and (recursive == "true" or "/" not in p[len(prefix) :])
                ]
        else:
            names = [p for p in fs.paths if recursive == "true" or "/" not in p]
        names.sort()
        token = req.q("continuation")
        if token:
            after = base64.urlsafe_b64decode(token.encode()).decode()
            names = [n for n in names if n >= after]
        page = min(max_results, self.max_page)
        chunk, rest = names[:page], names[page:]
        paths = []
        for name in chunk:
            node = fs.paths[name]
            entry = {
                "name": name,
                "contentLength": str(0 if node.is_dir else len(node.data)),
                "etag": bare_etag(node.etag),
                "lastModified": rfc1123(node.modified),
                "owner": "$superuser",
                "group": "$superuser",
                "permissions": "rwxr-x---" if node.is_dir else "rw-r-----",
                "creationTime": _filetime(node.created),
                "expiryTime": "0",
            }
            if node.is_dir:
                entry["isDirectory"] = "true"
            paths.append(entry)
        headers = {"Content-Type": "application/json;charset=utf-8"}
        if rest:
            headers["x-ms-continuation"] = base64.urlsafe_b64encode(rest[0].encode()).decode()
        return Response(200, headers, json.dumps({"paths": paths}).encode())

    # --- paths: DFS ------------------------------------------------------------------------------

    def _props(self, node: Node) -> dict[str, str]:
        h = {
            "ETag": node.etag,
            "Last-Modified": rfc1123(node.modified),
            "x-ms-creation-time": rfc1123(node.created),
            "x-ms-blob-type": "BlockBlob",
            "x-ms-resource-type": "directory" if node.is_dir else "file",
            "x-ms-server-encrypted": "true",
            "Content-Type": "application/octet-stream",
            "x-ms-owner": "$superuser",
            "x-ms-group": "$superuser",
            "x-ms-permissions": "rwxr-x---" if node.is_dir else "rw-r-----",
        }
        if node.is_dir:
            h["x-ms-meta-hdi_isfolder"] = "true"
        return h

    def _dfs_path_op(
        self, req: Request, principal: Principal, fs: Filesystem, path: str
    ) -> Response:
        node = fs.paths.get(path)
        resource = req.q("resource")
        action = req.q("action")
        if req.method == "PUT" and req.header("x-ms-rename-source"):
            return self._rename(req, principal, fs, path)
        if req.method == "PUT" and resource in ("file", "directory"):
            self.auth.authorize(principal, "cw", "object")
            if node is not None:
                _check_exists_condition(req, node)
                if resource == "file" and node.is_dir:
                    raise fail("PathConflict")
            elif req.header("if-match"):
                raise fail("PathNotFound")
            self._make_parents(fs, path)
            if node is None or resource == "file":
                node = fs.paths[path] = Node(resource == "directory")
            node.touch()
            return Response(
                201,
                {"ETag": node.etag, "Last-Modified": rfc1123(node.modified), "Content-Length": "0"},
            )
        if req.method == "PATCH" and action in ("append", "flush"):
            self.auth.authorize(principal, "w", "object")
            if node is None:
                raise fail("PathNotFound")
            if node.is_dir:
                raise fail("InvalidFlushOperation")
            try:
                position = int(req.q("position") or "")
            except ValueError:
                raise fail("InvalidQueryParameterValue") from None
            bad_position = fail("InvalidFlushPosition")
            if action == "append":
                # Appends may arrive in any order (the SDK uploads chunks in parallel).
                if position < len(node.data):
                    raise bad_position
                node.pending[position] = req.body
                return Response(202, {"Content-Length": "0"})
            check_if_match(req, node.etag)
            data = bytearray(node.data)
            for pos in sorted(node.pending):
                if pos != len(data) or len(data) >= position:
                    break
                data += node.pending[pos]
            if len(data) != position:
                raise bad_position
            node.data = data
            node.pending = {}
            node.touch()
            return Response(
                200,
                {"ETag": node.etag, "Last-Modified": rfc1123(node.modified), "Content-Length": "0"},
            )
        if req.method == "HEAD":
            self.auth.authorize(principal, "r", "object")
            if node is None:
                raise fail("PathNotFound")
            return Response(200, {**self._props(node), "Content-Length": str(len(node.data))})
        if req.method == "DELETE":
            return self._delete(req, principal, fs, path, dfs=True)
        raise fail("UnsupportedHttpVerb")

    def _rename(self, req: Request, principal: Principal, fs: Filesystem, dst: str) -> Response:
        self.auth.authorize(principal, "cw", "object")
        self.auth.authorize(principal, "d", "object")
        source = (req.header("x-ms-rename-source") or "").split("?", 1)[0]
        parts = unquote(source).lstrip("/").split("/", 1)
        if len(parts) != 2 or parts[0] != fs.name:
            raise fail("InvalidSourceUri")
        src = parts[1].strip("/")
        self._check_acl(principal, fs.name, src)
        snode = fs.paths.get(src)
        if snode is None:
            raise fail("SourcePathNotFound")
        parent = dst.rsplit("/", 1)[0] if "/" in dst else ""
        if parent and (parent not in fs.paths or not fs.paths[parent].is_dir):
            raise fail("RenameDestinationParentPathNotFound")
        dnode = fs.paths.get(dst)
        if dnode is not None:
            _check_exists_condition(req, dnode)
            if dnode.is_dir or snode.is_dir:
                raise fail("PathAlreadyExists")
        elif req.header("if-match"):
            raise fail("PathNotFound")
        moved = {p: n for p, n in fs.paths.items() if p == src or p.startswith(src + "/")}
        for p in moved:
            del fs.paths[p]
        for p, n in moved.items():
            fs.paths[dst + p[len(src) :]] = n
        return Response(
            201,
            {"ETag": snode.etag, "Last-Modified": rfc1123(snode.modified), "Content-Length": "0"},
        )

    def _delete(
        self, req: Request, principal: Principal, fs: Filesystem, path: str, dfs: bool
    ) -> Response:
        self.auth.authorize(principal, "d", "object")
        node = fs.paths.get(path)
        if node is None:
            if dfs:
                raise fail("PathNotFound")
            raise fail("BlobNotFound")
        check_if_match(req, node.etag)
        below = [p for p in fs.paths if p.startswith(path + "/")]
        if below and (req.q("recursive") or "").lower() != "true":
            raise fail(
                "DirectoryNotEmpty",
                "The recursive query parameter value must be true to delete a non-empty directory.",
            )
        for p in [path, *below]:
            del fs.paths[p]
        return Response(200 if dfs else 202, {"Content-Length": "0"})

    # --- paths: the Blob endpoint ----------------------------------------------------------------

    def _blob_op(self, req: Request, principal: Principal, fs: Filesystem, path: str) -> Response:
        node = fs.paths.get(path)
        if req.method in ("GET", "HEAD") and not req.q("comp"):
            self.auth.authorize(principal, "r", "object")
            if node is None:
                raise fail("BlobNotFound")
            check_if_match(req, node.etag)
            if req.method == "HEAD":
                return Response(200, {**self._props(node), "Content-Length": str(len(node.data))})
            return ranged_body(req, node.data, self._props(node))
        if req.method == "DELETE":
            return self._delete(req, principal, fs, path, dfs=False)
        raise fail("UnsupportedHttpVerb")

    def etag_of(self, fs: str, path: str) -> str:
        with self.lock:
            return bare_etag(self.filesystems[fs].paths[path].etag)
