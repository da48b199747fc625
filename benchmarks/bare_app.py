"""A bare aiohttp app with one JSON handler: the framework's ceiling on this machine.

It answers ``GET /api/products/{id}`` with a document the size and shape of the product
service's answer, encoded per request with orjson, served on uvloop like our services, and
with nothing else: no middleware, no access log, no datastore. ``PORT`` and ``HOST`` come
from the environment, as for the services. Run by ``benchmarks/run.py``.
"""

from __future__ import annotations

import asyncio
import os

import orjson
from aiohttp import web

# Shaped like svc_product's answer for a seeded product (see run.py's seed_products).
PRODUCT = {
    "name": "Benchmark product 0042",
    "description": (
        "A sturdy, well-made thing for the benchmark catalogue. It exists so that every "
        "answer carries a description about as long as a real product's would be."
    ),
    "price": 19.99,
    "category": "garden",
    "stock": 42,
    "imageUrl": "/static/img/products/42.webp",
    "createdAt": "2026-01-01T12:00:00.000Z",
    "updatedAt": "2026-01-01T12:00:00.000Z",
}


async def product(request: web.Request) -> web.Response:
    body = {"success": True, "data": {"id": request.match_info["id"], **PRODUCT}}
    return web.Response(body=orjson.dumps(body), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def create_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/products/{id}", product)
    app.router.add_get("/health", health)
    return app


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    web.run_app(
        create_app(),
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        access_log=None,
        print=None,
        loop=new_event_loop(),
    )
