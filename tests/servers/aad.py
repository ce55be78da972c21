"""A Microsoft Entra ID (AAD) stand-in for service-principal tests: the OpenID discovery
document and the v2.0 token endpoint (client-credentials grant) that azure-identity's
ClientSecretCredential (through MSAL) calls, issuing Bearer tokens the storage server checks.

MSAL only talks to an https authority and, for a host it does not know, first asks
login.microsoftonline.com to validate it (instance discovery) unless that is disabled; so this
runs on a TLS server and the credential must be built with disable_instance_discovery=True.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from .auth import TokenStore
from .common import Request, Response

STORAGE_SCOPE = "https://storage.azure.com/.default"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _json(status: int, obj: dict) -> Response:
    return Response(
        status, {"Content-Type": "application/json; charset=utf-8"}, json.dumps(obj).encode()
    )


@dataclass
class Directory:
    """One tenant with registered applications (client id -> secret), and applications that
    trust a federated credential (client id -> the service-account token they accept as a
    client assertion: workload identity)."""

    tenant_id: str
    clients: dict[str, str]
    federated: dict[str, str] = field(default_factory=dict)
    tokens: TokenStore = field(default_factory=TokenStore)
    token_requests: int = 0

    def handles(self, req: Request) -> bool:
        return bool(req.segments) and req.segments[0] == self.tenant_id

    def handle(self, req: Request, base_url: str) -> Response:
        rest = "/".join(req.segments[1:])
        issuer = f"{base_url}/{self.tenant_id}/v2.0"
        if req.method == "GET" and rest == "v2.0/.well-known/openid-configuration":
            return _json(
                200,
                {
                    "issuer": issuer,
                    "authorization_endpoint": f"{base_url}/{self.tenant_id}/oauth2/v2.0/authorize",
                    "token_endpoint": f"{base_url}/{self.tenant_id}/oauth2/v2.0/token",
                    "device_authorization_endpoint": f"{base_url}/{self.tenant_id}/oauth2/v2.0/devicecode",
                    "jwks_uri": f"{base_url}/{self.tenant_id}/discovery/v2.0/keys",
                    "response_types_supported": [
                        "code",
                        "id_token",
                        "code id_token",
                        "token id_token",
                    ],
                    "token_endpoint_auth_methods_supported": [
                        "client_secret_post",
                        "private_key_jwt",
                    ],
                    "tenant_region_scope": "WW",
                },
            )
        if req.method == "POST" and rest == "oauth2/v2.0/token":
            self.token_requests += 1
            form = dict(parse_qsl(req.body.decode()))
            if form.get("grant_type") != "client_credentials":
                return _json(
                    400,
                    {
                        "error": "unsupported_grant_type",
                        "error_description": "AADSTS70003: only client_credentials here.",
                    },
                )
            client = form.get("client_id", "")
            if form.get("client_assertion_type") == JWT_BEARER:
                if client not in self.federated or self.federated[client] != form.get(
                    "client_assertion"
                ):
                    return _json(
                        401,
                        {
                            "error": "invalid_client",
                            "error_description": "AADSTS700213: No matching federated identity record found for presented assertion.",
                        },
                    )
            elif client not in self.clients:
                return _json(
                    400,
                    {
                        "error": "unauthorized_client",
                        "error_description": f"AADSTS700016: Application with identifier '{client}' was not found in the directory.",
                    },
                )
            elif form.get("client_secret") != self.clients[client]:
                return _json(
                    401,
                    {
                        "error": "invalid_client",
                        "error_description": "AADSTS7000215: Invalid client secret provided.",
                    },
                )
            if STORAGE_SCOPE not in form.get("scope", "").split():
                return _json(
                    400,
                    {
                        "error": "invalid_scope",
                        "error_description": "AADSTS70011: The provided scope is not valid here.",
                    },
                )
            token, expires = self.tokens.issue(client)
            return _json(
                200,
                {
                    "token_type": "Bearer",
                    "expires_in": int(expires - time.time()),
                    "ext_expires_in": 3600,
                    "access_token": token,
                },
            )
        return _json(404, {"error": "not_found", "error_description": f"no AAD endpoint {rest!r}"})
