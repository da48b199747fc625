"""Catalogue reads answered from the answers kept per catalogue version
(svc_product.catalogue): a repeat runs no query, a matching If-None-Match is a 304 without
one, and every write, at any replica, is seen by the next read at every replica."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestClient
from support import call, change_stock, create_product, take

from shopkit.coalesce import FreshRun
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app
from svc_product.keys import ANSWERS, STORE

PAGE = "/api/products?category=lamps&limit=5"


async def get(client: TestClient, path: str, **headers: str) -> tuple[int, Any, str]:
    response = await client.get(path, headers=headers)
    body = await response.json() if response.status == 200 else None
    return response.status, body, response.headers.get("ETag", "")


async def test_a_kept_answer_is_sent_without_any_query(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    for number in range(3):
        await create_product(product, admin_headers, name=f"Lamp {number}", category="lamps")
    status, first, etag = await get(product, PAGE)
    assert status == 200 and first["total"] == 3

    # Behind the service's back (no version bump): a query now would find nothing.
    await product.app[STORE].collection.delete_many({})
    made = product.app[ANSWERS].made

    assert await get(product, PAGE, **{"If-None-Match": etag}) == (304, None, etag)
    assert (await get(product, PAGE))[1] == first
    assert product.app[ANSWERS].made == made


async def test_a_write_is_seen_by_the_next_read_at_once(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    lamp = await create_product(product, admin_headers, name="Lamp", category="lamps", stock=5)
    _, before, etag = await get(product, PAGE)
    assert before["data"][0]["stock"] == 5

    await change_stock(product, admin_headers, lamp["id"], -1)
    status, after, new_etag = await get(product, PAGE, **{"If-None-Match": etag})
    assert status == 200 and after["data"][0]["stock"] == 4 and new_etag != etag

    assert await take(product, service_headers, lamp["id"], -2, "order-1") == 200
    assert (await get(product, PAGE))[1]["data"][0]["stock"] == 2
    await call(product, "PUT", f"/api/products/{lamp['id']}", json={"price": 3.5},
               headers=admin_headers, expected_status=200)  # fmt: skip
    assert (await get(product, f"/api/products/{lamp['id']}"))[1]["data"]["price"] == 3.5
    await call(product, "DELETE", f"/api/products/{lamp['id']}", headers=admin_headers,
               expected_status=200)  # fmt: skip
    assert (await get(product, PAGE))[1]["total"] == 0
    assert (await get(product, f"/api/products/{lamp['id']}"))[0] == 404


async def test_a_write_at_one_replica_is_seen_at_the_other(
    aiohttp_client: Any,
    product_settings: ProductSettings,
    admin_headers: dict[str, str],
) -> None:
    one = await aiohttp_client(create_product_app(product_settings))
    other = await aiohttp_client(create_product_app(product_settings))
    lamp = await create_product(one, admin_headers, name="Lamp", category="lamps", stock=5)
    assert (await get(other, PAGE))[1]["data"][0]["stock"] == 5
    assert (await get(other, "/api/products/categories"))[1]["data"] == [
        {"name": "lamps", "count": 1}
    ]

    await change_stock(one, admin_headers, lamp["id"], 7)
    await create_product(one, admin_headers, name="Vase", category="vases")

    assert (await get(other, PAGE))[1]["data"][0]["stock"] == 12
    assert (await get(other, f"/api/products/{lamp['id']}"))[1]["data"]["stock"] == 12
    assert len((await get(other, "/api/products/categories"))[1]["data"]) == 2


async def test_many_readers_of_a_new_version_run_one_query(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    await create_product(product, admin_headers, name="Lamp", category="lamps")
    made = product.app[ANSWERS].made

    answers = await asyncio.gather(*(get(product, PAGE) for _ in range(40)))

    assert {status for status, _, _ in answers} == {200}
    assert len({etag for _, _, etag in answers}) == 1
    assert product.app[ANSWERS].made == made + 1


async def test_a_fresh_run_serves_only_callers_that_asked_before_it_started() -> None:
    value = 0
    started = asyncio.Event()
    release = asyncio.Event()

    async def read() -> int:
        seen = value  # what the datastore holds when the read starts
        started.set()
        await release.wait()
        return seen

    fresh = FreshRun(read, "test-read")
    first = asyncio.create_task(fresh())
    await started.wait()
    value = 1  # a write finishes while the first read runs; later callers must see it
    later = [asyncio.create_task(fresh()) for _ in range(5)]
    release.set()
    assert await first == 0
    assert set(await asyncio.gather(*later)) == {1}  # one more read, shared by all five

    async def failing() -> int:
        raise ConnectionError("datastore away")

    broken = FreshRun(failing, "test-failing")
    results = await asyncio.gather(broken(), broken(), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    await fresh.close()
    await broken.close()
