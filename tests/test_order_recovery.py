"""Crash safety: what a dead order service left half-done is finished or undone."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import (
    JWT_SECRET,
    REPO,
    OrderProcess,
    call,
    change_stock,
    checkout,
    create_product,
    customer,
    eventually,
    postgres,
    rows_in,
    stock_of,
)

from shopctl import processes
from svc_order.keys import CHECKOUT, STORE
from svc_order.store import Line
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app

ANN = customer(101)


async def expire_leases(postgres_uri: str) -> None:
    async with postgres(postgres_uri) as connection:
        await connection.execute("UPDATE orders SET lease_until = now() - interval '1 second'")


async def test_recovery_undoes_a_checkout_that_died_half_way(
    orders: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    service_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    first = await create_product(products, admin_headers, name="A", stock=5)
    second = await create_product(products, admin_headers, name="B", stock=5)
    app = orders.server.app
    # What a crash after the first take leaves: the intent, and one line's stock taken.
    order_id = await app[STORE].record_intent(
        user_id=101,
        lines=[Line(first["id"], "A", 2, 100), Line(second["id"], "B", 1, 100)],
        idempotency_key="crashed",
        request_hash="x",
        cart_version=None,
        lease_seconds=30,
    )
    await change_stock(products, service_headers, first["id"], -2, reference=f"order-{order_id}")
    await app[CHECKOUT].recover()
    assert await stock_of(products, first["id"]) == 3  # the lease still holds: hands off
    await expire_leases(postgres_uri)
    await app[CHECKOUT].recover()
    assert await stock_of(products, first["id"]) == 5
    assert await stock_of(products, second["id"]) == 5
    assert await rows_in(postgres_uri, "orders") == 0
    # The request that was in flight for the second line arrives late: it changes nothing,
    # and says so (its sender must not take it for stock taken).
    late = await change_stock(
        products,
        service_headers,
        second["id"],
        -1,
        reference=f"order-{order_id}",
        expected_status=409,
    )
    assert late["code"] == "stock_change_undone"
    assert await stock_of(products, second["id"]) == 5
    # And the key is free again.
    await checkout(orders, ANN, [(first["id"], 1)], key="crashed")


async def test_a_cancel_while_products_are_down_restocks_later(
    orders: TestClient,
    products: TestClient,
    product_server: TestServer,
    product_settings: ProductSettings,
    aiohttp_server: Any,
    admin_headers: dict[str, str],
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    order_id = (await checkout(orders, ANN, [(mug["id"], 4)]))["data"]["id"]
    port = product_server.port
    await product_server.close()
    reply = await call(
        orders,
        "PATCH",
        f"/api/orders/{order_id}/status",
        json={"status": "cancelled"},
        headers=ANN,
        expected_status=200,
    )
    assert reply["data"]["status"] == "cancelled"
    revived = await aiohttp_server(create_product_app(product_settings), port=port)
    await orders.server.app[CHECKOUT].recover()
    await orders.server.app[CHECKOUT].recover()  # twice: still once
    async with aiohttp.ClientSession() as session:
        reply = await (await session.get(revived.make_url(f"/api/products/{mug['id']}"))).json()
    assert reply["data"]["stock"] == 10


async def test_placing_cut_off_from_postgresql_reads_the_truth_before_it_answers(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    """When placing fails on PostgreSQL (a restart may cut off the answer to a commit that
    was made), the checkout reads the order again before it answers: placed after all, the
    order is its answer (a 503 would tell the shopper nothing was bought, and the cart would
    be emptied later by recovery); not placed, None (then it is undone, and 503 is true)."""
    mug = await create_product(products, admin_headers, stock=10)
    placed = (await checkout(orders, ANN, [(mug["id"], 1)]))["data"]
    saga = orders.server.app[CHECKOUT]
    found = await saga._placed_after_all(placed["id"])
    assert found is not None and found["id"] == placed["id"] and found["items"] == placed["items"]
    intent = await orders.server.app[STORE].record_intent(
        user_id=101,
        lines=[Line(mug["id"], "Mug", 1, 100)],
        idempotency_key="not-placed",
        request_hash="x",
        cart_version=None,
        lease_seconds=30,
    )
    assert await saga._placed_after_all(intent) is None


# -- the real thing: SIGKILL in the middle of a burst ------------------------------------------


@pytest.mark.slow
# aiohttp's client may leave a socket to the killed server for the garbage collector to
# close; that is the client's side of the crash we cause, not a leak of ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_sigkill_in_a_burst_of_checkouts_loses_no_stock(
    products: TestClient,
    product_server: TestServer,
    admin_headers: dict[str, str],
    postgres_uri: str,
    user_service_url: str,
) -> None:
    catalogue = [
        (await create_product(products, admin_headers, name=f"P{n}", stock=30))["id"]
        for n in range(3)
    ]
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": postgres_uri,
        "PRODUCT_SERVICE_URL": str(product_server.make_url("")),
        "CART_SERVICE_URL": "http://127.0.0.1:9",
        "USER_SERVICE_URL": user_service_url,
        "CHECKOUT_LEASE_SECONDS": "2",
        "RECOVERY_INTERVAL_SECONDS": "0.3",
        "LOG_LEVEL": "WARNING",
    }
    service = OrderProcess(env)
    service.start()
    try:
        await service.ready()
        answered = 0
        succeeded = 0
        killed = asyncio.Event()

        async def shopper(n: int, session: aiohttp.ClientSession) -> None:
            nonlocal answered, succeeded
            lines = [catalogue[n % 3], catalogue[(n + 1) % 3]]
            body = {"items": [{"product_id": pid, "quantity": 1 + n % 2} for pid in lines]}
            try:
                async with session.post(
                    f"{url}/api/orders", json=body, headers=customer(500 + n)
                ) as response:
                    await response.read()
                    succeeded += response.status == 201
            except aiohttp.ClientError:
                return  # the service died under this request
            answered += 1
            if answered == 8 and not killed.is_set():
                service.kill()
                killed.set()

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(shopper(n, session) for n in range(60)))
        assert killed.is_set()

        service.start()
        await service.ready()
        async with postgres(postgres_uri) as connection:

            async def all_settled() -> bool:
                unsettled = "SELECT count(*) FROM orders WHERE checkout_state <> 'placed'"
                return await connection.fetchval(unsettled) == 0

            await eventually(all_settled, "recovery of every half-done checkout")
            sold = dict(
                await connection.fetch(
                    """SELECT product_id, sum(quantity) FROM order_items JOIN orders
                       ON orders.id = order_id WHERE status <> 'cancelled'
                       GROUP BY product_id"""
                )
            )
            placed = await connection.fetchval("SELECT count(*) FROM orders")
        assert placed >= succeeded > 0
        for product_id in catalogue:
            assert await stock_of(products, product_id) + sold.get(product_id, 0) == 30
    finally:
        service.stop()
