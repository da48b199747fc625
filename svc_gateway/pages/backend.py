"""How pages call the backends: through the gateway's clients, as the shopper (with their
token, as a browser calling /api/ would), with a refusal raised as ``BackendRefused``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
from aiohttp import web

from shopkit.client import ServiceReply
from shopkit.errors import NotFound, ShopError, UpstreamUnavailable
from svc_gateway.keys import BACKENDS
from svc_gateway.pages.access import session_of

# What a page only adds to what it shows (the header's cart count, the merge a page makes on
# its way, the cart's word on free delivery) waits this long for a backend at most: past
# it, the page goes on without it.
QUICK_TIMEOUT = aiohttp.ClientTimeout(total=1.0, connect=0.5)


class BackendRefused(ShopError):
    """A backend answered 4xx: its status, its sentence, its code and any field details."""

    def __init__(self, reply: ServiceReply) -> None:
        body = reply.body if isinstance(reply.body, dict) else {}
        message = body.get("error")
        if not isinstance(message, str) or not message:
            message = "The shop could not do that."
        details = body.get("details")
        super().__init__(
            message,
            code=str(body.get("code") or "refused"),
            details=details if isinstance(details, list) else None,
        )
        self.status = reply.status
        self.body = body


def segment(value: str | int) -> str:
    """A value made safe to put in a backend path as one segment."""
    return quote(str(value), safe="")


async def call_backend(
    request: web.Request,
    backend: str,
    method: str,
    path: str,
    *,
    json: Any = None,
    form: aiohttp.FormData | None = None,
    headers: Mapping[str, str] | None = None,
    as_shopper: bool = True,
    token: str | None = None,
    timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 - aiohttp's own
) -> ServiceReply:
    """A backend's answer, whatever its status below 500 (a dead or failing backend raises
    503). ``as_shopper`` sends the shopper's token, as a browser calling /api/ would;
    ``token`` sends that one instead (the gateway's own, for a guest's cart). The body is
    ``json``, or a multipart ``form`` (a file)."""
    client = request.app[BACKENDS].get(backend)
    if client is None:
        raise UpstreamUnavailable(f"The {backend} service is not configured on this gateway.")
    if token is None and as_shopper:
        token = session_of(request).token
    return await client.request(
        method, path, json=json, form=form, token=token, headers=headers, timeout=timeout
    )


async def call_backend_or_raise(
    request: web.Request,
    backend: str,
    method: str,
    path: str,
    *,
    not_found: str | None = None,
    **kwargs: Any,
) -> Any:
    """A backend's whole JSON body when it succeeded; a refusal raises ``BackendRefused``
    (the error page), or with ``not_found`` a 404 is the 404 page saying that."""
    reply = await call_backend(request, backend, method, path, **kwargs)
    if reply.status == 404 and not_found is not None:
        raise NotFound(not_found)
    if reply.status >= 400:
        raise BackendRefused(reply)
    return reply.body


T = TypeVar("T")


async def finish_all(*calls: Awaitable[T]) -> list[T]:
    """Run calls at once and let every one finish; then raise the first failure, if any (so
    none is left running, or failing unobserved, as with a bare ``asyncio.gather``)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]
