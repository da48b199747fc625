"""The order service's data layer: orders, their lines and history, via asyncpg."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from shopkit.errors import Conflict, NotFound
from shopkit.money import cents_to_money
from shopkit.postgres import FairPool

# The lifecycle: where each status may go next.
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"processing", "cancelled"}),
    "processing": frozenset({"shipped", "cancelled"}),
    "shipped": frozenset({"delivered"}),
    "delivered": frozenset(),
    "cancelled": frozenset(),
}


class OrderNotFound(NotFound):
    def __init__(self, order_id: int | str) -> None:
        super().__init__(f"There is no order {order_id}.", code="order_not_found")


class IdempotencyKeyTaken(Exception):
    """Another request with this user's Idempotency-Key got there first."""


@dataclass(frozen=True, slots=True)
class Line:
    product_id: str
    product_name: str
    quantity: int
    price_cents: int


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def order_out(
    row: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], history: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """A stored order as the API shows it (see schemas.OrderOut)."""
    return {
        "id": row["id"],
        "user_id": row["user_id"],
        "status": row["status"],
        "total_amount": cents_to_money(row["total_cents"]),
        "items": [
            {
                "product_id": line["product_id"],
                "product_name": line["product_name"],
                "quantity": line["quantity"],
                "price": cents_to_money(line["price_cents"]),
            }
            for line in lines
        ],
        "history": [{"status": entry["status"], "at": _iso(entry["at"])} for entry in history],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


_ORDER = "id, user_id, status, total_cents, created_at, updated_at"


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
    ) -> int:
        """Write the order down before any stock is touched, so a crash from here on
        leaves a row that recovery finds."""
        total = sum(line.price_cents * line.quantity for line in lines)
        try:
            async with self.pool.acquire() as connection, connection.transaction():
                order_id = await connection.fetchval(
                    """INSERT INTO orders (user_id, total_cents, lease_until, idempotency_key,
                                           request_hash, cart_version)
                       VALUES ($1, $2, now() + make_interval(secs => $3), $4, $5, $6)
                       RETURNING id""",
                    user_id,
                    total,
                    lease_seconds,
                    idempotency_key,
                    request_hash,
                    cart_version,
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
        except asyncpg.UniqueViolationError:
            raise IdempotencyKeyTaken() from None
        return order_id

    async def mark_placed(self, order_id: int, lines: list[Line]) -> dict[str, Any] | None:
        """Placed, unless recovery took the order over (its lease ran out) meanwhile; the
        order as the API shows it, built from what the caller holds (its ``lines``) and
        what the two writes return, so the answer costs no read."""
        async with self.pool.acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                f"""UPDATE orders SET checkout_state = 'placed', updated_at = now()
                    WHERE id = $1 AND checkout_state = 'reserving' AND lease_until > now()
                    RETURNING {_ORDER}""",
                order_id,
            )
            if row is None:
                return None
            entry = await connection.fetchrow(
                """INSERT INTO order_history (order_id, status) VALUES ($1, 'pending')
                   RETURNING status, at""",
                order_id,
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
        return order_out(row, items, [entry])

    async def start_compensating(self, order_id: int) -> None:
        await self.pool.execute(
            """UPDATE orders SET checkout_state = 'compensating', updated_at = now()
               WHERE id = $1 AND checkout_state <> 'placed'""",
            order_id,
        )

    async def forget(self, order_id: int) -> None:
        """An undone checkout leaves no order (and frees its Idempotency-Key)."""
        await self.pool.execute(
            "DELETE FROM orders WHERE id = $1 AND checkout_state <> 'placed'", order_id
        )

    async def claim_abandoned(self, lease_seconds: float) -> list[int]:
        """Checkouts whose lease ran out (their process crashed or hung): take them over
        for undoing, with a fresh lease so that only one replica works on each."""
        rows = await self.pool.fetch(
            """UPDATE orders SET checkout_state = 'compensating',
                                 lease_until = now() + make_interval(secs => $1)
               WHERE checkout_state <> 'placed' AND lease_until < now()
               RETURNING id""",
            lease_seconds,
        )
        return [row["id"] for row in rows]

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
            """SELECT id, checkout_state, request_hash FROM orders
               WHERE user_id = $1 AND idempotency_key = $2""",
            user_id,
            key,
        )

    async def carts_to_clear(self) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            """SELECT id, user_id, cart_version FROM orders
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
        lines_of: dict[int, list[asyncpg.Record]] = {order_id: [] for order_id in ids}
        history_of: dict[int, list[asyncpg.Record]] = {order_id: [] for order_id in ids}
        for line in lines:
            lines_of[line["order_id"]].append(line)
        for entry in history:
            history_of[entry["order_id"]].append(entry)
        return [order_out(row, lines_of[row["id"]], history_of[row["id"]]) for row in rows]

    async def get(self, order_id: int) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            f"SELECT {_ORDER} FROM orders WHERE id = $1 AND checkout_state = 'placed'", order_id
        )
        if row is None:
            raise OrderNotFound(order_id)
        return (await self._expand([row]))[0]

    async def page(
        self, *, user_id: int | None, status: str | None, page: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        where = ["checkout_state = 'placed'"]
        args: list[Any] = []
        if user_id is not None:
            args.append(user_id)
            where.append(f"user_id = ${len(args)}")
        if status is not None:
            args.append(status)
            where.append(f"status = ${len(args)}")
        condition = " AND ".join(where)
        total = await self.pool.fetchval(f"SELECT count(*) FROM orders WHERE {condition}", *args)
        rows = await self.pool.fetch(
            f"""SELECT {_ORDER} FROM orders WHERE {condition} ORDER BY id DESC
                LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
            *args,
            limit,
            (page - 1) * limit,
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
        judged one after the other: the second sees the first's result."""
        async with self.pool.acquire() as connection, connection.transaction():
            current = await connection.fetchval(
                """SELECT status FROM orders WHERE id = $1 AND checkout_state = 'placed'
                   FOR UPDATE""",
                order_id,
            )
            if current is None:
                raise OrderNotFound(order_id)
            allowed = only_from is None or current in only_from
            if not allowed or new_status not in TRANSITIONS[current]:
                raise Conflict(
                    f"An order that is {current} cannot become {new_status}.",
                    code="invalid_transition",
                    extra={"status": current},
                )
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

    async def restocks_pending(self) -> list[int]:
        rows = await self.pool.fetch("SELECT id FROM orders WHERE restock_pending")
        return [row["id"] for row in rows]

    async def restocked(self, order_id: int) -> None:
        await self.pool.execute("UPDATE orders SET restock_pending = false WHERE id = $1", order_id)
