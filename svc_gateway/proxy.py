"""Forwarding /api/* to the backend that owns it, answer streamed back unchanged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from shopkit.client import ServiceClient
from shopkit.client_address import client_behind_hops
from shopkit.context import REQUEST_ID
from shopkit.errors import UpstreamUnavailable
from shopkit.idempotency import HEADER as IDEMPOTENCY_KEY
from shopkit.idempotency import idempotency_key
from shopkit.keys import SETTINGS
from shopkit.openapi import Handler, endpoint
from shopkit.validation import read_body
from svc_gateway.checkout_forwarding import certain_checkout, checkout_key
from svc_gateway.keys import BACKENDS, CHECKOUT_DEADLINE
from svc_gateway.paths import NoSuchPath, checked_segments, rebuilt_path

log = logging.getLogger("shop.gateway.proxy")

# Answers up to this size are read whole and sent at once; larger ones are streamed.
BUFFERED_BODY_LIMIT = 256 * 1024

# A probe of a backend's /ready must answer well inside the gateway's own /ready budget
# (shopkit.app.READY_TIMEOUT): a slow backend is reported not ready, the gateway stays ready.
PROBE_TIMEOUT = aiohttp.ClientTimeout(total=1.0, connect=0.5)

# /api/<prefix> belongs to <backend> (svc_gateway/routes.py forwards it there).
API_PREFIXES = {"products": "product", "users": "user", "cart": "cart", "orders": "order"}
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
    # The client's address as this gateway established it, never as a client wrote it: the
    # user service limits logins by it (shopkit.client_address says whom each side trusts).
    headers["X-Forwarded-For"] = client_behind_hops(
        request, request.app[SETTINGS].trusted_proxy_hops
    )
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


def _target(request: web.Request, prefix: str) -> tuple[str, str]:
    """The path to forward, rebuilt from the checked segments (never the client's spelling,
    which a backend might decode into one of its own endpoints), and that path with the
    query string. Only paths under the backend's public prefix go through."""
    segments = checked_segments(request.rel_url.raw_path)
    if segments[:2] != ["api", prefix]:
        raise NoSuchPath()
    path = rebuilt_path(segments)
    query = request.rel_url.raw_query_string
    return path, f"{path}?{query}" if query else path


def _answer_headers(upstream_headers: Mapping[str, str]) -> CIMultiDict[str]:
    headers = CIMultiDict(
        (name, value) for name, value in upstream_headers.items() if name.lower() not in _HOP_BY_HOP
    )
    headers["X-Request-ID"] = REQUEST_ID.get()
    return headers


def proxy_to(prefix: str, backend: str) -> Handler:
    @endpoint(f"Forwarded unchanged to the {backend} service", raw=True, errors=(503, 504))
    async def proxy(request: web.Request) -> web.StreamResponse:
        path, target = _target(request, prefix)
        client = request.app[BACKENDS].get(backend)
        if client is None:
            raise UpstreamUnavailable(f"The {backend} service is not configured on this gateway.")
        checkout = request.method == "POST" and path == "/api/orders"
        # A checkout's key is judged before its body is read, as the order service does.
        key = checkout_key(idempotency_key(request.headers)) if checkout else ""
        # Decoded here (gzip, deflate) and sent on plain: one decoder judges every body.
        body = await read_body(request) if request.can_read_body else None
        if checkout:
            return await _forward_checkout(request, client, target, key, body)
        async with client.open(
            request.method,
            target,
            headers=_request_headers(request),
            data=body,
            auto_decompress=False,  # pass a compressed body through as it is
        ) as upstream:
            headers = _answer_headers(upstream.headers)
            length = upstream.content_length
            if request.method == "HEAD":  # the headers GET would have, Content-Length too
                return web.Response(status=upstream.status, reason=upstream.reason, headers=headers)
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


async def _forward_checkout(
    request: web.Request, client: ServiceClient, target: str, key: str, body: bytes | None
) -> web.Response:
    """A checkout is sent until its outcome is certain (svc_gateway/checkout_forwarding.py)."""
    headers = {**_request_headers(request), IDEMPOTENCY_KEY: key}
    answer = await certain_checkout(client, target, headers, body, request.app[CHECKOUT_DEADLINE])
    answer_headers = _answer_headers(answer.headers)
    answer_headers.popall(hdrs.CONTENT_LENGTH, None)
    answer_headers[IDEMPOTENCY_KEY] = key  # so a client that sent none can ask again safely
    return web.Response(
        status=answer.status, reason=answer.reason, headers=answer_headers, body=answer.body
    )


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
    """A backend's state as the public may see it: ready or not, and why not in our own
    words (never its URL, nor its own error text, which may name its datastore)."""
    try:
        async with client.open("GET", "/ready", timeout=PROBE_TIMEOUT) as reply:
            status = reply.status
    except UpstreamUnavailable:
        return {"ready": False, "error": "no answer"}
    if status != 200:
        return {"ready": False, "error": f"answered {status}"}
    return {"ready": True}


async def gateway_ready(app: web.Application) -> dict[str, Any]:
    """The gateway is ready whenever it can serve: that needs no backend (what does not
    need a backend that is down keeps working, what does answers 503). The body names
    each backend and its state, for `shopctl status` and for people."""
    clients = app[BACKENDS]
    names = sorted(clients)
    states = dict(
        zip(names, await asyncio.gather(*(_probe(clients[n]) for n in names)), strict=True)
    )
    backends: dict[str, Any] = {
        name: states.get(name, {"ready": False, "configured": False})
        for name in sorted(API_PREFIXES.values())
    }
    return {"backends": backends}
