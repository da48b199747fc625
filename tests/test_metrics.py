"""/metrics: each metric moves by exactly what happened. Every event is made to happen on the
real services (real PostgreSQL, Redis and MongoDB-protocol server) the way it happens in the
shop, and each service's /metrics is read back and parsed as Prometheus parses it.

The names and labels are those of README "Metrics" (the dashboard and the alerts in
manifests/ are written against them)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from support import (
    JWT_SECRET,
    REPO,
    as_service,
    bearer,
    call,
    change_stock,
    create_product,
    customer,
    eventually,
    log_lines,
    postgres,
    take_answer,
    undo,
)
from yarl import URL

from shopctl import processes
from shopkit.domain import MAX_STOCK
from shopkit.keys import POSTGRES
from svc_order.app import OrderSettings
from svc_order.app import create_app as create_order_app
from svc_order.keys import CHECKOUT, STORE
from svc_order.saga import request_hash
from svc_order.store import Line, OwnerLock
from svc_user.app import UserSettings
from svc_user.app import create_app as create_user_app

ORDER_SERVICE = as_service("order")  # stock changes with a reference are the services' alone
# Users of this file's own: carts live in a Redis other tests share.
SHOPPER, OTHER_SHOPPER = 7391, 7392
WRONG = "not-the-password"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- reading /metrics ---------------------------------------------------------------------------


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text answer, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape_text(url: URL) -> str:
    """A scrape of the /metrics of the service ``url`` is on (any URL of it)."""
    async with aiohttp.ClientSession() as session, session.get(url.with_path("/metrics")) as answer:
        assert answer.status == 200, await answer.text()
        assert answer.content_type == "text/plain"
        return await answer.text()


async def scrape(url: URL) -> Samples:
    """The samples a scrape of this service's /metrics reads now."""
    return parse(await scrape_text(url))


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a series not there (yet) counts as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """A labelled metric's values by that label's value."""
    return {
        dict(labels)[label]: figure
        for (sample, labels), figure in samples.items()
        if sample == name and label in dict(labels)
    }


def url_of(server: TestServer | TestClient) -> URL:
    return server.make_url("/")


async def until_value(url: URL, name: str, expected: float, **labels: str) -> None:
    """Poll the service's /metrics until ``name`` reads ``expected``."""
    last: list[float] = []

    async def reads_expected() -> bool:
        last[:] = [value(await scrape(url), name, **labels)]
        return last[0] == expected

    await eventually(reads_expected, f"{name} {labels} reading {expected} (last read: {last})")


# -- what every service exports ---------------------------------------------------------------

# Family name (counters without _total) -> (type, labels), as README "Metrics" lists them.
EVERY_SERVICE = {
    "http_requests": ("counter", {"service", "method", "route", "status"}),
    "http_request_duration_seconds": ("histogram", {"service", "method", "route", "status"}),
    "http_requests_in_flight": ("gauge", {"service"}),
    "process_cpu_seconds": ("counter", {"service"}),
    "process_resident_memory_bytes": ("gauge", {"service"}),
    "process_start_time_seconds": ("gauge", {"service"}),
    "process_open_fds": ("gauge", {"service"}),
    "python_info": (
        "gauge",
        {"service", "implementation", "major", "minor", "patchlevel", "version"},
    ),
    "python_gc_collections": ("counter", {"service", "generation"}),
}
POSTGRES_POOL = {
    "shop_postgres_pool_connections_in_use": ("gauge", {"service"}),
    "shop_postgres_pool_waiting": ("gauge", {"service"}),
}
OWN = {
    "gateway": {},
    "product": {"shop_stock_conflicts": ("counter", {"service", "code"})},
    "cart": {"shop_cart_changes": ("counter", {"service", "change"})},
    "user": {
        **POSTGRES_POOL,
        "shop_logins_failed": ("counter", {"service"}),
        "shop_logins_throttled": ("counter", {"service", "scope"}),
        "shop_password_hashes_queued": ("gauge", {"service"}),
    },
    "order": {
        **POSTGRES_POOL,
        "shop_orders_placed": ("counter", {"service"}),
        "shop_checkouts_failed": ("counter", {"service", "reason"}),
        "shop_checkout_undos": ("counter", {"service"}),
        "shop_checkout_recoveries": ("counter", {"service", "outcome"}),
        "shop_checkout_oldest_unfinished_seconds": ("gauge", {"service"}),
        "shop_emails_sent": ("counter", {"service"}),
        "shop_emails_failed": ("counter", {"service", "reason"}),
        "shop_email_retries": ("counter", {"service"}),
        "shop_email_outbox_backlog": ("gauge", {"service"}),
    },
}
# The label values each shop counter shows (at 0) before anything is counted.
SHOWN_FROM_THE_START = {
    "product": (
        "shop_stock_conflicts_total",
        "code",
        {
            "insufficient_stock",
            "stock_busy",
            "stock_limit",
            "stock_change_undone",
            "reference_reused",
        },
    ),
    "cart": ("shop_cart_changes_total", "change", {"add", "set", "remove", "clear"}),
    "user": ("shop_logins_throttled_total", "scope", {"pair", "address", "account"}),
    "order": ("shop_checkout_recoveries_total", "outcome", {"placed", "undone"}),
}


async def test_every_service_exports_its_metrics_with_their_types_and_labels(
    shop_services: dict[str, TestServer], web_shop: TestClient
) -> None:
    servers: dict[str, TestServer | TestClient] = {**shop_services, "gateway": web_shop}
    for service, server in servers.items():
        async with aiohttp.ClientSession() as session:
            await session.get(url_of(server).with_path("/health"))  # one request answered
        text = await scrape_text(url_of(server))
        families = {family.name: family for family in text_string_to_metric_families(text)}
        expected = {**EVERY_SERVICE, **OWN[service]}
        for name, (kind, labels) in expected.items():
            assert name in families, f"{service} has no {name}"
            family = families[name]
            assert family.type == kind, (service, name, family.type)
            assert family.samples, (service, name)
            for sample in family.samples:
                assert set(sample.labels) - {"le"} == labels, (service, sample)
                assert sample.labels["service"] == service, (service, sample)
        # (prometheus_client adds a <counter>_created gauge beside each counter)
        ours = {n for n in families if n.startswith("shop_") and not n.endswith("_created")}
        assert ours == {name for name in OWN[service] if name.startswith("shop_")}, service
        samples = parse(text)
        # The scrape itself is the one request in flight.
        assert value(samples, "http_requests_in_flight", service=service) == 1
        assert value(samples, "process_resident_memory_bytes", service=service) > 0
        assert value(samples, "process_cpu_seconds_total", service=service) > 0
        if service in SHOWN_FROM_THE_START:
            name, label, values = SHOWN_FROM_THE_START[service]
            assert set(by_label(samples, name, label)) >= values, (service, name)
        if service == "order":
            assert value(samples, "shop_orders_placed_total", service=service) == 0
            assert value(samples, "shop_checkout_oldest_unfinished_seconds", service=service) == 0


# -- shopkit: requests in flight, the PostgreSQL pool -------------------------------------------


async def start_login(url: URL) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A login whose body is only partly sent: the service is answering it (its handler waits
    for the rest) until the rest, returned, is sent."""
    body = json.dumps({"email": "nobody@shop.test", "password": WRONG}).encode()
    assert url.host is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.host, url.port)
    head = (
        f"POST /api/users/login HTTP/1.1\r\nHost: {url.host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode() + body[:10])
    await writer.drain()
    return reader, writer, body[10:]


async def finish_login(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rest: bytes
) -> bytes:
    """Send the rest of a started login; its status line."""
    writer.write(rest)
    await writer.drain()
    status_line = await reader.readline()
    await reader.read()
    writer.close()
    await writer.wait_closed()
    return status_line


async def test_requests_in_flight_count_a_request_until_it_is_answered(user: TestClient) -> None:
    url = url_of(user)
    assert value(await scrape(url), "http_requests_in_flight", service="user") == 1  # the scrape
    reader, writer, rest = await start_login(url)
    await until_value(url, "http_requests_in_flight", 2, service="user")
    assert b" 401 " in await finish_login(reader, writer, rest)
    await until_value(url, "http_requests_in_flight", 1, service="user")


async def test_the_pool_gauges_count_connections_in_use_and_callers_waiting(
    user: TestClient,
) -> None:
    url = url_of(user)
    body = {"email": "ann@shop.test", "password": "ann-s3cret-enough"}
    ann = (await call(user, "POST", "/api/users/register", json=body, expected_status=201))["data"]
    await until_value(url, "shop_postgres_pool_connections_in_use", 0, service="user")
    assert value(await scrape(url), "shop_postgres_pool_waiting", service="user") == 0

    pool = user.server.app[POSTGRES]
    size = pool.pool.get_max_size()
    async with AsyncExitStack() as held:
        for _ in range(size):  # every connection taken, as a burst of requests would
            await held.enter_async_context(pool.acquire())
        samples = await scrape(url)  # /metrics needs no connection
        assert value(samples, "shop_postgres_pool_connections_in_use", service="user") == size
        assert value(samples, "shop_postgres_pool_waiting", service="user") == 0
        profile = asyncio.create_task(
            call(
                user,
                "GET",
                "/api/users/profile",
                headers=bearer(ann["token"]),
                expected_status=200,
            )
        )
        await until_value(url, "shop_postgres_pool_waiting", 1, service="user")
        assert not profile.done()
    assert (await profile)["data"]["email"] == "ann@shop.test"
    samples = await scrape(url)
    assert value(samples, "shop_postgres_pool_connections_in_use", service="user") == 0
    assert value(samples, "shop_postgres_pool_waiting", service="user") == 0


# -- the user service: logins and the bcrypt queue --------------------------------------------


async def test_failed_and_throttled_logins_are_counted_by_the_limit_that_held_them(
    aiohttp_client: Any, user_settings: UserSettings
) -> None:
    # Small limits: one failure per email and address, two per address, three per email.
    limits = {
        "login_free_failures": 1,
        "login_address_free_failures": 2,
        "login_account_free_failures": 3,
    }
    client = await aiohttp_client(create_user_app(user_settings.model_copy(update=limits)))
    url = url_of(client)
    before = await scrape(url)

    async def log_in(email: str, address: str, expected_status: int) -> None:
        # The test client is on loopback, a trusted proxy: X-Forwarded-For names the client.
        body = {"email": email, "password": WRONG}
        headers = {"X-Forwarded-For": address}
        reply = await call(
            client,
            "POST",
            "/api/users/login",
            json=body,
            headers=headers,
            expected_status=expected_status,
        )
        expected_code = "invalid_credentials" if expected_status == 401 else "too_many_attempts"
        assert reply["code"] == expected_code

    await log_in("a@shop.test", "203.0.113.2", 401)
    await log_in("a@shop.test", "203.0.113.2", 429)  # pair: this email from this address
    await log_in("b@shop.test", "203.0.113.3", 401)
    await log_in("c@shop.test", "203.0.113.3", 401)
    await log_in("d@shop.test", "203.0.113.3", 429)  # address: whichever the email
    for n in range(4, 7):
        await log_in("e@shop.test", f"203.0.113.{n}", 401)
    await log_in("e@shop.test", "203.0.113.7", 429)  # account: this email from anywhere

    after = await scrape(url)
    assert moved(before, after, "shop_logins_failed_total", service="user") == 6
    throttled = {
        scope: moved(before, after, "shop_logins_throttled_total", service="user", scope=scope)
        for scope in ("pair", "address", "account")
    }
    assert throttled == {"pair": 1, "address": 1, "account": 1}


async def test_the_bcrypt_queue_counts_checks_running_and_waiting(
    aiohttp_client: Any, user_settings: UserSettings
) -> None:
    # Costly hashes, so that three checks at once on the hasher's threads (one per core)
    # are under way together for a while: running, or waiting for a thread.
    settings = user_settings.model_copy(update={"bcrypt_rounds": 13})
    client = await aiohttp_client(create_user_app(settings))
    url = url_of(client)
    assert value(await scrape(url), "shop_password_hashes_queued", service="user") == 0
    before = await scrape(url)
    body = {"email": "nobody@shop.test", "password": WRONG}
    logins = [
        asyncio.create_task(
            call(client, "POST", "/api/users/login", json=body, expected_status=401)
        )
        for _ in range(3)
    ]
    await until_value(url, "shop_password_hashes_queued", 3, service="user")
    await asyncio.gather(*logins)
    after = await scrape(url)
    assert value(after, "shop_password_hashes_queued", service="user") == 0
    assert moved(before, after, "shop_logins_failed_total", service="user") == 3


# -- the product service: stock conflicts -------------------------------------------------------


async def test_refused_stock_changes_are_counted_by_the_code_answered(
    product: TestClient, admin_headers: dict[str, str]
) -> None:
    url = url_of(product)
    mug = await create_product(product, admin_headers, stock=10)
    before = await scrape(url)

    refused = await change_stock(product, admin_headers, mug["id"], -11, expected_status=409)
    assert refused["code"] == "insufficient_stock"
    refused = await change_stock(product, admin_headers, mug["id"], MAX_STOCK, expected_status=409)
    assert refused["code"] == "stock_limit"
    # A checkout's batch is counted as the single change is.
    batch = {"reference": "order-900", "changes": [{"product_id": mug["id"], "quantity": -20}]}
    refused = await call(
        product,
        "POST",
        "/api/products/stock/changes",
        json=batch,
        headers=ORDER_SERVICE,
        expected_status=409,
    )
    assert refused["code"] == "insufficient_stock"
    assert await take_answer(product, ORDER_SERVICE, mug["id"], -1, "order-901") == (200, None)
    assert await take_answer(product, ORDER_SERVICE, mug["id"], -2, "order-901") == (
        409,
        "reference_reused",
    )
    assert await undo(product, ORDER_SERVICE, mug["id"], "order-902") == 200  # never taken
    assert await take_answer(product, ORDER_SERVICE, mug["id"], -1, "order-902") == (
        409,
        "stock_change_undone",
    )
    # Not a stock conflict: a product that is not there.
    missing = "0123456789abcdef01234567"
    await change_stock(product, admin_headers, missing, -1, expected_status=404)

    after = await scrape(url)
    conflicts = {
        code: moved(before, after, "shop_stock_conflicts_total", service="product", code=code)
        for code in by_label(after, "shop_stock_conflicts_total", "code")
    }
    assert conflicts == {
        "insufficient_stock": 2,
        "stock_limit": 1,
        "reference_reused": 1,
        "stock_change_undone": 1,
        "stock_busy": 0,
    }


# -- the cart service: changes ----------------------------------------------------------------


async def test_cart_changes_are_counted_by_kind(
    cart: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    shopper = customer(SHOPPER)
    items = f"/api/cart/{SHOPPER}/items"
    await call(cart, "DELETE", f"/api/cart/{SHOPPER}", headers=shopper, expected_status=200)
    mug = await create_product(products, admin_headers, stock=10)
    lamp = await create_product(products, admin_headers, name="Lamp", stock=10)
    url = url_of(cart)
    before = await scrape(url)

    async def change(method: str, path: str, status: int = 200, **kwargs: Any) -> None:
        await call(cart, method, path, headers=shopper, expected_status=status, **kwargs)

    await change("POST", items, json={"product_id": mug["id"], "quantity": 2})
    await change("POST", items, 409, json={"product_id": mug["id"], "quantity": 100})  # refused
    await change("PUT", f"{items}/{mug['id']}", json={"quantity": 3})
    await change("PUT", f"{items}/{mug['id']}", json={"quantity": 0})  # takes it out
    await change("POST", items, json={"product_id": lamp["id"], "quantity": 1})
    await change("DELETE", f"{items}/{lamp['id']}")
    await change("DELETE", f"{items}/{lamp['id']}")  # not there any more: changes nothing, 200
    await change("DELETE", f"/api/cart/{SHOPPER}")

    after = await scrape(url)
    changes = {
        kind: moved(before, after, "shop_cart_changes_total", service="cart", change=kind)
        for kind in by_label(after, "shop_cart_changes_total", "change")
    }
    # No guest cart was merged here (tests/test_guest_cart.py counts merges).
    assert changes == {"add": 2, "set": 1, "remove": 3, "clear": 1, "merge": 0}


# -- the order service: checkouts, undos, recoveries ------------------------------------------


@pytest.fixture
async def carts(aiohttp_client: Any, shop_services: dict[str, TestServer]) -> TestClient:
    """The shop's cart service, this file's shoppers' carts emptied."""
    client = await aiohttp_client(shop_services["cart"])
    for user_id in (SHOPPER, OTHER_SHOPPER):
        await call(
            client, "DELETE", f"/api/cart/{user_id}", headers=customer(user_id), expected_status=200
        )
    return client


@pytest.fixture
async def shop_orders(
    aiohttp_client: Any, shop_services: dict[str, TestServer], carts: TestClient
) -> TestClient:
    """The shop's order service."""
    return await aiohttp_client(shop_services["order"])


@pytest.fixture
async def quiet_orders(
    aiohttp_client: Any,
    shop_services: dict[str, TestServer],
    carts: TestClient,
    postgres_uri: str,
) -> TestClient:
    """An order service in the shop, on a database of its own, whose recovery passes run
    only when the test says (and once at start-up)."""
    urls = {
        f"{name.upper()}_SERVICE_URL": str(server.make_url(""))
        for name, server in shop_services.items()
        if name in ("product", "cart", "user")
    }
    settings = OrderSettings.from_env(
        {
            "JWT_SECRET": JWT_SECRET,
            "DATABASE_URL": postgres_uri,
            "RECOVERY_INTERVAL_SECONDS": "3600",
            **urls,
        }
    )
    return await aiohttp_client(create_order_app(settings))


async def test_checkouts_count_orders_placed_and_failures_by_the_code_answered(
    shop_orders: TestClient,
    products: TestClient,
    shop_services: dict[str, TestServer],
    admin_headers: dict[str, str],
) -> None:
    orders = shop_orders
    url = url_of(orders)
    mug = await create_product(products, admin_headers, stock=5)
    shopper = customer(SHOPPER)
    before = await scrape(url)

    async def checkout(status: int, items: list[tuple[str, int]] | None, **headers: str) -> str:
        body = {"items": [{"product_id": p, "quantity": q} for p, q in items or []]}
        reply = await call(
            orders,
            "POST",
            "/api/orders",
            json=body if items else {},
            headers={**shopper, **headers},
            expected_status=status,
        )
        return reply.get("code", "")

    await checkout(201, [(mug["id"], 2)], **{"Idempotency-Key": "once"})
    await checkout(201, [(mug["id"], 2)], **{"Idempotency-Key": "once"})  # a replay: no order
    assert await checkout(409, [(mug["id"], 10)]) == "insufficient_stock"
    assert await checkout(404, [("0123456789abcdef01234567", 1)]) == "product_not_found"
    assert await checkout(400, None) == "empty_cart"  # the shopper's cart is empty
    await shop_services["cart"].close()
    assert await checkout(503, None) == "upstream_unavailable"

    after = await scrape(url)
    assert moved(before, after, "shop_orders_placed_total", service="order") == 1
    failed = {
        reason: moved(before, after, "shop_checkouts_failed_total", service="order", reason=reason)
        for reason in by_label(after, "shop_checkouts_failed_total", "reason")
    }
    assert {reason: n for reason, n in failed.items() if n} == {
        "insufficient_stock": 1,
        "product_not_found": 1,
        "empty_cart": 1,
        "upstream_unavailable": 1,
    }
    assert moved(before, after, "shop_checkout_undos_total", service="order") == 0


async def test_recovery_counts_what_it_undid_and_placed_and_the_oldest_unfinished_age(
    quiet_orders: TestClient,
    carts: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    """What a crash leaves, made as test_order_recovery and test_order_cart make it: the
    order service's own store writes the intent, the product service takes the stock."""
    orders = quiet_orders
    url, cart_url = url_of(orders), url_of(carts)
    app = orders.server.app
    store, saga = app[STORE], app[CHECKOUT]
    mug = await create_product(products, admin_headers, stock=10)
    before, cart_before = await scrape(url), await scrape(cart_url)

    async def left_by_a_crash(
        user_id: int, cart: dict[str, Any] | None = None, owner: int | None = None
    ) -> int:
        order_id = await store.record_intent(
            user_id=user_id,
            lines=[Line(mug["id"], mug["name"], 2, 1250)],
            idempotency_key=None,
            request_hash=request_hash(None),
            cart_version=None if cart is None else cart["version"],
            cart_stamp=None if cart is None else cart["expires_at"],
            lease_seconds=30,
            owner=owner,
        )
        await change_stock(products, ORDER_SERVICE, mug["id"], -2, reference=f"order-{order_id}")
        return order_id

    async def oldest_after_a_pass() -> float:
        await saga.recover()
        return value(await scrape(url), "shop_checkout_oldest_unfinished_seconds", service="order")

    # A checkout that died half-way ten minutes ago, its lease still running: unfinished.
    await left_by_a_crash(101)
    async with postgres(postgres_uri) as connection:
        await connection.execute("UPDATE orders SET created_at = now() - interval '600 seconds'")

    async def ten_minutes_old() -> bool:
        return await oldest_after_a_pass() >= 600

    await eventually(ten_minutes_old, "the oldest unfinished checkout's age")
    # Between passes the age goes on growing at each scrape (a stuck recovery shows).
    first = value(await scrape(url), "shop_checkout_oldest_unfinished_seconds", service="order")
    second = value(await scrape(url), "shop_checkout_oldest_unfinished_seconds", service="order")
    assert 600 <= first < second

    # Its lease runs out: recovery undoes it.
    async with postgres(postgres_uri) as connection:
        await connection.execute("UPDATE orders SET lease_until = now() - interval '1 second'")

    async def none_left() -> bool:
        return await oldest_after_a_pass() == 0

    await eventually(none_left, "recovery of the abandoned checkout")

    # A placed order whose process died before it emptied the cart: recovery empties it.
    body = {"product_id": mug["id"], "quantity": 2}
    shopper = customer(SHOPPER)
    cart = await call(
        carts, "POST", f"/api/cart/{SHOPPER}/items", json=body, headers=shopper, expected_status=200
    )
    bought = await left_by_a_crash(SHOPPER, cart["data"])
    assert await store.mark_placed(bought, [Line(mug["id"], mug["name"], 2, 1250)]) is not None

    async def cart_emptied() -> bool:
        await saga.recover()
        reply = await call(
            carts, "GET", f"/api/cart/{SHOPPER}", headers=shopper, expected_status=200
        )
        return reply["data"]["items"] == []

    await eventually(cart_emptied, "recovery's clear of the bought cart")

    # A cart checkout held by a dead process: the next checkout undoes it, then places.
    other = customer(OTHER_SHOPPER)
    cart = await call(
        carts,
        "POST",
        f"/api/cart/{OTHER_SHOPPER}/items",
        json={"product_id": mug["id"], "quantity": 1},
        headers=other,
        expected_status=200,
    )
    dead = OwnerLock(postgres_uri).id  # an owner whose lock no one holds
    await left_by_a_crash(OTHER_SHOPPER, cart["data"], owner=dead)
    await call(orders, "POST", "/api/orders", headers=other, expected_status=201)

    after, cart_after = await scrape(url), await scrape(cart_url)
    recoveries = {
        outcome: moved(
            before, after, "shop_checkout_recoveries_total", service="order", outcome=outcome
        )
        for outcome in ("placed", "undone")
    }
    assert recoveries == {"placed": 1, "undone": 2}
    assert moved(before, after, "shop_checkout_undos_total", service="order") == 2
    assert moved(before, after, "shop_orders_placed_total", service="order") == 1
    assert value(after, "shop_checkout_oldest_unfinished_seconds", service="order") == 0
    # The order service's clears of the carts it bought are cart changes like any other.
    cleared = moved(
        cart_before, cart_after, "shop_cart_changes_total", service="cart", change="clear"
    )
    assert cleared == 2


# -- several workers (WORKERS > 1) ---------------------------------------------------------------


class Workers:
    """The user service as a supervisor and two workers on one port."""

    def __init__(self, process: processes.ManagedProcess, port: int, log: Path) -> None:
        self.process, self.url, self.log = process, URL(f"http://127.0.0.1:{port}/"), log

    def pids(self) -> set[int]:
        return {child.pid for child in psutil.Process(self.process.pid).children()}


@pytest.fixture
def workers(users_postgres_uri: str, tmp_path: Path) -> Iterator[Workers]:
    port = processes.free_port()
    log = tmp_path / "user.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "TMPDIR": str(tmp_path),
        "JWT_SECRET": JWT_SECRET,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": users_postgres_uri,
        "BCRYPT_ROUNDS": "4",
        "WORKERS": "2",
    }
    process = processes.spawn([sys.executable, "-m", "svc_user"], log_path=log, env=env)
    try:
        serving = processes.wait_until(
            lambda: any(line.get("msg") == "all 2 workers serving" for line in log_lines(log)),
            60,
        )
        assert serving, processes.log_tail(log)
        yield Workers(process, port, log)
    finally:
        left = psutil.Process(process.pid).children() if process.alive() else []
        processes.stop(process, timeout=30)
        _, alive = psutil.wait_procs(left, timeout=10)
        for worker in alive:
            worker.kill()


def reported_pids(samples: Samples) -> set[int]:
    return {int(pid) for pid in by_label(samples, "process_cpu_seconds_total", "pid")}


async def test_with_workers_gauges_are_summed_over_the_live_workers_and_each_reports_its_process(
    workers: Workers,
) -> None:
    samples = await scrape(workers.url)
    assert reported_pids(samples) == workers.pids() and len(workers.pids()) == 2
    assert value(samples, "http_requests_in_flight", service="user") == 1  # the scrape
    assert value(samples, "shop_postgres_pool_connections_in_use", service="user") == 0
    assert value(samples, "shop_password_hashes_queued", service="user") == 0
    assert by_label(samples, "python_info", "service") == {"user": 1}
    # The garbage collector's figures are each process's own: no worker can read another's.
    assert not [name for name, _ in samples if name.startswith("python_gc_")]

    # A worker killed just as it made a file for its values leaves it empty for good.
    directory = Path(psutil.Process(min(workers.pids())).environ()["PROMETHEUS_MULTIPROC_DIR"])
    (directory / "counter_999999.db").touch()
    assert reported_pids(await scrape(workers.url)) == workers.pids()

    # A worker dies while it answers a request: its in-flight request goes with it.
    _, writer, _ = await start_login(workers.url)
    await until_value(workers.url, "http_requests_in_flight", 2, service="user")
    local = writer.get_extra_info("sockname")[1]
    holder = next(
        pid
        for pid in workers.pids()
        for connection in psutil.Process(pid).net_connections("tcp")
        if connection.raddr and connection.raddr.port == local
    )
    os.kill(holder, signal.SIGKILL)
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()

    async def restarted() -> bool:
        samples = await scrape(workers.url)
        live = workers.pids()
        return (
            holder not in live
            and len(live) == 2
            and reported_pids(samples) == live
            and value(samples, "http_requests_in_flight", service="user") == 1
        )

    await eventually(restarted, "the killed worker's gauges gone and its successor reported")
