"""The catalogue's reads: the framework's ceiling, the datastore's own rate for the same queries,
the product service, two workers, the gateway; and (`sales`) the same reads before and after
many orders, which must not slow them."""

from __future__ import annotations

import argparse
import asyncio
import urllib.request
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import aiohttp
import bson
import drivers
import harness
import pymongo
from drivers import HttpRequest
from harness import BenchmarkError, Shop, category, measure

from shopctl import processes
from shopkit.auth import service_token
from svc_product.store import ProductStore, catalogue_filter

CATEGORIES = 8  # 25 products each of the 200 seeded: a full first page
PAGE = 20
SALES_LINES = (
    "datastore by id",
    "datastore category",
    "product by id",
    "product category",
    "product category, If-None-Match",
    "gateway by id",
    "gateway category",
    "gateway category, If-None-Match",
)
RATIOS = [  # issue #13 asked for gateway / product by id >= 0.85
    ("product by id", "datastore by id"),
    ("product list", "datastore list"),
    ("gateway by id", "product by id"),
    ("gateway list", "product list"),
    ("product by id", "bare aiohttp"),
    ("product by id, 2 workers", "product by id"),
]


async def _page(store: ProductStore, category_name: str | None) -> None:
    selector = catalogue_filter(category=category_name)
    docs, _ = await store.find_page(selector, sort="-createdAt", page=1, limit=PAGE)
    if len(docs) != PAGE:
        raise LookupError(f"a page had {len(docs)} products, not {PAGE}")


def lines(shop: Shop, ids: list[str]) -> dict[str, tuple[str, Callable[[], Any]]]:
    """Each line's name: the process whose CPU it reports per request, and its load."""
    load = shop.load
    by_id = [HttpRequest(f"/api/products/{product_id}") for product_id in ids]
    listing = [HttpRequest(f"/api/products?limit={PAGE}")]
    pages = [f"/api/products?category={category(n, CATEGORIES)}&limit={PAGE}" for n in range(8)]

    def http(service: str, requests: list[HttpRequest], name: str) -> Callable[[], Any]:
        return lambda: drivers.http(shop.url(service), requests, load, name)

    def revalidating(service: str) -> Callable[[], Any]:
        def run() -> drivers.LoadResult:  # each page sent with the ETag it has now: 304s
            base = shop.url(service)
            etag = {path: urllib.request.urlopen(base + path).headers["ETag"] for path in pages}
            held = [HttpRequest(path, headers={"If-None-Match": etag[path]}) for path in pages]
            return drivers.http(base, held, load, f"{service} 304")

        return run

    def datastore(read: Callable[..., Any]) -> Callable[[], Any]:
        return lambda: harness.datastore_load(shop, read, load)

    categories = [HttpRequest(path) for path in pages]
    plan = {
        "bare aiohttp": ("bare aiohttp", http("bare aiohttp", by_id, "bare")),
        "datastore by id": ("driver", datastore(lambda s, rng: s.get(rng.choice(ids)))),
        "datastore list": ("driver", datastore(lambda s, rng: _page(s, None))),
        "datastore category": (
            "driver",
            datastore(lambda s, rng: _page(s, category(rng.randrange(8), CATEGORIES))),
        ),
    }
    for service in ("product", "gateway"):
        plan[f"{service} by id"] = (service, http(service, by_id, f"{service} by id"))
        plan[f"{service} list"] = (service, http(service, listing, f"{service} list"))
        plan[f"{service} category"] = (service, http(service, categories, f"{service} category"))
        plan[f"{service} category, If-None-Match"] = (service, revalidating(service))
    workers = "product-2-workers"
    plan["product by id, 2 workers"] = (workers, http(workers, by_id, workers))
    return plan


def check_answers(shop: Shop, ids: list[str]) -> None:
    """Each measured URL answers what the line means to measure, before it is measured."""
    for service in ("bare aiohttp", "product", "gateway"):
        one = harness.call("GET", f"{shop.url(service)}/api/products/{ids[0]}")
        if one["data"]["id"] != ids[0]:
            raise BenchmarkError(f"{service} answered another product: {one}")
    for service in ("product", "gateway"):
        page = harness.call("GET", f"{shop.url(service)}/api/products?limit={PAGE}")
        if (page["count"], page["total"]) != (PAGE, len(ids)):
            raise BenchmarkError(f"{service} answered an unexpected page: {str(page)[:300]}")


def reads(options: argparse.Namespace) -> dict[str, Any]:
    variants = {"product-2-workers": ("product", {"WORKERS": "2"})}
    with harness.running_shop(options, variants, bare_app=True) as shop:
        ids = harness.seed_products(shop, options.products, CATEGORIES)
        check_answers(shop, ids)
        rows = [measure(shop, name, cost, run) for name, (cost, run) in lines(shop, ids).items()]
    harness.print_lines(f"catalogue reads, {options.products} products", rows)
    return {"lines": [asdict(row) for row in rows], "ratios": harness.print_ratios(rows, RATIOS)}


# -- sales: the same reads before and after many orders ------------------------------------


def place_orders(shop: Shop, ids: list[str], orders: int) -> None:
    """Restock every product, then take one unit per order line with a reference, as the
    order service takes stock; wait until the takes' markers are settled (svc_product.stock
    leaves one in the product for about a second)."""
    token = service_token(shop.env("product", "JWT_SECRET"), "benchmark")
    changes = [(product_id, {"quantity": 1_000_000}) for product_id in ids]
    changes += [
        (ids[n % len(ids)], {"quantity": -1, "reference": f"order-{n}"}) for n in range(orders)
    ]

    async def send_all() -> int:
        pending, refused = iter(changes), 0
        headers = {"Authorization": f"Bearer {token}"}
        async with aiohttp.ClientSession(shop.url("product"), headers=headers) as session:

            async def worker() -> None:
                nonlocal refused
                for product_id, body in pending:
                    async with session.patch(
                        f"/api/products/{product_id}/stock", json=body
                    ) as answer:
                        refused += answer.status != 200

            await asyncio.gather(*(worker() for _ in range(shop.load.connections)))
        return refused

    harness.err.print(f"restocking, then placing {orders:,} order lines")
    if refused := drivers.run_async(send_all()):
        raise BenchmarkError(f"{refused} of {len(changes)} stock changes were refused")
    with pymongo.MongoClient(shop.env("product", "MONGODB_URI")) as client:
        products = client.get_default_database()["products"]
        if not processes.wait_until(
            lambda: not products.count_documents({"pending_count": {"$exists": True}}), 60, 0.2
        ):
            raise BenchmarkError("the stock takes' markers were not settled within a minute")


def document_bytes(shop: Shop) -> float:
    """The products' mean stored size: what each catalogue read decodes."""
    with pymongo.MongoClient(shop.env("product", "MONGODB_URI")) as client:
        docs = list(client.get_default_database()["products"].find())
    return sum(len(bson.encode(doc)) for doc in docs) / len(docs)


def sales(options: argparse.Namespace) -> dict[str, Any]:
    after = f", after {options.orders:,} orders"
    with harness.running_shop(options) as shop:
        ids = harness.seed_products(shop, options.products, CATEGORIES)
        plan = {name: line for name, line in lines(shop, ids).items() if name in SALES_LINES}
        sizes = [document_bytes(shop)]
        rows = [measure(shop, name, cost, run) for name, (cost, run) in plan.items()]
        place_orders(shop, ids, options.orders)
        sizes.append(document_bytes(shop))
        rows += [measure(shop, name + after, cost, run) for name, (cost, run) in plan.items()]
    harness.print_lines(
        f"catalogue reads before and after {options.orders:,} orders; mean product document "
        f"{sizes[0]:,.0f} bytes before, {sizes[1]:,.0f} after",
        rows,
    )
    ratios = harness.print_ratios(rows, [(name + after, name) for name in plan])
    return {"lines": [asdict(row) for row in rows], "ratios": ratios, "document_bytes": sizes}
