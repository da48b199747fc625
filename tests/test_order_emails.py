"""The customers' e-mails: written to the outbox in the transaction of the change they report,
sent over real SMTP (an aiosmtpd server) by the order service, at most once each, retried
while the server is away, given up when it refuses; against real PostgreSQL and the real
product and user services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import (
    JWT_SECRET,
    TEST_ADDRESS,
    SmtpSink,
    call,
    checkout,
    create_product,
    customer,
    eventually,
    metric_value,
    paid,
    postgres,
)

from shopctl import processes
from svc_order.app import OrderSettings
from svc_order.app import create_app as create_order_app
from svc_order.keys import MAILER
from svc_order.outbox import Outbox

ANN, BOB = customer(121), customer(122)
ANN_EMAIL, BOB_EMAIL = "u121@shop.test", "u122@shop.test"  # their tokens' email claims
STOREFRONT = "https://shop.example"
StartOrders = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server that keeps what it accepts."""
    sink = SmtpSink().start()
    yield sink
    sink.stop()


@pytest.fixture
def start_orders(
    aiohttp_client: Any, postgres_uri: str, product_server: TestServer, user_service_url: str
) -> StartOrders:
    """Starts an order service (a replica: all share one database) with these settings; the
    sender runs every 50 ms and retries after 50 ms, three attempts at most."""

    async def start(**settings: str) -> TestClient:
        env = {
            "JWT_SECRET": JWT_SECRET,
            "HOST": "127.0.0.1",
            "DATABASE_URL": postgres_uri,
            "PRODUCT_SERVICE_URL": str(product_server.make_url("")),
            "USER_SERVICE_URL": user_service_url,
            "CART_SERVICE_URL": "http://127.0.0.1:9",
            "RECOVERY_INTERVAL_SECONDS": "3600",
            "STOREFRONT_URL": STOREFRONT,
            "EMAIL_INTERVAL_SECONDS": "0.05",
            "EMAIL_RETRY_SECONDS": "0.05",
            "EMAIL_MAX_ATTEMPTS": "3",
            **settings,
        }
        return await aiohttp_client(create_order_app(OrderSettings.from_env(env)))

    return start


async def outbox_rows(postgres_uri: str) -> list[asyncpg.Record]:
    async with postgres(postgres_uri) as connection:
        return await connection.fetch(
            "SELECT id, order_id, kind, recipient, state, attempts, last_error "
            "FROM email_outbox ORDER BY id"
        )


async def received(sink: SmtpSink, count: int) -> None:
    async def arrived() -> bool:
        return len(sink.received) >= count

    await eventually(arrived, f"{count} e-mails at the SMTP server", seen=lambda: sink.received)


async def settled(postgres_uri: str, count: int) -> list[asyncpg.Record]:
    """Wait until the outbox holds ``count`` e-mails, none waiting or being sent."""
    rows: list[asyncpg.Record] = []

    async def done() -> bool:
        rows[:] = await outbox_rows(postgres_uri)
        return len(rows) == count and all(
            row["state"] not in ("pending", "sending") for row in rows
        )

    await eventually(done, f"{count} e-mails settled in the outbox", seen=lambda: rows)
    return rows


async def change_status(
    orders: TestClient, order_id: int, status: str, headers: dict[str, str], expected: int = 200
) -> dict[str, Any]:
    return await call(
        orders,
        "PATCH",
        f"/api/orders/{order_id}/status",
        json={"status": status},
        headers=headers,
        expected_status=expected,
    )


# -- one e-mail per event, to the customer ------------------------------------------------------


async def test_placed_shipped_and_cancelled_each_send_one_email_to_the_customer(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    smtp_sink: SmtpSink,
    postgres_uri: str,
) -> None:
    orders = await start_orders(SMTP_URL=smtp_sink.url)
    lamp = await create_product(products, admin_headers, name="Desk <Lamp>", price=19.99, stock=9)
    shipped = (await checkout(orders, ANN, [(lamp["id"], 3)]))["data"]
    cancelled = (await checkout(orders, BOB, [(lamp["id"], 1)]))["data"]
    # An admin moves ANN's order along (the e-mail goes to ANN, not to the admin); BOB cancels.
    await change_status(orders, shipped["id"], "processing", admin_headers)
    await change_status(orders, shipped["id"], "shipped", admin_headers)
    await change_status(orders, shipped["id"], "delivered", admin_headers)
    await change_status(orders, cancelled["id"], "cancelled", BOB)

    rows = await settled(postgres_uri, 4)
    assert [(row["order_id"], row["kind"], row["recipient"], row["state"]) for row in rows] == [
        (shipped["id"], "placed", ANN_EMAIL, "sent"),
        (cancelled["id"], "placed", BOB_EMAIL, "sent"),
        (shipped["id"], "shipped", ANN_EMAIL, "sent"),
        (cancelled["id"], "cancelled", BOB_EMAIL, "sent"),
    ]
    assert len(smtp_sink.received) == 4
    by_id = {mail.message["Message-ID"]: mail for mail in smtp_sink.received}
    expected = {
        (shipped["id"], "placed"): (ANN_EMAIL, f"Your order #{shipped['id']} is placed"),
        (cancelled["id"], "placed"): (BOB_EMAIL, f"Your order #{cancelled['id']} is placed"),
        (shipped["id"], "shipped"): (ANN_EMAIL, f"Your order #{shipped['id']} is on its way"),
        (cancelled["id"], "cancelled"): (
            BOB_EMAIL,
            f"Your order #{cancelled['id']} is cancelled",
        ),
    }
    for row in rows:
        message_id = f"<order-{row['order_id']}.{row['kind']}.{row['id']}@shop.local>"
        mail = by_id[message_id]  # one message per event, named after it
        recipient, subject = expected[(row["order_id"], row["kind"])]
        assert mail.envelope_to == [recipient]
        assert mail.message["To"] == recipient
        assert mail.message["Subject"] == subject
        assert mail.message["From"] == "Corner Shop <orders@shop.local>"
        assert mail.message["Auto-Submitted"] == "auto-generated"
        text, html = mail.part("plain"), mail.part("html")
        order_url = f"{STOREFRONT}/orders/{row['order_id']}"
        assert f"Order #{row['order_id']}" in text and order_url in text
        assert "Desk <Lamp>" in text  # plain text is not escaped
        assert '<html lang="en">' in html and f"<title>{subject}</title>" in html
        assert "Desk &lt;Lamp&gt;" in html and "<Lamp>" not in html  # HTML is
        assert f'href="{order_url}"' in html
    ann_placed = by_id[f"<order-{shipped['id']}.placed.{rows[0]['id']}@shop.local>"]
    assert "Desk <Lamp>: 3 at $19.99 = $59.97" in ann_placed.part("plain")
    assert "Total: $59.97" in ann_placed.part("plain")
    assert await metric_value(orders, "shop_emails_sent_total") == 4
    assert await metric_value(orders, "shop_email_outbox_backlog") == 0


async def test_an_order_with_delivery_emails_its_goods_delivery_and_address(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    smtp_sink: SmtpSink,
    postgres_uri: str,
) -> None:
    """The lines add up to the total: goods, the delivery line, then the total; and the
    e-mail says where the parcel goes."""
    orders = await start_orders(SMTP_URL=smtp_sink.url)
    candle = await create_product(products, admin_headers, name="Candle", price=12.40, stock=9)
    address = {**TEST_ADDRESS, "line2": "Flat <3>"}
    order = (
        await checkout(
            orders, ANN, [(candle["id"], 2)], details=paid(delivery="express", address=address)
        )
    )["data"]
    await received(smtp_sink, 1)
    [mail] = smtp_sink.received
    assert mail.message["Subject"] == f"Your order #{order['id']} is placed"
    text, html = mail.part("plain").replace("\r\n", "\n"), mail.part("html")
    assert (
        "  Candle: 2 at $12.40 = $24.80\n"
        "  Goods: $24.80\n"
        "  Express delivery (next working day): $9.95\n"
        "  Total: $34.75\n"
    ) in text
    assert (
        "Delivery address:\n"
        "  Ann Example\n"
        "  1 High Street\n"
        "  Flat <3>\n"
        "  London SW1A 1AA\n"
        "  United Kingdom\n"
    ) in text
    assert "Express delivery (next working day)</th>" in html and "$9.95" in html
    assert "Flat &lt;3&gt;" in html and "<3>" not in html
    assert "United Kingdom" in html


async def test_without_smtp_url_the_emails_wait_in_the_outbox(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    orders = await start_orders()
    lamp = await create_product(products, admin_headers, stock=9)
    await checkout(orders, ANN, [(lamp["id"], 1)])
    await checkout(orders, BOB, [(lamp["id"], 1)])
    rows = await outbox_rows(postgres_uri)
    assert [(row["state"], row["attempts"]) for row in rows] == [("pending", 0)] * 2

    async def backlog_shown() -> bool:
        return await metric_value(orders, "shop_email_outbox_backlog") == 2

    await eventually(backlog_shown, "a backlog of 2 e-mails in the metrics")


# -- the same transaction as the change ----------------------------------------------------------


async def test_a_change_that_fails_writes_no_email(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    orders = await start_orders()  # no SMTP: what the outbox holds stays there to be seen
    lamp = await create_product(products, admin_headers, stock=2)
    await checkout(orders, ANN, [(lamp["id"], 5)], expected_status=409)  # not placed
    order = (await checkout(orders, ANN, [(lamp["id"], 1)]))["data"]
    await change_status(orders, order["id"], "shipped", admin_headers, expected=409)  # refused
    await change_status(orders, order["id"], "processing", admin_headers)
    await change_status(orders, order["id"], "cancelled", BOB, expected=404)  # not BOB's
    assert [row["kind"] for row in await outbox_rows(postgres_uri)] == ["placed"]


async def test_a_status_change_and_its_email_commit_together_or_not_at_all(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    """When the e-mail cannot be written, the change it reports is not made either: the
    database is made to refuse 'shipped' e-mails, and the order stays processing."""
    orders = await start_orders()
    lamp = await create_product(products, admin_headers, stock=2)
    order = (await checkout(orders, ANN, [(lamp["id"], 1)]))["data"]
    await change_status(orders, order["id"], "processing", admin_headers)
    async with postgres(postgres_uri) as connection:
        await connection.execute(
            "ALTER TABLE email_outbox ADD CONSTRAINT no_shipped_mail CHECK (kind <> 'shipped')"
        )
    answer = await orders.patch(
        f"/api/orders/{order['id']}/status", json={"status": "shipped"}, headers=admin_headers
    )
    assert answer.status == 500
    now = await call(orders, "GET", f"/api/orders/{order['id']}", headers=ANN, expected_status=200)
    assert now["data"]["status"] == "processing"
    assert [entry["status"] for entry in now["data"]["history"]] == ["pending", "processing"]
    assert [row["kind"] for row in await outbox_rows(postgres_uri)] == ["placed"]


# -- at most once: replicas, a sender that died --------------------------------------------------


async def test_two_replicas_sending_at_once_never_send_an_email_twice(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    smtp_sink: SmtpSink,
    postgres_uri: str,
) -> None:
    # Their own passes are far apart: the test runs them, all at once.
    replicas = [
        await start_orders(SMTP_URL=smtp_sink.url, EMAIL_INTERVAL_SECONDS="3600") for _ in range(2)
    ]
    lamp = await create_product(products, admin_headers, stock=100)
    placed = await asyncio.gather(
        *(checkout(replicas[n % 2], customer(200 + n), [(lamp["id"], 1)]) for n in range(30))
    )
    senders = [replica.server.app[MAILER] for replica in replicas]
    sent = await asyncio.gather(*(sender.run_pass() for sender in senders for _ in range(3)))
    assert sum(sent) == 30
    rows = await settled(postgres_uri, 30)
    assert {(row["state"], row["attempts"]) for row in rows} == {("sent", 1)}
    message_ids = [mail.message["Message-ID"] for mail in smtp_sink.received]
    assert len(message_ids) == 30 and len(set(message_ids)) == 30
    recipients = sorted(mail.envelope_to[0] for mail in smtp_sink.received)
    assert recipients == sorted(f"u{200 + n}@shop.test" for n in range(30))
    assert {order["data"]["id"] for order in placed} == {row["order_id"] for row in rows}


async def test_an_email_whose_sender_died_while_sending_is_never_sent_again(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    smtp_sink: SmtpSink,
    postgres_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    orders = await start_orders(SMTP_URL=smtp_sink.url, EMAIL_INTERVAL_SECONDS="3600")
    lamp = await create_product(products, admin_headers, stock=2)
    await checkout(orders, ANN, [(lamp["id"], 1)])
    sender = orders.server.app[MAILER]
    # A sender claims it and dies at once (its lease ends now): it may have handed it over.
    dead = await Outbox(sender.outbox.pool).claim(lease_seconds=0)
    assert dead is not None
    with caplog.at_level(logging.ERROR, logger="shop.order.mail"):
        assert await sender.run_pass() == 0
    (row,) = await outbox_rows(postgres_uri)
    assert (row["state"], row["attempts"]) == ("unknown", 1)
    assert smtp_sink.received == []
    assert await metric_value(orders, "shop_emails_failed_total", reason="unknown") == 1
    assert any("not sent again" in record.getMessage() for record in caplog.records)


# -- retries and giving up -----------------------------------------------------------------------


async def test_an_smtp_server_that_is_away_is_tried_again_and_gets_the_email_once_back(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    postgres_uri: str,
) -> None:
    sink = SmtpSink(processes.free_port())  # not started: nothing listens on its port yet
    orders = await start_orders(SMTP_URL=sink.url, EMAIL_MAX_ATTEMPTS="100")
    lamp = await create_product(products, admin_headers, stock=2)
    await checkout(orders, ANN, [(lamp["id"], 1)])
    rows: list[asyncpg.Record] = []

    async def tried_twice() -> bool:
        rows[:] = await outbox_rows(postgres_uri)
        return rows[0]["attempts"] >= 2

    await eventually(tried_twice, "two attempts while the SMTP server is away", seen=lambda: rows)
    assert rows[0]["state"] in ("pending", "sending") and rows[0]["last_error"]
    assert await metric_value(orders, "shop_email_retries_total") >= 1
    sink.start()
    try:
        (row,) = await settled(postgres_uri, 1)
        assert row["state"] == "sent"
        assert len(sink.received) == 1
        assert sink.received[0].envelope_to == [ANN_EMAIL]
    finally:
        sink.stop()


async def test_a_refusal_for_good_is_given_up_at_once_logged_and_counted(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    smtp_sink: SmtpSink,
    postgres_uri: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    smtp_sink.refuse_with = "550 5.1.1 No such mailbox"
    orders = await start_orders(SMTP_URL=smtp_sink.url)
    lamp = await create_product(products, admin_headers, stock=2)
    with caplog.at_level(logging.ERROR, logger="shop.order.mail"):
        await checkout(orders, ANN, [(lamp["id"], 1)])
        (row,) = await settled(postgres_uri, 1)
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert "550" in row["last_error"] and smtp_sink.received == []
    assert await metric_value(orders, "shop_emails_failed_total", reason="rejected") == 1
    assert any("given up" in record.getMessage() for record in caplog.records)


async def test_a_server_that_keeps_saying_try_later_is_given_up_after_the_last_attempt(
    start_orders: StartOrders,
    products: TestClient,
    admin_headers: dict[str, str],
    smtp_sink: SmtpSink,
    postgres_uri: str,
) -> None:
    smtp_sink.refuse_with = "451 4.3.0 Try again later"
    orders = await start_orders(SMTP_URL=smtp_sink.url, EMAIL_MAX_ATTEMPTS="3")
    lamp = await create_product(products, admin_headers, stock=2)
    await checkout(orders, ANN, [(lamp["id"], 1)])
    (row,) = await settled(postgres_uri, 1)
    assert (row["state"], row["attempts"]) == ("failed", 3)
    assert smtp_sink.refused == 3 and smtp_sink.received == []
    assert "451" in row["last_error"]
    assert await metric_value(orders, "shop_email_retries_total") == 2
    assert await metric_value(orders, "shop_emails_failed_total", reason="attempts_exhausted") == 1
