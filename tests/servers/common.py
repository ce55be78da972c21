"""HTTP plumbing shared by the test servers: requests, responses, Azure-style errors, Range and
If-Match handling, ETags and dates, and a threaded (optionally TLS) server on a free port."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit
from xml.sax.saxutils import escape

log = logging.getLogger(__name__)

_etag_counter = itertools.count(int(time.time() * 1000) << 8)
_etag_lock = threading.Lock()


def new_etag() -> str:
    """A fresh, never repeated ETag in Azure's quoted "0x8D..." form."""
    with _etag_lock:
        return f'"0x{next(_etag_counter):X}"'


def bare_etag(etag: str) -> str:
    return etag.strip().removeprefix("W/").strip('"')


def rfc1123(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def iso8601(ts: float) -> str:
    """Azure's seven-digit fractional ISO 8601 ('2024-01-02T03:04:05.1234567Z')."""
    d = dt.datetime.fromtimestamp(ts, dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond * 10:07d}Z"


def parse_iso8601(value: str) -> float:
    """SAS times: 'YYYY-MM-DDThh:mm:ssZ' (also with fractions or without seconds)."""
    v = value.strip().removesuffix("Z")
    for fmt in ("%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(v[:26], fmt).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            continue
    raise ValueError(value)


class StorageError(Exception):
    """An Azure error response: status, x-ms-error-code, message (and extra headers)."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def parse_query(qs: str) -> dict[str, str]:
    """Query parameters percent-decoded ('+' stays '+', as Azure reads it); repeats comma-joined."""
    out: dict[str, str] = {}
    for part in qs.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name, value = unquote(name), unquote(value)
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


# Azure's status and message for each error code the servers return.
ERRORS: dict[str, tuple[int, str]] = {
    "AuthorizationPermissionMismatch": (
        403,
        "This request is not authorized to perform this operation using this permission.",
    ),
    "BlobNotFound": (404, "The specified blob does not exist."),
    "ConditionNotMet": (
        412,
        "The condition specified using HTTP conditional header(s) is not met.",
    ),
    "ContainerAlreadyExists": (409, "The specified container already exists."),
    "ContainerNotFound": (404, "The specified container does not exist."),
    "DirectoryNotEmpty": (409, "The specified directory is not empty."),
    "FilesystemAlreadyExists": (409, "The specified filesystem already exists."),
    "FilesystemNotFound": (404, "The specified filesystem does not exist."),
    "InternalError": (500, "The server encountered an internal error."),
    "InvalidFlushOperation": (
        400,
        "The resource was created or modified by the Azure Blob Service API and cannot be written to by the Azure Data Lake Storage Service API.",
    ),
    "InvalidFlushPosition": (
        400,
        "The uploaded data is not contiguous or the position query parameter value is not equal to the length of the file after appending the uploaded data.",
    ),
    "InvalidHeaderValue": (
        400,
        "The value for one of the HTTP headers is not in the correct format.",
    ),
    "InvalidQueryParameterValue": (
        400,
        "Value for one of the query parameters specified in the request URI is invalid.",
    ),
    "InvalidRange": (416, "The range specified is invalid for the current size of the resource."),
    "InvalidResourceName": (400, "The specifed resource name contains invalid characters."),
    "InvalidSourceUri": (400, "The source URI is invalid."),
    "InvalidUri": (400, "The requested URI does not represent any resource on the server."),
    "MissingRequiredHeader": (
        400,
        "An HTTP header that's mandatory for this request is not specified.",
    ),
    "MissingRequiredQueryParameter": (
        400,
        "A query parameter that's mandatory for this request is not specified.",
    ),
    "OutOfRangeQueryParameterValue": (
        400,
        "One of the query parameters specified in the request URI is outside the permissible range.",
    ),
    "ParentNotFound": (404, "The specified parent path does not exist."),
    "PathAlreadyExists": (409, "The specified path already exists."),
    "PathConflict": (
        409,
        "The specified path, or an element of the path, exists and its resource type is invalid for this operation.",
    ),
    "PathNotFound": (404, "The specified path does not exist."),
    "RenameDestinationParentPathNotFound": (
        404,
        "The parent directory of the destination path does not exist.",
    ),
    "ResourceAlreadyExists": (409, "The specified resource already exists."),
    "ResourceNotFound": (404, "The specified resource does not exist."),
    "ResourceTypeMismatch": (
        409,
        "The specified resource type does not match the type of the existing resource.",
    ),
    "ShareAlreadyExists": (409, "The specified share already exists."),
    "ShareNotFound": (404, "The specified share does not exist."),
    "SourcePathNotFound": (404, "The source path for a rename operation does not exist."),
    "UnsupportedHttpVerb": (400, "The resource doesn't support the specified HTTP verb."),
}


def fail(code: str, message: str | None = None) -> StorageError:
    """The StorageError Azure returns for `code` (its usual message unless one is given)."""
    status, default = ERRORS[code]
    return StorageError(status, code, message or default)


@dataclass
class Request:
    method: str
    raw_path: str  # percent-encoded, as on the wire (SharedKey signs this form)
    segments: list[str]  # decoded path segments
    query: dict[str, str]  # decoded; names as sent
    headers: dict[str, str]  # lower-case names
    body: bytes
    scheme: str

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def q(self, name: str, default: str | None = None) -> str | None:
        """A query parameter, matched case-insensitively as Azure does."""
        lname = name.lower()
        for k, v in self.query.items():
            if k.lower() == lname:
                return v
        return default


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def xml_error(err: StorageError, request_id: str, req: Request | None = None) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><Error>'
        f"<Code>{escape(err.code)}</Code><Message>{escape(err.message)}\n"
        f"RequestId:{request_id}\nTime:{iso8601(time.time())}</Message></Error>"
    ).encode()


def json_error(err: StorageError, request_id: str, req: Request | None = None) -> bytes:
    import json

    msg = f"{err.message}\nRequestId:{request_id}\nTime:{iso8601(time.time())}"
    return json.dumps({"error": {"code": err.code, "message": msg}}).encode()


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """A 'bytes=a-b' / 'bytes=a-' header as an inclusive (start, end) within `size`, or None when
    absent. Unsatisfiable ranges are 416 InvalidRange, as Azure answers them."""
    if not value:
        return None
    unit, _, spec = value.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        raise fail("InvalidHeaderValue")
    a, _, b = spec.strip().partition("-")
    try:
        start = int(a)
        end = int(b) if b else size - 1
    except ValueError:
        raise fail("InvalidHeaderValue") from None
    if start < 0 or (b and end < start):
        raise fail("InvalidHeaderValue")
    if start >= size:
        raise StorageError(
            416,
            "InvalidRange",
            "The range specified is invalid for the current size of the resource.",
            {"Content-Range": f"bytes */{size}"},
        )
    return start, min(end, size - 1)


def check_if_match(req: Request, etag: str) -> None:
    """Honour If-Match / If-None-Match against the current ETag (412 ConditionNotMet)."""
    im = req.header("if-match")
    if im and im.strip() != "*" and all(bare_etag(t) != bare_etag(etag) for t in im.split(",")):
        raise fail("ConditionNotMet")
    inm = req.header("if-none-match")
    if inm and (inm.strip() == "*" or any(bare_etag(t) == bare_etag(etag) for t in inm.split(","))):
        if req.method in ("GET", "HEAD"):
            raise StorageError(
                304,
                "ConditionNotMet",
                "The condition specified using HTTP conditional header(s) is not met.",
            )
        raise fail("ConditionNotMet")


def ranged_body(req: Request, data: bytes | bytearray, headers: dict[str, str]) -> Response:
    """A GET answer for `data`: 200 whole, or 206 with Content-Range for a Range / x-ms-range."""
    rng = parse_range(req.header("x-ms-range") or req.header("range"), len(data))
    if rng is None:
        return Response(200, {**headers, "Accept-Ranges": "bytes"}, bytes(data))
    start, end = rng
    headers = {
        **headers,
        "Accept-Ranges": "bytes",
        "Content-Range": f"bytes {start}-{end}/{len(data)}",
    }
    return Response(206, headers, bytes(data[start : end + 1]))


# --- the HTTP server -----------------------------------------------------------------------------

Handler = Callable[[Request], Response]
ErrorRenderer = Callable[[StorageError, str, Request], bytes]


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("%s " + format, self.address_string(), *args)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(n))
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        req = Request(
            method=self.command,
            raw_path=parts.path,
            segments=unquote(parts.path).split("/")[1:],  # Azure reads %2F as a separator
            query=parse_query(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self._read_body(),
            scheme=self.server.scheme,
        )
        request_id = str(uuid.uuid4())
        try:
            resp = self.server.app(req)
        except StorageError as e:
            body = (
                b""
                if req.method == "HEAD" or e.status == 304
                else self.server.render_error(e, request_id, req)
            )
            ctype = "application/json;charset=utf-8" if body.startswith(b"{") else "application/xml"
            resp = Response(
                e.status, {**e.headers, "x-ms-error-code": e.code, "Content-Type": ctype}, body
            )
        except Exception:
            log.exception("test server crashed on %s %s", req.method, self.path)
            e = fail("InternalError")
            resp = Response(
                500, {"x-ms-error-code": e.code}, self.server.render_error(e, request_id, req)
            )
        headers = dict(resp.headers)
        self.send_response(resp.status)
        headers.setdefault("x-ms-request-id", request_id)
        headers.setdefault("x-ms-version", req.header("x-ms-version") or "2025-01-05")
        headers.setdefault("Server", "amlfs-test-server")
        if "Content-Length" not in headers:
            headers["Content-Length"] = str(len(resp.body))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if req.method != "HEAD" and resp.status != 304:
            self.wfile.write(resp.body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_PATCH = do_POST = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    app: Handler
    scheme: str
    render_error: ErrorRenderer


@dataclass
class TLSFiles:
    cert: str  # PEM; also the CA bundle clients trust
    key: str


def make_self_signed_cert(directory: str) -> TLSFiles:
    """A self-signed certificate for 127.0.0.1/localhost, usable as its own CA bundle."""
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amlfs test server")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress

    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    files = TLSFiles(os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem"))
    with open(files.cert, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(files.key, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return files


class ThreadedServer:
    """Runs `app` (Request -> Response) on a free loopback port in a daemon thread."""

    def __init__(
        self,
        app: Handler,
        render_error: ErrorRenderer,
        tls: TLSFiles | None = None,
    ):
        self._httpd = _Server(("127.0.0.1", 0), _RequestHandler)
        self._httpd.app = app
        self._httpd.render_error = render_error
        self._httpd.scheme = "https" if tls else "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.cert, tls.key)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.tls = tls
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"{self._httpd.scheme}://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
