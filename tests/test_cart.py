"""The cart service over HTTP, on a real Redis, pricing with the real product service."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from openapi_spec_validator import validate
from redis.asyncio import Redis
from support import (
    JWT_SECRET,
    add_accounts,
    bearer,
    call,
    create_product,
    eventually,
    postgres,
)

from shopctl import embedded, processes
from shopkit.auth import issue_token
from shopkit.domain import MAX_CART_LINES, MAX_CART_QUANTITY
from svc_cart.app import CartSettings
from svc_cart.app import create_app as create_cart_app
from svc_cart.keys import CATALOGUE, STORE
from svc_cart.store import (
    CART_TTL_SECONDS,
    REDIS_UNAVAILABLE,
    CartStore,
    cart_key,
)
from svc_cart.store import redis_client as cart_redis_client
from svc_user.app import UserSettings

MISSING_ID = "0123456789abcdef01234567"


@pytest.fixture
async def redis_client(redis_server_uri: str) -> AsyncIterator[Redis]:
    """A client of the Redis the cart service uses, to look at what it stored."""
    client = Redis.from_url(redis_server_uri)
    yield client
    await client.aclose()


@dataclass(frozen=True)
class Shopper:
    user_id: str
    headers: dict[str, str]

    @property
    def path(self) -> str:
        return f"/api/cart/{self.user_id}"

    @property
    def key(self) -> str:
        return cart_key(self.user_id)


SHOPPERS = 64  # the most customers one test makes


@pytest.fixture
async def shoppers(
    redis_client: Redis, user_server: TestServer, user_settings: UserSettings
) -> AsyncIterator[Callable[[], Shopper]]:
    """Makes customers with accounts and user ids of their own; their carts deleted after."""
    # A random block of ids, so that no two tests share a cart in the shared Redis.
    first = 10**12 + secrets.randbelow(10**15)
    async with postgres(user_settings.database_url) as connection:
        await add_accounts(connection, range(first, first + SHOPPERS))
    made: list[Shopper] = []

    def make() -> Shopper:
        assert len(made) < SHOPPERS, "make SHOPPERS larger"
        user_id = str(first + len(made))
        token = issue_token(JWT_SECRET, sub=user_id, email=f"{user_id}@shop.test", role="customer")
        made.append(Shopper(user_id, bearer(token)))
        return made[-1]

    yield make
    if made:
        await redis_client.delete(*(shopper.key for shopper in made))


@pytest.fixture
def shopper(shoppers: Callable[[], Shopper]) -> Shopper:
    """One customer of the test's own."""
    return shoppers()


@pytest.fixture
def stock(products: TestClient, admin_headers: dict[str, str]) -> Callable[..., Any]:
    """Creates a product in the catalogue and returns its id."""

    async def create(**fields: Any) -> str:
        return (await create_product(products, admin_headers, **fields))["id"]

    return create


async def add(
    cart: TestClient,
    shopper: Shopper,
    product_id: str,
    quantity: int = 1,
    *,
    expected_status: int = 200,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    return await call(
        cart,
        "POST",
        f"{shopper.path}/items",
        json={"product_id": product_id, "quantity": quantity},
        headers=shopper.headers if headers is None else headers,
        expected_status=expected_status,
    )


async def set_quantity(
    cart: TestClient, shopper: Shopper, product_id: str, quantity: int, expected_status: int = 200
) -> dict[str, Any]:
    return await call(
        cart,
        "PUT",
        f"{shopper.path}/items/{product_id}",
        json={"quantity": quantity},
        headers=shopper.headers,
        expected_status=expected_status,
    )


async def view(cart: TestClient, shopper: Shopper) -> dict[str, Any]:
    reply = await call(cart, "GET", shopper.path, headers=shopper.headers, expected_status=200)
    return reply["data"]


def quantities(data: dict[str, Any]) -> dict[str, int]:
    return {item["product_id"]: item["quantity"] for item in data["items"]}


Route = tuple[str, str, dict[str, Any] | None]


def cart_routes(product_id: str = MISSING_ID, *, clears: bool = True) -> list[Route]:
    """Every route of one cart as (method, path after the cart's, a valid body)."""
    routes: list[Route] = [
        ("GET", "", None),
        ("POST", "/items", {"product_id": product_id, "quantity": 1}),
        ("PUT", f"/items/{product_id}", {"quantity": 1}),
        ("PUT", f"/items/{product_id}", {"quantity": 0}),
        ("DELETE", f"/items/{product_id}", None),
    ]
    if clears:
        routes += [("DELETE", "", None), ("DELETE", "?version=1", None)]
    return routes


async def refused_on_each(
    client: TestClient,
    cart_path: str,
    routes: list[Route],
    *,
    expected_status: int,
    code: str,
    headers: dict[str, str] | None = None,
) -> None:
    for method, suffix, body in routes:
        refused = await call(
            client,
            method,
            cart_path + suffix,
            json=body,
            headers=headers,
            expected_status=expected_status,
        )
        assert refused["code"] == code, (method, suffix, refused)


# -- reading ----------------------------------------------------------------------------------


async def test_a_cart_never_filled_is_empty_and_needs_no_catalogue(
    cart: TestClient, product_server: TestServer, shopper: Shopper, redis_client: Redis
) -> None:
    await product_server.close()  # an empty cart is answered without asking for products
    data = await view(cart, shopper)
    assert data == {
        "user_id": int(shopper.user_id),
        "items": [],
        "total": 0,
        "item_count": 0,
        "expires_at": None,
        "version": 0,
    }
    response = await cart.get(shopper.path, headers=shopper.headers)
    assert '"total":0.00' in await response.text()
    assert await redis_client.exists(shopper.key) == 0  # reading writes nothing


async def test_totals_are_exact_and_written_with_two_places(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    coffee = await stock(name="Coffee", price=19.99, stock=10, imageUrl="/img/coffee.png")
    sweets = await stock(name="Sweets", price=0.1, stock=10)
    await add(cart, shopper, coffee, 3)
    answer = await add(cart, shopper, sweets, 3)
    assert answer["data"] == await view(cart, shopper)

    response = await cart.get(shopper.path, headers=shopper.headers)
    text = await response.text()
    assert '"price":19.99,"quantity":3' in text and '"subtotal":59.97' in text
    assert '"price":0.10,"quantity":3' in text and '"subtotal":0.30' in text
    assert '"total":60.27' in text

    data = orjson.loads(text)["data"]
    assert data["items"] == [
        {
            "product_id": coffee,
            "name": "Coffee",
            "price": 19.99,
            "quantity": 3,
            "imageUrl": "/img/coffee.png",
            "subtotal": 59.97,
        },
        {
            "product_id": sweets,
            "name": "Sweets",
            "price": 0.1,
            "quantity": 3,
            "imageUrl": None,
            "subtotal": 0.3,
        },
    ]
    assert data["item_count"] == 6 and data["version"] == 2


async def repriced_lamp(
    cart: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    shopper: Shopper,
    stock: Callable[..., Any],
    units: int,
) -> str:
    """A lamp at 10.00, `units` of it put in the cart, then renamed and repriced to 12.50
    in the catalogue; its id."""
    lamp = await stock(name="Lamp", price=10, stock=5)
    await add(cart, shopper, lamp, units)
    change = {"name": "Desk Lamp", "price": 12.5}
    path = f"/api/products/{lamp}"
    await call(products, "PUT", path, json=change, headers=admin_headers, expected_status=200)
    return lamp


# The cart asks the catalogue on every read here (no remembered prices).
@pytest.mark.parametrize("catalogue_cache_seconds", ["0"])
async def test_the_cart_shows_the_current_name_and_price(
    cart: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    shopper: Shopper,
    stock: Callable[..., Any],
) -> None:
    await repriced_lamp(cart, products, admin_headers, shopper, stock, 2)
    (item,) = (await view(cart, shopper))["items"]
    assert (item["name"], item["price"], item["subtotal"]) == ("Desk Lamp", 12.5, 25)


@pytest.mark.parametrize("catalogue_cache_seconds", ["60"])
async def test_a_cart_read_may_show_what_the_catalogue_said_a_moment_ago(
    cart: TestClient,
    products: TestClient,
    product_server: TestServer,
    admin_headers: dict[str, str],
    shopper: Shopper,
    stock: Callable[..., Any],
) -> None:
    # The add looks the lamp up afresh, and remembers it.
    lamp = await repriced_lamp(cart, products, admin_headers, shopper, stock, 1)

    # Within CATALOGUE_CACHE_SECONDS a read shows what the catalogue said then...
    assert (await view(cart, shopper))["items"][0]["price"] == 10
    # ...but a change to the cart looks its products up afresh (it checks their stock), and
    # the reads after it show that.
    changed = (await add(cart, shopper, lamp, 1))["data"]
    assert (changed["items"][0]["price"], changed["total"]) == (12.5, 25)
    assert (await view(cart, shopper))["total"] == 25

    # With the product service gone, reads within that age still answer; changes cannot.
    await product_server.close()
    assert (await view(cart, shopper))["total"] == 25
    await add(cart, shopper, lamp, 1, expected_status=503)


@pytest.mark.parametrize("catalogue_cache_seconds", ["0.2"])
async def test_a_remembered_price_gives_way_to_the_new_one(
    cart: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    shopper: Shopper,
    stock: Callable[..., Any],
) -> None:
    await repriced_lamp(cart, products, admin_headers, shopper, stock, 2)

    async def shows_the_new_price() -> bool:
        return (await view(cart, shopper))["total"] == 25

    await eventually(shows_the_new_price, "the cart showing the new price", within=10)


# The cart asks the catalogue on every read here (no remembered prices).
@pytest.mark.parametrize("catalogue_cache_seconds", ["0"])
async def test_a_deleted_product_disappears_from_the_cart(
    cart: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    shopper: Shopper,
    stock: Callable[..., Any],
) -> None:
    gone = await stock(name="Gone", price=5, stock=5)
    kept = await stock(name="Kept", price=2.5, stock=5)
    await add(cart, shopper, gone, 2)
    await add(cart, shopper, kept, 1)
    await call(
        products, "DELETE", f"/api/products/{gone}", headers=admin_headers, expected_status=200
    )
    data = await view(cart, shopper)
    assert quantities(data) == {kept: 1}
    assert (data["total"], data["item_count"]) == (2.5, 1)
    # It can still be taken out, although the catalogue no longer knows it.
    after = await call(
        cart, "DELETE", f"{shopper.path}/items/{gone}", headers=shopper.headers, expected_status=200
    )
    assert after["data"]["version"] == data["version"] + 1
    assert quantities(after["data"]) == {kept: 1}


# -- adding and changing ----------------------------------------------------------------------


async def test_adding_a_product_already_in_the_cart_adds_to_its_quantity(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    first = await stock(name="First", stock=20)
    second = await stock(name="Second", stock=20)
    await add(cart, shopper, first, 2)
    await add(cart, shopper, second, 1)
    data = (await add(cart, shopper, first, 5))["data"]
    assert [(item["product_id"], item["quantity"]) for item in data["items"]] == [
        (first, 7),
        (second, 1),
    ]
    assert (data["item_count"], data["version"]) == (8, 3)


async def test_an_id_in_capitals_is_the_same_product(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=5)
    await add(cart, shopper, product_id, 1)
    data = (await add(cart, shopper, product_id.upper(), 1))["data"]
    assert quantities(data) == {product_id: 2}


async def test_more_than_the_stock_is_409_and_changes_nothing(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], redis_client: Redis
) -> None:
    product_id = await stock(stock=5)
    await add(cart, shopper, product_id, 3)
    before = await redis_client.get(shopper.key)
    refused = await add(cart, shopper, product_id, 3, expected_status=409)
    assert refused["code"] == "insufficient_stock"
    assert (refused["available"], refused["in_cart"]) == (5, 3)
    refused = await set_quantity(cart, shopper, product_id, 6, expected_status=409)
    assert refused["code"] == "insufficient_stock"
    assert await redis_client.get(shopper.key) == before
    await add(cart, shopper, product_id, 2)  # exactly the stock is fine
    assert quantities(await view(cart, shopper)) == {product_id: 5}


async def test_a_product_out_of_stock_cannot_be_added(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], redis_client: Redis
) -> None:
    product_id = await stock(stock=0)
    refused = await add(cart, shopper, product_id, 1, expected_status=409)
    assert (refused["code"], refused["available"]) == ("insufficient_stock", 0)
    assert await redis_client.exists(shopper.key) == 0


async def test_put_sets_the_quantity_and_zero_takes_the_product_out(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    kept = await stock(name="Kept", stock=9)
    product_id = await stock(name="Changed", stock=9)
    await add(cart, shopper, kept, 1)
    # A product not in the cart yet is put in with that quantity.
    data = (await set_quantity(cart, shopper, product_id, 4))["data"]
    assert quantities(data) == {kept: 1, product_id: 4}
    data = (await set_quantity(cart, shopper, product_id, 9))["data"]
    assert quantities(data) == {kept: 1, product_id: 9}
    data = (await set_quantity(cart, shopper, product_id, 2))["data"]
    assert (quantities(data), data["version"]) == ({kept: 1, product_id: 2}, 4)
    # The same quantity again changes nothing, so makes no new version.
    assert (await set_quantity(cart, shopper, product_id, 2))["data"]["version"] == 4
    data = (await set_quantity(cart, shopper, product_id, 0))["data"]
    assert (quantities(data), data["version"]) == ({kept: 1}, 5)
    # Zero for a product not in the cart changes nothing.
    data = (await set_quantity(cart, shopper, product_id, 0))["data"]
    assert (quantities(data), data["version"]) == ({kept: 1}, 5)


async def test_delete_takes_one_product_out(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    kept = await stock(name="Kept", stock=9)
    removed = await stock(name="Removed", stock=9)
    await add(cart, shopper, kept, 1)
    await add(cart, shopper, removed, 3)
    path = f"{shopper.path}/items/{removed}"
    data = (await call(cart, "DELETE", path, headers=shopper.headers, expected_status=200))["data"]
    assert (quantities(data), data["version"]) == ({kept: 1}, 3)
    # Again (a repeated click): nothing to take out, nothing changes, no error.
    data = (await call(cart, "DELETE", path, headers=shopper.headers, expected_status=200))["data"]
    assert (quantities(data), data["version"]) == ({kept: 1}, 3)


async def test_taking_out_the_last_product_leaves_an_empty_cart(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=9)
    await add(cart, shopper, product_id, 1)
    data = (await set_quantity(cart, shopper, product_id, 0))["data"]
    assert (data["items"], data["expires_at"], data["version"]) == ([], None, 2)


@pytest.mark.parametrize("product_id", [MISSING_ID, "zzz", "g" * 24, MISSING_ID + "0", "$gt", ""])
async def test_an_unknown_or_malformed_product_is_404(
    cart: TestClient, shopper: Shopper, redis_client: Redis, product_id: str
) -> None:
    refused = await add(cart, shopper, product_id, 1, expected_status=404)
    assert refused["code"] == "product_not_found"
    if product_id:  # (an empty path segment is another route)
        refused = await set_quantity(cart, shopper, product_id, 1, expected_status=404)
        assert refused["code"] == "product_not_found"
    assert await redis_client.exists(shopper.key) == 0


@pytest.mark.parametrize("product_id", ["zzz", "g" * 24, "%24gt"])
async def test_taking_out_a_malformed_product_is_404(
    cart: TestClient, shopper: Shopper, product_id: str
) -> None:
    for method, body in (("DELETE", None), ("PUT", {"quantity": 0})):
        refused = await call(
            cart,
            method,
            f"{shopper.path}/items/{product_id}",
            json=body,
            headers=shopper.headers,
            expected_status=404,
        )
        assert refused["code"] == "product_not_found"


async def test_a_line_holds_at_most_the_quantity_cap(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=5000)
    await add(cart, shopper, product_id, MAX_CART_QUANTITY)
    refused = await add(cart, shopper, product_id, 1, expected_status=409)
    assert (refused["code"], refused["limit"]) == ("quantity_limit", MAX_CART_QUANTITY)
    assert quantities(await view(cart, shopper)) == {product_id: MAX_CART_QUANTITY}


async def test_a_cart_holds_at_most_the_line_cap(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], redis_client: Redis
) -> None:
    # A full cart written as the service stores it (its products long gone from the
    # catalogue), rather than a hundred products made one by one.
    lines = [{"product_id": f"{n:024x}", "quantity": 1} for n in range(1, MAX_CART_LINES + 1)]
    full = orjson.dumps({"items": lines, "version": 7, "updated_at": int(time.time() * 1000)})
    await redis_client.set(shopper.key, full, ex=CART_TTL_SECONDS)
    product_id = await stock(stock=5)
    refused = await add(cart, shopper, product_id, 1, expected_status=409)
    assert (refused["code"], refused["limit"]) == ("cart_full", MAX_CART_LINES)
    assert await redis_client.get(shopper.key) == full
    # A product already in a full cart may still change.
    await redis_client.set(
        shopper.key,
        orjson.dumps(
            {"items": [*lines[1:], {"product_id": product_id, "quantity": 1}], "version": 8}
        ),
        ex=CART_TTL_SECONDS,
    )
    data = (await add(cart, shopper, product_id, 1))["data"]
    assert (quantities(data), data["version"]) == ({product_id: 2}, 9)


# -- bad input --------------------------------------------------------------------------------


PRODUCT = "<the product's id>"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"product_id": PRODUCT, "quantity": "1"}, "quantity"),
        ({"product_id": PRODUCT, "quantity": 1.5}, "quantity"),
        ({"product_id": PRODUCT, "quantity": 1.0}, "quantity"),
        ({"product_id": PRODUCT, "quantity": 0}, "quantity"),
        ({"product_id": PRODUCT, "quantity": -1}, "quantity"),
        ({"product_id": PRODUCT, "quantity": MAX_CART_QUANTITY + 1}, "quantity"),
        ({"product_id": PRODUCT, "quantity": 10**30}, "quantity"),
        ({"product_id": PRODUCT, "quantity": True}, "quantity"),
        ({"product_id": PRODUCT, "quantity": None}, "quantity"),
        ({"product_id": PRODUCT, "quantity": [1]}, "quantity"),
        ({"product_id": PRODUCT}, "quantity"),
        ({"product_id": 123, "quantity": 1}, "product_id"),
        ({"product_id": None, "quantity": 1}, "product_id"),
        ({"product_id": [PRODUCT], "quantity": 1}, "product_id"),
        ({"quantity": 1}, "product_id"),
        ({"product_id": PRODUCT, "quantity": 1, "price": 0.01}, "price"),
        ({"product_id": PRODUCT, "quantity": 1, "user_id": "1"}, "user_id"),
        ({}, "product_id"),
    ],
)
async def test_bad_additions_are_400_and_change_nothing(
    cart: TestClient,
    shopper: Shopper,
    stock: Callable[..., Any],
    redis_client: Redis,
    body: dict[str, Any],
    field: str,
) -> None:
    product_id = await stock(stock=5)
    sent = json.loads(json.dumps(body).replace(PRODUCT, product_id))
    refused = await call(
        cart,
        "POST",
        f"{shopper.path}/items",
        json=sent,
        headers=shopper.headers,
        expected_status=400,
    )
    assert refused["code"] == "validation_error"
    assert field in [detail["field"] for detail in refused["details"]], refused
    assert await redis_client.exists(shopper.key) == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"quantity": "2"}, "quantity"),
        ({"quantity": 2.5}, "quantity"),
        ({"quantity": -1}, "quantity"),
        ({"quantity": MAX_CART_QUANTITY + 1}, "quantity"),
        ({"quantity": False}, "quantity"),
        ({}, "quantity"),
        ({"quantity": 2, "product_id": MISSING_ID}, "product_id"),
    ],
)
async def test_bad_quantity_changes_are_400_and_change_nothing(
    cart: TestClient,
    shopper: Shopper,
    stock: Callable[..., Any],
    redis_client: Redis,
    body: dict[str, Any],
    field: str,
) -> None:
    product_id = await stock(stock=5)
    await add(cart, shopper, product_id, 1)
    before = await redis_client.get(shopper.key)
    refused = await call(
        cart,
        "PUT",
        f"{shopper.path}/items/{product_id}",
        json=body,
        headers=shopper.headers,
        expected_status=400,
    )
    assert field in [detail["field"] for detail in refused["details"]], refused
    assert await redis_client.get(shopper.key) == before


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b"[1, 2]", b'"a string"', b"1", b"null", b"\xff\xfe{}", b"{'a': 1}"],
)
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_bodies_that_are_not_json_objects_are_400(
    cart: TestClient, shopper: Shopper, redis_client: Redis, raw: bytes, method: str
) -> None:
    path = f"{shopper.path}/items" if method == "POST" else f"{shopper.path}/items/{MISSING_ID}"
    refused = await call(
        cart,
        method,
        path,
        data=raw,
        headers={**shopper.headers, "Content-Type": "application/json"},
        expected_status=400,
    )
    assert refused["code"] == "invalid_json"
    assert await redis_client.exists(shopper.key) == 0


@pytest.mark.parametrize("query", ["version=-1", "version=abc", "version=1&version=2", "x=1"])
async def test_bad_clear_queries_are_400(cart: TestClient, shopper: Shopper, query: str) -> None:
    refused = await call(
        cart, "DELETE", f"{shopper.path}?{query}", headers=shopper.headers, expected_status=400
    )
    assert refused["code"] == "validation_error"


# -- expiry -----------------------------------------------------------------------------------


async def test_every_change_sets_a_seven_day_ttl(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], redis_client: Redis
) -> None:
    product_id = await stock(stock=9)
    data = (await add(cart, shopper, product_id, 1))["data"]
    ttl = await redis_client.ttl(shopper.key)
    assert CART_TTL_SECONDS - 60 < ttl <= CART_TTL_SECONDS
    expires_at = datetime.fromisoformat(data["expires_at"])
    expected = datetime.now(UTC) + timedelta(seconds=CART_TTL_SECONDS)
    assert abs(expires_at - expected) < timedelta(minutes=1)

    for change in (
        lambda: add(cart, shopper, product_id, 1),
        lambda: set_quantity(cart, shopper, product_id, 5),
        lambda: set_quantity(cart, shopper, product_id, 0),
        lambda: add(cart, shopper, product_id, 1),
        lambda: call(cart, "DELETE", shopper.path, headers=shopper.headers, expected_status=200),
    ):
        await redis_client.expire(shopper.key, 100)
        await change()
        assert CART_TTL_SECONDS - 60 < await redis_client.ttl(shopper.key) <= CART_TTL_SECONDS


async def test_a_change_that_changes_nothing_keeps_the_ttl(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], redis_client: Redis
) -> None:
    product_id = await stock(stock=9)
    await add(cart, shopper, product_id, 2)
    await redis_client.expire(shopper.key, 100)
    await set_quantity(cart, shopper, product_id, 2)
    assert await redis_client.ttl(shopper.key) <= 100


async def test_an_expired_cart_is_an_empty_cart(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], redis_client: Redis
) -> None:
    product_id = await stock(stock=9)
    await add(cart, shopper, product_id, 2)
    await redis_client.pexpire(shopper.key, 1)

    async def expired() -> bool:  # reading an expired key drops it
        return not await redis_client.exists(shopper.key)

    await eventually(expired, "the cart's expiry", within=5)
    data = await view(cart, shopper)
    assert (data["items"], data["expires_at"], data["version"]) == ([], None, 0)
    data = (await add(cart, shopper, product_id, 1))["data"]
    assert (quantities(data), data["version"]) == ({product_id: 1}, 1)


async def test_the_stored_format(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], redis_client: Redis
) -> None:
    first = await stock(stock=9)
    second = await stock(stock=9)
    before = int(time.time() * 1000)
    await add(cart, shopper, first, 2)
    await add(cart, shopper, second, 1)
    after = int(time.time() * 1000)
    stored = orjson.loads(await redis_client.get(shopper.key))
    assert stored["items"] == [
        {"product_id": first, "quantity": 2},
        {"product_id": second, "quantity": 1},
    ]
    assert stored["version"] == 2
    assert before <= stored["updated_at"] <= after


# -- clearing ---------------------------------------------------------------------------------


async def test_clear_empties_the_cart(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=9)
    await add(cart, shopper, product_id, 2)
    data = (await call(cart, "DELETE", shopper.path, headers=shopper.headers, expected_status=200))[
        "data"
    ]
    assert (data["items"], data["total"], data["expires_at"], data["version"]) == ([], 0, None, 2)
    assert await view(cart, shopper) == data
    # Clearing an empty cart is fine and changes nothing.
    again = await call(cart, "DELETE", shopper.path, headers=shopper.headers, expected_status=200)
    assert again["data"]["version"] == 2


async def test_a_versioned_clear_clears_only_that_version(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any], service_headers: dict[str, str]
) -> None:
    first = await stock(name="First", stock=9)
    late = await stock(name="Late", stock=9)
    await add(cart, shopper, first, 2)
    read = await view(cart, shopper)  # what a checkout reads
    await add(cart, shopper, late, 1)  # the customer adds something meanwhile
    refused = await call(
        cart,
        "DELETE",
        f"{shopper.path}?version={read['version']}",
        headers=service_headers,
        expected_status=409,
    )
    assert (refused["code"], refused["version"]) == ("cart_changed", read["version"] + 1)
    assert quantities(await view(cart, shopper)) == {first: 2, late: 1}

    now = await view(cart, shopper)
    cleared = await call(
        cart,
        "DELETE",
        f"{shopper.path}?version={now['version']}",
        headers=service_headers,
        expected_status=200,
    )
    assert (cleared["data"]["items"], cleared["data"]["version"]) == ([], now["version"] + 1)


async def test_versions_never_repeat_after_a_clear(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=9)
    await add(cart, shopper, product_id, 1)
    stale = (await add(cart, shopper, product_id, 1))["data"]["version"]
    await call(cart, "DELETE", shopper.path, headers=shopper.headers, expected_status=200)
    await add(cart, shopper, product_id, 1)
    data = (await add(cart, shopper, product_id, 1))["data"]
    assert data["version"] > stale
    # So a clear of what was read before the first clear cannot empty the refilled cart.
    await call(
        cart,
        "DELETE",
        f"{shopper.path}?version={stale}",
        headers=shopper.headers,
        expected_status=409,
    )
    assert quantities(await view(cart, shopper)) == {product_id: 2}


async def test_a_versioned_clear_of_a_cart_never_filled(
    cart: TestClient, shopper: Shopper, redis_client: Redis
) -> None:
    await call(
        cart, "DELETE", f"{shopper.path}?version=0", headers=shopper.headers, expected_status=200
    )
    refused = await call(
        cart, "DELETE", f"{shopper.path}?version=3", headers=shopper.headers, expected_status=409
    )
    assert (refused["code"], refused["version"]) == ("cart_changed", 0)
    assert await redis_client.exists(shopper.key) == 0


# -- concurrency ------------------------------------------------------------------------------


async def test_concurrent_adds_of_different_products_are_all_kept(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_ids = [await stock(name=f"Product {n}", stock=5) for n in range(20)]
    answers = await asyncio.gather(
        *(add(cart, shopper, product_id, 1 + n % 3) for n, product_id in enumerate(product_ids))
    )
    assert all(answer["success"] for answer in answers)
    data = await view(cart, shopper)
    assert quantities(data) == {product_id: 1 + n % 3 for n, product_id in enumerate(product_ids)}
    assert data["version"] == 20
    # Each answer is a whole cart holding at least its own product.
    for product_id, answer in zip(product_ids, answers, strict=True):
        assert product_id in quantities(answer["data"])


async def test_concurrent_adds_of_one_product_are_all_counted(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=100)
    await asyncio.gather(*(add(cart, shopper, product_id, 1) for _ in range(20)))
    data = await view(cart, shopper)
    assert (quantities(data), data["version"]) == ({product_id: 20}, 20)


async def test_concurrent_adds_never_take_a_cart_past_the_stock(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=5)
    responses = await asyncio.gather(
        *(
            cart.post(
                f"{shopper.path}/items",
                json={"product_id": product_id, "quantity": 1},
                headers=shopper.headers,
            )
            for _ in range(20)
        )
    )
    statuses = sorted(response.status for response in responses)
    for response in responses:
        response.release()
    assert statuses == [200] * 5 + [409] * 15
    assert quantities(await view(cart, shopper)) == {product_id: 5}


async def test_reads_at_the_same_moment_each_get_their_own_cart(
    cart: TestClient, shoppers: Callable[[], Shopper], stock: Callable[..., Any]
) -> None:
    # Reads that wait for Redis together go to it as one MGET (store.BatchedReads).
    lamp, chair = await stock(stock=9), await stock(stock=9)
    filled = [shoppers() for _ in range(3)]
    wanted: dict[str, dict[str, int]] = {}
    for number, shopper in enumerate(filled):
        await add(cart, shopper, lamp, number + 1)
        wanted[shopper.user_id] = {lamp: number + 1}
        if number:
            await add(cart, shopper, chair, number)
            wanted[shopper.user_id][chair] = number
    never_filled = shoppers()
    wanted[never_filled.user_id] = {}
    readers = [*filled, never_filled] * 4

    answers = await asyncio.gather(*(view(cart, shopper) for shopper in readers))
    for shopper, data in zip(readers, answers, strict=True):
        assert data["user_id"] == int(shopper.user_id)
        assert quantities(data) == wanted[shopper.user_id]

    # The store itself, all in one turn of the event loop: one MGET for every read.
    store = cart.server.app[STORE]
    carts = await asyncio.gather(*(store.get(shopper.user_id) for shopper in readers))
    for shopper, stored in zip(readers, carts, strict=True):
        assert dict(stored.lines) == wanted[shopper.user_id]


async def test_reads_batched_together_each_fail_when_redis_is_down() -> None:
    client = cart_redis_client(f"redis://127.0.0.1:{processes.free_port()}")  # nothing listens
    try:
        store = CartStore(client)
        outcomes = await asyncio.gather(
            *(store.get(str(user_id)) for user_id in range(1, 6)), return_exceptions=True
        )
    finally:
        await client.aclose()
    assert all(isinstance(outcome, REDIS_UNAVAILABLE) for outcome in outcomes), outcomes


async def _catalogue_look_ups(products: TestClient) -> float:
    """How many product look-ups (GET /api/products) the product service answered."""
    text = await (await products.get("/metrics")).text()
    prefix = 'http_requests_total{method="GET",route="/api/products",service="product",'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


@pytest.mark.parametrize("catalogue_cache_seconds", ["60"])
async def test_reads_at_the_same_moment_share_one_catalogue_look_up(
    cart: TestClient, products: TestClient, stock: Callable[..., Any]
) -> None:
    lamp, chair = await stock(stock=9), await stock(stock=9)
    read_products = cart.server.app[CATALOGUE].products
    before = await _catalogue_look_ups(products)

    def read_all() -> Any:
        return asyncio.gather(
            read_products({lamp}, fresh=False),
            read_products({lamp, chair}, fresh=False),
            read_products({MISSING_ID}, fresh=False),
        )

    found = await read_all()
    assert [set(each) for each in found] == [{lamp}, {lamp, chair}, set()]
    assert found[0][lamp] is found[1][lamp]
    assert await _catalogue_look_ups(products) == before + 1
    # Remembered now (and that there is no such product too): nothing more is asked.
    assert [set(each) for each in await read_all()] == [{lamp}, {lamp, chair}, set()]
    assert await _catalogue_look_ups(products) == before + 1


# -- access -----------------------------------------------------------------------------------


async def test_a_customer_reaches_only_its_own_cart(
    cart: TestClient,
    shoppers: Callable[[], Shopper],
    stock: Callable[..., Any],
    redis_client: Redis,
) -> None:
    owner, other = shoppers(), shoppers()
    product_id = await stock(stock=9)
    await add(cart, owner, product_id, 1)
    before = await redis_client.get(owner.key)
    routes = cart_routes(product_id)
    await refused_on_each(
        cart, owner.path, routes, headers=other.headers, expected_status=403, code="forbidden"
    )
    await refused_on_each(cart, owner.path, routes, expected_status=401, code="unauthorized")
    # Someone else's cart is refused before the body is even read: a malformed or invalid
    # body gets the same 403, so it tells nothing about how it would have been judged.
    for body in ({"product_id": product_id, "quantity": "two"}, {"nonsense": True}, [1]):
        await call(
            cart,
            "POST",
            f"{owner.path}/items",
            json=body,
            headers=other.headers,
            expected_status=403,
        )
    await call(
        cart, "DELETE", f"{owner.path}?version=abc", headers=other.headers, expected_status=403
    )
    assert await redis_client.get(owner.key) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer not-a-jwt"},
        bearer(issue_token("another-secret-" + "y" * 40, sub="5", email="e@x.y", role="admin")),
        bearer(
            issue_token(
                JWT_SECRET,
                sub="5",
                email="e@x.y",
                role="admin",
                now=datetime.now(UTC) - timedelta(days=2),
            )
        ),
    ],
    ids=["scheme", "garbage", "wrong-secret", "expired"],
)
async def test_bad_tokens_are_401(cart: TestClient, headers: dict[str, str]) -> None:
    refused = await call(cart, "GET", "/api/cart/5", headers=headers, expected_status=401)
    assert refused["code"] in {"invalid_token", "token_expired"}


async def test_an_admin_and_a_service_reach_any_cart(
    cart: TestClient,
    shopper: Shopper,
    stock: Callable[..., Any],
    admin_headers: dict[str, str],
    service_headers: dict[str, str],
) -> None:
    product_id = await stock(stock=9)
    await add(cart, shopper, product_id, 1, headers=admin_headers)
    await add(cart, shopper, product_id, 1, headers=service_headers)
    for headers in (admin_headers, service_headers):
        got = await call(cart, "GET", shopper.path, headers=headers, expected_status=200)
        assert quantities(got["data"]) == {product_id: 2}
    await call(cart, "DELETE", shopper.path, headers=service_headers, expected_status=200)


@pytest.mark.parametrize("user_id", ["0", "-1", "abc", "007", "1.5", "1e3", "9" * 19, "%201", "١٢"])
async def test_a_user_id_that_is_not_a_positive_integer_is_404(
    cart: TestClient, admin_headers: dict[str, str], user_id: str
) -> None:
    await refused_on_each(
        cart,
        f"/api/cart/{user_id}",
        cart_routes(),
        headers=admin_headers,
        expected_status=404,
        code="cart_not_found",
    )


# -- dependencies down ------------------------------------------------------------------------


# The cart asks the catalogue on every read here (no remembered prices).
@pytest.mark.parametrize("catalogue_cache_seconds", ["0"])
async def test_a_product_service_that_is_down_is_503_and_the_cart_is_untouched(
    cart: TestClient,
    product_server: TestServer,
    shopper: Shopper,
    stock: Callable[..., Any],
    redis_client: Redis,
) -> None:
    product_id = await stock(stock=9)
    other_id = await stock(stock=9)
    await add(cart, shopper, product_id, 2)
    before = await redis_client.get(shopper.key)
    await product_server.close()

    # With the product in the cart, and with one that is not in it yet.
    for looked_up in (product_id, other_id):
        await refused_on_each(
            cart,
            shopper.path,
            cart_routes(looked_up, clears=False),
            headers=shopper.headers,
            expected_status=503,
            code="upstream_unavailable",
        )
    assert await redis_client.get(shopper.key) == before
    # Clearing needs no product, so checkouts can still empty carts.
    await call(cart, "DELETE", shopper.path, headers=shopper.headers, expected_status=200)
    await call(cart, "GET", "/ready", expected_status=200)


async def test_a_redis_outage_is_503_and_not_ready(
    aiohttp_client: Any, cart_settings: CartSettings, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=9)
    server = embedded.start_redis(None)
    try:
        settings = cart_settings.model_copy(update={"redis_url": server.uri})
        client = await aiohttp_client(create_cart_app(settings))
        await add(client, shopper, product_id, 1)
        server.stop()
        await refused_on_each(
            client,
            shopper.path,
            cart_routes(product_id),
            headers=shopper.headers,
            expected_status=503,
            code="upstream_unavailable",
        )
        refused = await call(client, "GET", "/ready", expected_status=503)
        assert refused["code"] == "not_ready"
    finally:
        server.stop()


def _run_cart_service(**env: str) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items() if key not in ("REDIS_URL", "PORT")}
    required = {"JWT_SECRET": JWT_SECRET, "USER_SERVICE_URL": "http://127.0.0.1:1"}
    return subprocess.run(
        [sys.executable, "-m", "svc_cart"],
        env={**base, **required, "HOST": "127.0.0.1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_refuses_to_start_without_its_settings() -> None:
    result = _run_cart_service(PRODUCT_SERVICE_URL="http://127.0.0.1:1")
    assert result.returncode == 2
    assert "REDIS_URL is required but not set" in result.stderr
    result = _run_cart_service(REDIS_URL="redis://127.0.0.1:1", PRODUCT_SERVICE_URL="nope")
    assert result.returncode == 2
    assert "PRODUCT_SERVICE_URL is malformed" in result.stderr
    # It checks users' tokens, so it must be able to ask the user service about revocation.
    result = _run_cart_service(
        REDIS_URL="redis://127.0.0.1:1",
        PRODUCT_SERVICE_URL="http://127.0.0.1:1",
        USER_SERVICE_URL="",
    )
    assert result.returncode == 2
    assert "USER_SERVICE_URL is required but not set" in result.stderr


def test_it_refuses_to_start_when_redis_does_not_answer() -> None:
    nowhere = f"redis://:hunter2-secret@127.0.0.1:{processes.free_port()}/0"
    result = _run_cart_service(
        REDIS_URL=nowhere,
        PRODUCT_SERVICE_URL="http://127.0.0.1:1",
        PORT=str(processes.free_port()),
    )
    assert result.returncode == 1, result.stderr
    assert "cart service: cannot start: Redis at redis://:***@127.0.0.1" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


# -- the service itself -----------------------------------------------------------------------


async def test_ready_and_health(cart: TestClient) -> None:
    ready = await call(cart, "GET", "/ready", expected_status=200)
    assert ready["data"] == {"status": "ready", "service": "cart", "datastore": "redis"}
    health = await call(cart, "GET", "/health", expected_status=200)
    assert health["data"]["status"] == "ok" and health["data"]["service"] == "cart"


async def test_openapi_describes_the_cart(cart: TestClient) -> None:
    document = await (await cart.get("/openapi.json")).json()
    validate(document)
    paths = document["paths"]
    assert set(paths) >= {
        "/api/cart/{userId}",
        "/api/cart/{userId}/items",
        "/api/cart/{userId}/items/{productId}",
    }
    assert set(paths["/api/cart/{userId}"]) == {"get", "delete"}
    assert set(paths["/api/cart/{userId}/items/{productId}"]) == {"put", "delete"}
    add_item = paths["/api/cart/{userId}/items"]["post"]
    assert add_item["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AddItem"
    }
    assert {"200", "400", "401", "403", "404", "409", "503"} <= set(add_item["responses"])
    assert add_item["security"] == [{"bearerAuth": []}]
    clear = paths["/api/cart/{userId}"]["delete"]
    assert "version" in {parameter["name"] for parameter in clear["parameters"]}
    schemas = document["components"]["schemas"]
    assert schemas["AddItem"]["additionalProperties"] is False
    assert schemas["AddItem"]["properties"]["quantity"]["maximum"] == MAX_CART_QUANTITY
    assert schemas["SetQuantity"]["properties"]["quantity"]["minimum"] == 0
    assert set(schemas["CartOut"]["required"]) >= {"items", "total", "expires_at", "version"}


async def test_changes_are_counted_in_the_metrics(
    cart: TestClient, shopper: Shopper, stock: Callable[..., Any]
) -> None:
    product_id = await stock(stock=9)
    await add(cart, shopper, product_id, 1)
    text = await (await cart.get("/metrics")).text()
    counted = (
        'http_requests_total{method="POST",route="/api/cart/{userId}/items",service="cart",'
        'status="200"} 1.0'
    )
    assert counted in text
