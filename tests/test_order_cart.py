"""Checking out the cart: the order, cart and product services together, all real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import (
    as_service,
    assert_documented,
    call,
    change_stock,
    create_product,
    customer,
    postgres,
    rows_in,
    stock_of,
)

from svc_cart.keys import REDIS
from svc_order.keys import CHECKOUT, STORE
from svc_order.saga import request_hash
from svc_order.store import Line, OwnerLock

USER = 4242  # a user id of this file's own on the shared Redis
ANN = customer(USER)
ORDER_SERVICE = as_service("order")  # stock moves with a reference are its alone


@pytest.fixture
def order_cart_service_url(cart_server: TestServer) -> str:
    """The order service's CART_SERVICE_URL here: the real cart service, for cart checkouts."""
    return str(cart_server.make_url(""))


@pytest.fixture
async def carts(aiohttp_client: Any, cart_server: TestServer) -> TestClient:
    """A client of the cart service the order service empties; USER's cart emptied after."""
    client = await aiohttp_client(cart_server)
    yield client
    await client.delete(f"/api/cart/{USER}", headers=ANN)


async def add(carts: TestClient, product_id: str, quantity: int) -> dict[str, Any]:
    body = {"product_id": product_id, "quantity": quantity}
    reply = await call(
        carts, "POST", f"/api/cart/{USER}/items", json=body, headers=ANN, expected_status=200
    )
    return reply["data"]


async def cart_of(carts: TestClient) -> dict[str, Any]:
    return (await call(carts, "GET", f"/api/cart/{USER}", headers=ANN, expected_status=200))["data"]


async def test_a_cart_checkout_buys_the_cart_and_empties_it(
    orders: TestClient, carts: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    shirt = await create_product(products, admin_headers, name="Shirt", price=19.99, stock=5)
    mug = await create_product(products, admin_headers, name="Mug", price=0.1, stock=5)
    await add(carts, shirt["id"], 3)
    await add(carts, mug["id"], 3)
    reply = await call(orders, "POST", "/api/orders", json={}, headers=ANN, expected_status=201)
    order = reply["data"]
    assert {(line["product_name"], line["quantity"]) for line in order["items"]} == {
        ("Shirt", 3),
        ("Mug", 3),
    }
    assert order["total_amount"] == 60.27
    assert (await cart_of(carts))["items"] == []
    assert await stock_of(products, shirt["id"]) == 2
    assert await stock_of(products, mug["id"]) == 2


async def test_an_empty_cart_is_400(orders: TestClient, carts: TestClient) -> None:
    reply = await call(orders, "POST", "/api/orders", headers=ANN, expected_status=400)
    assert reply["code"] == "empty_cart"


async def test_a_failed_cart_checkout_leaves_cart_and_stock_alone(
    orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    first = await create_product(products, admin_headers, stock=5)
    second = await create_product(products, admin_headers, stock=5)
    await add(carts, first["id"], 2)
    await add(carts, second["id"], 4)
    before = await cart_of(carts)
    await change_stock(products, admin_headers, second["id"], -3)
    reply = await call(orders, "POST", "/api/orders", json={}, headers=ANN, expected_status=409)
    assert reply["code"] == "insufficient_stock"
    after = await cart_of(carts)
    assert (after["items"], after["version"]) == (before["items"], before["version"])
    assert await stock_of(products, first["id"]) == 5
    assert await stock_of(products, second["id"]) == 2
    assert await rows_in(postgres_uri, "orders") == 0


async def test_a_cart_service_that_is_down_is_503(
    orders: TestClient, cart_server: TestServer, postgres_uri: str
) -> None:
    await cart_server.close()
    reply = await call(orders, "POST", "/api/orders", json={}, headers=ANN, expected_status=503)
    assert reply["code"] == "upstream_unavailable"
    assert await rows_in(postgres_uri, "orders") == 0


async def test_a_repeated_cart_checkout_returns_the_first_order(
    orders: TestClient, carts: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    await add(carts, mug["id"], 2)
    headers = {**ANN, "Idempotency-Key": "cart-once"}
    first = await call(orders, "POST", "/api/orders", headers=headers, expected_status=201)
    again = await call(orders, "POST", "/api/orders", headers=headers, expected_status=201)
    assert again["data"]["id"] == first["data"]["id"]
    assert await stock_of(products, mug["id"]) == 3


async def test_things_added_during_a_checkout_stay_in_the_cart(
    orders: TestClient, carts: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    lamp = await create_product(products, admin_headers, stock=5)
    read = await add(carts, mug["id"], 1)
    # The order service clears only the version it read; a cart that moved on is kept.
    await add(carts, lamp["id"], 1)
    stale = await carts.delete(f"/api/cart/{USER}?version={read['version']}", headers=ANN)
    assert stale.status == 409
    assert len((await cart_of(carts))["items"]) == 2


# -- one cart is bought once, however many checkouts of it run at once ------------------------


async def checkout_answer(orders: TestClient, headers: dict[str, str]) -> tuple[int, Any, Any]:
    """A cart checkout's status, body (checked against the document) and headers."""
    response = await orders.post("/api/orders", headers=headers)
    await assert_documented(orders, response, await response.text())
    return response.status, await response.json(), response.headers


@pytest.mark.parametrize("keys", ["none", "one each"])
async def test_checkouts_of_one_cart_at_once_buy_it_once(
    orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
    keys: str,
) -> None:
    """The attack: five checkouts of a 2-unit cart at once (no body, no key, or one key per
    browser tab) made five orders. One buys the cart; the others are told so."""
    mug = await create_product(products, admin_headers, stock=50)
    await add(carts, mug["id"], 2)
    tries = [
        {**ANN, **({"Idempotency-Key": f"tab-{n}"} if keys == "one each" else {})} for n in range(5)
    ]
    answers = await asyncio.gather(*(checkout_answer(orders, headers) for headers in tries))

    placed = [body for status, body, _ in answers if status == 201]
    assert len(placed) == 1, answers
    for status, body, headers in answers:
        if status == 201:
            continue
        # Refused for certain: still being bought (409, ask again shortly) or bought (400).
        assert (status, body["code"]) in {(409, "cart_checkout_in_progress"), (400, "empty_cart")}
        assert body["success"] is False and body["error"]
        if status == 409:
            assert int(headers["Retry-After"]) >= 1
    assert await stock_of(products, mug["id"]) == 48
    assert await rows_in(postgres_uri, "orders") == 1
    assert (await cart_of(carts))["items"] == []


async def test_racing_repeats_with_one_key_answer_the_one_order(
    orders: TestClient, carts: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    """A double click sends one key twice: the claim does not turn the repeat away, it gets
    the order its key placed."""
    mug = await create_product(products, admin_headers, stock=10)
    await add(carts, mug["id"], 2)
    headers = {**ANN, "Idempotency-Key": "double-click"}
    answers = await asyncio.gather(*(checkout_answer(orders, headers) for _ in range(3)))
    assert {status for status, _, _ in answers} == {201}, answers
    assert len({body["data"]["id"] for _, body, _ in answers}) == 1
    assert await stock_of(products, mug["id"]) == 8


async def claim_holder(
    orders: TestClient,
    products: TestClient,
    product: dict[str, Any],
    cart: dict[str, Any],
    **kw: Any,
) -> int:
    """A cart checkout of ``cart`` as a process left it: its intent written (holding the
    customer's cart claim) and the product's stock taken under its reference."""
    line = cart["items"][0]
    order_id = await orders.server.app[STORE].record_intent(
        user_id=USER,
        lines=[Line(product["id"], product["name"], line["quantity"], 1250)],
        idempotency_key=None,
        request_hash=request_hash(None),
        cart_version=cart["version"],
        cart_stamp=cart["expires_at"],
        lease_seconds=30,
        **kw,
    )
    await change_stock(
        products, ORDER_SERVICE, product["id"], -line["quantity"], reference=f"order-{order_id}"
    )
    return order_id


async def claims(postgres_uri: str) -> list[tuple[int, str, int | None]]:
    async with postgres(postgres_uri) as connection:
        rows = await connection.fetch("SELECT id, checkout_state, cart_version FROM orders")
    return sorted((row["id"], row["checkout_state"], row["cart_version"]) for row in rows)


async def test_a_checkout_while_another_runs_is_409_and_touches_nothing(
    orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    cart = await add(carts, mug["id"], 2)
    running = await claim_holder(
        orders, products, mug, cart, owner=orders.server.app[CHECKOUT].owner_id
    )
    status, body, headers = await checkout_answer(orders, ANN)
    assert (status, body["code"]) == (409, "cart_checkout_in_progress"), body
    assert "Look at your orders" in body["error"] and int(headers["Retry-After"]) >= 1
    assert await claims(postgres_uri) == [(running, "reserving", cart["version"])]
    assert await stock_of(products, mug["id"]) == 8
    assert (await cart_of(carts))["version"] == cart["version"]


async def test_a_failed_checkout_gives_the_cart_back_at_once(
    orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    await add(carts, mug["id"], 4)
    await change_stock(products, admin_headers, mug["id"], -3)
    refused = await call(orders, "POST", "/api/orders", headers=ANN, expected_status=409)
    assert refused["code"] == "insufficient_stock"
    await change_stock(products, admin_headers, mug["id"], 3)
    # The same cart, same version: bought now, not refused as "in progress".
    await call(orders, "POST", "/api/orders", headers=ANN, expected_status=201)
    assert await stock_of(products, mug["id"]) == 1
    assert [state for _, state, _ in await claims(postgres_uri)] == ["placed"]


async def test_a_dead_checkout_holding_the_cart_is_taken_over_at_once(
    orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    cart = await add(carts, mug["id"], 2)
    dead = await claim_holder(orders, products, mug, cart, owner=OwnerLock(postgres_uri).id)
    placed = await call(orders, "POST", "/api/orders", headers=ANN, expected_status=201)
    assert placed["data"]["id"] != dead
    assert await claims(postgres_uri) == [(placed["data"]["id"], "placed", None)]
    assert await stock_of(products, mug["id"]) == 8  # the dead attempt's take was undone
    assert (await cart_of(carts))["items"] == []


async def test_a_bought_cart_not_cleared_yet_is_not_bought_again(
    orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    """Its order placed, the process died before it emptied the cart: the next checkout
    finishes that clear (as recovery would) and finds the cart empty."""
    mug = await create_product(products, admin_headers, stock=10)
    cart = await add(carts, mug["id"], 2)
    bought = await claim_holder(orders, products, mug, cart)
    lines = [Line(mug["id"], mug["name"], 2, 1250)]
    assert await orders.server.app[STORE].mark_placed(bought, lines) is not None

    refused = await call(orders, "POST", "/api/orders", headers=ANN, expected_status=400)
    assert refused["code"] == "empty_cart"
    assert await claims(postgres_uri) == [(bought, "placed", None)]
    assert await stock_of(products, mug["id"]) == 8
    assert (await cart_of(carts))["items"] == []


@pytest.mark.parametrize("settled_by", ["recovery", "the next checkout"])
async def test_a_later_cart_at_the_same_version_is_neither_refused_nor_cleared(
    orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
    settled_by: str,
) -> None:
    """Versions start again when a cart expires or Redis loses it: an order whose clear is
    still owed to an earlier cart at this version number must leave this cart alone."""
    mug = await create_product(products, admin_headers, stock=10)
    lamp = await create_product(products, admin_headers, name="Lamp", stock=10)
    redis = carts.server.app[REDIS]
    await redis.delete(f"cart:{USER}")
    earlier = await add(carts, mug["id"], 1)
    await redis.delete(f"cart:{USER}")  # it expired; a new cart starts at the same version
    now = await add(carts, lamp["id"], 1)
    assert now["version"] == earlier["version"] and now["expires_at"] != earlier["expires_at"]
    owed = await claim_holder(orders, products, mug, earlier)
    lines = [Line(mug["id"], mug["name"], 1, 1250)]
    assert await orders.server.app[STORE].mark_placed(owed, lines) is not None

    if settled_by == "recovery":
        await orders.server.app[CHECKOUT].recover()
        assert await claims(postgres_uri) == [(owed, "placed", None)]
        assert (await cart_of(carts))["version"] == now["version"]  # left alone
    placed = await call(orders, "POST", "/api/orders", headers=ANN, expected_status=201)
    assert [(line["product_name"], line["quantity"]) for line in placed["data"]["items"]] == [
        ("Lamp", now["items"][0]["quantity"])
    ]
    assert (await cart_of(carts))["items"] == []
