"""Request authentication as Azure Storage does it: SharedKey signatures, account and service SAS
tokens (signature, start/expiry, protocol, permissions, scope), and Bearer tokens issued by the
test AAD endpoint (aad.py). Written from the REST documentation; the SDK is the oracle in tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from .common import Request, StorageError, iso8601, parse_iso8601

# The headers SharedKey signs by position (Blob, File, Queue and DFS share this layout since
# version 2009-09-19).
_SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)
_CLOCK_SKEW = 15 * 60


def _sign(key_b64: str, text: str) -> str:
    digest = hmac.new(base64.b64decode(key_b64), text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def _header_sort_key(name: str) -> str:
    # The service orders x-ms-* headers with a culture-aware comparison that ignores '-' at the
    # first level and puts punctuation before digits before letters; this reproduces it for the
    # lower-case ASCII names HTTP clients send.
    out = []
    for ch in name:
        if ch == "-":
            continue
        out.append(("3" if ch.isalpha() else "2" if ch.isdigit() else "1") + ch)
    return "".join(out)


def shared_key_string_to_sign(req: Request, account: str) -> str:
    parts = [req.method]
    for h in _SIGNED_HEADERS:
        v = req.header(h, "") or ""
        if h == "content-length" and v == "0":
            v = ""
        parts.append(v)
    xms = sorted(
        ((k, v.strip()) for k, v in req.headers.items() if k.startswith("x-ms-")),
        key=lambda kv: (_header_sort_key(kv[0]), kv[0]),
    )
    text = "\n".join(parts) + "\n" + "".join(f"{k}:{v}\n" for k, v in xms)
    text += f"/{account}{req.raw_path}"
    for name, value in sorted(((k.lower(), v) for k, v in req.query.items())):
        text += f"\n{name}:{value}"
    return text


@dataclass(frozen=True)
class Principal:
    """Who made a request: "shared_key", "sas" (with its parameters) or "bearer" (a client id)."""

    kind: str
    sas: dict[str, str] = field(default_factory=dict)
    client_id: str | None = None


@dataclass
class TokenStore:
    """Bearer tokens the test AAD endpoint issued: token -> (client id, expiry)."""

    tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def issue(self, client_id: str, lifetime: float = 3600) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        expires = time.time() + lifetime
        with self.lock:
            self.tokens[token] = (client_id, expires)
        return token, expires

    def check(self, token: str) -> str:
        with self.lock:
            entry = self.tokens.get(token)
        if entry is None or entry[1] < time.time():
            raise StorageError(
                401,
                "InvalidAuthenticationInfo",
                "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
                {
                    "WWW-Authenticate": "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize resource_id=https://storage.azure.com"
                },
            )
        return entry[0]


def _auth_failed(detail: str) -> StorageError:
    return StorageError(
        403,
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header "
        f"is formed correctly including the signature.\n{detail}",
    )


class Authenticator:
    """Authenticates and authorises requests to one storage account.

    `sas_service` is the canonical-resource prefix service SAS tokens are signed for: "file" for
    Azure Files, "blob" for Blob and DFS (ADLS Gen2 service SAS are Blob SAS).
    """

    def __init__(self, account: str, key: str, sas_service: str, tokens: TokenStore | None = None):
        self.account = account
        self.key = key
        self.sas_service = sas_service
        self.tokens = tokens

    def authenticate(self, req: Request) -> Principal:
        auth = req.header("authorization")
        if auth:
            scheme, _, cred = auth.partition(" ")
            if scheme == "SharedKey":
                return self._shared_key(req, cred)
            if scheme == "Bearer":
                if self.tokens is None:
                    raise _auth_failed("Bearer tokens are not accepted by this server.")
                if req.scheme != "https":
                    raise StorageError(403, "AuthenticationFailed", "Bearer tokens require HTTPS.")
                return Principal("bearer", client_id=self.tokens.check(cred.strip()))
            raise StorageError(
                403, "AuthenticationFailed", f"Unsupported authorization scheme {scheme!r}."
            )
        if req.q("sig") is not None:
            return self._sas(req)
        raise StorageError(
            401,
            "NoAuthenticationInformation",
            "Server failed to authenticate the request. Please refer to the information in the www-authenticate header.",
        )

    def _shared_key(self, req: Request, cred: str) -> Principal:
        account, _, sig = cred.partition(":")
        if account != self.account:
            raise _auth_failed(
                f"The account {account!r} in the Authorization header is not this account."
            )
        date = req.header("x-ms-date") or req.header("date")
        if not date:
            raise _auth_failed("Request date header not specified.")
        try:
            skew = abs(time.time() - parsedate_to_datetime(date).timestamp())
        except (TypeError, ValueError):
            raise _auth_failed("The date header is not a valid RFC 1123 date.") from None
        if skew > _CLOCK_SKEW:
            raise _auth_failed("Request date header too old or too far in the future.")
        sts = shared_key_string_to_sign(req, self.account)
        if not hmac.compare_digest(_sign(self.key, sts), sig):
            raise _auth_failed(
                f"The MAC signature found in the HTTP request '{sig}' is not the same as any computed signature."
            )
        return Principal("shared_key")

    def _sas(self, req: Request) -> Principal:
        p = {
            k: req.q(k, "") or ""
            for k in (
                "sv",
                "ss",
                "srt",
                "sp",
                "st",
                "se",
                "sip",
                "spr",
                "ses",
                "sr",
                "si",
                "snapshot",
                "rscc",
                "rscd",
                "rsce",
                "rscl",
                "rsct",
                "sdd",
                "sig",
            )
        }
        if not p["sv"] or not p["sp"] or not p["se"]:
            raise _auth_failed(
                "sv, sp and se are mandatory in a SAS without a stored access policy."
            )
        if p["ss"] or p["srt"]:
            sts = (
                "\n".join(
                    [
                        self.account,
                        p["sp"],
                        p["ss"],
                        p["srt"],
                        p["st"],
                        p["se"],
                        p["sip"],
                        p["spr"],
                        p["sv"],
                        p["ses"],
                    ]
                )
                + "\n"
            )
        else:
            resource = self._sas_resource(req, p)
            fields = [p["sp"], p["st"], p["se"], resource, p["si"], p["sip"], p["spr"], p["sv"]]
            if self.sas_service == "blob":
                fields += [p["sr"], p["snapshot"], p["ses"]]
            fields += [p["rscc"], p["rscd"], p["rsce"], p["rscl"], p["rsct"]]
            sts = "\n".join(fields)
        if not hmac.compare_digest(_sign(self.key, sts), p["sig"]):
            raise _auth_failed(f"Signature did not match. String to sign used was {sts!r}")
        now = time.time()
        try:
            start = parse_iso8601(p["st"]) if p["st"] else None
            expiry = parse_iso8601(p["se"])
        except ValueError:
            raise _auth_failed(
                "The SAS start or expiry time is not a valid ISO 8601 time."
            ) from None
        if expiry < now or (start is not None and start > now + _CLOCK_SKEW):
            raise _auth_failed(
                f"Signature not valid in the specified time frame: Start [{p['st']}] - "
                f"Expiry [{p['se']}] - Current [{iso8601(now)}]"
            )
        if p["spr"] == "https" and req.scheme != "https":
            raise StorageError(
                403,
                "AuthorizationProtocolMismatch",
                "This request is not authorized to perform this operation using this protocol.",
            )
        return Principal("sas", sas=p)

    def _sas_resource(self, req: Request, p: dict[str, str]) -> str:
        # The canonical resource the SAS must have been signed for, derived from the request: a
        # token signed for another share/container/path then fails its signature check, as in Azure.
        segs = [s for s in req.segments[1:]]  # drop the account segment
        sr = p["sr"]
        if sr in ("s", "c"):
            segs = segs[:1]
        elif sr == "d":
            try:
                depth = int(p["sdd"])
            except ValueError:
                raise _auth_failed("sdd is required for a directory SAS.") from None
            segs = segs[: depth + 1]
        elif sr not in ("f", "b"):
            raise _auth_failed(f"Unsupported signed resource {sr!r}.")
        return f"/{self.sas_service}/{self.account}/" + "/".join(segs)

    def authorize(
        self, principal: Principal, perms: str, level: str, account_only: bool = False
    ) -> None:
        """Check a SAS grants one of `perms` (letters) at `level` ("service", "container" or
        "object"); `account_only` operations (creating a share or container) refuse service SAS.
        Shared keys and bearer tokens (an RBAC owner in these servers) are allowed."""
        if principal.kind != "sas":
            return
        p = principal.sas
        if account_only and not (p["ss"] or p["srt"]):
            raise StorageError(
                403,
                "AuthorizationFailure",
                "This request is not authorized to perform this operation.",
            )
        if p["ss"] or p["srt"]:
            service = "f" if self.sas_service == "file" else "b"
            if service not in p["ss"]:
                raise StorageError(
                    403,
                    "AuthorizationServiceMismatch",
                    "This request is not authorized to perform this operation using this service.",
                )
            if {"service": "s", "container": "c", "object": "o"}[level] not in p["srt"]:
                raise StorageError(
                    403,
                    "AuthorizationResourceTypeMismatch",
                    "This request is not authorized to perform this operation using this resource type.",
                )
        elif level == "service" or (level == "container" and p["sr"] not in ("s", "c")):
            raise StorageError(
                403,
                "AuthorizationFailure",
                "This request is not authorized to perform this operation.",
            )
        if not any(ch in p["sp"] for ch in perms):
            raise StorageError(
                403,
                "AuthorizationPermissionMismatch",
                "This request is not authorized to perform this operation using this permission.",
            )
