"""The product service over HTTP against a real MongoDB-protocol server."""

from __future__ import annotations

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient
from support import (
    JWT_SECRET,
    assert_documented,
    bearer,
    call,
    change_stock,
    create_product,
    forged,
    product_body,
    stock_of,
    take,
    take_answer,
    undo,
    unsigned,
)

from shopkit.auth import issue_token

MISSING_ID = "0123456789abcdef01234567"


# -- create and read ------------------------------------------------------------------------


async def test_create_then_get_round_trips_exact_money(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    response = await product.post(
        "/api/products", json=product_body(price=19.99), headers=admin_headers
    )
    assert response.status == 201
    created = (await response.json())["data"]
    assert response.headers["Location"] == f"/api/products/{created['id']}"
    await assert_documented(product, response, await response.text())
    assert created["price"] == 19.99 and created["stock"] == 10 and created["imageUrl"] is None
    assert created["createdAt"] == created["updatedAt"]

    got = await call(product, "GET", f"/api/products/{created['id']}", expected_status=200)
    assert got["data"] == created


async def test_prices_are_written_with_two_places(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers, price=0.1)
    response = await product.get(f"/api/products/{created['id']}")
    assert '"price":0.10' in await response.text()


async def test_stored_money_is_integer_cents(
    product: TestClient, admin_headers: dict[str, str], mongo_uri: str
) -> None:
    created = await create_product(product, admin_headers, price=1234.56)
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri)
    try:
        stored = await client.get_default_database()["products"].find_one({})
    finally:
        await client.close()
    assert stored is not None and stored["price_cents"] == 123456
    assert str(stored["_id"]) == created["id"]


@pytest.mark.parametrize(
    "product_id",
    ["zzz", "123", "abcdefghijkl", "g" * 24, "$gt", MISSING_ID, MISSING_ID.upper(), "%00"],
)
async def test_unknown_or_malformed_id_is_not_found(product: TestClient, product_id: str) -> None:
    body = await call(product, "GET", f"/api/products/{product_id}", expected_status=404)
    assert body["code"] == "product_not_found"


async def test_categories_count_products(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    for category in ["kitchen", "kitchen", "garden"]:
        await create_product(product, admin_headers, category=category)
    body = await call(product, "GET", "/api/products/categories", expected_status=200)
    assert body["data"] == [{"name": "garden", "count": 1}, {"name": "kitchen", "count": 2}]


# -- listing ----------------------------------------------------------------------------------


@pytest.fixture
async def catalogue(product: TestClient, admin_headers: dict[str, str]) -> list[dict[str, Any]]:
    """Five products in three categories, for the listing tests; as created."""
    rows = [
        ("Blue Mug", "ceramic mug for coffee", 5, "kitchen", 3),
        ("red mug", "enamel mug (camping)", 7.5, "kitchen", 0),
        ("Garden Hose", "25 m hose", 30, "garden", 4),
        ("Trowel", "steel hand trowel", 12.25, "garden", 9),
        ("Coffee Beans", "whole beans, 1 kg", 19.99, "pantry", 20),
    ]
    created = []
    for name, description, price, category, stock in rows:
        created.append(
            await create_product(
                product,
                admin_headers,
                name=name,
                description=description,
                price=price,
                category=category,
                stock=stock,
            )
        )
    return created


async def names(product: TestClient, query: str) -> list[str]:
    body = await call(product, "GET", f"/api/products?{query}", expected_status=200)
    assert body["count"] == len(body["data"])
    return [item["name"] for item in body["data"]]


@pytest.mark.usefixtures("catalogue")
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("q=mug&sort=name", ["Blue Mug", "red mug"]),
        ("q=MUG+coffee", ["Blue Mug"]),  # every word must match, in name or description
        ("q=coffee&sort=name", ["Blue Mug", "Coffee Beans"]),
        ("q=(camping)", ["red mug"]),  # regex characters are matched literally
        ("q=.*", []),
        ("q=%7B%22%24gt%22%3A%22%22%7D", []),  # {"$gt":""} is just text
        ("category=garden&sort=price", ["Trowel", "Garden Hose"]),
        ("category=%7B%22%24ne%22%3Anull%7D", []),
        ("minPrice=7.5&maxPrice=19.99&sort=price", ["red mug", "Trowel", "Coffee Beans"]),
        ("minPrice=12.26&sort=-price", ["Garden Hose", "Coffee Beans"]),
        ("inStock=true&category=kitchen", ["Blue Mug"]),
        ("sort=name", ["Blue Mug", "Coffee Beans", "Garden Hose", "red mug", "Trowel"]),
        ("sort=-price", ["Garden Hose", "Coffee Beans", "Trowel", "red mug", "Blue Mug"]),
        ("", ["Coffee Beans", "Trowel", "Garden Hose", "red mug", "Blue Mug"]),  # newest first
    ],
)
async def test_list_filters_and_sorts(product: TestClient, query: str, expected: list[str]) -> None:
    assert await names(product, query) == expected


async def test_many_products_by_id_in_one_call(
    product: TestClient, catalogue: list[dict[str, Any]]
) -> None:
    wanted = [catalogue[0]["id"], catalogue[3]["id"], MISSING_ID, "nonsense"]
    body = await call(
        product,
        "GET",
        f"/api/products?ids={','.join(wanted)}&sort=name&limit=100",
        expected_status=200,
    )
    assert [item["id"] for item in body["data"]] == [catalogue[0]["id"], catalogue[3]["id"]]
    assert body["total"] == 2
    too_many = ",".join([MISSING_ID] * 101)
    await call(product, "GET", f"/api/products?ids={too_many}", expected_status=400)
    empty = await call(product, "GET", "/api/products?ids=", expected_status=200)
    assert empty["total"] == 0


@pytest.mark.usefixtures("catalogue")
async def test_pages_carry_count_total_page_and_limit(product: TestClient) -> None:
    first = await call(product, "GET", "/api/products?limit=2&sort=name", expected_status=200)
    assert (first["count"], first["total"], first["page"], first["limit"]) == (2, 5, 1, 2)
    third = await call(
        product, "GET", "/api/products?limit=2&page=3&sort=name", expected_status=200
    )
    assert [p["name"] for p in third["data"]] == ["Trowel"]
    assert (third["count"], third["total"], third["page"]) == (1, 5, 3)
    beyond = await call(product, "GET", "/api/products?limit=2&page=9", expected_status=200)
    assert (beyond["data"], beyond["count"], beyond["total"]) == ([], 0, 5)
    default = await call(product, "GET", "/api/products", expected_status=200)
    assert (default["page"], default["limit"]) == (1, 20)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("page=0", "page"),
        ("page=-1", "page"),
        ("page=99999999999999999999", "page"),
        ("sort=%24where", "sort"),
        ("sort=price;drop", "sort"),
        ("minPrice=abc", "minPrice"),
        ("minPrice=-1", "minPrice"),
        ("maxPrice=1.001", "maxPrice"),
        ("minPrice=NaN", "minPrice"),
        ("minPrice=5&maxPrice=4", "query"),
        ("inStock=maybe", "inStock"),
        ("q=" + "x" * 101, "q"),
        ("colour=red", "colour"),
        ("page=1&page=2", "page"),
    ],
)
async def test_bad_list_queries_are_400(product: TestClient, query: str, field: str) -> None:
    body = await call(product, "GET", f"/api/products?{query}", expected_status=400)
    assert body["code"] == "validation_error"
    assert field in [detail["field"] for detail in body["details"]]


# -- caching ----------------------------------------------------------------------------------


async def test_etag_gives_304_until_the_product_changes(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers)
    path = f"/api/products/{created['id']}"
    first = await product.get(path)
    etag = first.headers["ETag"]
    assert "max-age" in first.headers["Cache-Control"]

    again = await product.get(path, headers={"If-None-Match": etag})
    assert again.status == 304
    assert await again.read() == b""
    assert again.headers["ETag"] == etag

    await call(product, "PUT", path, json={"stock": 3}, headers=admin_headers, expected_status=200)
    changed = await product.get(path, headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["ETag"] != etag

    listing = await product.get("/api/products")
    unchanged = await product.get(
        "/api/products", headers={"If-None-Match": listing.headers["ETag"]}
    )
    assert unchanged.status == 304


# -- update and delete ------------------------------------------------------------------------


async def test_update_changes_only_the_fields_given(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers, imageUrl="/static/mug.png")
    path = f"/api/products/{created['id']}"
    body = await call(
        product,
        "PUT",
        path,
        json={"price": 3.3, "name": "Tin Mug"},
        headers=admin_headers,
        expected_status=200,
    )
    updated = body["data"]
    assert (updated["name"], updated["price"], updated["stock"]) == ("Tin Mug", 3.3, 10)
    assert updated["description"] == created["description"]
    assert updated["createdAt"] == created["createdAt"]
    assert updated["updatedAt"] >= created["updatedAt"]
    assert updated["imageUrl"] == "/static/mug.png"

    body = await call(
        product, "PUT", path, json={"imageUrl": None}, headers=admin_headers, expected_status=200
    )
    assert body["data"]["imageUrl"] is None
    got = await call(product, "GET", path, expected_status=200)
    assert got["data"] == body["data"]


@pytest.mark.parametrize(
    "change",
    [{}, {"name": None}, {"price": None}, {"price": 0}, {"colour": "red"}, {"stock": -1}],
)
async def test_bad_updates_are_400_and_change_nothing(
    product: TestClient, admin_headers: dict[str, str], change: dict[str, Any]
) -> None:
    created = await create_product(product, admin_headers)
    path = f"/api/products/{created['id']}"
    await call(product, "PUT", path, json=change, headers=admin_headers, expected_status=400)
    assert (await call(product, "GET", path, expected_status=200))["data"] == created


async def test_update_and_delete_unknown_products_are_404(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    for method, payload in (("PUT", {"stock": 1}), ("DELETE", None), ("PATCH", {"quantity": 1})):
        suffix = "/stock" if method == "PATCH" else ""
        for product_id in (MISSING_ID, "nope"):
            await call(
                product,
                method,
                f"/api/products/{product_id}{suffix}",
                json=payload,
                headers=admin_headers,
                expected_status=404,
            )


async def test_delete_removes_the_product(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers)
    path = f"/api/products/{created['id']}"
    body = await call(product, "DELETE", path, headers=admin_headers, expected_status=200)
    assert body["data"] == {"id": created["id"], "deleted": True}
    await call(product, "GET", path, expected_status=404)
    await call(product, "DELETE", path, headers=admin_headers, expected_status=404)


# -- stock ------------------------------------------------------------------------------------


async def test_stock_changes_add_and_take(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers, stock=10)
    path = f"/api/products/{created['id']}/stock"
    body = await call(
        product, "PATCH", path, json={"quantity": 5}, headers=admin_headers, expected_status=200
    )
    assert body["data"]["stock"] == 15
    body = await call(
        product,
        "PATCH",
        path,
        json={"quantity": -15},
        headers=service_headers,
        expected_status=200,
    )
    assert body["data"]["stock"] == 0


async def test_taking_more_than_there_is_is_409_and_changes_nothing(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers, stock=3)
    path = f"/api/products/{created['id']}"
    body = await call(
        product,
        "PATCH",
        path + "/stock",
        json={"quantity": -4},
        headers=admin_headers,
        expected_status=409,
    )
    assert body["code"] == "insufficient_stock" and body["available"] == 3
    assert (await call(product, "GET", path, expected_status=200))["data"]["stock"] == 3


@pytest.mark.parametrize(
    "change",
    [
        {"quantity": 0},
        {"quantity": 1.5},
        {"quantity": "1"},
        {"quantity": True},
        {},
        {"quantity": 10**12},
        {"quantity": 1, "extra": 1},
        {"quantity": None},
    ],
)
async def test_bad_stock_changes_are_400(
    product: TestClient, admin_headers: dict[str, str], change: dict[str, Any]
) -> None:
    created = await create_product(product, admin_headers, stock=3)
    path = f"/api/products/{created['id']}"
    await call(
        product, "PATCH", path + "/stock", json=change, headers=admin_headers, expected_status=400
    )
    assert (await call(product, "GET", path, expected_status=200))["data"]["stock"] == 3


async def test_stock_race_never_goes_below_zero(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers, stock=10)
    path = f"/api/products/{created['id']}/stock"

    async def take_one() -> int:
        response = await product.patch(path, json={"quantity": -1}, headers=admin_headers)
        await response.read()
        return response.status

    statuses = await asyncio.gather(*(take_one() for _ in range(50)))
    assert statuses.count(200) == 10
    assert statuses.count(409) == 40
    got = await call(product, "GET", f"/api/products/{created['id']}", expected_status=200)
    assert got["data"]["stock"] == 0


# -- who may do what --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Token abc"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
        bearer(unsigned({})),
        bearer(forged({}, secret="another-secret-" + "y" * 40)),
        bearer(forged({}, algorithm="HS512")),
        bearer(forged({"exp": datetime.now(UTC) - timedelta(seconds=5)})),
        bearer(forged({"role": "superuser"})),
        bearer(jwt.encode({"sub": "1", "role": "admin"}, JWT_SECRET, algorithm="HS256")),
    ],
    ids=[
        "none",
        "scheme",
        "empty",
        "garbage",
        "alg-none",
        "wrong-secret",
        "hs512",
        "expired",
        "unknown-role",
        "missing-claims",
    ],
)
async def test_bad_tokens_are_401(product: TestClient, headers: dict[str, str]) -> None:
    body = await call(
        product, "POST", "/api/products", json=product_body(), headers=headers, expected_status=401
    )
    assert body["code"] in {"unauthorized", "invalid_token", "token_expired"}
    assert (await call(product, "GET", "/api/products", expected_status=200))["total"] == 0


async def test_customers_may_not_change_the_catalogue(
    product: TestClient, admin_headers: dict[str, str], customer_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers)
    path = f"/api/products/{created['id']}"
    for method, suffix, payload in [
        ("POST", "", product_body()),
        ("PUT", f"/{created['id']}", {"stock": 1}),
        ("DELETE", f"/{created['id']}", None),
        ("PATCH", f"/{created['id']}/stock", {"quantity": -1}),
    ]:
        await call(
            product,
            method,
            "/api/products" + suffix,
            json=payload,
            headers=customer_headers,
            expected_status=403,
        )
    assert (await call(product, "GET", path, expected_status=200))["data"] == created


# -- bad bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{", "invalid_json"),
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_json"),
        (b'"a string"', "invalid_json"),
        (b'{"name": "x", "price": NaN, "category": "c"}', "invalid_json"),
        (b'{"name": "x", "price": Infinity, "category": "c"}', "invalid_json"),
        (b"\xff\xfe{}", "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
        (b'{"name": "x", "price": 1e400, "category": "c"}', "validation_error"),
        (b"", "validation_error"),
        (b"\n", "invalid_json"),  # whitespace is not an empty body, nor JSON
        (b" \t ", "invalid_json"),
        (b"{}", "validation_error"),
    ],
)
async def test_malformed_bodies_are_400(
    product: TestClient, admin_headers: dict[str, str], raw: bytes, code: str
) -> None:
    body = await call(
        product,
        "POST",
        "/api/products",
        data=raw,
        headers={**admin_headers, "Content-Type": "application/json"},
        expected_status=400,
    )
    assert body["code"] == code


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"price": "12.50"}, "price"),
        ({"price": 0}, "price"),
        ({"price": -1}, "price"),
        ({"price": 1.005}, "price"),
        ({"price": 10**400}, "price"),
        ({"price": True}, "price"),
        ({"stock": "12"}, "stock"),
        ({"stock": 1.5}, "stock"),
        ({"stock": -1}, "stock"),
        ({"stock": 2**63}, "stock"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": ["a"]}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"category": None}, "category"),
        ({"imageUrl": "javascript:alert(1)"}, "imageUrl"),
        ({"role": "admin"}, "role"),
        ({"$set": {"stock": 1}}, "$set"),
    ],
)
async def test_invalid_products_are_400_with_details(
    product: TestClient, admin_headers: dict[str, str], change: dict[str, Any], field: str
) -> None:
    body = await call(
        product,
        "POST",
        "/api/products",
        json=product_body(**change),
        headers=admin_headers,
        expected_status=400,
    )
    assert body["code"] == "validation_error"
    assert field in [detail["field"] for detail in body["details"]], body
    assert (await call(product, "GET", "/api/products", expected_status=200))["total"] == 0


async def test_unicode_text_is_kept(product: TestClient, admin_headers: dict[str, str]) -> None:
    created = await create_product(
        product, admin_headers, name="Tasse ☕ für 🐧", description="日本語の説明"
    )
    assert created["name"] == "Tasse ☕ für 🐧"
    assert await names(product, "q=%F0%9F%90%A7") == ["Tasse ☕ für 🐧"]


async def test_bodies_over_one_mebibyte_are_413(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    huge = json.dumps(product_body(description="x" * (1024 * 1024))).encode()
    body = await call(
        product,
        "POST",
        "/api/products",
        data=io.BytesIO(huge),
        headers={**admin_headers, "Content-Type": "application/json"},
        expected_status=413,
    )
    assert body["code"] == "payload_too_large"


async def test_admin_token_minted_elsewhere_works(product: TestClient) -> None:
    token = issue_token(JWT_SECRET, sub="42", email="boss@shop.test", role="admin")
    await create_product(product, bearer(token))


# -- stock changes with a reference (the checkout saga's steps) ------------------------------


async def test_a_referenced_stock_change_applies_once(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    assert await take(product, service_headers, product_id, -3, "order:1") == 200
    assert await take(product, service_headers, product_id, -3, "order:1") == 200
    assert await stock_of(product, product_id) == 7
    got = await call(product, "GET", f"/api/products/{product_id}", expected_status=200)
    assert "stock_moves" not in got["data"]


async def test_an_undo_reverses_exactly_once_and_blocks_a_late_change(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    await take(product, service_headers, product_id, -4, "order:2")
    assert await undo(product, service_headers, product_id, "order:2") == 200
    assert await undo(product, service_headers, product_id, "order:2") == 200
    assert await stock_of(product, product_id) == 10
    # Undone for good, and a take under it says so: it took nothing.
    undone = (409, "stock_change_undone")
    assert await take_answer(product, service_headers, product_id, -4, "order:2") == undone
    assert await stock_of(product, product_id) == 10

    # Undone before it ever arrived (its sender crashed with the request in flight).
    assert await undo(product, service_headers, product_id, "order:3") == 200
    assert await take_answer(product, service_headers, product_id, -1, "order:3") == undone
    assert await stock_of(product, product_id) == 10


async def test_a_used_reference_for_another_change_is_409(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    assert await take(product, service_headers, product_id, -2, "order-7") == 200
    reused = await take_answer(product, service_headers, product_id, -5, "order-7")
    assert reused == (409, "reference_reused")
    assert await stock_of(product, product_id) == 8


async def test_references_and_undos_are_for_services_only(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    """An admin changes stock by plain quantities: one who could pick a reference could
    answer for a checkout's take before the order service does (undo "order-<next id>",
    and the next order's take "succeeds" taking nothing), or undo a placed order's take."""
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    assert await take(product, service_headers, product_id, -3, "order-1") == 200
    for reference in ("order-1", "order-2"):
        assert await undo(product, admin_headers, product_id, reference) == 403
    refused = await take_answer(product, admin_headers, product_id, -1, "order-3")
    assert refused == (403, "reference_for_services")
    assert await stock_of(product, product_id) == 7
    # Neither left a mark: the order service's own moves still work as they should.
    assert await take(product, service_headers, product_id, -1, "order-2") == 200
    assert await take(product, service_headers, product_id, -1, "order-3") == 200
    assert await stock_of(product, product_id) == 5
    await change_stock(product, admin_headers, product_id, 2)  # plain deltas stay the admin's
    assert await stock_of(product, product_id) == 7


async def test_a_short_referenced_change_is_409_and_can_be_tried_again(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=2))["id"]
    assert await take(product, service_headers, product_id, -3, "order:4") == 409
    await change_stock(product, admin_headers, product_id, 5)
    assert await take(product, service_headers, product_id, -3, "order:4") == 200
    assert await stock_of(product, product_id) == 4


async def test_undoing_an_addition_needs_the_units_to_be_there(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=0))["id"]
    assert await take(product, service_headers, product_id, 5, "restock:1") == 200
    assert await take(product, service_headers, product_id, -4, "order:5") == 200
    assert await undo(product, service_headers, product_id, "restock:1") == 409
    assert await stock_of(product, product_id) == 1


async def test_racing_takes_and_undos_conserve_stock(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    references = [f"order:{n}" for n in range(50)]
    statuses = await asyncio.gather(
        *(take(product, service_headers, product_id, -1, ref) for ref in references),
        *(take(product, service_headers, product_id, -1, "order:0") for _ in range(10)),
    )
    assert statuses[:50].count(200) == 10 and statuses[:50].count(409) == 40
    assert await stock_of(product, product_id) == 0  # repeats of order:0 took nothing more
    undone = await asyncio.gather(
        *(undo(product, service_headers, product_id, ref) for ref in references)
    )
    assert set(undone) == {200}
    assert await stock_of(product, product_id) == 10


@pytest.mark.parametrize("reference", ["", "a.b", "$where", "x" * 81, "with space", 12])
async def test_bad_references_are_400(
    product: TestClient,
    admin_headers: dict[str, str],
    service_headers: dict[str, str],
    reference: Any,
) -> None:
    product_id = (await create_product(product, admin_headers, stock=3))["id"]
    assert await take(product, service_headers, product_id, -1, reference) == 400
    assert await undo(product, service_headers, product_id, reference) == 400
    assert await stock_of(product, product_id) == 3


async def test_customers_may_not_undo(
    product: TestClient, admin_headers: dict[str, str], customer_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=3))["id"]
    assert await undo(product, customer_headers, product_id, "order:1") == 403
    assert await undo(product, {}, product_id, "order:1") == 401
