"""Checkout as a saga across services, and the recovery that finishes what a crash left.

1. The intent (order, lines, prices, Idempotency-Key) is written to PostgreSQL first, in
   state ``reserving``, with a lease. A cart checkout also claims the customer's cart there
   (one cart checkout per customer at a time, a unique index): a second checkout of the
   same cart that runs meanwhile (another tab, a script) fails on the claim and answers 409
   ``cart_checkout_in_progress``; it never takes stock, so a cart is bought once.
2. Stock is taken from the product service one line at a time, each change keyed by the
   order (reference ``order-<id>``), so a retry never takes twice.
3. A checkout with payment asks the provider to authorise the total (its own idempotency
   key per order, ``order-<id>-auth``, written down before it is asked): a decline or a
   provider error undoes the stock like any failure, and an authorisation whose outcome is
   unknown (a lost answer) is looked up and voided.
4. All taken and authorised: the order becomes ``placed`` (only while its lease holds), and
   a cart checkout clears the cart at the version it read, which ends its claim.
   Anything failed: the claim is given up, every line's change is undone (an undo of a
   change that never arrived marks it so it never will: the product service refuses it
   with 409 ``stock_change_undone``, which fails the attempt), and the order is deleted:
   no order, stock as before.

Recovery, at start-up and every few seconds on every replica, takes over checkouts whose
process died (its owner lock is free: see store.OwnerLock), whose lease ran out (it hung) or
whose undo could not be finished (a service it needs was down: let go at once, so that a
repeat of the checkout need not wait out the lease either) and undoes them (voiding any
authorisation they got), puts back the stock of cancelled orders that is not back yet,
clears carts that a placed order could not clear, and captures or voids what a status
change left for the provider when it was unavailable.
Every step is idempotent, so replicas and restarts may repeat any of them safely.

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

from shopkit.address import ADDRESS_FIELDS
from shopkit.auth import ServiceCredential
from shopkit.client import ServiceClient
from shopkit.domain import MAX_IDS_PER_CALL, country_names
from shopkit.errors import BadRequest, Conflict, NotFound, ShopError, UpstreamUnavailable
from shopkit.metrics import Metrics
from shopkit.money import money_to_cents
from shopkit.postgres import POSTGRES_UNAVAILABLE
from svc_order.delivery import DeliveryRules
from svc_order.payments import (
    Authorisation,
    PaymentDeclined,
    PaymentMethod,
    PaymentProvider,
    PaymentStateError,
    ProviderUnavailable,
)
from svc_order.store import (
    CartClaimed,
    Customer,
    Details,
    IdempotencyKeyTaken,
    Line,
    OrderNotFound,
    OrderStore,
    OwnerLock,
    subtotal_of,
)

log = logging.getLogger("shop.order.checkout")

# How long a repeat waits for a live first attempt with its key (a checkout takes well under
# a second) before answering 409 checkout_in_progress; what its Retry-After says.
IN_PROGRESS_WAIT = 3.0
IN_PROGRESS_RETRY_AFTER = "1"


# How long a checkout whose placing failed on PostgreSQL waits for it to answer again, to
# tell whether the order was placed after all (a restart takes a second or two).
PLACED_CHECK_SECONDS = 10.0


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


def request_hash(wanted: dict[str, int] | None, request: CheckoutRequest | None = None) -> str:
    """What an Idempotency-Key promises: these items, or (None) the caller's cart; and where
    and how they go. Not the card: a hash of a card number would be one kept."""
    promise: dict[str, Any] = {"cart": wanted is None, "items": sorted((wanted or {}).items())}
    if request is not None and request.delivery is not None:
        promise["address"] = request.address_id or request.address
        promise["delivery"] = request.delivery
    return hashlib.sha256(orjson.dumps(promise, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class CheckoutRequest:
    """What a checkout asks for beyond its items: the caller's token (to read its profile),
    and, together or not at all, an address (saved or inline), a delivery option and a way
    to pay."""

    token: str
    address_id: int | None = None
    address: dict[str, str] | None = None
    delivery: str | None = None
    payment: PaymentMethod | None = None


def auth_key(order_id: int) -> str:
    return f"order-{order_id}-auth"


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
                "payment_declined",
                "payment_unavailable",
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
        *,
        users: ServiceClient,
        provider: PaymentProvider,
        delivery: DeliveryRules,
    ) -> None:
        self.store = store
        self.products = products
        self.carts = carts
        self.users = users
        self.provider = provider
        self.delivery = delivery
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
        request: CheckoutRequest | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        """Check out; return the order id and, when this call placed it, the order as the
        API shows it (None: a replay of an order placed before; read it)."""
        try:
            order_id, order = await self._place(user_id, explicit, idempotency_key, request)
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
        request: CheckoutRequest | None = None,
    ) -> tuple[int, dict[str, Any] | None]:
        # "Check out my cart" is one request whatever the cart holds, so a repeat is known
        # before the cart is read (a cart the first request already emptied included).
        wanted = _quantities_by_product(explicit) if explicit else None
        fingerprint = request_hash(wanted, request)
        if idempotency_key is not None:
            earlier = await self._earlier_order(user_id, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier, None
        customer = None if request is None else await self._customer(request.token)
        address = None
        if request is not None and request.delivery is not None:
            address = await self._address(user_id, request)
        tries = 0
        while True:
            cart = None if wanted is not None else await self._cart_lines(user_id)
            lines = await self._priced_lines(cart.wanted if cart is not None else wanted or {})
            details = None
            if request is not None and request.delivery is not None and address is not None:
                price = self.delivery.price(request.delivery, subtotal_of(lines))
                details = Details(request.delivery, price, address)
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
                    details=details,
                    customer=customer,
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
        auth = None
        if request is not None and request.payment is not None:
            total = subtotal_of(lines) + (details.delivery_cents if details is not None else 0)
            auth = await self._authorise(order_id, total, request.payment)
        try:
            order = await self.store.mark_placed(order_id, lines)
        except POSTGRES_UNAVAILABLE:
            order = await self._placed_after_all(order_id)
            if order is None:  # not placed: this attempt's to undo, PostgreSQL being back
                await self.undo(order_id)
                raise UpstreamUnavailable(
                    "The order could not be recorded (its database was unavailable); no "
                    "order was placed and nothing is held. Try again."
                ) from None
        else:
            if order is None:
                # Too slow: recovery took the order over and is undoing it. The hold this
                # attempt got is released here too (recovery may have looked too early).
                if auth is not None:
                    await self._void_quietly(order_id, auth)
                raise _undone_meanwhile()
        if cart is not None:
            await self._clear_placed_cart(order_id, user_id, cart.version)
        return order_id, order

    async def _clear_placed_cart(self, order_id: int, user_id: int, version: int) -> None:
        """The cart of an order just placed, emptied; nothing that fails here may turn the
        placed order into an error answer (a 503 says nothing was bought). When PostgreSQL
        fails to record the clear (a chaos run's restart did, after the cart was emptied),
        the claim stays and recovery settles it: it finds the cart changed and lets it be."""
        try:
            await self._clear_cart(order_id, user_id, version)
        except POSTGRES_UNAVAILABLE as exc:
            log.warning("order %s: placed; its cart's clear is left to recovery: %s", order_id, exc)

    async def _placed_after_all(self, order_id: int) -> dict[str, Any] | None:
        """Placing failed on PostgreSQL, perhaps once its commit was made (a restart that cut
        the answer off): the order if it is placed after all, read as soon as PostgreSQL
        answers again, so that a placed order is never answered 503; None if it is not.
        With PostgreSQL still away after PLACED_CHECK_SECONDS nobody can tell yet: 504
        checkout_outcome_unknown, which the gateway asks again with the same key."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + PLACED_CHECK_SECONDS
        pause = 0.05
        while True:
            try:
                return await self.store.get(order_id)
            except OrderNotFound:
                return None
            except POSTGRES_UNAVAILABLE:
                if loop.time() >= give_up:
                    raise OutcomeUnknown(
                        "The order's database stopped answering while it was being placed, "
                        "so whether it was is not known yet. Send the same checkout again "
                        "with the same Idempotency-Key to find out: it is never bought twice."
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.5)

    async def _customer(self, token: str) -> Customer:
        """Who is buying, as their profile names them now (kept on the order)."""
        reply = await self.users.get("/api/users/profile", token=token)
        profile = reply.data if reply.status == 200 else None
        if not isinstance(profile, dict):
            log.warning("the user service answered %s for the buyer's profile", reply.status)
            raise UpstreamUnavailable("The user service gave no profile; try again shortly.")
        return Customer(profile["email"], profile["first_name"], profile["last_name"])

    async def _address(self, user_id: int, request: CheckoutRequest) -> dict[str, str]:
        """The delivery address as the order keeps it: a saved one read from the user
        service, or the one given; refused if the shop does not deliver there."""
        if request.address_id is not None:
            reply = await self.users.get(
                f"/internal/users/{user_id}/addresses/{request.address_id}",
                token=self.credential.token,
            )
            if reply.status == 404:
                raise NotFound(
                    f"You have no saved address {request.address_id}.", code="address_not_found"
                )
            if reply.status != 200 or not isinstance(reply.data, dict):
                raise UpstreamUnavailable("The user service gave no address; try again shortly.")
            given, field = reply.data, "address_id"
        else:
            assert request.address is not None
            given, field = request.address, "address.country"
        address = {name: str(given.get(name, "")) for name in ADDRESS_FIELDS}
        country = address["country"]
        address["country_name"] = country_names().get(country, country)
        if not self.delivery.delivers_to(country):
            message = f"we do not deliver to {address['country_name']} ({country})"
            raise BadRequest(
                f"Sorry, {message}; choose an address in one of the countries we deliver "
                "to (GET /api/orders/delivery-options lists them).",
                code="country_not_delivered",
                details=[{"field": field, "message": message}],
            )
        return address

    # -- payment -------------------------------------------------------------------------------

    async def _authorise(self, order_id: int, amount: int, method: PaymentMethod) -> Authorisation:
        """A hold on the card for the order's total; a decline or a provider failure undoes
        the checkout (the stock it took, a hold whose answer was lost) and is the answer."""
        key = auth_key(order_id)
        await self.store.payment_started(order_id, self.provider.name, key, amount)
        try:
            auth = await self.provider.authorise(order_id, amount, key, method)
        except PaymentDeclined as exc:
            await self.store.payment_settled(order_id, "failed")
            await self.undo(order_id)
            raise _declined(exc.reason) from None
        except ProviderUnavailable as exc:
            log.warning("order %s: the payment provider failed: %s", order_id, exc)
            await self.undo(order_id)
            raise _payment_unavailable() from None
        await self.store.payment_authorised(order_id, auth.reference, auth.brand, auth.last4)
        return auth

    async def _void_quietly(self, order_id: int, auth: Authorisation) -> None:
        try:
            await self.provider.void(auth, f"order-{order_id}-void")
        except (ProviderUnavailable, PaymentStateError) as exc:
            log.warning("order %s: could not void %s: %s", order_id, auth.reference, exc)

    async def _release_payment(self, order_id: int) -> bool:
        """Void whatever hold an attempt being undone got (the outcome of an authorisation
        whose answer never came is asked of the provider); False when the provider is
        unavailable: recovery tries again."""
        payment = await self.store.payment(order_id)
        if payment is None or payment["status"] not in ("authorising", "authorised"):
            return True
        try:
            if payment["status"] == "authorising":
                auth = await self.provider.find(payment["idempotency_key"])
                if auth is None:  # it never authorised
                    await self.store.payment_settled(order_id, "failed")
                    return True
            else:
                auth = _stored_authorisation(payment)
            await self.provider.void(auth, f"order-{order_id}-void")
        except ProviderUnavailable as exc:
            log.warning("order %s: void postponed, payment provider unavailable: %s", order_id, exc)
            return False
        log.info("order %s: authorisation %s voided", order_id, auth.reference)
        await self.store.payment_settled(order_id, "voided")
        return True

    async def settle_payment(self, order_id: int) -> bool:
        """Do what a status change left for the provider (capture at shipping, void or
        refund at cancelling), once; False when the provider is unavailable (recovery
        tries again)."""
        payment = await self.store.payment(order_id)
        if payment is None or payment["pending_action"] is None:
            return True
        action = payment["pending_action"]
        auth = _stored_authorisation(payment)
        key = f"order-{order_id}-{action}"
        try:
            if action == "capture":
                await self.provider.capture(auth, key)
                outcome = "captured"
            elif action == "void":
                await self.provider.void(auth, key)
                outcome = "voided"
            else:
                await self.provider.refund(auth, auth.amount_cents, key)
                outcome = "refunded"
        except ProviderUnavailable as exc:
            log.warning("order %s: %s postponed, provider unavailable: %s", order_id, action, exc)
            return False
        except PaymentStateError as exc:
            # Nothing a retry can change: said loudly, and not tried again.
            log.error("order %s: the provider refused the %s: %s", order_id, action, exc)
            await self.store.payment_settled(order_id, payment["status"])
            return True
        await self.store.payment_settled(order_id, outcome)
        return True

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
        product service (or the payment provider) could not be reached: the attempt is let
        go, for the next to come to finish (a repeat of the checkout at once, or recovery on
        any replica), rather than waited for until its lease ran out."""
        await self.store.start_compensating(order_id)
        if not await self._give_back(order_id):
            await self.store.let_go(order_id)
            return False
        await self.store.forget(order_id)
        self.counts.undos.inc()
        return True

    async def _give_back(self, order_id: int) -> bool:
        """The payment released and every line's stock put back; False if any could not be."""
        if not await self._release_payment(order_id):
            return False
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
        for order_id in await self.store.payments_pending():
            await self.settle_payment(order_id)
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


class OutcomeUnknown(ShopError):
    status = 504
    code = "checkout_outcome_unknown"


class PaymentRefused(ShopError):
    status = 402
    code = "payment_declined"


_DECLINES = {
    "card_declined": "Your card was declined",
    "insufficient_funds": "Your card was declined: insufficient funds",
    "expired_card": "Your card has expired",
    "incorrect_number": "Your card number is incorrect",
}


def _declined(reason: str) -> PaymentRefused:
    sentence = _DECLINES.get(reason, "Your card was declined")
    return PaymentRefused(
        f"{sentence}. No order was placed and nothing was charged; try another card.",
        extra={"decline_code": reason},
    )


def _payment_unavailable() -> UpstreamUnavailable:
    return UpstreamUnavailable(
        "The card payment could not be completed: the payment provider is not answering. "
        "No order was placed and any hold on your card is released; try again shortly.",
        code="payment_unavailable",
    )


def _stored_authorisation(payment: Any) -> Authorisation:
    return Authorisation(
        payment["reference"], payment["amount_cents"], payment["brand"], payment["last4"]
    )


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
