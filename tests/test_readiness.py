"""Readiness under load: a service whose datastore keeps answering its own work is ready,
even when a probe of its own would have to queue behind that work; one whose datastore
stopped answering is not, within seconds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp.test_utils import TestClient
from support import JWT_SECRET, call, create_product, eventually

from shopkit.keys import POSTGRES
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app


class StallingRelay:
    """A TCP relay in front of a server that can stop passing bytes on (a datastore so
    busy, or so gone, that nothing it is sent gets an answer)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while chunk := await source.read(65536):
                await self.flowing.wait()
                sink.write(chunk)
                await sink.drain()
        except OSError:
            pass
        finally:
            sink.close()

    async def stop(self) -> None:
        self.flowing.set()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def mongo_relay(mongo_uri: str) -> AsyncIterator[tuple[StallingRelay, str]]:
    """A relay in front of this test's MongoDB, and the test database's URI through it."""
    parts = urlsplit(mongo_uri)
    relay = StallingRelay(parts.hostname or "127.0.0.1", parts.port or 27017)
    await relay.start()
    netloc = parts.netloc.replace(f":{parts.port}", f":{relay.port}")
    yield relay, urlunsplit(parts._replace(netloc=netloc))
    await relay.stop()


async def test_a_product_service_whose_datastore_answers_its_work_stays_ready(
    aiohttp_client: Any,
    mongo_relay: tuple[StallingRelay, str],
    user_service_url: str,
    admin_headers: dict[str, str],
) -> None:
    relay, uri = mongo_relay
    settings = ProductSettings.from_env(
        {
            "JWT_SECRET": JWT_SECRET,
            "HOST": "127.0.0.1",
            "MONGODB_URI": uri,
            "USER_SERVICE_URL": user_service_url,
        }
    )
    products = await aiohttp_client(create_product_app(settings))
    await create_product(products, admin_headers)
    await call(products, "GET", "/api/products", expected_status=200)
    # MongoDB is now too busy to answer anything new: a ping of the ready check's own would
    # wait past its budget. The service's work was answered a moment ago: it is ready.
    relay.flowing.clear()
    await call(products, "GET", "/ready", expected_status=200)

    # Once nothing has been answered for a while, the check asks MongoDB itself: not ready.
    async def unready() -> bool:
        return (await products.get("/ready")).status == 503

    await eventually(unready, "the product service reporting MongoDB gone")
    relay.flowing.set()


async def test_an_order_service_with_every_connection_busy_stays_ready(
    orders: TestClient,
) -> None:
    pool = orders.server.app[POSTGRES]
    await pool.fetchval("SELECT 1")  # the service's own work, answered
    async with AsyncExitStack() as busy:
        # Every connection is taken by work in progress: a SELECT 1 would queue behind it.
        for _ in range(10):
            await busy.enter_async_context(pool.acquire())
        await call(orders, "GET", "/ready", expected_status=200)
