"""The HTTP proxy that the environment (`*_proxy`, `no_proxy`) applies to a URL, for the lean
clients' CONNECT tunnel (http.py)."""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class Proxy:
    """An HTTP proxy that tunnels (CONNECT) to the service."""

    host: str
    port: int
    authorization: str | None  # a Proxy-Authorization value, from the proxy URL's userinfo

    def __str__(self) -> str:
        return f"proxy {self.host}:{self.port}"


def proxy_for(url: str) -> Proxy | None:
    """The proxy that urllib's environment rules (`*_proxy`, `no_proxy`) apply to `url`, or
    None. ValueError for a proxy this client cannot tunnel through (not an http:// proxy)."""
    parts = urlsplit(url)
    if sys.platform == "linux" and not any(k.lower().endswith("_proxy") for k in os.environ):
        return None  # urllib would find none (Linux: the environment only), without its import
    import urllib.request  # ~0.1 s of start-up: http.client, email

    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    p = urlsplit(proxy)
    if p.scheme != "http" or not p.hostname:
        raise ValueError(f"cannot tunnel through proxy {p.scheme}://{p.hostname}")
    auth = None
    if p.username is not None:
        pair = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        auth = "Basic " + base64.b64encode(pair).decode()
    return Proxy(p.hostname, p.port or 80, auth)
