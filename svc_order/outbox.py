"""The e-mail outbox's data layer: the e-mails an order's customer is owed, written in the
transaction of the change they report, and claimed, settled and counted by the sender
(svc_order/mailer.py). The table and its states: migration 0005."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from shopkit.postgres import FairPool

# The events the customer hears of, by e-mail (the outbox's kinds).
EMAIL_KINDS = ("placed", "shipped", "cancelled")
# How much of a failure's text is kept on the row (an SMTP reply can be long).
MAX_ERROR_LENGTH = 500


async def record_email(connection: asyncpg.Connection, order_id: int, kind: str) -> bool:
    """Owe the order's customer the e-mail of ``kind``. Call it inside the transaction that
    makes the change, so that the e-mail exists if and only if the change does. Written to
    the address the order was placed with (orders.customer_email); an order placed before
    the outbox existed has none and gets no e-mail (False). Once per order and kind."""
    status = await connection.execute(
        """INSERT INTO email_outbox (order_id, kind, recipient)
           SELECT id, $2, customer_email FROM orders
           WHERE id = $1 AND customer_email IS NOT NULL
           ON CONFLICT (order_id, kind) DO NOTHING""",
        order_id,
        kind,
    )
    return status == "INSERT 0 1"


@dataclass(frozen=True, slots=True)
class ClaimedEmail:
    """An e-mail a sender holds (state ``sending``) until its lease runs out."""

    id: int
    order_id: int
    kind: str
    recipient: str
    attempts: int  # this one included
    created_at: datetime


@dataclass(frozen=True, slots=True)
class OrderForEmail:
    """What an e-mail tells about its order."""

    id: int
    status: str
    total_cents: int
    created_at: datetime
    lines: list[dict[str, Any]]
    # An order placed with an address and delivery (all None for one placed without):
    # without them an e-mail's lines would not add up to its total.
    subtotal_cents: int | None = None
    delivery_option: str | None = None
    delivery_cents: int | None = None
    address: dict[str, Any] | None = None


class Outbox:
    def __init__(self, pool: FairPool) -> None:
        self.pool = pool

    async def claim(self, lease_seconds: float) -> ClaimedEmail | None:
        """The oldest due e-mail, now this sender's (``sending``) until the lease ends; the
        claim is committed before a byte goes to the SMTP server. SKIP LOCKED: replicas
        claiming at once each get another row, never the same one, and never wait."""
        row = await self.pool.fetchrow(
            """UPDATE email_outbox
               SET state = 'sending', attempts = attempts + 1,
                   lease_until = now() + make_interval(secs => $1)
               WHERE id = (SELECT id FROM email_outbox
                           WHERE state = 'pending' AND due_at <= now()
                           ORDER BY due_at, id LIMIT 1
                           FOR UPDATE SKIP LOCKED)
               RETURNING id, order_id, kind, recipient, attempts, created_at""",
            lease_seconds,
        )
        return None if row is None else ClaimedEmail(**dict(row))

    async def order(self, order_id: int) -> OrderForEmail:
        """The order as the e-mail shows it (its lines and total never change once placed)."""
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow(
                """SELECT id, status, total_cents, created_at, subtotal_cents, delivery_option,
                          delivery_cents, address FROM orders WHERE id = $1""",
                order_id,
            )
            lines = await connection.fetch(
                """SELECT product_name, quantity, price_cents FROM order_items
                   WHERE order_id = $1 ORDER BY product_name, product_id""",
                order_id,
            )
        assert row is not None  # an e-mail's order is never deleted (placed orders stay)
        order = dict(row)
        if order["address"] is not None:  # jsonb arrives as its text
            order["address"] = orjson.loads(order["address"])
        return OrderForEmail(**order, lines=[dict(line) for line in lines])

    async def sent(self, email_id: int) -> None:
        """The SMTP server accepted it. Also from ``unknown``: a sender that outlived its
        lease and then heard the server's yes knows better than the sweep that guessed."""
        await self.pool.execute(
            """UPDATE email_outbox SET state = 'sent', sent_at = now(), lease_until = NULL,
                                       last_error = NULL
               WHERE id = $1 AND state IN ('sending', 'unknown')""",
            email_id,
        )

    async def retry_later(self, email_id: int, delay_seconds: float, error: str) -> None:
        """It certainly did not arrive (the server said try later, or could not be
        reached): due again after ``delay_seconds``."""
        await self.pool.execute(
            """UPDATE email_outbox
               SET state = 'pending', lease_until = NULL, last_error = $3,
                   due_at = now() + make_interval(secs => $2)
               WHERE id = $1 AND state = 'sending'""",
            email_id,
            delay_seconds,
            error[:MAX_ERROR_LENGTH],
        )

    async def settle(self, email_id: int, state: str, error: str) -> None:
        """Ended without a yes: ``failed`` (refused for good, or out of attempts) or
        ``unknown`` (the message may have arrived: never sent again)."""
        await self.pool.execute(
            """UPDATE email_outbox SET state = $2, lease_until = NULL, last_error = $3
               WHERE id = $1 AND state = 'sending'""",
            email_id,
            state,
            error[:MAX_ERROR_LENGTH],
        )

    async def expire_leases(self) -> list[asyncpg.Record]:
        """E-mails whose sender stopped while it held them (a crash, a hang past the lease):
        it may have handed the message over before it stopped, so they become ``unknown``
        and are never sent again. At most once, not at least once: see README."""
        return await self.pool.fetch(
            """UPDATE email_outbox
               SET state = 'unknown', lease_until = NULL,
                   last_error = 'its sender stopped while sending it; it may have arrived'
               WHERE state = 'sending' AND lease_until < now()
               RETURNING id, order_id, kind"""
        )

    async def backlog(self) -> int:
        """E-mails not sent yet that still may be: waiting for their turn or being sent."""
        return await self.pool.fetchval(
            "SELECT count(*) FROM email_outbox WHERE state IN ('pending', 'sending')"
        )
