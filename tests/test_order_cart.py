"""Checking out the cart: the order, cart and product services together, all real."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import call, change_stock, create_product, customer, stock_of
from test_order import order_settings, rows_in

from svc_cart.app import CartSettings
from svc_cart.app import create_app as create_cart_app
from svc_order.app import create_app as create_order_app

USER = 4242  # a user id of this file's own on the shared Redis
ANN = customer(USER)


@pytest.fixture
async def cart_server(aiohttp_server: Any, cart_settings: CartSettings) -> TestServer:
    return await aiohttp_server(create_cart_app(cart_settings))


@pytest.fixture
async def orders(
    aiohttp_client: Any,
    postgres_uri: str,
    product_server: TestServer,
    cart_server: TestServer,
    user_service_url: str,
) -> TestClient:
    settings = order_settings(
        postgres_uri,
        str(product_server.make_url("")),
        user_service_url,
        CART_SERVICE_URL=str(cart_server.make_url("")),
    )
    return await aiohttp_client(create_order_app(settings))


@pytest.fixture
async def carts(aiohttp_client: Any, cart_server: TestServer) -> TestClient:
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
