"""Catalogue search over HTTP: keywords kept right on create and update, found by any word's
beginning in any case and without accents, never shown, and given to products stored
before keywords existed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from bson import ObjectId
from support import call, create_product, eventually

from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app
from svc_product.keys import STORE
from svc_product.schemas import ProductOut
from svc_product.search import keywords


async def found(product: TestClient, q: str, *extra: str) -> list[str]:
    query = "&".join(("sort=name", f"q={q}", *extra))
    body = await call(product, "GET", f"/api/products?{query}", expected_status=200)
    assert body["total"] == len(body["data"])
    return [item["name"] for item in body["data"]]


async def stored_keywords(product: TestClient, product_id: str) -> list[str]:
    doc = await product.app[STORE].collection.find_one({"_id": ObjectId(product_id)})
    return doc["keywords"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("lamp", ["Desk Lamp"]),
        ("LAM", ["Desk Lamp"]),  # the beginning of a word, any case
        ("l%C3%A1mp", ["Desk Lamp"]),  # "lámp": accents do not matter
        ("cafe", ["Desk Lamp"]),  # ... either way: the description says "café"
        ("CAF%C3%89+brass", ["Desk Lamp"]),  # every word must match
        ("brass", ["Desk Lamp", "Doorknob"]),
        ("brass+lamp+shade", ["Desk Lamp"]),
        ("lamp+zebra", []),
        ("amp", []),  # words match from their start, not inside (deliberate: an index)
        ("%E2%80%94+%21%21", []),  # punctuation only: nothing, not everything
        ("door", ["Doorknob"]),
        ("%E3%83%86%E3%82%A3%E3%83%BC", ["ティーポット"]),  # each Japanese character counts
    ],
)
async def test_search_finds_words_by_their_beginning(
    product: TestClient, admin_headers: dict[str, str], q: str, expected: list[str]
) -> None:
    await create_product(
        product, admin_headers, name="Desk Lamp", description="Brass, with a café-style shade"
    )
    await create_product(product, admin_headers, name="Doorknob", description="solid BRASS")
    await create_product(product, admin_headers, name="ティーポット", description="")
    assert await found(product, q) == expected


async def test_search_combines_with_category_and_sort(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    for name, category, price in [
        ("Oak Table", "furniture", 300),
        ("Oak Chair", "furniture", 80),
        ("Oak Leaf Print", "art", 20),
    ]:
        await create_product(product, admin_headers, name=name, category=category, price=price)
    assert await found(product, "oak", "category=furniture") == ["Oak Chair", "Oak Table"]
    body = await call(
        product, "GET", "/api/products?q=oak&sort=-price&limit=2&page=2", expected_status=200
    )
    assert [item["name"] for item in body["data"]] == ["Oak Leaf Print"]
    assert body["total"] == 3


async def test_an_update_of_one_text_keeps_the_other_searchable(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    product_id = (
        await create_product(product, admin_headers, name="Old Name", description="copper kettle")
    )["id"]
    path = f"/api/products/{product_id}"

    await call(
        product, "PUT", path, json={"name": "Teapot"}, headers=admin_headers, expected_status=200
    )
    assert await found(product, "teapot+copper") == ["Teapot"]
    assert await found(product, "old") == []

    await call(
        product,
        "PUT",
        path,
        json={"description": "iron"},
        headers=admin_headers,
        expected_status=200,
    )
    assert await found(product, "teapot+iron") == ["Teapot"]
    assert await found(product, "copper") == []

    await call(product, "PUT", path, json={"price": 9}, headers=admin_headers, expected_status=200)
    assert await stored_keywords(product, product_id) == keywords("Teapot", "iron")


async def test_racing_updates_of_name_and_description_leave_keywords_of_both(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, name="n0", description="d0"))["id"]
    path = f"/api/products/{product_id}"

    async def put(body: dict[str, str]) -> None:
        await call(product, "PUT", path, json=body, headers=admin_headers, expected_status=200)

    for round_number in range(1, 6):
        await asyncio.gather(
            put({"name": f"n{round_number}"}), put({"description": f"d{round_number}"})
        )
    doc = await product.app[STORE].collection.find_one({"_id": ObjectId(product_id)})
    assert (doc["name"], doc["description"]) == ("n5", "d5")
    assert doc["keywords"] == keywords("n5", "d5")


async def test_keywords_never_appear_in_answers(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(product, admin_headers, name="Kettle")
    path = f"/api/products/{created['id']}"
    updated = await call(
        product,
        "PUT",
        path,
        json={"name": "Big Kettle"},
        headers=admin_headers,
        expected_status=200,
    )
    got = await call(product, "GET", path, expected_status=200)
    listed = await call(product, "GET", "/api/products?q=kettle", expected_status=200)
    answers = [created, updated["data"], got["data"], *listed["data"]]
    for answer in answers:
        assert set(answer) == ProductOut.__required_keys__, answer


def _as_an_older_version_stored(name: str, description: str | None) -> dict[str, Any]:
    now = datetime.now(UTC).replace(microsecond=0)
    doc: dict[str, Any] = {
        "name": name,
        "price_cents": 500,
        "category": "old",
        "stock": 1,
        "sort_name": name.casefold(),
        "createdAt": now,
        "updatedAt": now,
    }
    if description is not None:
        doc["description"] = description
    return doc


async def test_products_stored_without_keywords_become_searchable(
    aiohttp_client: Any, product_settings: ProductSettings, admin_headers: dict[str, str]
) -> None:
    first = await aiohttp_client(create_product_app(product_settings))
    collection = first.app[STORE].collection
    await collection.insert_many(
        [
            _as_an_older_version_stored("Vintage Radio", "walnut case"),
            _as_an_older_version_stored("Gramophone", None),  # no description at all
        ]
    )
    await create_product(first, admin_headers, name="Walnut Bowl")

    # A service starting over this catalogue gives them keywords, in the background.
    product = await aiohttp_client(create_product_app(product_settings))

    async def searchable() -> bool:
        return await found(product, "walnut") == ["Vintage Radio", "Walnut Bowl"]

    await eventually(searchable, "the old products getting keywords")
    assert await found(product, "gramo") == ["Gramophone"]
    # Done once: nothing is left to give, by either replica.
    assert await product.app[STORE].add_missing_keywords() == 0
    assert await first.app[STORE].add_missing_keywords() == 0
    assert await collection.count_documents({"keywords": {"$exists": False}}) == 0


async def test_the_backfill_leaves_a_product_changed_meanwhile_alone(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    store = product.app[STORE]
    # As if read by the backfill, then renamed by an update (which computed its own).
    created = await create_product(product, admin_headers, name="Lantern", description="tin")
    await store.collection.update_one(
        {"_id": ObjectId(created["id"])}, {"$unset": {"keywords": ""}}
    )
    assert await store.add_missing_keywords(batch=1) == 1
    assert await stored_keywords(product, created["id"]) == keywords("Lantern", "tin")
