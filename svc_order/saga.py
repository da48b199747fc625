"""Checkout as a saga across services, and the recovery that finishes what a crash left.

1. The intent (order, lines, prices, Idempotency-Key) is written to PostgreSQL first, in
   state ``reserving``, with a lease. A cart checkout also claims the customer's cart there
   (one cart checkout per customer at a time, a unique index): a second checkout of the
   same cart that runs meanwhile (another tab, a script) fails on the claim and answers 409
   ``cart_checkout_in_progress``; it never takes stock, so a cart is bought once.
2. Stock is taken from the product service one line at a time, each change keyed by the
   order (reference ``order-<id>``), so a retry never takes twice.
3. All taken: the order becomes ``placed`` (only while its lease holds), and a cart
   checkout clears the cart at the version it read, which ends its claim.
   Anything failed: the claim is given up, every line's change is undone (an undo of a
   change that never arrived marks it so it never will: the product service refuses it
   with 409 ``stock_change_undone``, which fails the attempt), and the order is deleted:
   no order, stock as before.

Recovery, at start-up and every few seconds on every replica, takes over checkouts whose
process died (its owner lock is free: see store.OwnerLock) or whose lease ran out (it hung)
and undoes them, puts back the stock of cancelled orders that is not back yet, and clears
carts that a placed order could not clear. Every step is idempotent, so replicas and
restarts may repeat any of them safely.

A repeat of a checkout (same user, same Idempotency-Key) answers the order the key placed;
while the first attempt is still running it waits a little for it, then answers 409
``checkout_in_progress`` with Retry-After; an attempt whose process died is undone on the
spot and the repeat places the order itself, so that a retry after a crash (the gateway's,
see svc_gateway/checkout.py) never waits out the lease.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from shopkit.auth import ServiceCredential
from shopkit.client import ServiceClient
from shopkit.domain import MAX_IDS_PER_CALL
from shopkit.errors import BadRequest, Conflict, NotFound, ShopError, UpstreamUnavailable
from shopkit.metrics import Metrics
from shopkit.money import money_to_cents
from shopkit.postgres import POSTGRES_UNAVAILABLE
from svc_order.store import CartClaimed, IdempotencyKeyTaken, Line, OrderStore, OwnerLock

log = logging.getLogger("shop.order.checkout")

# How long a repeat waits for a live first attempt with its key (a checkout takes well under
# a second) before answering 409 checkout_in_progress; what its Retry-After says.
IN_PROGRESS_WAIT = 3.0
IN_PROGRESS_RETRY_AFTER = "1"


# How often a cart checkout settles a claim it found (a placed order's pending clear, a dead
# attempt) and reads the cart again, before it answers 409 cart_checkout_in_progress.
CLAIM_TRIES = 3


@dataclass(frozen=True, slots=True)
class CartRead:
    """A cart as a checkout read it: what to buy, and what names this state of the cart."""

    wanted: dict[str, int]
    version: int
    stamp: str | None  # its expires_at, new with every write (see _clear_bought_cart)


def reference(order_id: int) -> str:
    return f"order-{order_id}"


def _quantities_by_product(lines: list[tuple[str, int]]) -> dict[str, int]:
    """Units per product id (in lower case), lines of the same product added together."""
    merged: dict[str, int] = {}
    for product_id, quantity in lines:
        key = product_id.lower()
        merged[key] = merged.get(key, 0) + quantity
    return merged


def request_hash(wanted: dict[str, int] | None) -> str:
    """What an Idempotency-Key promises: these items, or (None) the caller's cart."""
    canonical = orjson.dumps({"cart": wanted is None, "items": sorted((wanted or {}).items())})
    return hashlib.sha256(canonical).hexdigest()


class CheckoutCounts:
    """What the saga counts (metrics): orders placed, checkouts failed by the code the client
    is answered, checkouts undone, recoveries by how the checkout ended, and the age of the
    oldest unfinished checkout, measured by each recovery pass and aged on at each scrape
    (so it keeps growing if the passes stop)."""

    def __init__(self, metrics: Metrics) -> None:
        self.placed = metrics.counter("shop_orders_placed", "Orders placed by a checkout").labels()
        self.failed = metrics.counter(
            "shop_checkouts_failed",
            "Checkouts that placed no order, by the error code answered",
            "reason",
            known=(
                "insufficient_stock",
                "cart_changed",
                "product_not_found",
                "upstream_unavailable",
            ),
        )
        self.undos = metrics.counter(
            "shop_checkout_undos",
            "Checkouts undone: the stock they took put back and the order forgotten",
        ).labels()
        self.recoveries = metrics.counter(
            "shop_checkout_recoveries",
            "Checkouts a crash or an outage left, finished by recovery: undone, or placed "
            "and their cart cleared",
            "outcome",
            known=("placed", "undone"),
        )
        # Every replica and worker measures the same database: the most any of them saw.
        self._oldest = metrics.gauge(
            "shop_checkout_oldest_unfinished_seconds",
            "Age of the oldest checkout neither placed nor undone (0 when none)",
            mode="livemax",
        ).labels()
        self._oldest_seen: tuple[float, float] | None = None  # (its age, time.monotonic())
        metrics.before_scrape(self._show_oldest)

    def unfinished(self, oldest_age: float | None) -> None:
        """The oldest unfinished checkout is ``oldest_age`` seconds old (None: there is none)."""
        self._oldest_seen = None if oldest_age is None else (oldest_age, time.monotonic())
        self._show_oldest()

    def _show_oldest(self) -> None:
        seen = self._oldest_seen
        self._oldest.set(0.0 if seen is None else seen[0] + time.monotonic() - seen[1])


class Checkout:
    # The service token is asked of ``credential`` at each call: one made at start-up would
    # stop working after TOKEN_LIFETIME, and every checkout with it.
    def __init__(
        self,
        store: OrderStore,
        products: ServiceClient,
        carts: ServiceClient,
        credential: ServiceCredential,
        lease_seconds: float,
        counts: CheckoutCounts,
        owner: OwnerLock | None = None,
    ) -> None:
        self.store = store
        self.products = products
        self.carts = carts
        self.credential = credential
        self.lease_seconds = lease_seconds
        self.counts = counts
        self.owner = owner

    @property
    def owner_id(self) -> int | None:
        """The owner recorded on this process's checkouts; None while the lock is not held
        (then only their lease says when they are abandoned)."""
        return self.owner.id if self.owner is not None and self.owner.held else None

    # -- placing an order ------------------------------------------------------------------

    async def place(
        self,
        user_id: int,
        explicit: list[tuple[str, int]] | None,
        idempotency_key: str | None,
        customer_email: str | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """Check out; return the order id and, when this call placed it, the order as the
        API shows it (None: a replay of an order placed before; read it). The e-mails about
        the order go to ``customer_email`` (the caller's token's)."""
        try:
            order_id, order = await self._place(user_id, explicit, idempotency_key, customer_email)
        except ShopError as exc:
            self.counts.failed.labels(exc.code).inc()
            raise
        except POSTGRES_UNAVAILABLE:  # the middleware answers these 503 upstream_unavailable
            self.counts.failed.labels(UpstreamUnavailable.code).inc()
            raise
        if order is not None:
            self.counts.placed.inc()
        return order_id, order

    async def _place(
        self,
        user_id: int,
        explicit: list[tuple[str, int]] | None,
        idempotency_key: str | None,
        customer_email: str | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        # "Check out my cart" is one request whatever the cart holds, so a repeat is known
        # before the cart is read (a cart the first request already emptied included).
        wanted = _quantities_by_product(explicit) if explicit else None
        fingerprint = request_hash(wanted)
        if idempotency_key is not None:
            earlier = await self._earlier_order(user_id, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier, None
        tries = 0
        while True:
            cart = None if wanted is not None else await self._cart_lines(user_id)
            lines = await self._priced_lines(cart.wanted if cart is not None else wanted or {})
            try:
                order_id = await self.store.record_intent(
                    user_id=user_id,
                    lines=lines,
                    idempotency_key=idempotency_key,
                    request_hash=fingerprint,
                    cart_version=None if cart is None else cart.version,
                    cart_stamp=None if cart is None else cart.stamp,
                    lease_seconds=self.lease_seconds,
                    owner=self.owner_id,
                )
            except IdempotencyKeyTaken:
                # A request with the same key raced us and won: its order is our answer.
                assert idempotency_key is not None
                earlier = await self._earlier_order(user_id, idempotency_key, fingerprint)
                if earlier is None:
                    raise Conflict(
                        "A checkout with this Idempotency-Key just failed; send it again.",
                        code="idempotency_retry",
                    ) from None
                return earlier, None
            except CartClaimed:
                # Another checkout of this cart: a racing repeat with our key is answered
                # its order; otherwise the claim is settled if its holder is done or dead,
                # and the cart read again (it may be empty now: bought).
                if idempotency_key is not None:
                    earlier = await self._earlier_order(user_id, idempotency_key, fingerprint)
                    if earlier is not None:
                        return earlier, None
                tries += 1
                if tries == CLAIM_TRIES or not await self._settle_claim(user_id):
                    raise _cart_in_progress() from None
                continue
            if cart is not None and not await self._still_the_cart(order_id, user_id, cart):
                # Read before the claim, the cart changed before it was taken: a checkout
                # that bought it finished in between, or the shopper changed it. Nothing
                # is taken yet; read it again, now under this checkout's claim.
                tries += 1
                if tries == CLAIM_TRIES:
                    raise _cart_changed()
                continue
            break
        await self._take_stock(order_id, lines)
        order = await self.store.mark_placed(order_id, lines, customer_email)
        if order is None:
            # Too slow: recovery took the order over and is undoing it.
            raise _undone_meanwhile()
        if cart is not None:
            await self._clear_cart(order_id, user_id, cart.version)
        return order_id, order

    async def _read_cart(self, user_id: int) -> dict[str, Any]:
        reply = await self.carts.get(f"/api/cart/{user_id}", token=self.credential.token)
        if reply.status != 200 or not isinstance(reply.data, dict):
            raise UpstreamUnavailable("The cart service gave no cart; try again shortly.")
        return reply.data

    async def _cart_lines(self, user_id: int) -> CartRead:
        cart = await self._read_cart(user_id)
        items = [(item["product_id"], item["quantity"]) for item in cart.get("items", [])]
        if not items:
            raise BadRequest("Your cart is empty: add something first.", code="empty_cart")
        return CartRead(
            _quantities_by_product(items), int(cart.get("version") or 0), cart.get("expires_at")
        )

    async def _still_the_cart(self, order_id: int, user_id: int, cart: CartRead) -> bool:
        """True when the cart is still as ``cart`` read it, now that this checkout holds
        the claim on it; otherwise the attempt (which took nothing yet) is dropped. A cart
        gone empty meanwhile (bought) drops it and is the 400 it would have been."""
        try:
            now = await self._cart_lines(user_id)
        except ShopError:
            await self._drop_untouched(order_id)
            raise
        if (now.version, now.stamp) == (cart.version, cart.stamp):
            return True
        await self._drop_untouched(order_id)
        return False

    async def _drop_untouched(self, order_id: int) -> None:
        # No take was ever sent for this attempt (this process decides, and it sends none
        # now), so there is nothing to put back at the product service: only forget it.
        await self.store.start_compensating(order_id)
        await self.store.forget(order_id)

    async def _settle_claim(self, user_id: int) -> bool:
        """Free the customer's cart claim if its holder is done with it: a placed order
        whose cart is not cleared yet has it cleared now (as recovery would), an attempt
        whose process died is undone now. False: a live checkout holds it."""
        holder = await self.store.cart_claim(user_id)
        if holder is None:
            return True  # given up meanwhile
        if holder["checkout_state"] == "placed":
            if await self._clear_bought_cart(
                holder["id"], user_id, holder["cart_version"], holder["cart_stamp"]
            ):
                self.counts.recoveries.labels("placed").inc()
        elif holder["abandoned"]:
            await self._take_over(holder["id"])
        else:
            return False
        return await self.store.cart_claim(user_id) is None

    async def _earlier_order(self, user_id: int, key: str, fingerprint: str) -> int | None:
        """The order this key already made; None when there is none (it failed and was
        undone, or its process died and it is undone now). A first attempt still running
        is waited for briefly, then answered 409 checkout_in_progress."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + IN_PROGRESS_WAIT
        pause = 0.02
        while True:
            row = await self.store.by_idempotency_key(user_id, key)
            if row is None:
                return None
            if row["request_hash"] != fingerprint:
                raise Conflict(
                    "This Idempotency-Key was used for a different checkout.",
                    code="idempotency_key_reused",
                )
            if row["checkout_state"] == "placed":
                return row["id"]
            if row["abandoned"]:
                await self._take_over(row["id"])
                continue  # gone now (the key is free), or another process is undoing it
            if loop.time() >= give_up:
                raise Conflict(
                    "A checkout with this Idempotency-Key is still in progress; ask again "
                    "shortly for its outcome.",
                    code="checkout_in_progress",
                    headers={"Retry-After": IN_PROGRESS_RETRY_AFTER},
                )
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _take_over(self, order_id: int) -> None:
        """Undo an attempt whose process died, now, instead of leaving the repeat to wait
        for recovery; it never placed its order (only 'reserving' becomes 'placed')."""
        claimed = await self.store.claim_abandoned(self.lease_seconds, self.owner_id, order_id)
        if not claimed:
            return  # another process took it over first
        log.info("order %s: undoing the abandoned attempt a later checkout found", order_id)
        if not await self.undo(order_id):
            raise UpstreamUnavailable(
                "An earlier checkout attempt failed and is still being undone; no order was "
                "placed. Try again shortly."
            )
        self.counts.recoveries.labels("undone").inc()

    async def _priced_lines(self, wanted: dict[str, int]) -> list[Line]:
        """Names and prices from the product service, never from the client."""
        ids = ",".join(sorted(wanted))
        reply = await self.products.get(f"/api/products?ids={ids}&limit={MAX_IDS_PER_CALL}")
        if reply.status != 200:
            raise UpstreamUnavailable("The product service could not list the products.")
        found = {product["id"]: product for product in reply.body["data"]}
        lines = []
        for product_id, quantity in sorted(wanted.items()):
            product = found.get(product_id)
            if product is None:
                raise NotFound(
                    f"There is no product with id {product_id!r}.", code="product_not_found"
                )
            if product["stock"] < quantity:  # early and cheap; the take below decides
                raise _not_enough_stock(product["name"], product["stock"], quantity)
            price = money_to_cents(_decimal(product["price"]))
            lines.append(Line(product_id, product["name"], quantity, price))
        return lines

    async def _take_stock(self, order_id: int, lines: list[Line]) -> None:
        """Every line's stock in one call, each change under the order's reference; the
        first refused stops the rest, and what was taken is undone."""
        changes = [{"product_id": line.product_id, "quantity": -line.quantity} for line in lines]
        failure: ShopError | None = None
        try:
            reply = await self.products.request(
                "POST",
                "/api/products/stock/changes",
                json={"reference": reference(order_id), "changes": changes},
                token=self.credential.token,
            )
        except UpstreamUnavailable as exc:
            failure = exc
        else:
            if reply.status != 200:
                failure = _refused_take(reply.status, reply.body, lines)
        if failure is not None:
            await self.undo(order_id)
            raise failure

    async def undo(self, order_id: int) -> bool:
        """Put back every unit this checkout took, then forget the order. False when the
        product service could not be reached: recovery will try again."""
        await self.store.start_compensating(order_id)
        for product_id in await self.store.product_ids(order_id):
            try:
                reply = await self.products.request(
                    "POST",
                    f"/api/products/{product_id}/stock/undo",
                    json={"reference": reference(order_id)},
                    token=self.credential.token,
                )
            except UpstreamUnavailable:
                log.warning("order %s: undo postponed, product service unavailable", order_id)
                return False
            if reply.status not in (200, 404):  # 404: the product is gone, nothing to return
                log.warning("order %s: undo of %s answered %s", order_id, product_id, reply.status)
                return False
        await self.store.forget(order_id)
        self.counts.undos.inc()
        return True

    async def _clear_cart(self, order_id: int, user_id: int, version: int) -> bool:
        """Empty the cart this order came from, unless it changed since it was read (then
        the customer changed it during the checkout, and it stays as they left it: 409
        cart_changed). Either way the order's claim on the cart ends (True). Not one of the
        checkouts racing this one can have bought the cart too: they failed on the claim.
        Retried by recovery if the cart service could not be reached."""
        try:
            reply = await self.carts.request(
                "DELETE", f"/api/cart/{user_id}?version={version}", token=self.credential.token
            )
        except UpstreamUnavailable:
            return False
        if reply.status == 409:
            log.info("order %s: the cart changed during the checkout; left as it is", order_id)
        if reply.status in (200, 409):
            await self.store.cart_cleared(order_id)
            return True
        return False

    async def _clear_bought_cart(
        self, order_id: int, user_id: int, version: int, stamp: str | None
    ) -> bool:
        """A clear long after the cart was read (recovery, or a checkout that found this
        order still holding the claim): first make sure the cart is still the one bought.
        Versions start again when a cart expires or Redis loses it, so a later cart may be
        at the same version number; its stamp (expires_at, new with every write) differs.
        True once the order holds the cart no more."""
        if stamp is not None:
            try:
                cart = await self._read_cart(user_id)
            except UpstreamUnavailable:
                return False  # tried again by recovery
            if (cart.get("version"), cart.get("expires_at")) != (version, stamp):
                await self.store.cart_cleared(order_id)  # that cart is gone: nothing to clear
                return True
        return await self._clear_cart(order_id, user_id, version)

    # -- cancelling ------------------------------------------------------------------------

    async def restock(self, order_id: int) -> bool:
        """Put a cancelled order's units back, once (each change keyed by the order)."""
        for line in await self.store.lines(order_id):
            try:
                reply = await self.products.request(
                    "PATCH",
                    f"/api/products/{line['product_id']}/stock",
                    json={"quantity": line["quantity"], "reference": f"cancel-{order_id}"},
                    token=self.credential.token,
                )
            except UpstreamUnavailable:
                return False
            if reply.status not in (200, 404):
                # Left for recovery to try again (e.g. the stock is at its ceiling): said, so
                # that a restock waiting for long is seen in the logs.
                log.warning(
                    "order %s: restocking %s refused (%s); recovery will try again",
                    order_id,
                    line["product_id"],
                    reply.status,
                )
                return False
        await self.store.restocked(order_id)
        return True

    # -- recovery --------------------------------------------------------------------------

    async def recover(self) -> None:
        """One pass over everything a crash or an outage left unfinished."""
        if self.owner is not None:
            await self.owner.hold()  # again, if the database lost it (a restart)
        for order_id in await self.store.claim_abandoned(self.lease_seconds, self.owner_id):
            log.info("order %s: undoing an abandoned checkout", order_id)
            if await self.undo(order_id):
                self.counts.recoveries.labels("undone").inc()
        for order_id in await self.store.restocks_pending():
            await self.restock(order_id)
        for row in await self.store.carts_to_clear():
            if await self._clear_bought_cart(
                row["id"], row["user_id"], row["cart_version"], row["cart_stamp"]
            ):
                self.counts.recoveries.labels("placed").inc()
        self.counts.unfinished(await self.store.oldest_unfinished_age())


def _refused_take(status: int, body: Any, lines: list[Line]) -> ShopError:
    """What the product service's refusal of a line's take means for the checkout."""
    refusal = body if isinstance(body, dict) else {}
    line = next((line for line in lines if line.product_id == refusal.get("product_id")), None)
    name = line.product_name if line is not None else "a product"
    if status == 409 and refusal.get("code") == "insufficient_stock" and line is not None:
        return _not_enough_stock(name, refusal.get("available", 0), line.quantity)
    if status == 409 and refusal.get("code") == "stock_change_undone":
        # This attempt was undone meanwhile (its lease ran out and recovery took it over):
        # the take changed nothing, so neither may the order.
        return _undone_meanwhile()
    if status == 404:
        return NotFound(f"The product {name!r} is no longer sold.", code="product_not_found")
    return UpstreamUnavailable(f"The product service refused the stock change ({status}).")


def _cart_changed() -> Conflict:
    return Conflict(
        "Your cart kept changing while it was being checked out; nothing was bought. Look "
        "at it and check out again.",
        code="cart_changed",
    )


def _cart_in_progress() -> Conflict:
    return Conflict(
        "Your cart is already being checked out, in another tab or window perhaps. Look at "
        "your orders before you try again: nothing more was bought.",
        code="cart_checkout_in_progress",
        headers={"Retry-After": IN_PROGRESS_RETRY_AFTER},
    )


def _undone_meanwhile() -> UpstreamUnavailable:
    return UpstreamUnavailable(
        "The checkout took too long and was undone; no order was placed. Try again."
    )


def _not_enough_stock(name: str, available: int, wanted: int) -> Conflict:
    return Conflict(
        f"Not enough stock of {name!r}: {available} left, {wanted} asked for.",
        code="insufficient_stock",
        extra={"available": available},
    )


def _decimal(value: Any) -> Decimal:
    # A JSON number read back as a float: its shortest repr is the two-place decimal written.
    return Decimal(str(value))
