"""Guests' carts in the cart service (the internal routes the gateway's pages use), and the
merge into an account's cart at login: on a real Redis, pricing with the real product
service, at two replicas of the cart service where requests race."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis
from support import as_service, call, create_product, customer

from shopkit.domain import MAX_CART_LINES, MAX_CART_QUANTITY
from svc_cart.app import CartSettings
from svc_cart.app import create_app as create_cart_app
from svc_cart.store import CART_TTL_SECONDS, MERGED_MARKER_SECONDS, cart_key, guest_owner

GATEWAY = as_service("gateway")


@pytest.fixture
async def redis_client(redis_server_uri: str) -> AsyncIterator[Redis]:
    """A client of the Redis the cart service uses, to look at what it stored."""
    client = Redis.from_url(redis_server_uri)
    yield client
    await client.aclose()


@pytest.fixture
async def carts(
    redis_client: Redis,
) -> AsyncIterator[Callable[[], tuple[str, str]]]:
    """Makes (guest id, user id) pairs of the test's own; their keys deleted afterwards."""
    made: list[tuple[str, str]] = []

    def make() -> tuple[str, str]:
        made.append((secrets.token_hex(16), str(10**12 + secrets.randbelow(10**15))))
        return made[-1]

    yield make
    for guest_id, user_id in made:
        await redis_client.delete(cart_key(guest_owner(guest_id)), cart_key(user_id))


@pytest.fixture
async def replicas(aiohttp_client: Any, cart_settings: CartSettings) -> list[TestClient]:
    """Two replicas of the cart service on the one Redis."""
    return [await aiohttp_client(create_cart_app(cart_settings)) for _ in range(2)]


@pytest.fixture
def stock(products: TestClient, admin_headers: dict[str, str]) -> Callable[..., Any]:
    """Creates a product in the catalogue and returns its id."""

    async def create(**fields: Any) -> str:
        return (await create_product(products, admin_headers, **fields))["id"]

    return create


def guest_path(guest_id: str, *rest: str) -> str:
    return "/".join([f"/internal/guest-carts/{guest_id}", *rest])


async def add(client: TestClient, guest_id: str, product_id: str, quantity: int) -> Any:
    body = {"product_id": product_id, "quantity": quantity}
    path = guest_path(guest_id, "items")
    return (await call(client, "POST", path, json=body, headers=GATEWAY, expected_status=200))[
        "data"
    ]


async def add_to_account(client: TestClient, user_id: str, product_id: str, quantity: int) -> Any:
    body = {"product_id": product_id, "quantity": quantity}
    path = f"/api/cart/{user_id}/items"
    return await call(client, "POST", path, json=body, headers=GATEWAY, expected_status=200)


async def merge(client: TestClient, guest_id: str, user_id: str) -> Any:
    path = guest_path(guest_id, "merge")
    body = {"user_id": int(user_id)}
    return (await call(client, "POST", path, json=body, headers=GATEWAY, expected_status=200))[
        "data"
    ]


async def quantities(client: TestClient, path: str) -> dict[str, int]:
    cart = (await call(client, "GET", path, headers=GATEWAY, expected_status=200))["data"]
    return {item["product_id"]: item["quantity"] for item in cart["items"]}


# -- a guest's cart ---------------------------------------------------------------------------


async def test_a_guest_cart_is_kept_changed_and_emptied_like_an_account_cart(
    cart: TestClient, carts: Callable[[], tuple[str, str]], stock: Any, redis_client: Redis
) -> None:
    guest_id, _ = carts()
    mug, lamp = await stock(name="Mug", price=12.5, stock=10), await stock(name="Lamp", price=30)
    empty = (await call(cart, "GET", guest_path(guest_id), headers=GATEWAY, expected_status=200))[
        "data"
    ]
    assert empty["guest_id"] == guest_id and empty["items"] == [] and empty["merged_into"] is None

    await add(cart, guest_id, mug, 2)
    answer = await add(cart, guest_id, mug, 1)
    assert answer["item_count"] == 3 and answer["total"] == 37.5
    await add(cart, guest_id, lamp, 1)
    ttl = await redis_client.ttl(cart_key(guest_owner(guest_id)))
    assert CART_TTL_SECONDS - 60 < ttl <= CART_TTL_SECONDS  # the same 7 days as an account's

    set_path = guest_path(guest_id, "items", mug)
    await call(cart, "PUT", set_path, json={"quantity": 5}, headers=GATEWAY, expected_status=200)
    await call(
        cart, "DELETE", guest_path(guest_id, "items", lamp), headers=GATEWAY, expected_status=200
    )
    assert await quantities(cart, guest_path(guest_id)) == {mug: 5}
    refused = await call(
        cart, "PUT", set_path, json={"quantity": 11}, headers=GATEWAY, expected_status=409
    )
    assert refused["code"] == "insufficient_stock"
    await call(cart, "DELETE", guest_path(guest_id), headers=GATEWAY, expected_status=200)
    assert await quantities(cart, guest_path(guest_id)) == {}


async def test_only_a_service_reaches_a_guest_cart(
    cart: TestClient, carts: Callable[[], tuple[str, str]], stock: Any
) -> None:
    guest_id, user_id = carts()
    mug = await stock(name="Mug")
    await add(cart, guest_id, mug, 1)
    body = {"product_id": mug, "quantity": 1}
    for headers, status in ((customer(2), 403), ({}, 401)):
        for method, path, json in (
            ("GET", guest_path(guest_id), None),
            ("POST", guest_path(guest_id, "items"), body),
            ("DELETE", guest_path(guest_id), None),
            ("POST", guest_path(guest_id, "merge"), {"user_id": int(user_id)}),
        ):
            await call(cart, method, path, json=json, headers=headers, expected_status=status)
    assert await quantities(cart, guest_path(guest_id)) == {mug: 1}
    # Nor as an account's cart, under any spelling of the guest's key.
    for owner in (f"guest:{guest_id}", guest_id, f"guest%3A{guest_id}"):
        await call(cart, "GET", f"/api/cart/{owner}", headers=GATEWAY, expected_status=404)


@pytest.mark.parametrize("guest_id", ["0" * 31, "0" * 33, "A" * 32, "g" * 32, "guest:" + "0" * 32])
async def test_a_malformed_guest_id_is_404(cart: TestClient, guest_id: str) -> None:
    answer = await call(cart, "GET", guest_path(guest_id), headers=GATEWAY, expected_status=404)
    assert answer["code"] == "cart_not_found"


# -- the merge --------------------------------------------------------------------------------


async def test_a_merge_sums_quantities_keeps_the_account_lines_and_empties_the_guest_cart(
    cart: TestClient, carts: Callable[[], tuple[str, str]], stock: Any
) -> None:
    guest_id, user_id = carts()
    mug, lamp, rug = [await stock(name=name, stock=50) for name in ("Mug", "Lamp", "Rug")]
    await add_to_account(cart, user_id, lamp, 1)
    await add_to_account(cart, user_id, mug, 2)
    await add(cart, guest_id, mug, 3)
    await add(cart, guest_id, rug, 4)

    merged = await merge(cart, guest_id, user_id)
    assert merged["units_added"] == 7 and merged["cut"] == []
    lines = [(item["product_id"], item["quantity"]) for item in merged["cart"]["items"]]
    assert lines == [(lamp, 1), (mug, 5), (rug, 4)]  # the account's order, then the guest's
    assert await quantities(cart, guest_path(guest_id)) == {}

    again = await merge(cart, guest_id, user_id)  # a second login from the same browser
    assert again["units_added"] == 0 and again["cart"]["item_count"] == 10


async def test_a_merge_caps_at_the_stock_and_the_limits_and_says_what_it_cut(
    cart: TestClient,
    carts: Callable[[], tuple[str, str]],
    stock: Any,
    products: TestClient,
    admin_headers: dict[str, str],
) -> None:
    guest_id, user_id = carts()
    mug = await stock(name="Mug", stock=5)
    big = await stock(name="Pallet", stock=MAX_CART_QUANTITY * 2)
    gone = await stock(name="Gone")
    await add_to_account(cart, user_id, mug, 3)
    await add_to_account(cart, user_id, big, MAX_CART_QUANTITY - 10)
    await add(cart, guest_id, mug, 4)
    await add(cart, guest_id, big, 20)
    await add(cart, guest_id, gone, 2)
    await call(
        products, "DELETE", f"/api/products/{gone}", headers=admin_headers, expected_status=200
    )

    merged = await merge(cart, guest_id, user_id)
    cut = {line["product_id"]: line for line in merged["cut"]}
    assert cut[mug] == {
        "product_id": mug,
        "name": "Mug",
        "requested": 4,
        "added": 2,
        "reason": "stock",
    }
    assert cut[big]["added"] == 10 and cut[big]["reason"] == "quantity_limit"
    assert cut[gone] == {
        "product_id": gone,
        "name": None,
        "requested": 2,
        "added": 0,
        "reason": "unavailable",
    }
    assert merged["units_added"] == 12
    assert await quantities(cart, f"/api/cart/{user_id}") == {mug: 5, big: MAX_CART_QUANTITY}


async def test_a_merge_never_takes_away_what_the_account_cart_held(
    cart: TestClient,
    carts: Callable[[], tuple[str, str]],
    stock: Any,
    products: TestClient,
    admin_headers: dict[str, str],
) -> None:
    guest_id, user_id = carts()
    mug = await stock(name="Mug", stock=10)
    await add_to_account(cart, user_id, mug, 8)
    await add(cart, guest_id, mug, 1)
    await call(
        products, "PATCH", f"/api/products/{mug}/stock", json={"quantity": -7},
        headers=admin_headers, expected_status=200,
    )  # fmt: skip
    merged = await merge(cart, guest_id, user_id)
    assert merged["cut"][0]["added"] == 0 and merged["cut"][0]["reason"] == "stock"
    assert await quantities(cart, f"/api/cart/{user_id}") == {mug: 8}  # the cart page says "short"


async def test_a_merge_into_a_full_cart_adds_to_its_lines_but_no_new_one(
    cart: TestClient, carts: Callable[[], tuple[str, str]], stock: Any
) -> None:
    guest_id, user_id = carts()
    ids = [await stock(name=f"Thing {n}") for n in range(MAX_CART_LINES + 1)]
    for product_id in ids[:MAX_CART_LINES]:
        await add_to_account(cart, user_id, product_id, 1)
    await add(cart, guest_id, ids[0], 1)
    await add(cart, guest_id, ids[-1], 1)
    merged = await merge(cart, guest_id, user_id)
    assert merged["units_added"] == 1
    assert merged["cut"] == [
        {"product_id": ids[-1], "name": f"Thing {MAX_CART_LINES}", "requested": 1, "added": 0,
         "reason": "cart_full"}
    ]  # fmt: skip


async def test_a_change_to_a_merged_guest_cart_is_made_in_the_account_cart(
    cart: TestClient, carts: Callable[[], tuple[str, str]], stock: Any, redis_client: Redis
) -> None:
    guest_id, user_id = carts()
    mug, lamp = await stock(name="Mug"), await stock(name="Lamp")
    await add(cart, guest_id, mug, 1)
    await merge(cart, guest_id, user_id)
    marker_ttl = await redis_client.ttl(cart_key(guest_owner(guest_id)))
    assert 0 < marker_ttl <= MERGED_MARKER_SECONDS

    late = await add(cart, guest_id, lamp, 2)  # a page shown before the login
    assert late["merged_into"] == int(user_id) and late["item_count"] == 3
    assert await quantities(cart, f"/api/cart/{user_id}") == {mug: 1, lamp: 2}
    assert await quantities(cart, guest_path(guest_id)) == {}  # nothing of the account shown
    # Emptying the guest cart (a stale page) leaves the account's cart as it is.
    await call(cart, "DELETE", guest_path(guest_id), headers=GATEWAY, expected_status=200)
    assert await quantities(cart, f"/api/cart/{user_id}") == {mug: 1, lamp: 2}


async def test_two_merges_at_once_at_two_replicas_add_the_guest_cart_once(
    replicas: list[TestClient], carts: Callable[[], tuple[str, str]], stock: Any
) -> None:
    for _ in range(5):
        guest_id, user_id = carts()
        mug = await stock(name="Mug", stock=100)
        await add_to_account(replicas[0], user_id, mug, 1)
        await add(replicas[0], guest_id, mug, 3)
        outcomes = await asyncio.gather(
            merge(replicas[0], guest_id, user_id), merge(replicas[1], guest_id, user_id)
        )
        assert sorted(outcome["units_added"] for outcome in outcomes) == [0, 3]
        assert await quantities(replicas[1], f"/api/cart/{user_id}") == {mug: 4}


async def test_adds_racing_a_merge_at_two_replicas_are_each_counted_once(
    replicas: list[TestClient], carts: Callable[[], tuple[str, str]], stock: Any
) -> None:
    guest_id, user_id = carts()
    ids = [await stock(name=f"Thing {n}", stock=1000) for n in range(4)]
    await add(replicas[0], guest_id, ids[0], 1)
    adds = [add(replicas[n % 2], guest_id, ids[n % len(ids)], 1 + n % 3) for n in range(40)]
    merging = [merge(replicas[n % 2], guest_id, user_id) for n in range(3)]
    outcomes = await asyncio.gather(*adds, *merging)
    sent = 1 + sum(1 + n % 3 for n in range(40))
    account = await quantities(replicas[0], f"/api/cart/{user_id}")
    assert sum(account.values()) == sent, (account, outcomes[40:])
    assert await quantities(replicas[1], guest_path(guest_id)) == {}
    # What the adds answered before the merge went through it; the rest went to the account.
    late = [outcome for outcome in outcomes[:40] if outcome["merged_into"] is not None]
    assert all(outcome["merged_into"] == int(user_id) for outcome in late)
    assert (
        sum(outcome["units_added"] for outcome in outcomes[40:])
        + sum(1 + n % 3 for n, outcome in enumerate(outcomes[:40]) if outcome["merged_into"])
        == sent
    )


async def test_merges_are_counted_in_the_metrics(
    cart: TestClient, carts: Callable[[], tuple[str, str]]
) -> None:
    guest_id, user_id = carts()
    await merge(cart, guest_id, user_id)
    metrics = await (await cart.get("/metrics")).text()
    assert 'shop_cart_changes_total{change="merge",service="cart"} 1.0' in metrics
