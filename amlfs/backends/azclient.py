"""The Azure SDK clients of the backends (blob.py, fileshare.py, adls.py): endpoint and credential
resolution, the retry policy (bounded, a refused token final), the HTTP session and its pool, and
how an `Abort` reaches an SDK download.

The SDK (azure.core, azure.storage, requests: ~0.25 s of start-up CPU) is imported on first use,
not with this module: a Blob command served by the lean client alone (a no-change `stage`
re-run) never loads it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..credentials import ResolvedCredential, account_url, resolve_credential
from ..registry import DatastoreConfig
from .base import Abort
from .errors import Aborted
from .http import DEFAULT_RETRIES, shutdown

MiB = 1024 * 1024


# --- SDK clients: endpoint, retries, transport ----------------------------------------------------


def resolve(ds: DatastoreConfig, service: str) -> tuple[ResolvedCredential, str]:
    """The credential datastore `ds` uses and its account URL for `service` (credentials.py)."""
    rc = resolve_credential(ds)
    return rc, account_url(ds, service, rc)


@functools.cache
def _retry_classes() -> tuple[type, type]:
    """AzureRetry and BoundedRetry, defined on first use (they subclass the SDK's retry)."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.storage.blob import ExponentialRetry

    class AzureRetry(ExponentialRetry):
        """The storage SDK's exponential retry, except that a credential that cannot produce a
        token is not retried: it will not change its mind, and a wrong client secret would
        otherwise cost half a minute of backoff before the user hears of it. (The token request
        runs inside the retry policy; the SDK's own signing errors are never retried anyway.)"""

        def increment(
            self, settings: dict[str, Any], request: Any, response: Any = None, error: Any = None
        ) -> bool:
            if isinstance(error, ClientAuthenticationError):
                return False
            return super().increment(settings, request, response=response, error=error)

    class BoundedRetry(AzureRetry):
        """Waits `backoff`, 2x, 4x... (jittered down to half), so that `retry_total` retries
        end within a bounded time -- the SDK default (15 s + 3^n) can stall a FUSE read for a
        minute."""

        def __init__(self, backoff: float, retry_total: int):
            super().__init__(initial_backoff=0, increment_base=2, retry_total=retry_total)
            self.backoff = backoff

        def get_backoff_time(self, settings: dict[str, Any]) -> float:
            count = max(0, settings["count"] - 1)
            return self.backoff * 2**count * random.uniform(0.5, 1.0)

    return AzureRetry, BoundedRetry


def __getattr__(name: str) -> Any:
    """`AzureRetry` and `BoundedRetry`, imported from here as before (loads the SDK)."""
    if name == "AzureRetry":
        return _retry_classes()[0]
    if name == "BoundedRetry":
        return _retry_classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def retry_policy(retry_total: int | None, backoff: float = 1.0) -> Any:
    """A BoundedRetry of `retry_total` retries (0: none), or None for the default schedule."""
    return None if retry_total is None else _retry_classes()[1](backoff, retry_total)


def client_options(
    block_size: int, retry_policy: Any = None, api_version: str | None = None, **transport: Any
) -> dict[str, Any]:
    """Keyword arguments for an azure.storage client: one block is one GET; `retry_policy`, by
    default the lean client's budget (3 retries about 1, 2, 4 s apart, jittered down to half: one
    retry budget for every request amlfs sends, SEMANTICS.md "Faults") with a refused token
    final; `api_version`: the x-ms-version to send (None: the SDK's newest); `transport`: a
    `transport=`, or the SDK transport's `connection_timeout=` etc."""
    if retry_policy is None:
        retry_policy = _retry_classes()[1](1.0, DEFAULT_RETRIES)
    extra = {"api_version": api_version} if api_version else {}
    return {
        "max_single_get_size": block_size,
        "max_chunk_get_size": block_size,
        "retry_policy": retry_policy,
        **extra,
        **transport,
    }


#: connections kept per client: the transfer engine's 32 workers, each uploading up to 4 blocks
#: or ranges at once. The SDK's default pool keeps 10, so an upload of many files opened and
#: discarded a connection per request beyond those ("Connection pool is full" warnings).
POOL_CONNECTIONS = 128


def pooled_transport(
    max_connections: int = POOL_CONNECTIONS,
    connection_timeout: float = 10.0,
    read_timeout: float = 60.0,
) -> tuple[Any, Any]:
    """A transport over our own session (close it with the client): the SDK's default pool keeps
    10 connections, fewer than the threads a mount or a transfer drives; urllib3's own retries
    stay off (the SDK policy retries)."""
    import requests
    from azure.core.pipeline.transport import RequestsTransport

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=max_connections, max_retries=0
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    transport = RequestsTransport(
        session=session,
        session_owner=False,
        connection_timeout=connection_timeout,
        read_timeout=read_timeout,
        connection_data_block_size=1 * MiB,
    )
    return transport, session


def pooled_client_options(
    ds: DatastoreConfig,
    block_size: int,
    *,
    retry_total: int | None,
    retry_backoff: float,
    connection_timeout: float,
    read_timeout: float | None,
) -> tuple[dict[str, Any], Any]:
    """The client keywords of a File share or ADLS backend (`client_options` over our own pooled
    transport), and the session to close with it."""
    transport, session = pooled_transport(
        connection_timeout=connection_timeout, read_timeout=read_timeout or 60.0
    )
    kwargs = client_options(
        block_size,
        retry_policy(retry_total, retry_backoff),
        api_version=ds.api_version,
        transport=transport,
    )
    return kwargs, session


# --- cancelling an SDK download --------------------------------------------------------------------


@contextmanager
def sdk_abort(abort: Abort | None, path: str) -> Iterator[dict[str, Any]]:
    """Keyword arguments for SDK calls (one download) that let `abort` stop them, as far as the
    SDK allows: the abort is checked before every request the SDK sends (its retries included:
    Aborted is no AzureError, so its retry policy lets it through), and once a response's
    headers have arrived, cancelling shuts that response's socket down, cutting the body read
    short. A stall before the response headers runs on to the SDK's read timeout (no socket is
    known until then); the result is discarded. Raises Aborted when cancelled, whatever the SDK
    raised instead."""
    if abort is None:
        yield {}
        return
    abort.check(path)
    closers: list[Callable[[], None]] = []

    def before(request: Any) -> None:
        abort.check(path)

    def after(response: Any) -> None:
        sock = _response_socket(response)
        if sock is not None:
            closer = functools.partial(shutdown, sock)
            closers.append(closer)
            abort.attach(closer)

    try:
        yield {"raw_request_hook": before, "raw_response_hook": after}
    except Exception:
        if abort.cancelled:
            raise Aborted(f"reading {path!r} was cancelled", path) from None
        raise
    finally:
        for closer in closers:
            abort.detach(closer)
    abort.check(path)


def _response_socket(pipeline_response: Any) -> Any:
    """The socket under a requests-transport response (None for another transport)."""
    raw = getattr(getattr(pipeline_response.http_response, "internal_response", None), "raw", None)
    return getattr(getattr(raw, "connection", None), "sock", None)
