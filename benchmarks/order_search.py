"""The admin's search of orders by customer (`GET /api/orders?customer=`, what /admin/orders
sends) as the orders grow: with migration 0006's trigram indexes, and in the same run without
them (dropped for the line, then made again from their own definitions)."""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlencode

import asyncpg
import drivers
import harness
from drivers import HttpRequest
from harness import BenchmarkError, measure

CONNECTIONS = 8
_FIRST = """ann bob cara dan eve finn gail hugo ines jack kira liam maya nils olga paul quin rosa
sam tess uma vic wren xena yuri zoe abel bea cyd dora emil faye gus hana ivo jo kai lola milo
nora"""
_LAST = """okafor smith garcia muller rossi novak kowalski jensen silva tanaka kim nguyen patel
cohen murphy dubois martin bernard moreau laurent fischer weber wagner becker schulz hoffmann koch
richter klein wolf schroder neumann schwarz braun zimmer kruger hartmann lange werner krause
lehmann koehler maier huber mayer berger fuchs vogel ortiz lindqvist"""
FIRST, LAST = _FIRST.split(), _LAST.split()
# Customers: each first name with each last name, their orders spread over the table.
CUSTOMERS = len(FIRST) * len(LAST)
TRIGRAM_INDEXES = ("orders_customer_email_trgm", "orders_customer_name_trgm")


def search_text(rng: random.Random) -> str:
    """What an admin types: a last name (40 customers' orders), a whole e-mail (one
    customer's), or a first and last name (one customer's)."""
    customer = rng.randrange(CUSTOMERS)
    first, last = FIRST[customer % len(FIRST)], LAST[customer // len(FIRST)]
    return rng.choice([last, f"{first}.{last}@bench", f"{first.title()} {last.title()}"])


async def seed_orders(database_url: str, up_to: int) -> None:
    """Top the placed orders up to `up_to`, stored as the order service stores them (the
    customer snapshot a checkout keeps), in one statement per 50,000; then ANALYZE."""
    connection = await asyncpg.connect(database_url)
    try:
        have = await connection.fetchval("SELECT count(*) FROM orders")
        for start in range(have, up_to, 50_000):
            await connection.execute(
                """INSERT INTO orders (user_id, status, total_cents, subtotal_cents,
                                       checkout_state, lease_until, request_hash,
                                       customer_email, customer_first_name, customer_last_name)
                   SELECT 100000 + c, 'pending', 1000 + n % 9000, 1000 + n % 9000, 'placed',
                          now(), 'benchmark', first || '.' || last || '@bench.example',
                          initcap(first), initcap(last)
                   FROM generate_series($1::int, $2::int) AS n,
                        LATERAL (SELECT n % $5 AS c) AS customer,
                        LATERAL (SELECT ($3::text[])[c % $6 + 1] AS first,
                                        ($4::text[])[c / $6 + 1] AS last) AS names""",
                start,
                min(up_to, start + 50_000) - 1,
                FIRST,
                LAST,
                CUSTOMERS,
                len(FIRST),
            )
        await connection.execute("ANALYZE orders")
    finally:
        await connection.close()


async def drop_indexes(database_url: str) -> list[str]:
    """Drop the trigram indexes; their definitions, to make them again."""
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY($1::text[])",
            list(TRIGRAM_INDEXES),
        )
        if len(rows) != len(TRIGRAM_INDEXES):
            raise BenchmarkError(f"the orders database has {len(rows)} of the trigram indexes")
        for row in rows:
            await connection.execute(f"DROP INDEX {row['indexname']}")
        return [row["indexdef"] for row in rows]
    finally:
        await connection.close()


async def make_indexes(database_url: str, definitions: list[str]) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        for definition in definitions:
            await connection.execute(definition)
        await connection.execute("ANALYZE orders")
    finally:
        await connection.close()


def run(options: argparse.Namespace) -> dict[str, Any]:
    rows = []
    with harness.running_shop(options) as shop:
        load = dataclasses.replace(shop.load, connections=CONNECTIONS)
        database_url = shop.env("order", "DATABASE_URL")
        url = shop.url("order")
        token = {"Authorization": f"Bearer {shop.admin_token}"}
        for orders in options.order_scales:
            started = time.perf_counter()
            drivers.run_async(seed_orders(database_url, orders))
            harness.err.print(f"{orders:,} orders in {time.perf_counter() - started:.1f} s")
            rng = random.Random(orders)
            requests = [
                HttpRequest(
                    f"/api/orders?{urlencode({'customer': search_text(rng), 'limit': 20})}",
                    headers=token,
                )
                for _ in range(500)
            ]
            answer = harness.call("GET", url + requests[0].path, token=shop.admin_token)
            if not answer["total"]:
                raise BenchmarkError(f"{requests[0].path} found no order")
            name = f"{orders:,} orders, search"
            rows.append(measure(shop, name, "postgres", drivers.http, url, requests, load, name))
            definitions = drivers.run_async(drop_indexes(database_url))
            try:
                name = f"{orders:,} orders, search without trigrams"
                rows.append(
                    measure(shop, name, "postgres", drivers.http, url, requests, load, name)
                )
            finally:
                drivers.run_async(make_indexes(database_url, definitions))
    harness.print_lines(
        f"order search by customer: {CONNECTIONS} connections; CPU µs/req is PostgreSQL's", rows
    )
    ratios = [
        (f"{n:,} orders, search", f"{n:,} orders, search without trigrams")
        for n in options.order_scales
    ]
    return {"lines": [asdict(row) for row in rows], "ratios": harness.print_ratios(rows, ratios)}
