"""Forwarding /api/* to the backend that owns it, answer streamed back unchanged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from shopkit.app import NotReady
from shopkit.client import ServiceClient
from shopkit.context import REQUEST_ID
from shopkit.errors import UpstreamUnavailable
from shopkit.openapi import Handler, endpoint
from svc_gateway.keys import BACKENDS

log = logging.getLogger("shop.gateway.proxy")

# Answers up to this size are read whole and sent at once; larger ones are streamed.
BUFFERED_BODY_LIMIT = 256 * 1024

# A probe of a backend's /ready must answer well inside the gateway's own /ready budget.
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.5, connect=1)

# /api/<prefix> belongs to <backend>.
ROUTES = {"products": "product", "users": "user", "cart": "cart", "orders": "order"}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

# What a client may tell a backend. Everything else (cookies, Host, hop-by-hop) stays here.
_FORWARDED_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "If-None-Match",
    "If-Match",
    "Idempotency-Key",
    "User-Agent",
)
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "server",
        "date",
        "x-request-id",
    }
)


def _request_headers(request: web.Request) -> dict[str, str]:
    headers = {
        name: request.headers[name]
        for name in _FORWARDED_REQUEST_HEADERS
        if name in request.headers
    }
    peer = request.remote or ""
    earlier = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{earlier}, {peer}" if earlier else peer
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


def proxy_to(backend: str) -> Handler:
    @endpoint(f"Forwarded unchanged to the {backend} service", raw=True, errors=(503,))
    async def proxy(request: web.Request) -> web.StreamResponse:
        client = request.app[BACKENDS].get(backend)
        if client is None:
            raise UpstreamUnavailable(f"The {backend} service is not configured on this gateway.")
        body = await request.read() if request.can_read_body else None
        async with client.open(
            request.method,
            request.raw_path,  # path and query string exactly as the client sent them
            headers=_request_headers(request),
            data=body,
            auto_decompress=False,  # pass a compressed body through as it is
        ) as upstream:
            headers = CIMultiDict(
                (name, value)
                for name, value in upstream.headers.items()
                if name.lower() not in _HOP_BY_HOP
            )
            headers["X-Request-ID"] = REQUEST_ID.get()
            length = upstream.content_length
            if length is not None and length <= BUFFERED_BODY_LIMIT:
                # Nearly every answer: read whole, sent with its headers in one write. A
                # failure while reading is still a clean 503, since nothing is sent yet.
                del headers[hdrs.CONTENT_LENGTH]
                body = await upstream.read()
                return web.Response(
                    status=upstream.status, reason=upstream.reason, headers=headers, body=body
                )
            return await _stream(request, backend, upstream, headers)

    return proxy


async def _stream(
    request: web.Request,
    backend: str,
    upstream: aiohttp.ClientResponse,
    headers: CIMultiDict[str],
) -> web.StreamResponse:
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # The status line is already sent: all that is left is to cut the answer off.
        log.warning("%s service broke off its answer: %r", backend, exc)
        response.force_close()
        return response
    await response.write_eof()
    return response


async def _probe(client: ServiceClient) -> dict[str, Any]:
    try:
        reply = await client.get("/ready", timeout=PROBE_TIMEOUT)
    except UpstreamUnavailable as exc:
        return {"ready": False, "url": client.base_url, "error": exc.message}
    if reply.status != 200:
        return {"ready": False, "url": client.base_url, "error": f"answered {reply.status}"}
    return {"ready": True, "url": client.base_url}


async def backends_ready(app: web.Application) -> dict[str, Any]:
    """The gateway is ready when every backend it is configured with is ready."""
    clients = app[BACKENDS]
    names = sorted(clients)
    states = dict(
        zip(names, await asyncio.gather(*(_probe(clients[n]) for n in names)), strict=True)
    )
    backends: dict[str, Any] = {
        name: states.get(name, {"ready": False, "configured": False})
        for name in sorted(ROUTES.values())
    }
    down = [name for name, state in states.items() if not state["ready"]]
    if down:
        raise NotReady(f"{', '.join(down)} not ready", {"backends": backends})
    return {"backends": backends}
