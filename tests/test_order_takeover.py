"""A checkout whose process died is taken over at once, not a lease later: by a repeat with
its Idempotency-Key, and by recovery (at start-up and periodically). A repeat while the
first attempt is alive and running answers 409 checkout_in_progress with Retry-After."""

from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from support import (
    as_service,
    call,
    change_stock,
    create_product,
    customer,
    postgres,
    stock_of,
)

from svc_order.keys import CHECKOUT, STORE
from svc_order.saga import request_hash
from svc_order.store import Line, OwnerLock
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app

ANN = customer(111)
ORDER_SERVICE = as_service("order")  # stock moves with a reference are its alone


async def half_done_checkout(
    orders: TestClient,
    products: TestClient,
    product_id: str,
    *,
    owner: int | None,
    key: str = "crash-key",
) -> int:
    """What a process leaves when it dies after taking the stock of a 2-unit checkout: the
    intent (with a lease far from over) and the stock taken under the order's reference."""
    order_id = await orders.server.app[STORE].record_intent(
        user_id=111,
        lines=[Line(product_id, "Mug", 2, 1250)],
        idempotency_key=key,
        request_hash=request_hash({product_id: 2}),
        cart_version=None,
        lease_seconds=30,
        owner=owner,
    )
    await change_stock(products, ORDER_SERVICE, product_id, -2, reference=f"order-{order_id}")
    return order_id


def dead_owner(postgres_uri: str) -> int:
    """The owner id of a process that is gone: nobody holds its lock."""
    return OwnerLock(postgres_uri).id


async def order_rows(postgres_uri: str) -> list[tuple[int, str]]:
    async with postgres(postgres_uri) as connection:
        rows = await connection.fetch("SELECT id, checkout_state FROM orders ORDER BY id")
    return [(row["id"], row["checkout_state"]) for row in rows]


async def test_a_repeat_of_a_dead_attempt_takes_it_over_at_once_and_buys_once(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    dead = await half_done_checkout(orders, products, mug["id"], owner=dead_owner(postgres_uri))
    body = {"items": [{"product_id": mug["id"], "quantity": 2}]}
    reply = await call(
        orders,
        "POST",
        "/api/orders",
        json=body,
        headers={**ANN, "Idempotency-Key": "crash-key"},
        expected_status=201,
    )
    assert reply["data"]["id"] != dead
    assert await order_rows(postgres_uri) == [(reply["data"]["id"], "placed")]
    assert await stock_of(products, mug["id"]) == 8


async def test_a_repeat_while_the_first_attempt_lives_is_409_checkout_in_progress(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    alive = orders.server.app[CHECKOUT].owner_id
    assert alive is not None  # this service holds its owner lock
    running = await half_done_checkout(orders, products, mug["id"], owner=alive)
    body = {"items": [{"product_id": mug["id"], "quantity": 2}]}
    response = await orders.post(
        "/api/orders", json=body, headers={**ANN, "Idempotency-Key": "crash-key"}
    )
    reply = await response.json()
    assert response.status == 409, reply
    assert reply["code"] == "checkout_in_progress"
    assert int(response.headers["Retry-After"]) >= 1
    # Nothing was touched: the first attempt is its own process's to finish.
    assert await order_rows(postgres_uri) == [(running, "reserving")]
    assert await stock_of(products, mug["id"]) == 8


async def test_an_attempt_whose_undo_must_wait_is_left_to_the_next_repeat_at_once(
    orders: TestClient,
    products: TestClient,
    product_server: TestServer,
    product_settings: ProductSettings,
    aiohttp_server: Any,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    """An attempt that failed while the product service was down cannot give its stock
    back yet; its process is alive, but it works on it no more: a repeat is not told to
    wait for it (409 checkout_in_progress until the lease ran out), it finishes the undo
    itself as soon as the product service is back."""
    mug = await create_product(products, admin_headers, stock=10)
    attempt = await half_done_checkout(
        orders, products, mug["id"], owner=orders.server.app[CHECKOUT].owner_id
    )
    port = product_server.port
    await product_server.close()
    assert not await orders.server.app[CHECKOUT].undo(attempt)  # postponed
    body = {"items": [{"product_id": mug["id"], "quantity": 2}]}
    repeat = {**ANN, "Idempotency-Key": "crash-key"}
    response = await orders.post("/api/orders", json=body, headers=repeat)
    refusal = await response.json()
    assert response.status == 503, refusal  # products are down: not a wait for the attempt
    assert "still being undone; no order was placed" in refusal["error"]
    assert await order_rows(postgres_uri) == [(attempt, "compensating")]

    revived = await aiohttp_server(create_product_app(product_settings), port=port)
    reply = await call(
        orders, "POST", "/api/orders", json=body, headers=repeat, expected_status=201
    )
    assert await order_rows(postgres_uri) == [(reply["data"]["id"], "placed")]
    async with aiohttp.ClientSession() as session:
        answer = await session.get(revived.make_url(f"/api/products/{mug['id']}"))
        assert (await answer.json())["data"]["stock"] == 8  # the attempt's 2 back, 2 sold


async def test_recovery_undoes_a_dead_owners_checkout_before_its_lease_ends(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    alive = orders.server.app[CHECKOUT].owner_id
    await half_done_checkout(orders, products, mug["id"], owner=dead_owner(postgres_uri), key="a")
    living = await half_done_checkout(orders, products, mug["id"], owner=alive, key="b")
    await orders.server.app[CHECKOUT].recover()
    # The dead process's checkout is undone; the living one's is left to it.
    assert await order_rows(postgres_uri) == [(living, "reserving")]
    assert await stock_of(products, mug["id"]) == 8
