"""Checkout and the order lifecycle, against real PostgreSQL and a real product service."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import (
    call,
    change_stock,
    checkout,
    create_product,
    customer,
    postgres,
    rows_in,
    stock_of,
)

ANN, BOB = customer(101), customer(102)


# -- checkout ---------------------------------------------------------------------------------


async def test_checkout_takes_stock_and_totals_exactly(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    shirt = await create_product(products, admin_headers, name="Shirt", price=19.99, stock=5)
    clip = await create_product(products, admin_headers, name="Clip", price=0.1, stock=9)
    reply = await checkout(orders, ANN, [(shirt["id"], 3), (clip["id"], 3)])
    order = reply["data"]
    assert order["user_id"] == 101 and order["status"] == "pending"
    assert Decimal(str(order["total_amount"])) == Decimal("60.27")  # 59.97 + 0.30
    lines = {line["product_name"]: line for line in order["items"]}
    assert lines["Shirt"]["quantity"] == 3 and lines["Shirt"]["price"] == 19.99
    assert [entry["status"] for entry in order["history"]] == ["pending"]
    assert await stock_of(products, shirt["id"]) == 2
    assert await stock_of(products, clip["id"]) == 6
    got = await call(orders, "GET", f"/api/orders/{order['id']}", headers=ANN, expected_status=200)
    assert got["data"] == order


async def test_repeated_lines_are_one_line(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    reply = await checkout(orders, ANN, [(mug["id"], 1), (mug["id"].upper(), 2)])
    assert [line["quantity"] for line in reply["data"]["items"]] == [3]
    assert await stock_of(products, mug["id"]) == 2


async def test_an_unknown_product_is_404_and_nothing_changes(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    reply = await checkout(
        orders, ANN, [(mug["id"], 1), ("0123456789abcdef01234567", 1)], expected_status=404
    )
    assert reply["code"] == "product_not_found"
    assert await stock_of(products, mug["id"]) == 5
    assert await rows_in(postgres_uri, "orders") == 0


async def test_short_stock_on_a_later_line_puts_the_earlier_ones_back(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    first = await create_product(products, admin_headers, name="A", stock=5)
    second = await create_product(products, admin_headers, name="B", stock=5)
    ordered = sorted([first["id"], second["id"]])  # lines are taken in product id order
    # Empty the later line's product after the price lookup could still see it: take it all.
    await change_stock(products, admin_headers, ordered[1], -4)
    reply = await checkout(orders, ANN, [(ordered[0], 2), (ordered[1], 2)], expected_status=409)
    assert reply["code"] == "insufficient_stock" and reply["available"] == 1
    assert await stock_of(products, ordered[0]) == 5
    assert await stock_of(products, ordered[1]) == 1
    assert await rows_in(postgres_uri, "orders") == 0
    listing = await call(orders, "GET", "/api/orders", headers=ANN, expected_status=200)
    assert listing["total"] == 0


async def test_a_product_service_that_is_down_is_503_and_nothing_changes(
    orders: TestClient,
    products: TestClient,
    product_server: TestServer,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    await product_server.close()
    reply = await checkout(orders, ANN, [(mug["id"], 1)], expected_status=503)
    assert reply["code"] == "upstream_unavailable"
    assert await rows_in(postgres_uri, "orders") == 0


async def test_a_take_whose_reference_was_undone_places_no_order(
    orders: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    service_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    """The product service refuses a take whose reference was undone (409
    stock_change_undone): the checkout fails and is undone, never an order without stock.
    (Only a service may undo; this is what a late take of an abandoned attempt meets.)"""
    mug = await create_product(products, admin_headers, stock=10)
    first = await checkout(orders, ANN, [(mug["id"], 1)])
    following = f"order-{first['data']['id'] + 1}"
    await call(
        products,
        "POST",
        f"/api/products/{mug['id']}/stock/undo",
        json={"reference": following},
        headers=service_headers,
        expected_status=200,
    )
    reply = await checkout(orders, ANN, [(mug["id"], 5)], expected_status=503)
    assert reply["code"] == "upstream_unavailable" and "no order was placed" in reply["error"]
    assert await stock_of(products, mug["id"]) == 9
    assert await rows_in(postgres_uri, "orders") == 1
    placed = await checkout(orders, ANN, [(mug["id"], 5)])  # a new attempt, a new reference
    assert placed["data"]["id"] > first["data"]["id"] + 1
    assert await stock_of(products, mug["id"]) == 4


async def test_the_oversell_race(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    for _ in range(2):  # and again
        product = await create_product(products, admin_headers, stock=10)

        async def buy_one(user: int, product_id: str) -> int:
            response = await orders.post(
                "/api/orders",
                json={"items": [{"product_id": product_id, "quantity": 1}]},
                headers=customer(user),
            )
            await response.read()
            return response.status

        statuses = await asyncio.gather(*(buy_one(1000 + n, product["id"]) for n in range(40)))
        assert statuses.count(201) == 10, statuses
        assert statuses.count(409) == 30, statuses
        assert await stock_of(products, product["id"]) == 0
    async with postgres(postgres_uri) as connection:
        states = await connection.fetch("SELECT checkout_state, count(*) FROM orders GROUP BY 1")
        units = await connection.fetchval("SELECT sum(quantity) FROM order_items")
    assert [(row[0], row[1]) for row in states] == [("placed", 20)]
    assert units == 20


# -- idempotency ------------------------------------------------------------------------------


async def test_a_repeated_idempotency_key_returns_the_first_order(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    first = await checkout(orders, ANN, [(mug["id"], 2)], key="checkout-1")
    response = await orders.post(
        "/api/orders",
        json={"items": [{"product_id": mug["id"], "quantity": 2}]},
        headers={**ANN, "Idempotency-Key": "checkout-1"},
    )
    assert response.status == 201
    assert response.headers["Idempotent-Replayed"] == "true"
    assert (await response.json())["data"] == first["data"]
    assert await stock_of(products, mug["id"]) == 3
    # Another user's identical key is another checkout.
    other = await checkout(orders, BOB, [(mug["id"], 2)], key="checkout-1")
    assert other["data"]["id"] != first["data"]["id"]
    # The same key for something else is refused.
    reply = await checkout(orders, ANN, [(mug["id"], 1)], key="checkout-1", expected_status=409)
    assert reply["code"] == "idempotency_key_reused"
    assert await stock_of(products, mug["id"]) == 1


async def test_racing_requests_with_one_key_buy_once(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=50)
    replies = await asyncio.gather(
        *(checkout(orders, ANN, [(mug["id"], 1)], key="double-click") for _ in range(10))
    )
    assert len({reply["data"]["id"] for reply in replies}) == 1
    assert await stock_of(products, mug["id"]) == 49


async def test_a_failed_checkout_frees_its_key(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=1)
    await checkout(orders, ANN, [(mug["id"], 2)], key="try", expected_status=409)
    await change_stock(products, admin_headers, mug["id"], 1)
    await checkout(orders, ANN, [(mug["id"], 2)], key="try")
    assert await stock_of(products, mug["id"]) == 0


# -- bad input and access ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"items": [{"product_id": "0123456789abcdef01234567", "quantity": 0}]},
        {"items": [{"product_id": "0123456789abcdef01234567", "quantity": -1}]},
        {"items": [{"product_id": "0123456789abcdef01234567", "quantity": 1.5}]},
        {"items": [{"product_id": "0123456789abcdef01234567", "quantity": "1"}]},
        {"items": [{"product_id": "0123456789abcdef01234567", "quantity": 1001}]},
        {"items": [{"product_id": "nope", "quantity": 1}]},
        {"items": [{"product_id": "0123456789abcdef01234567", "quantity": 1, "price": 0.01}]},
        {"items": [{"product_id": f"{n:024x}", "quantity": 1} for n in range(51)]},
        {"items": "everything"},
        {"items": [], "total": 0},
    ],
)
async def test_bad_checkouts_are_400(
    orders: TestClient, body: dict[str, Any], postgres_uri: str
) -> None:
    await call(orders, "POST", "/api/orders", json=body, headers=ANN, expected_status=400)
    assert await rows_in(postgres_uri, "orders") == 0


async def test_a_bad_idempotency_key_is_400(orders: TestClient) -> None:
    headers = {**ANN, "Idempotency-Key": "x" * 256}
    body = {"items": [{"product_id": "0123456789abcdef01234567", "quantity": 1}]}
    await call(orders, "POST", "/api/orders", json=body, headers=headers, expected_status=400)


async def test_checkout_needs_a_user(orders: TestClient, service_headers: dict[str, str]) -> None:
    body = {"items": [{"product_id": "0123456789abcdef01234567", "quantity": 1}]}
    await call(orders, "POST", "/api/orders", json=body, expected_status=401)
    await call(
        orders, "POST", "/api/orders", json=body, headers=service_headers, expected_status=403
    )


# -- reading orders ---------------------------------------------------------------------------


async def test_customers_see_their_own_orders_and_admins_all(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    mine = [(await checkout(orders, ANN, [(mug["id"], 1)]))["data"]["id"] for _ in range(3)]
    theirs = (await checkout(orders, BOB, [(mug["id"], 1)]))["data"]["id"]

    listing = await call(orders, "GET", "/api/orders?limit=2", headers=ANN, expected_status=200)
    assert [o["id"] for o in listing["data"]] == mine[::-1][:2]
    assert (listing["total"], listing["count"], listing["limit"]) == (3, 2, 2)
    everything = await call(
        orders, "GET", "/api/orders", headers=admin_headers, expected_status=200
    )
    assert everything["total"] == 4
    await call(orders, "GET", f"/api/orders/{theirs}", headers=ANN, expected_status=404)
    await call(orders, "GET", f"/api/orders/{theirs}", headers=admin_headers, expected_status=200)
    await call(orders, "GET", "/api/orders/user/102", headers=ANN, expected_status=403)
    bob = await call(orders, "GET", "/api/orders/user/102", headers=BOB, expected_status=200)
    assert [o["id"] for o in bob["data"]] == [theirs]
    by_admin = await call(
        orders,
        "GET",
        "/api/orders/user/101?status=pending",
        headers=admin_headers,
        expected_status=200,
    )
    assert by_admin["total"] == 3
    for path in ("/api/orders/nope", "/api/orders/0", "/api/orders/99999999999999999999"):
        await call(orders, "GET", path, headers=admin_headers, expected_status=404)
    await call(orders, "GET", "/api/orders?status=lost", headers=ANN, expected_status=400)
    await call(orders, "GET", "/api/orders", expected_status=401)


# -- the lifecycle ----------------------------------------------------------------------------


async def move(
    orders: TestClient, headers: dict[str, str], order_id: int, status: str, expected: int
) -> dict[str, Any]:
    return await call(
        orders,
        "PATCH",
        f"/api/orders/{order_id}/status",
        json={"status": status},
        headers=headers,
        expected_status=expected,
    )


async def test_an_admin_moves_an_order_through_its_life(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    order_id = (await checkout(orders, ANN, [(mug["id"], 1)]))["data"]["id"]
    await move(orders, admin_headers, order_id, "shipped", 409)
    for status in ("processing", "shipped"):
        await move(orders, admin_headers, order_id, status, 200)
    await move(orders, admin_headers, order_id, "cancelled", 409)
    reply = await move(orders, admin_headers, order_id, "delivered", 200)
    assert [h["status"] for h in reply["data"]["history"]] == [
        "pending",
        "processing",
        "shipped",
        "delivered",
    ]
    for status in ("pending", "processing", "shipped", "cancelled", "delivered"):
        conflict = await move(orders, admin_headers, order_id, status, 409)
        assert conflict["code"] == "invalid_transition"
    await move(orders, admin_headers, order_id, "lost", 400)
    assert await stock_of(products, mug["id"]) == 9


async def test_a_customer_may_only_cancel_its_own_pending_order(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    order_id = (await checkout(orders, ANN, [(mug["id"], 4)]))["data"]["id"]
    await move(orders, ANN, order_id, "processing", 403)
    await move(orders, BOB, order_id, "cancelled", 404)
    reply = await move(orders, ANN, order_id, "cancelled", 200)
    assert reply["data"]["status"] == "cancelled"
    assert await stock_of(products, mug["id"]) == 10
    await move(orders, ANN, order_id, "cancelled", 409)
    await move(orders, admin_headers, order_id, "cancelled", 409)
    assert await stock_of(products, mug["id"]) == 10

    processing = (await checkout(orders, ANN, [(mug["id"], 1)]))["data"]["id"]
    await move(orders, admin_headers, processing, "processing", 200)
    await move(orders, ANN, processing, "cancelled", 409)
    await move(orders, admin_headers, processing, "cancelled", 200)
    assert await stock_of(products, mug["id"]) == 10


async def test_racing_cancels_put_the_stock_back_once(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    order_id = (await checkout(orders, ANN, [(mug["id"], 3)]))["data"]["id"]

    async def cancel(headers: dict[str, str]) -> int:
        response = await orders.patch(
            f"/api/orders/{order_id}/status", json={"status": "cancelled"}, headers=headers
        )
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(cancel((ANN, admin_headers)[n % 2]) for n in range(10)))
    assert sorted(statuses) == [200] + [409] * 9
    assert await stock_of(products, mug["id"]) == 10
