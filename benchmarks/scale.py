"""How the catalogue's reads grow with its size: a page, a category's page and a search at each
scale, run by the product service's own query code from a bare client and over HTTP."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import random
from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode

import drivers
import harness
from drivers import HttpRequest
from harness import ADJECTIVES, NOUNS, BenchmarkError, measure

from svc_product.store import ProductStore, catalogue_filter

CATEGORIES = 50
CONNECTIONS = 8  # the reads are slow at 100k on nx-27017: a few at a time
LINES = ("list", "category", "search")


def query(line: str, rng: random.Random, products: int) -> dict[str, Any]:
    """One request's parameters, newest first: pages 1-5 of 10-50 products, a category, one
    or two words. Hundreds of URLs per line, so no answer cache hides the query's cost."""
    params: dict[str, Any] = {"limit": rng.randint(10, 50)}
    if line == "search":
        words = [rng.choice(NOUNS)]
        if rng.random() < 0.5:
            words.append(rng.choice(ADJECTIVES))
        params["q"] = " ".join(words)
        return params
    pages = products // params["limit"]
    if line == "category":
        params["category"] = harness.category(rng.randrange(CATEGORIES), CATEGORIES)
        pages //= CATEGORIES
    params["page"] = rng.randint(1, max(1, min(5, pages)))
    return params


async def store_read(store: ProductStore, rng: random.Random, line: str, products: int) -> None:
    """What the list route asks of the store for one request of `line`."""
    params = query(line, rng, products)
    selector = catalogue_filter(q=params.get("q"), category=params.get("category"))
    page, limit = params.get("page", 1), params["limit"]
    docs, total = await store.find_page(selector, sort="-createdAt", page=page, limit=limit)
    if len(docs) != max(0, min(limit, total - (page - 1) * limit)):
        raise LookupError(f"page {page} of {limit} had {len(docs)} of {total} products")


def run(options: argparse.Namespace) -> dict[str, Any]:
    rows = []
    with harness.running_shop(options) as shop:
        load = dataclasses.replace(shop.load, connections=CONNECTIONS)
        for products in options.scales:
            harness.seed_products(shop, products, CATEGORIES)
            for line in LINES:
                rng = random.Random(f"{line}:{products}")
                requests = [
                    HttpRequest(f"/api/products?{urlencode(query(line, rng, products))}")
                    for _ in range(2000)
                ]
                total = harness.call("GET", shop.url("product") + requests[0].path)["total"]
                wanted = {"list": products, "category": products // CATEGORIES}
                if total != wanted.get(line, total) or not total:
                    raise BenchmarkError(f"{requests[0].path} answered a total of {total}")

                reads = functools.partial(store_read, line=line, products=products)
                datastore = f"{products:,} {line} (datastore)"
                rows.append(
                    measure(shop, datastore, "mongodb", harness.datastore_load, shop, reads, load)
                )
                http = f"{products:,} {line} (http)"
                url = shop.url("product")
                rows.append(measure(shop, http, "mongodb", drivers.http, url, requests, load, http))
    harness.print_lines(
        f"catalogue scale: {CONNECTIONS} connections; CPU µs/req is the datastore's", rows
    )
    return {"lines": [asdict(row) for row in rows]}
