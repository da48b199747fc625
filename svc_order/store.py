"""The order service's data layer: orders, their lines and history, via asyncpg."""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from shopkit.domain import ORDER_TRANSITIONS, DomainError, timestamp
from shopkit.money import cents_to_money
from shopkit.parsing import parse_id
from shopkit.postgres import POSTGRES_UNAVAILABLE, FairPool
from svc_order.delivery import LABELS as DELIVERY_LABELS
from svc_order.outbox import EMAIL_KINDS, record_email
from svc_order.schemas import OrderOut, PaymentOut

log = logging.getLogger("shop.order.store")


class OrderNotFound(DomainError):
    """No placed order has the id ``id``."""

    def __init__(self, order_id: int | str) -> None:
        super().__init__(id=order_id)


class TransitionRefused(DomainError):
    """An order that is ``status`` may not become ``wanted`` (see ORDER_TRANSITIONS)."""


class IdempotencyKeyTaken(Exception):
    """Another request with this user's Idempotency-Key got there first."""


class CartClaimed(Exception):
    """Another cart checkout of this customer holds the claim on the cart (see migration
    0003): it is running, or placed and its cart not cleared yet."""


# The partial unique index that lets one cart checkout per customer hold its cart.
CART_CLAIM_INDEX = "orders_one_cart_checkout"


@dataclass(frozen=True, slots=True)
class Line:
    product_id: str
    product_name: str
    quantity: int
    price_cents: int


@dataclass(frozen=True, slots=True)
class Details:
    """What a checkout with an address, delivery and payment records beside its lines."""

    delivery_option: str
    delivery_cents: int
    address: dict[str, str]  # shopkit.address.AddressBody's fields and country_name


@dataclass(frozen=True, slots=True)
class Customer:
    email: str
    first_name: str
    last_name: str


def subtotal_of(lines: Sequence[Line]) -> int:
    return sum(line.price_cents * line.quantity for line in lines)


def _payment_out(payment: Mapping[str, Any] | None) -> PaymentOut | None:
    if payment is None:
        return None
    return {
        "status": payment["status"],
        "provider": payment["provider"],
        "reference": payment["reference"],
        "brand": payment["brand"],
        "last4": payment["last4"],
        "amount": cents_to_money(payment["amount_cents"]),
    }


def order_out(
    row: Mapping[str, Any],
    lines: Sequence[Mapping[str, Any]],
    history: Sequence[Mapping[str, Any]],
    payment: Mapping[str, Any] | None = None,
) -> OrderOut:
    """A stored order as the API shows it (its shape: schemas.OrderOut)."""
    subtotal = row["subtotal_cents"]
    option = row["delivery_option"]
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "status": row["status"],
        # Orders from before delivery was kept: their total is all goods.
        "subtotal_amount": cents_to_money(row["total_cents"] if subtotal is None else subtotal),
        "total_amount": cents_to_money(row["total_cents"]),
        "delivery": None
        if option is None
        else {
            "option": option,
            "label": DELIVERY_LABELS[option],
            "price": cents_to_money(row["delivery_cents"]),
        },
        "address": None if row["address"] is None else orjson.loads(row["address"]),
        "customer": None
        if row["customer_email"] is None
        else {
            "email": row["customer_email"],
            "first_name": row["customer_first_name"],
            "last_name": row["customer_last_name"],
        },
        "payment": _payment_out(payment),
        "items": [
            {
                "product_id": line["product_id"],
                "product_name": line["product_name"],
                "quantity": line["quantity"],
                "price": cents_to_money(line["price_cents"]),
            }
            for line in lines
        ],
        "history": [{"status": entry["status"], "at": timestamp(entry["at"])} for entry in history],
        "created_at": timestamp(row["created_at"]),
        "updated_at": timestamp(row["updated_at"]),
    }


_ORDER = """id, user_id, status, total_cents, subtotal_cents, delivery_option, delivery_cents,
    address, customer_email, customer_first_name, customer_last_name, created_at, updated_at"""
_PAYMENT = "order_id, provider, status, reference, brand, last4, amount_cents"

# The first key of every owner lock (pg_advisory_lock(int, int)): "ordr".
OWNER_LOCK_SPACE = 0x6F726472
# A checkout nobody works on any more: its lease ran out (its process hung or vanished
# without closing its connection), or its owner's lock is free (its process died: the
# database ended the session, and with it the lock, the moment the connection closed).
_ABANDONED = f"""(lease_until < now() OR (owner IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND granted AND objsubid = 2
          AND classid = {OWNER_LOCK_SPACE}::oid AND objid = owner::oid
          AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))))"""


class OwnerLock:
    """This process's mark on the checkouts it runs: a session advisory lock held on a
    connection of its own for as long as the process lives, so that the others (and this
    service restarted) can tell at once that a checkout's process is gone."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.id = secrets.randbelow(2**31 - 2) + 1
        self._connection: asyncpg.Connection | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def hold(self) -> None:
        """Take the lock, or take it again after the connection was lost (a database
        restart): until then this process's checkouts are recorded with no owner."""
        if self.held:
            return
        await self.release()
        try:
            connection = await asyncpg.connect(self.database_url, timeout=5)
        except (*POSTGRES_UNAVAILABLE, asyncpg.PostgresError) as exc:
            log.warning("cannot take the checkout owner lock: %s", exc)
            return
        try:
            await connection.execute("SELECT pg_advisory_lock($1, $2)", OWNER_LOCK_SPACE, self.id)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            await connection.close()


# What pg_trgm can look up: three letters or digits in a row (it keeps only those, so a
# shorter text, or "%%%" or an emoji, has no trigram and would read the whole index).
_INDEXABLE = re.compile(r"[^\W_]{3}")


def listing_condition(
    user_id: int | None, status: str | None, customer: str | None
) -> tuple[str, list[Any]]:
    """The WHERE of OrderStore.list_orders, and its arguments. The customer search's
    expressions are the ones migration 0006 indexes by trigrams: change both together."""
    where = ["checkout_state = 'placed'"]
    args: list[Any] = []
    if user_id is not None:
        args.append(user_id)
        where.append(f"user_id = ${len(args)}")
    if status is not None:
        args.append(status)
        where.append(f"status = ${len(args)}")
    if customer is not None:
        args.append("%" + re.sub(r"([\\%_])", r"\\\1", customer) + "%")
        n = len(args)
        named = f"customer_first_name || ' ' || customer_last_name ILIKE ${n}"
        matches = [f"customer_email ILIKE ${n}", named]
        number = parse_id(customer)
        if number is not None:
            args.append(number)
            matches.append(f"user_id = ${len(args)}")
        where.append(f"({' OR '.join(matches)})")
    return " AND ".join(where), args


class OrderStore:
    def __init__(self, pool: FairPool) -> None:
        self.pool = pool

    # -- the checkout saga ---------------------------------------------------------------

    async def record_intent(
        self,
        *,
        user_id: int,
        lines: list[Line],
        idempotency_key: str | None,
        request_hash: str,
        cart_version: int | None,
        lease_seconds: float,
        owner: int | None = None,
        cart_stamp: str | None = None,
        details: Details | None = None,
        customer: Customer | None = None,
    ) -> int:
        """Write the order down before any stock is touched, so a crash from here on
        leaves a row that recovery finds (at once when its ``owner``'s lock is free). A
        cart checkout (``cart_version`` given) claims the customer's cart here: raises
        CartClaimed while another cart checkout of theirs holds it."""
        subtotal = subtotal_of(lines)
        delivery = details.delivery_cents if details is not None else 0
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                order_id = await connection.fetchval(
                    """INSERT INTO orders (user_id, total_cents, lease_until, idempotency_key,
                                           request_hash, cart_version, owner, cart_stamp,
                                           subtotal_cents, delivery_option, delivery_cents,
                                           address, customer_email, customer_first_name,
                                           customer_last_name)
                       VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6, $7, $8,
                               $9, $10, $11, $12, $13, $14, $15)
                       RETURNING id""",
                    user_id,
                    subtotal + delivery,
                    lease_seconds,
                    idempotency_key,
                    request_hash,
                    cart_version,
                    owner,
                    cart_stamp,
                    subtotal,
                    None if details is None else details.delivery_option,
                    None if details is None else details.delivery_cents,
                    None if details is None else orjson.dumps(details.address).decode(),
                    None if customer is None else customer.email,
                    None if customer is None else customer.first_name,
                    None if customer is None else customer.last_name,
                )
                await connection.executemany(
                    """INSERT INTO order_items (order_id, product_id, product_name, quantity,
                                                price_cents) VALUES ($1, $2, $3, $4, $5)""",
                    [
                        (
                            order_id,
                            line.product_id,
                            line.product_name,
                            line.quantity,
                            line.price_cents,
                        )
                        for line in lines
                    ],
                )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == CART_CLAIM_INDEX:
                raise CartClaimed() from None
            raise IdempotencyKeyTaken() from None
        return order_id

    async def mark_placed(self, order_id: int, lines: list[Line]) -> dict[str, Any] | None:
        """Placed, unless recovery took the order over (its lease ran out) meanwhile; the
        order as the API shows it, built from what the caller holds (its ``lines``) and
        what the writes return, so the answer costs no read. The 'placed' e-mail is owed
        in the same transaction (to the customer_email the checkout kept)."""
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"""UPDATE orders SET checkout_state = 'placed', updated_at = now()
                    WHERE id = $1 AND checkout_state = 'reserving' AND lease_until > now()
                    RETURNING {_ORDER}""",
                order_id,
            )
            if row is None:
                return None
            await record_email(connection, order_id, "placed")
            entry = await connection.fetchrow(
                """INSERT INTO order_history (order_id, status) VALUES ($1, 'pending')
                   RETURNING status, at""",
                order_id,
            )
            payment = await connection.fetchrow(
                f"SELECT {_PAYMENT} FROM order_payments WHERE order_id = $1", order_id
            )
        # In the order a read gives them (ORDER BY product_id).
        items = [
            {
                "product_id": line.product_id,
                "product_name": line.product_name,
                "quantity": line.quantity,
                "price_cents": line.price_cents,
            }
            for line in sorted(lines, key=lambda line: line.product_id)
        ]
        return order_out(row, items, [entry], payment)

    async def start_compensating(self, order_id: int) -> None:
        """From now on the attempt is only undone, never placed: it gives up its claim on
        the cart, so the customer may check the same cart out again at once."""
        await self.pool.execute(
            """UPDATE orders SET checkout_state = 'compensating', cart_version = NULL,
                                 updated_at = now()
               WHERE id = $1 AND checkout_state <> 'placed'""",
            order_id,
        )

    async def let_go(self, order_id: int) -> None:
        """This process stops working on an attempt it could not finish undoing: it is
        abandoned from now on (see _ABANDONED), so whoever comes next takes it over."""
        await self.pool.execute(
            """UPDATE orders SET owner = NULL, lease_until = now()
               WHERE id = $1 AND checkout_state = 'compensating'""",
            order_id,
        )

    async def forget(self, order_id: int) -> None:
        """An undone checkout leaves no order (and frees its Idempotency-Key)."""
        await self.pool.execute(
            "DELETE FROM orders WHERE id = $1 AND checkout_state <> 'placed'", order_id
        )

    async def claim_abandoned(
        self, lease_seconds: float, owner: int | None, order_id: int | None = None
    ) -> list[int]:
        """Checkouts whose process died or hung (all of them, or just ``order_id``): take
        them over for undoing, with a fresh lease and this process as their owner, so that
        only one process works on each."""
        rows = await self.pool.fetch(
            f"""UPDATE orders SET checkout_state = 'compensating', owner = $2, cart_version = NULL,
                                  lease_until = now() + make_interval(secs => $1)
                WHERE checkout_state <> 'placed' AND ($3::bigint IS NULL OR id = $3)
                  AND {_ABANDONED}
                RETURNING id""",
            lease_seconds,
            owner,
            order_id,
        )
        return [row["id"] for row in rows]

    async def oldest_unfinished_age(self) -> float | None:
        """Seconds since the oldest checkout neither placed nor undone began; None if none."""
        return await self.pool.fetchval(
            """SELECT extract(epoch FROM now() - min(created_at))::float8 FROM orders
               WHERE checkout_state <> 'placed'"""
        )

    async def product_ids(self, order_id: int) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT product_id FROM order_items WHERE order_id = $1 ORDER BY product_id",
            order_id,
        )
        return [row["product_id"] for row in rows]

    async def lines(self, order_id: int) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT * FROM order_items WHERE order_id = $1 ORDER BY product_id", order_id
        )

    async def by_idempotency_key(self, user_id: int, key: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            f"""SELECT id, checkout_state, request_hash,
                       checkout_state <> 'placed' AND {_ABANDONED} AS abandoned
                FROM orders WHERE user_id = $1 AND idempotency_key = $2""",
            user_id,
            key,
        )

    async def cart_claim(self, user_id: int) -> asyncpg.Record | None:
        """The cart checkout that holds this customer's cart claim, if one does."""
        return await self.pool.fetchrow(
            f"""SELECT id, checkout_state, cart_version, cart_stamp,
                       checkout_state <> 'placed' AND {_ABANDONED} AS abandoned
                FROM orders WHERE user_id = $1 AND cart_version IS NOT NULL""",
            user_id,
        )

    async def carts_to_clear(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT id, user_id, cart_version, cart_stamp FROM orders
               WHERE checkout_state = 'placed' AND cart_version IS NOT NULL"""
        )

    async def cart_cleared(self, order_id: int) -> None:
        await self.pool.execute("UPDATE orders SET cart_version = NULL WHERE id = $1", order_id)

    # -- reading -------------------------------------------------------------------------

    async def _expand(self, rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
        ids = [row["id"] for row in rows]
        lines = await self.pool.fetch(
            "SELECT * FROM order_items WHERE order_id = ANY($1) ORDER BY product_id", ids
        )
        history = await self.pool.fetch(
            "SELECT order_id, status, at FROM order_history WHERE order_id = ANY($1) ORDER BY id",
            ids,
        )
        payments = await self.pool.fetch(
            f"SELECT {_PAYMENT} FROM order_payments WHERE order_id = ANY($1)", ids
        )
        payment_of = {payment["order_id"]: payment for payment in payments}
        lines_of: dict[int, list[asyncpg.Record]] = {order_id: [] for order_id in ids}
        history_of: dict[int, list[asyncpg.Record]] = {order_id: [] for order_id in ids}
        for line in lines:
            lines_of[line["order_id"]].append(line)
        for entry in history:
            history_of[entry["order_id"]].append(entry)
        return [
            order_out(row, lines_of[row["id"]], history_of[row["id"]], payment_of.get(row["id"]))
            for row in rows
        ]

    async def get(self, order_id: int) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            f"SELECT {_ORDER} FROM orders WHERE id = $1 AND checkout_state = 'placed'", order_id
        )
        if row is None:
            raise OrderNotFound(order_id)
        return (await self._expand([row]))[0]

    async def page(
        self,
        *,
        user_id: int | None,
        status: str | None,
        page: int,
        limit: int,
        customer: str | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of placed orders, newest first, and how many there are in all: one user's
        or everyone's, in one status or any, and with ``customer``, those whose customer's
        e-mail or name holds that text (any case; % and _ are themselves) or whose user id
        it is."""
        condition, args = listing_condition(user_id, status, customer)
        page_of = f"ORDER BY id DESC LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}"
        searching = customer is not None and _INDEXABLE.search(customer) is not None
        counted = ", count(*) OVER () AS total" if searching else ""
        async with self.pool.acquire() as connection, connection.transaction():
            if searching:
                # What the trigram indexes (migration 0006) are for; measured at 100k orders
                # (benchmarks/order_search.py). The planner prices ILIKE per row like an
                # equality and would read every order (75 ms) rather than the indexes
                # (5 ms). And apart, the page's ORDER BY id DESC LIMIT would tempt it to walk
                # the primary key back through every order for a rare customer (40 ms): one
                # pass over the matches gives the page and their count. A text with no
                # trigram is a scan; without pg_trgm every order is read.
                await connection.execute("SET LOCAL enable_seqscan = off")
            rows = await connection.fetch(
                f"SELECT {_ORDER}{counted} FROM orders WHERE {condition} {page_of}",
                *args,
                limit,
                (page - 1) * limit,
            )
            total: int | None = None
            if searching:
                total = rows[0]["total"] if rows else 0 if page == 1 else None
            if total is None:  # not counted with the page (or a page past the last)
                total = await connection.fetchval(
                    f"SELECT count(*) FROM orders WHERE {condition}", *args
                )
        return await self._expand(rows), total

    # -- the lifecycle -------------------------------------------------------------------

    async def owner_of(self, order_id: int) -> int:
        owner = await self.pool.fetchval(
            "SELECT user_id FROM orders WHERE id = $1 AND checkout_state = 'placed'", order_id
        )
        if owner is None:
            raise OrderNotFound(order_id)
        return owner

    async def change_status(
        self, order_id: int, new_status: str, *, only_from: frozenset[str] | None = None
    ) -> None:
        """Move the order along, under a row lock, so two racing changes (two cancels) are
        judged one after the other: the second sees the first's result. The e-mail of a
        shipped or cancelled order is owed in the same transaction."""
        async with self.pool.acquire() as connection, connection.transaction():
            current = await connection.fetchval(
                """SELECT status FROM orders WHERE id = $1 AND checkout_state = 'placed'
                   FOR UPDATE""",
                order_id,
            )
            if current is None:
                raise OrderNotFound(order_id)
            allowed = only_from is None or current in only_from
            if not allowed or new_status not in ORDER_TRANSITIONS[current]:
                raise TransitionRefused(status=current, wanted=new_status)
            await connection.execute(
                """UPDATE orders SET status = $2, updated_at = now(),
                                     restock_pending = ($2 = 'cancelled')
                   WHERE id = $1""",
                order_id,
                new_status,
            )
            await connection.execute(
                "INSERT INTO order_history (order_id, status) VALUES ($1, $2)",
                order_id,
                new_status,
            )
            # The money follows the goods, in the same transaction: capture when it ships,
            # release the hold (or refund a capture) when it is cancelled. Done right after
            # by the caller, or by recovery if the provider is unavailable.
            action = {"shipped": "capture", "cancelled": "void"}.get(new_status)
            if action is not None:
                await connection.execute(
                    """UPDATE order_payments
                       SET pending_action = CASE WHEN $2 = 'void' AND status = 'captured'
                                                 THEN 'refund' ELSE $2 END,
                           updated_at = now()
                       WHERE order_id = $1 AND status IN ('authorised', 'captured')""",
                    order_id,
                    action,
                )
            if new_status in EMAIL_KINDS:
                await record_email(connection, order_id, new_status)

    async def restocks_pending(self) -> list[int]:
        rows = await self.pool.fetch("SELECT id FROM orders WHERE restock_pending")
        return [row["id"] for row in rows]

    async def restocked(self, order_id: int) -> None:
        await self.pool.execute("UPDATE orders SET restock_pending = false WHERE id = $1", order_id)

    # -- payments --------------------------------------------------------------------------

    async def payment_started(
        self, order_id: int, provider: str, idempotency_key: str, amount_cents: int
    ) -> None:
        """Written before the provider is asked, so that recovery knows to ask it what
        came of it (``find``) if this process dies waiting."""
        await self.pool.execute(
            """INSERT INTO order_payments (order_id, provider, idempotency_key, status,
                                           amount_cents)
               VALUES ($1, $2, $3, 'authorising', $4)
               ON CONFLICT (order_id) DO NOTHING""",
            order_id,
            provider,
            idempotency_key,
            amount_cents,
        )

    async def payment_authorised(
        self, order_id: int, reference: str, brand: str, last4: str
    ) -> None:
        await self.pool.execute(
            """UPDATE order_payments SET status = 'authorised', reference = $2, brand = $3,
                                         last4 = $4, updated_at = now()
               WHERE order_id = $1 AND status = 'authorising'""",
            order_id,
            reference,
            brand,
            last4,
        )

    async def payment_settled(self, order_id: int, status: str) -> None:
        """The payment reached ``status`` (failed, voided, captured, refunded): what was
        pending for it is done."""
        await self.pool.execute(
            """UPDATE order_payments SET status = $2, pending_action = NULL, updated_at = now()
               WHERE order_id = $1""",
            order_id,
            status,
        )

    async def payment(self, order_id: int) -> asyncpg.Record | None:
        return await self.pool.fetchrow(
            """SELECT order_id, provider, idempotency_key, status, reference, brand, last4,
                      amount_cents, pending_action
               FROM order_payments WHERE order_id = $1""",
            order_id,
        )

    async def payments_pending(self) -> list[int]:
        rows = await self.pool.fetch(
            "SELECT order_id FROM order_payments WHERE pending_action IS NOT NULL"
        )
        return [row["order_id"] for row in rows]
