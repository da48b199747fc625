"""A bare aiohttp app on uvloop: one handler that encodes a product-sized answer with orjson,
no middleware, access log or datastore. The framework's ceiling on this machine."""

from __future__ import annotations

import os

import orjson
import uvloop
from aiohttp import web

PRODUCT = {
    "name": "Oak lamp 42",
    "description": "A sturdy, well-made thing for the benchmark catalogue, with a description "
    "about as long as a real product's.",
    "price": 19.99,
    "category": "category-02",
    "stock": 42,
    "createdAt": "2026-01-01T12:00:00.000Z",
    "updatedAt": "2026-01-01T12:00:00.000Z",
}


async def product(request: web.Request) -> web.Response:
    body = {"success": True, "data": {"id": request.match_info["id"], **PRODUCT}}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/api/products/{id}", product)
    app.router.add_get("/health", ready)
    app.router.add_get("/ready", ready)
    port = int(os.environ["PORT"])
    web.run_app(
        app, port=port, host="127.0.0.1", access_log=None, print=None, loop=uvloop.new_event_loop()
    )
