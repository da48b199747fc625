"""Checkout with an address, delivery and a card: exact totals, the test provider's cards,
payment in the saga (a decline or a provider failure undoes everything), one authorisation
per order whatever the retries, capture at shipping and void at cancelling."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from aiohttp.test_utils import TestClient
from support import (
    CARD_DECLINED,
    CARD_OK,
    TEST_ADDRESS,
    call,
    checkout,
    create_product,
    customer,
    paid,
    postgres,
    rows_in,
    stock_of,
)

from shopkit.keys import POSTGRES
from shopkit.postgres import load_migrations, migrate
from svc_order.keys import CHECKOUT
from svc_order.payments import Card, PaymentStateError, TestCardProvider
from svc_order.store import listing_condition

USER_ID = 121
ANN = customer(USER_ID)


async def authorisations(postgres_uri: str) -> list[dict[str, Any]]:
    """The test provider's holds, as it keeps them."""
    async with postgres(postgres_uri) as connection:
        rows = await connection.fetch(
            "SELECT * FROM test_card_provider.authorisations ORDER BY created_at"
        )
    return [dict(row) for row in rows]


async def test_a_paid_checkout_keeps_address_delivery_customer_and_payment(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    shirt = await create_product(products, admin_headers, name="Shirt", price=19.99, stock=5)
    reply = await checkout(orders, ANN, [(shirt["id"], 2)], details=paid())
    order = reply["data"]
    assert order["subtotal_amount"] == 39.98
    assert order["delivery"] == {
        "option": "standard",
        "label": "Standard delivery (3 to 5 working days)",
        "price": 4.95,
    }
    assert order["total_amount"] == 44.93  # 39.98 + 4.95, exactly
    assert order["address"] == {
        **{"label": "", "line2": "", "region": "", "phone": ""},
        **TEST_ADDRESS,
        "country_name": "United Kingdom",
    }
    assert order["customer"] == {
        "email": f"u{USER_ID}@shop.test",
        "first_name": "",
        "last_name": "",
    }
    payment = order["payment"]
    assert payment["status"] == "authorised"
    assert (payment["provider"], payment["brand"], payment["last4"]) == ("test", "visa", "4242")
    assert payment["amount"] == 44.93
    assert payment["reference"].startswith("tp_")
    again = await call(
        orders, "GET", f"/api/orders/{order['id']}", headers=ANN, expected_status=200
    )
    assert again["data"] == order
    assert CARD_OK not in json.dumps(again)
    [hold] = await authorisations(postgres_uri)
    assert (hold["reference"], hold["amount_cents"], hold["status"]) == (
        payment["reference"],
        4493,
        "authorised",
    )
    assert await stock_of(products, shirt["id"]) == 3


@pytest.mark.parametrize(
    ("price", "delivery", "expected_delivery"),
    [
        (24.99, "standard", 4.95),  # 49.98: one cent below the threshold
        (25.00, "standard", 0),  # 50.00: at the threshold, free
        (25.00, "express", 9.95),  # express is never free
    ],
)
async def test_delivery_is_priced_by_the_server_with_a_free_threshold(
    orders: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    price: float,
    delivery: str,
    expected_delivery: float,
) -> None:
    mug = await create_product(products, admin_headers, price=price, stock=5)
    order = (await checkout(orders, ANN, [(mug["id"], 2)], details=paid(delivery=delivery)))["data"]
    subtotal = round(price * 2, 2)
    assert order["subtotal_amount"] == subtotal
    assert order["delivery"]["price"] == expected_delivery
    assert order["total_amount"] == round(subtotal + expected_delivery, 2)
    assert order["payment"]["amount"] == order["total_amount"]


async def test_delivery_options_say_prices_threshold_and_countries(orders: TestClient) -> None:
    # Public: a guest's cart page shows them too.
    reply = await call(orders, "GET", "/api/orders/delivery-options", expected_status=200)
    options = {option["option"]: option for option in reply["data"]["options"]}
    assert options["standard"]["price"] == 4.95
    assert options["standard"]["free_from"] == 50.0
    assert options["express"]["free_from"] is None
    assert "GB" in reply["data"]["countries"]


@pytest.mark.parametrize(
    ("card", "exp_year", "status", "code", "decline_code"),
    [
        (CARD_DECLINED, 2099, 402, "payment_declined", "card_declined"),
        ("4000000000009995", 2099, 402, "payment_declined", "insufficient_funds"),
        (CARD_OK, 2020, 402, "payment_declined", "expired_card"),
        ("4242424242424241", 2099, 402, "payment_declined", "incorrect_number"),  # not Luhn
        ("4000000000000119", 2099, 503, "payment_unavailable", None),  # a provider error
        ("4000000000000309", 2099, 503, "payment_unavailable", None),  # authorised, answer lost
    ],
)
async def test_a_refused_or_failed_payment_places_nothing_and_puts_the_stock_back(
    orders: TestClient,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
    card: str,
    exp_year: int,
    status: int,
    code: str,
    decline_code: str | None,
) -> None:
    lamp = await create_product(products, admin_headers, name="Lamp", stock=4)
    reply = await checkout(
        orders,
        ANN,
        [(lamp["id"], 3)],
        details=paid(card, exp_year=exp_year),
        expected_status=status,
    )
    assert reply["code"] == code
    assert reply.get("decline_code") == decline_code
    assert card not in json.dumps(reply)
    assert await stock_of(products, lamp["id"]) == 4
    assert await rows_in(postgres_uri, "orders") == 0
    # The lost answer's hold is found and released: nothing stays held on the card.
    assert all(hold["status"] == "voided" for hold in await authorisations(postgres_uri))
    # And the shopper may pay with another card at once.
    await checkout(orders, ANN, [(lamp["id"], 3)], details=paid())
    assert await stock_of(products, lamp["id"]) == 1


async def test_a_saved_address_is_read_from_the_user_service(
    orders: TestClient, products: TestClient, user: TestClient, admin_headers: dict[str, str]
) -> None:
    saved = await call(
        user,
        "POST",
        "/api/users/addresses",
        json={**TEST_ADDRESS, "label": "Home", "city": "Leeds"},
        headers=ANN,
        expected_status=201,
    )
    mug = await create_product(products, admin_headers, stock=5)
    details = {**paid(), "address_id": saved["data"]["id"]}
    del details["address"]
    order = (await checkout(orders, ANN, [(mug["id"], 1)], details=details))["data"]
    assert (order["address"]["label"], order["address"]["city"]) == ("Home", "Leeds")
    # Someone else's (or no) address is not found, and nothing is bought.
    refused = await checkout(
        orders, customer(122), [(mug["id"], 1)], details=details, expected_status=404
    )
    assert refused["code"] == "address_not_found"
    assert await stock_of(products, mug["id"]) == 4


async def test_an_address_the_shop_does_not_deliver_to_is_refused(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, stock=5)
    details = paid(address={**TEST_ADDRESS, "country": "AU"})
    reply = await checkout(orders, ANN, [(mug["id"], 1)], details=details, expected_status=400)
    assert reply["code"] == "country_not_delivered"
    assert reply["details"][0]["field"] == "address.country"
    assert await stock_of(products, mug["id"]) == 5


@pytest.mark.parametrize(
    "body",
    [
        {"delivery": "standard"},  # no address, no payment
        {"address": TEST_ADDRESS, "delivery": "standard"},  # no payment
        {**paid(), "address_id": 1},  # both kinds of address
        {**paid(), "payment": {}},  # neither card nor token
    ],
)
async def test_address_delivery_and_payment_come_together(
    orders: TestClient, body: dict[str, Any]
) -> None:
    body = {"items": [{"product_id": "a" * 24, "quantity": 1}], **body}
    reply = await call(orders, "POST", "/api/orders", json=body, headers=ANN, expected_status=400)
    assert reply["code"] == "validation_error"


async def test_a_repeat_with_the_same_key_never_authorises_twice(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    mug = await create_product(products, admin_headers, stock=50)
    first = await checkout(orders, ANN, [(mug["id"], 1)], key="pay-once", details=paid())
    again = await checkout(orders, ANN, [(mug["id"], 1)], key="pay-once", details=paid())
    assert again["data"]["id"] == first["data"]["id"]

    async def attempt() -> tuple[int, Any]:
        body = {"items": [{"product_id": mug["id"], "quantity": 2}], **paid()}
        response = await orders.post(
            "/api/orders", json=body, headers={**ANN, "Idempotency-Key": "pay-once-racing"}
        )
        return response.status, await response.json()

    answers = await asyncio.gather(*(attempt() for _ in range(6)))
    placed = {body["data"]["id"] for status, body in answers if status == 201}
    assert len(placed) == 1, answers
    assert all(
        status == 201 or body["code"] == "checkout_in_progress" for status, body in answers
    ), answers
    assert len(await authorisations(postgres_uri)) == 2  # one per order
    assert await stock_of(products, mug["id"]) == 47


async def test_shipping_captures_and_cancelling_voids(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str], postgres_uri: str
) -> None:
    mug = await create_product(products, admin_headers, stock=10)
    shipped = (await checkout(orders, ANN, [(mug["id"], 1)], details=paid()))["data"]
    cancelled = (await checkout(orders, ANN, [(mug["id"], 1)], details=paid()))["data"]
    for status in ("processing", "shipped"):
        reply = await call(
            orders,
            "PATCH",
            f"/api/orders/{shipped['id']}/status",
            json={"status": status},
            headers=admin_headers,
            expected_status=200,
        )
    assert reply["data"]["payment"]["status"] == "captured"
    reply = await call(
        orders,
        "PATCH",
        f"/api/orders/{cancelled['id']}/status",
        json={"status": "cancelled"},
        headers=ANN,
        expected_status=200,
    )
    assert reply["data"]["payment"]["status"] == "voided"
    holds = {hold["reference"]: hold["status"] for hold in await authorisations(postgres_uri)}
    assert holds == {
        shipped["payment"]["reference"]: "captured",
        cancelled["payment"]["reference"]: "voided",
    }
    await orders.server.app[CHECKOUT].recover()  # nothing left to do, nothing done twice
    assert await stock_of(products, mug["id"]) == 9


async def test_the_test_provider_refunds_a_capture_once_per_key(
    orders: TestClient, postgres_uri: str
) -> None:
    provider = TestCardProvider(orders.server.app[POSTGRES])  # on the service's database
    card = Card(CARD_OK, 12, 2099, "123")
    auth = await provider.authorise(9001, 1000, "order-9001-auth", card)
    assert await provider.authorise(9001, 1000, "order-9001-auth", card) == auth
    assert await provider.find("order-9001-auth") == auth
    with pytest.raises(PaymentStateError):
        await provider.refund(auth, 1000, "order-9001-refund-early")  # not captured yet
    await provider.capture(auth, "order-9001-capture")
    await provider.refund(auth, 400, "order-9001-refund-1")
    await provider.refund(auth, 400, "order-9001-refund-1")  # a retry: refunded once
    with pytest.raises(PaymentStateError):
        await provider.refund(auth, 700, "order-9001-refund-2")  # more than is left
    await provider.refund(auth, 600, "order-9001-refund-3")
    with pytest.raises(PaymentStateError):
        await provider.void(auth, "order-9001-void")  # captured money is refunded
    [hold] = await authorisations(postgres_uri)
    assert (hold["status"], hold["refunded_cents"]) == ("refunded", 1000)


async def test_an_admin_finds_orders_by_the_customers_email_name_or_number(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    mug = await create_product(products, admin_headers, price=5, stock=10)
    ann = (await checkout(orders, ANN, [(mug["id"], 1)], details=paid()))["data"]
    bob = (await checkout(orders, customer(USER_ID + 1), [(mug["id"], 1)], details=paid()))["data"]

    async def found(text: str, headers: dict[str, str] = admin_headers) -> list[int]:
        reply = await call(
            orders,
            "GET",
            "/api/orders",
            params={"customer": text},
            headers=headers,
            expected_status=200,
        )
        return [order["id"] for order in reply["data"]]

    assert await found(f"U{USER_ID}@SHOP") == [ann["id"]]  # any case, any part
    assert await found(str(USER_ID + 1)) == [bob["id"]]  # the customer's number
    assert set(await found("@shop.test")) >= {ann["id"], bob["id"]}
    # Pages of a search count all its matches, also a page past the last.
    for page, ids in (("1", [bob["id"]]), ("2", [ann["id"]]), ("3", [])):
        params = {"customer": "@shop.test", "limit": "1", "page": page}
        reply = await call(
            orders, "GET", "/api/orders", params=params, headers=admin_headers, expected_status=200
        )
        assert [order["id"] for order in reply["data"]] == ids, page
        assert (reply["total"], reply["count"]) == (2, len(ids)), reply
    # LIKE's wildcards are only themselves.
    for text in ("%", "_", "u_21", "\\"):
        assert await found(text) == [], text
    # A customer's filter looks only through its own orders.
    assert await found(f"u{USER_ID + 1}", ANN) == []
    for bad in ("", "x" * 255, "a\x00b"):
        await call(
            orders,
            "GET",
            "/api/orders",
            params={"customer": bad},
            headers=admin_headers,
            expected_status=400,
        )


async def test_one_users_orders_are_searched_by_customer_too(
    orders: TestClient, products: TestClient, admin_headers: dict[str, str]
) -> None:
    """/api/orders/user/{userId} takes the same query as /api/orders, customer included: a
    search there narrows that user's orders as it does the list, rather than being ignored."""
    mug = await create_product(products, admin_headers, price=5, stock=10)
    ann = (await checkout(orders, ANN, [(mug["id"], 1)], details=paid()))["data"]
    for headers in (ANN, admin_headers):

        async def found(text: str, headers: dict[str, str] = headers) -> list[int]:
            reply = await call(
                orders,
                "GET",
                f"/api/orders/user/{USER_ID}",
                params={"customer": text},
                headers=headers,
                expected_status=200,
            )
            assert reply["total"] == reply["count"], reply
            return [order["id"] for order in reply["data"]]

        assert await found(f"U{USER_ID}@SHOP") == [ann["id"]]
        assert await found("nobody by this name") == []
        assert await found("%") == []


async def test_the_customer_search_is_served_by_trigram_indexes(
    orders: TestClient, postgres_uri: str
) -> None:
    """Migration 0006's indexes serve the search's own expressions (taken from the store, so
    that changing one without the other fails here): with sequential scans ruled out, the
    plan reads both indexes, and with a number also the index by user."""
    async with postgres(postgres_uri) as connection, connection.transaction():
        await connection.execute("SET LOCAL enable_seqscan = off")
        for text, indexes in (
            ("ann.lee", {"orders_customer_email_trgm", "orders_customer_name_trgm"}),
            ("4021", {"orders_customer_email_trgm", "orders_customer_name_trgm", "orders_by_user"}),
        ):
            condition, args = listing_condition(None, None, text)
            rows = await connection.fetch(f"EXPLAIN SELECT id FROM orders WHERE {condition}", *args)
            plan = "\n".join(row[0] for row in rows)
            assert all(f" on {index}" in plan for index in indexes), plan
            assert "Seq Scan" not in plan, plan


async def test_without_pg_trgm_the_migrations_go_on_and_say_why(
    postgres_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The service's role owns its tables but may not create extensions (no CREATE on the
    database, as where a DBA made the schema): migration 0006 still applies, its warning
    says what was not made and what that means, and the search runs (reading every
    order)."""
    migrations = load_migrations("svc_order.migrations")
    role = f"no_extensions_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    async with postgres(postgres_uri) as owner:
        await migrate(owner, [m for m in migrations if m.version < 6])
        await owner.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        await owner.execute(f"ALTER TABLE orders OWNER TO {role}")
        await owner.execute(f"GRANT ALL ON schema_migrations TO {role}")
        await owner.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")
        try:
            parts = urlsplit(postgres_uri)
            netloc = f"{role}:{password}@{parts.netloc.rpartition('@')[2]}"  # host and port
            async with postgres(urlunsplit(parts._replace(netloc=netloc))) as limited:
                with caplog.at_level(logging.WARNING, logger="shop.postgres"):
                    assert await migrate(limited, migrations) == [6]
                condition, args = listing_condition(None, None, "ann")
                assert await limited.fetch(f"SELECT id FROM orders WHERE {condition}", *args) == []
            said = [r.getMessage() for r in caplog.records if r.name == "shop.postgres"]
            assert any(
                "pg_trgm cannot be created" in line and "reads every order" in line for line in said
            ), said
            trigram = "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%trgm'"
            assert await owner.fetch(trigram) == []
        finally:
            await owner.execute(f"REASSIGN OWNED BY {role} TO CURRENT_USER")
            await owner.execute(f"DROP OWNED BY {role}")  # its grants
            await owner.execute(f"DROP ROLE {role}")
