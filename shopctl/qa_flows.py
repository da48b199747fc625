"""Scripted shoppers for `shopctl checkout`.

Each shopper signs up (or, on a rerun with the same --seed, logs in), browses and searches
the catalogue, fills a cart and checks out, then reads its order back; every answer is
checked against the contract (status, envelope, exact totals from the prices it saw, an
emptied cart). Every checkout sends an address, a delivery option and a test card, and
every order must come back with its total exact to the cent (goods + delivery priced by the
rules GET /api/orders/delivery-options gives, free from the threshold for standard), the
address, the customer and a payment authorised for the total on that card. Scenarios vary
the journey: a cancel that must restock and void the payment, a retried checkout that must
not buy twice, a product with too little stock for everyone who wants it, each test card
that refuses (the refusal the card names, no order, the cart as it was; then the shopper
pays with a good card), a saved address (kept once when sent twice), express delivery, and
a guest who fills a cart on the web pages and logs in (or registers) there, the guest cart
merged into the account's.

At the end every order of the run is read back: authorised once (one provider reference
per order), voided when cancelled; and, for a shop `shopctl up` runs from the data dir (its
SMTP sink keeps what was sent), each order has exactly one e-mail per event (placed,
cancelled).

The run keeps a ledger of the units its orders bought; at the end, for every product it
touched, units sold + stock left must equal the stock at the start. That holds only if
nobody else buys those products during the run: point it at a shop QA owns.

Under --chaos (see shopctl/chaos.py) an answer that says "not now" (no answer, 502, 503,
504, 429, 409 checkout_in_progress / cart_checkout_in_progress / idempotency_retry) during a
fault is expected: it is counted as refused, and the shopper waits for the shop to recover
and tries again; a call that may have done its work (adding to the cart, cancelling) is
checked before it is repeated, a checkout is repeated with the same Idempotency-Key, and a
checkout refused with 503 must have left the cart as it was. The same answers outside any
fault (but "in progress", which asks for a retry) are failures, as is a 500 at any time.
At the end the run waits for the shop to settle (recovery undoing what a crash left), then
checks, beyond the usual: each shopper's orders in the shop are exactly the ones it was
told about, and every Idempotency-Key replayed answers the order it placed.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp

from shopctl.chaos import FaultLog
from shopctl.errors import ShopctlError, command
from shopctl.mailbox import ENVELOPE_TO, mail_files
from shopctl.probes import backends_not_ready
from shopctl.qa_browser import GUEST_COOKIE, Browser, WebPage
from shopctl.qa_report import ChaosTally, Recorder, RunSummary, StockCheck, Verification
from shopctl.shop_client import Reply, ShopClient, list_all_products

CENTS = Decimal("0.01")
POOL_SIZE = 24
MIN_POOL_STOCK = 10
MAX_LINES = 3
MAX_QUANTITY = 2
SCARCE_CATEGORY = "QA"
SOLD_OUT = "insufficient_stock"
# Under --chaos: answers that mean "not now", to be tried again once the shop recovered.
UNAVAILABLE = {None, 429, 502, 503, 504}
RETRY_LATER = {"checkout_in_progress", "cart_checkout_in_progress", "idempotency_retry"}
# How long a chaos shopper keeps trying one call, and how long the end waits to settle.
RECOVERY_DEADLINE = 90.0
CHAOS_MIN_POOL_STOCK = 100
IDEMPOTENCY_KEY = "Idempotency-Key"
# How long the end of a run waits for the e-mails owed (the order service sends every
# second or so; under --chaos a retry after the SMTP sink came back takes longer), unless
# the order service's outbox has had nothing left to send for OUTBOX_QUIET seconds (its
# sender measures it every pass, EMAIL_INTERVAL_SECONDS, 1 s by default): what is missing
# then was given up, and will not come.
MAIL_DEADLINE = 30.0
OUTBOX_QUIET = 3.0
# The order the shop's SMTP sink names an e-mail's event by: <order-12.placed.31@shop.local>.
MESSAGE_ID = re.compile(r"<order-(\d+)\.([a-z_]+)\.\d+@")


def card_of(number: str, exp_year: int = 2099) -> dict[str, Any]:
    return {"number": number, "exp_month": 12, "exp_year": exp_year, "cvc": "123"}


# The test provider's cards (svc_order/payments.py TEST_CARDS): two that are authorised,
# and each way a card is refused, with the answer the shop must give (status, code) and
# the name the report counts it under.
VISA = card_of("4242424242424242")
MASTERCARD = card_of("5555555555554444")
BRANDS = {"4": "visa", "5": "mastercard"}


@dataclass(frozen=True)
class RefusedCard:
    outcome: str
    card: dict[str, Any]
    status: int
    code: str


REFUSED_CARDS = [
    RefusedCard("card_declined", card_of("4000000000000002"), 402, "card_declined"),
    RefusedCard("insufficient_funds", card_of("4000000000009995"), 402, "insufficient_funds"),
    RefusedCard("expired_card", card_of("4242424242424242", exp_year=2020), 402, "expired_card"),
    RefusedCard("incorrect_number", card_of("4242424242424241"), 402, "incorrect_number"),
    # The provider's own error: nothing authorised.
    RefusedCard("provider_error", card_of("4000000000000119"), 503, "payment_unavailable"),
    # Authorised, but the answer is lost: the saga finds the hold by its key and voids it.
    RefusedCard("provider_timeout", card_of("4000000000000309"), 503, "payment_unavailable"),
]
QA_ADDRESS: dict[str, str] = {
    "recipient": "QA Shopper",
    "line1": "1 Test Street",
    "city": "London",
    "postal_code": "SW1A 1AA",
    "country": "GB",
}


def checkout_body(
    *,
    address_id: int | None = None,
    delivery: str = "standard",
    card: dict[str, Any] = VISA,
) -> dict[str, Any]:
    """The order service's checkout body besides the cart: where (a saved address, or the
    QA address inline), how it is delivered, and the card."""
    where = {"address_id": address_id} if address_id is not None else {"address": QA_ADDRESS}
    return {**where, "delivery": delivery, "payment": {"card": card}}


# What every scripted checkout sends unless its scenario says otherwise: the QA address,
# standard delivery and the test provider's card that succeeds.
CHECKOUT_DETAILS: dict[str, Any] = checkout_body()


class Scenario(StrEnum):
    HAPPY = "happy"
    SHORT_STOCK = "short-stock"
    CANCEL = "cancel"
    RETRY = "idempotent-retry"
    DECLINED = "declined-card"
    SAVED_ADDRESS = "saved-address"
    EXPRESS = "express"
    GUEST_MERGE = "guest-merge"


@dataclass(frozen=True)
class RunConfig:
    users: int
    concurrency: int
    duration: float | None
    seed: int
    scenarios: list[Scenario]
    max_failures: int | None = None
    chaos: bool = False

    @property
    def password(self) -> str:
        """The shoppers' password: the same for a given seed, so a rerun can log in."""
        return f"qa-shopper-{self.seed}"

    def scenario_of(self, number: int) -> Scenario:
        return self.scenarios[(number - 1) % len(self.scenarios)]


class Uncertain(Exception):
    """Under --chaos: a call that got no certain answer; the shop is ready again now, and
    the caller finds out whether it took effect before repeating it."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.describe())
        self.reply = reply


def not_now(reply: Reply) -> bool:
    """An answer that says "try again later", not "no"."""
    return reply.status in UNAVAILABLE or (reply.status == 409 and reply.code in RETRY_LATER)


@dataclass(frozen=True)
class DeliveryRule:
    """One delivery option as GET /api/orders/delivery-options prices it, in cents."""

    price_cents: int
    free_from_cents: int | None

    def price(self, subtotal_cents: int) -> int:
        free = self.free_from_cents is not None and subtotal_cents >= self.free_from_cents
        return 0 if free else self.price_cents


@dataclass
class OrderFacts:
    """An order the run placed, as the end of the run checks it again."""

    shopper: Shopper
    total_cents: int
    last4: str
    cancelled: bool = False


class PoolBoughtOut(Exception):
    """This session's plan cannot be bought: other sessions of the run have claimed the
    pool's stock (a run that shops again and again, --duration or --chaos)."""


class StepFailed(Exception):
    def __init__(self, step: str, message: str, request_id: str = "") -> None:
        super().__init__(message)
        self.step = step
        self.message = message
        self.request_id = request_id


@dataclass
class Ledger:
    """What this run's orders did: units sold by product id, orders by outcome."""

    sold: Counter[str] = field(default_factory=Counter)
    placed: int = 0
    cancelled: int = 0
    sold_out: int = 0
    orders: dict[str, OrderFacts] = field(default_factory=dict)


@dataclass(frozen=True)
class Line:
    product: dict[str, Any]
    quantity: int

    @property
    def product_id(self) -> str:
        return self.product["id"]

    @property
    def price(self) -> Decimal:
        return Decimal(str(self.product["price"]))

    @property
    def subtotal(self) -> Decimal:
        return (self.price * self.quantity).quantize(CENTS)


def money(value: Any) -> Decimal:
    """A JSON number from the shop as an exact Decimal (the client parses floats that way)."""
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise InvalidOperation(f"{value!r} is not a number")
    return Decimal(value)


def cents(value: Any) -> int:
    """An amount from the shop in integer cents; more than two places is malformed."""
    scaled = money(value) * 100
    if scaled != scaled.to_integral_value():
        raise InvalidOperation(f"{value!r} is not a whole number of cents")
    return int(scaled)


class QaRun:
    """One run: the client, what it measures, the products it plays with, its ledger."""

    def __init__(self, client: ShopClient, config: RunConfig, admin_token: str | None) -> None:
        self.client = client
        self.config = config
        self.admin_token = admin_token
        self.recorder = Recorder()
        self.ledger = Ledger()
        self.pool: list[dict[str, Any]] = []
        self.catalogue_size = 0
        self.scarce: dict[str, Any] | None = None
        self.stock_at_start: dict[str, int] = {}
        # Units of each pool product that sessions planned to buy and did not give back (a
        # cancel does): never more than the stock at start, so that no shopper of the run
        # meets a product the run itself sold out. Sessions that found nothing left to
        # claim only browsed.
        self.claimed: Counter[str] = Counter()
        self.browse_only = 0
        self.sessions = 0
        self.shoppers: list[Shopper] = []
        # Set to start no new session (Ctrl-C, or the chaos schedule done).
        self.stop = asyncio.Event()
        # Sessions cut short by a second Ctrl-C (their orders may be unknown to the ledger).
        self.cut_short = 0
        self.workers: list[asyncio.Task[None]] = []
        # Set to stop waiting for the shop to settle (a second Ctrl-C).
        self.hurry = asyncio.Event()
        self.faults: FaultLog | None = None
        self.chaos = ChaosTally()
        # The order service's /metrics (a shop on this machine), to see unfinished checkouts.
        self.order_metrics_url: str | None = None
        # The delivery options' prices, read by the first checkout (it takes a token).
        self.delivery: dict[str, DeliveryRule] = {}
        self.delivery_read = asyncio.Lock()
        self.verification = Verification()
        # Where the shop's SMTP sink keeps what it received (a shop `up` runs from the data
        # dir); None: the e-mails cannot be seen, and `mail_skipped` says why.
        self.mail_dir: Path | None = None
        self.mail_skipped = "the shop's e-mails cannot be read from here"

    def cut_sessions(self) -> None:
        """End the sessions under way at once (a second Ctrl-C)."""
        for worker in self.workers:
            worker.cancel()

    def products_touched(self) -> list[dict[str, Any]]:
        return [*self.pool, *([self.scarce] if self.scarce else [])]


class Shopper:
    """One virtual user: its account, its token, and the scenario it plays."""

    def __init__(self, run: QaRun, number: int) -> None:
        self.run = run
        self.number = number
        self.scenario = run.config.scenario_of(number)
        self.label = f"shopper {number}"
        self.email = f"qa-{run.config.seed}-{number}@example.com"
        self.token: str | None = None
        self.user_id: int | None = None
        self.iteration = 0
        self.step = ""
        # Orders it placed in this run (id -> Idempotency-Key and the body sent with it), and
        # the ones it had before it (--chaos).
        self.placed: dict[str, tuple[str, dict[str, Any]]] = {}
        self.orders_before: set[str] | None = None
        self.checkout_began = 0.0
        # After a failed session the cart may hold anything: the next one empties it first.
        self.cart_unknown = False

    # -- calls and checks ------------------------------------------------------------------

    async def call(
        self,
        step: str,
        method: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200,),
        repeatable: bool = True,
        accept: Collection[str] = (),
        **kwargs,
    ) -> Reply:
        """Make a call as this shopper, time it under `step`, and check its status and its
        envelope; anything unexpected ends the session as a failure of `step`. Under
        --chaos a "not now" answer is waited out and the call made again, or, when it is
        not `repeatable`, raises Uncertain once the shop is ready; one whose code is in
        `accept` is the answer expected (a card whose provider fails)."""
        self.step = step
        while True:
            faults = self.run.faults
            began = faults.now() if faults else 0.0
            reply = await self.run.client.call(method, path, token=self.token, **kwargs)
            self.run.recorder.timed(step, reply.seconds)
            if faults is None or not not_now(reply) or reply.code in accept:
                break
            await self.wait_out(faults, began, reply)
            if not repeatable:
                raise Uncertain(reply)
        if reply.status not in expect:
            wanted = " or ".join(map(str, expect))
            raise StepFailed(step, f"expected {wanted}: {reply.describe()}", reply.request_id)
        body = reply.body
        envelope_ok = isinstance(body, dict) and body.get("success") is reply.ok
        if reply.ok:
            envelope_ok = envelope_ok and "data" in body
        else:
            envelope_ok = envelope_ok and isinstance(body.get("error"), str) and "code" in body
        self.check(envelope_ok, reply, f"not the JSON envelope: {str(body)[:120]}")
        return reply

    def cleared_late(self) -> bool:
        """Under --chaos, whether a fault overlapped the checkout: an order placed while the
        cart service (or Redis) was away is cleared from the cart by the order service's
        recovery a little later."""
        faults = self.run.faults
        return faults is not None and faults.during_fault(self.checkout_began, faults.now())

    async def wait_until_cleared(self) -> dict[str, Any]:
        """The cart, read again until recovery emptied it (or RECOVERY_DEADLINE passed)."""
        deadline = time.monotonic() + RECOVERY_DEADLINE
        while True:
            await asyncio.sleep(0.5)
            cart = await self.read_cart("cart emptied")
            if not cart["items"]:
                self.run.chaos.carts_cleared_late += 1
                return cart
            if time.monotonic() > deadline:
                return cart

    async def wait_out(self, faults: FaultLog, began: float, reply: Reply) -> None:
        """A "not now" answer under --chaos: expected during a fault (counted as refused),
        a failure outside one unless it asks for a retry; then wait for the shop to be
        ready (bounded) and a moment more (backoff)."""
        step = self.step
        if reply.status != 409 and not faults.during_fault(began, faults.now()):
            raise StepFailed(step, f"{reply.describe()} with no fault under way", reply.request_id)
        self.run.recorder.refused(step)
        if not await faults.wait_healthy(RECOVERY_DEADLINE):
            raise StepFailed(
                step, f"{reply.describe()}; the shop did not recover", reply.request_id
            )
        await asyncio.sleep(0.2 if reply.status == 409 else 0.1)

    def check(self, condition: bool, reply: Reply, message: str) -> None:
        if not condition:
            raise StepFailed(self.step, f"{reply.method} {reply.path}: {message}", reply.request_id)

    def rng(self, purpose: str) -> random.Random:
        """Randomness that depends only on the seed, this shopper and this iteration."""
        return random.Random(f"{self.run.config.seed}:{self.number}:{self.iteration}:{purpose}")

    def plan(self) -> list[Line]:
        """The products and quantities this iteration buys (for the pool scenarios)."""
        rng = self.rng("cart")
        count = rng.randint(1, min(MAX_LINES, len(self.run.pool)))
        products = rng.sample(self.run.pool, count)
        return [Line(product, rng.randint(1, MAX_QUANTITY)) for product in products]

    def claim(self) -> list[Line]:
        """This iteration's plan, less any line whose units the run has already claimed
        (a run that shops again and again buys its pool out in time; a fixed one was checked
        to fit); its units claimed. PoolBoughtOut when no line is left."""
        claimed, at_start = self.run.claimed, self.run.stock_at_start
        lines = [
            line
            for line in self.plan()
            if claimed[line.product_id] + line.quantity <= at_start[line.product_id]
        ]
        if not lines:
            raise PoolBoughtOut
        for line in lines:
            claimed[line.product_id] += line.quantity
        return lines

    # -- one session -------------------------------------------------------------------------

    async def session(self) -> None:
        """Sign in if needed, then play the scenario once; a failure is recorded, not raised."""
        try:
            if self.token is None and self.scenario is not Scenario.GUEST_MERGE:
                await self.sign_in()
            elif self.cart_unknown and self.token is not None:
                await self.empty_cart()
            self.cart_unknown = False
            await self.play()
        except StepFailed as failure:
            self.cart_unknown = True
            self.run.recorder.failed(failure.step, self.label, failure.message, failure.request_id)
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError) as error:
            self.cart_unknown = True
            self.run.recorder.failed(self.step, self.label, f"malformed answer: {error!r}")
        finally:
            self.iteration += 1
            self.run.sessions += 1

    async def play(self) -> None:
        """The scenario; with the pool bought out, a look round the catalogue instead."""
        try:
            await SCENARIOS[self.scenario](self)
        except PoolBoughtOut:
            self.run.browse_only += 1
            await self.browse()

    async def sign_in(self) -> None:
        account = {
            "email": self.email,
            "password": self.run.config.password,
            "first_name": "QA",
            "last_name": f"Shopper {self.number}",
        }
        reply = await self.call(
            "register", "POST", "/api/users/register", json_body=account, expect=(201, 409)
        )
        if reply.status == 409:
            await self.log_in()
        else:
            self.signed_in(reply)
        # A rerun with the same --seed logs in again: start from an empty cart.
        await self.empty_cart()
        if self.run.config.chaos:
            orders = await self.own_orders("list orders")
            self.orders_before = {str(order["id"]) for order in orders}

    async def log_in(self) -> None:
        credentials = {"email": self.email, "password": self.run.config.password}
        self.signed_in(await self.call("login", "POST", "/api/users/login", json_body=credentials))

    def signed_in(self, reply: Reply) -> None:
        user = reply.data["user"]
        self.check(user["email"] == self.email, reply, f"signed in as {user['email']}")
        self.check(user["role"] == "customer", reply, f"role is {user['role']!r}")
        self.check(not any("password" in key for key in user), reply, "it shows a password")
        self.token = reply.data["token"]
        self.user_id = int(user["id"])

    async def empty_cart(self) -> None:
        cart = await self.read_cart("read cart")
        if cart["items"]:
            await self.call("clear cart", "DELETE", f"/api/cart/{self.user_id}")

    async def own_orders(self, step: str) -> list[dict[str, Any]]:
        """Every order of this shopper, page by page."""
        found: list[dict[str, Any]] = []
        page = 1
        while True:
            params = {"limit": "100", "page": str(page)}
            reply = await self.call(step, "GET", "/api/orders", params=params)
            found += reply.data
            if not reply.data or len(found) >= reply.body["total"]:
                return found
            page += 1

    async def browse(self) -> None:
        rng = self.rng("browse")
        pages = max(1, math.ceil(self.run.catalogue_size / 20))
        page = rng.randint(1, min(pages, 5))
        params = {"page": str(page), "limit": "20"}
        reply = await self.call("browse", "GET", "/api/products", params=params)
        body = reply.body
        self.check(body["page"] == page and body["limit"] == 20, reply, "wrong page or limit")
        self.check(body["count"] == len(reply.data), reply, "count is not the page's length")
        reply = await self.call("categories", "GET", "/api/products/categories")
        self.check(all(c["count"] >= 1 for c in reply.data), reply, "an empty category")

    async def search(self, product: dict[str, Any]) -> None:
        params = {"q": product["name"], "limit": "100"}
        reply = await self.call("search", "GET", "/api/products", params=params)
        found = {item["id"] for item in reply.data}
        self.check(product["id"] in found, reply, f"searching {product['name']!r} misses it")

    async def view(self, product_id: str) -> dict[str, Any]:
        reply = await self.call("view product", "GET", f"/api/products/{product_id}")
        product = reply.data
        self.check(product["id"] == product_id, reply, f"answered product {product['id']}")
        self.check(money(product["price"]) > 0, reply, f"price {product['price']}")
        return product

    async def read_cart(self, step: str) -> dict[str, Any]:
        reply = await self.call(step, "GET", f"/api/cart/{self.user_id}")
        cart = reply.data
        self.check(cart["user_id"] == self.user_id, reply, f"cart of user {cart['user_id']}")
        return cart

    async def fill_cart(self, lines: list[Line]) -> None:
        for line in lines:
            await self.add_to_cart(line)
        reply = await self.call("read cart", "GET", f"/api/cart/{self.user_id}")
        self.check_cart(reply, lines)

    async def add_to_cart(self, line: Line, expect: tuple[int, ...] = (200,)) -> Reply:
        """Add `line`; under --chaos, an add whose answer was lost is looked for in the cart
        before it is sent again, so it is never added twice."""
        body = {"product_id": line.product_id, "quantity": line.quantity}
        path = f"/api/cart/{self.user_id}/items"
        while True:
            try:
                return await self.call(
                    "add to cart", "POST", path, json_body=body, expect=expect, repeatable=False
                )
            except Uncertain as lost:
                cart = await self.call("read cart", "GET", f"/api/cart/{self.user_id}")
                items = {item["product_id"]: item for item in cart.data["items"]}
                item = items.get(line.product_id)
                if item is None:
                    continue  # it did not arrive: add it again
                quantity = item["quantity"]
                self.check(quantity == line.quantity, cart, f"quantity {quantity} after a retry")
                return lost.reply

    def check_cart(self, reply: Reply, lines: list[Line]) -> None:
        """The cart holds exactly `lines`, at the prices seen, with exact sums."""
        cart = reply.data
        items = {item["product_id"]: item for item in cart["items"]}
        self.check(set(items) == {line.product_id for line in lines}, reply, "wrong products")
        for line in lines:
            item = items[line.product_id]
            self.check(item["quantity"] == line.quantity, reply, f"quantity {item['quantity']}")
            self.check(money(item["price"]) == line.price, reply, f"price {item['price']}")
            subtotal = money(item["subtotal"])
            self.check(subtotal == line.subtotal, reply, f"subtotal {subtotal} not {line.subtotal}")
        total = sum((line.subtotal for line in lines), Decimal("0.00"))
        self.check(money(cart["total"]) == total, reply, f"total {cart['total']} not {total}")
        units = sum(line.quantity for line in lines)
        self.check(cart["item_count"] == units, reply, f"item_count {cart['item_count']}")

    def idempotency_key(self) -> dict[str, str]:
        return {IDEMPOTENCY_KEY: f"{self.run.client.run_id}-{self.number}-{self.iteration}"}

    async def checkout(
        self,
        lines: list[Line],
        step: str = "checkout",
        body: dict[str, Any] = CHECKOUT_DETAILS,
        address: Mapping[str, str] = QA_ADDRESS,
    ) -> dict[str, Any]:
        reply = await self.send_checkout(step, lines, expect=(201,), body=body)
        order = self.check_order(reply, lines, body, address)
        self.record_sale(lines, order, body)
        return order

    async def send_checkout(
        self,
        step: str,
        lines: list[Line],
        expect: tuple[int, ...] = (201,),
        body: dict[str, Any] = CHECKOUT_DETAILS,
        accept: Collection[str] = (),
    ) -> Reply:
        """POST /api/orders for the cart, with this iteration's Idempotency-Key. Under
        --chaos, refused for a while: a 503 means no order, so the cart must be as it was;
        then the same key again, until the shop answers for certain (or with a code in
        `accept`)."""
        await self.read_delivery_rules()
        key = self.idempotency_key()
        self.checkout_began = self.run.faults.now() if self.run.faults else 0.0
        while True:
            try:
                return await self.call(
                    step,
                    "POST",
                    "/api/orders",
                    json_body=body,
                    headers=key,
                    expect=expect,
                    repeatable=False,
                    accept=accept,
                )
            except Uncertain as refused:
                self.run.chaos.retried_checkouts += 1
                if refused.reply.status == 503:
                    kept = await self.call("cart kept", "GET", f"/api/cart/{self.user_id}")
                    self.check_cart(kept, lines)
                    self.run.chaos.carts_kept += 1

    async def read_delivery_rules(self) -> None:
        """The delivery options and their prices as the shop says it prices them, once per
        run (the orders' delivery lines are checked against them)."""
        async with self.run.delivery_read:
            if self.run.delivery:
                return
            reply = await self.call("delivery options", "GET", "/api/orders/delivery-options")
            self.run.delivery = {
                option["option"]: DeliveryRule(
                    cents(option["price"]),
                    None if option["free_from"] is None else cents(option["free_from"]),
                )
                for option in reply.data["options"]
            }
            self.check("standard" in self.run.delivery, reply, "no standard delivery")

    def check_order(
        self,
        reply: Reply,
        lines: list[Line],
        body: dict[str, Any] = CHECKOUT_DETAILS,
        address: Mapping[str, str] = QA_ADDRESS,
    ) -> dict[str, Any]:
        """A placed order: pending, ours, exactly the lines at the prices seen, its totals
        exact to the cent with delivery as the rules price it, the address and customer as
        sent, and a payment authorised for the total on the card sent."""
        order = reply.data
        self.check(order["status"] == "pending", reply, f"status {order['status']!r}")
        self.check(order["user_id"] == self.user_id, reply, f"user_id {order['user_id']}")
        expected = {line.product_id: line for line in lines}
        got = {item["product_id"]: item for item in order["items"]}
        self.check(set(got) == set(expected), reply, "the order's products are not the cart's")
        for product_id, item in got.items():
            line = expected[product_id]
            self.check(item["quantity"] == line.quantity, reply, f"quantity {item['quantity']}")
            self.check(money(item["price"]) == line.price, reply, f"price {item['price']}")
            self.check(item["product_name"] == line.product["name"], reply, "wrong name")
        subtotal = sum(cents(line.subtotal) for line in lines)
        got_subtotal = cents(order["subtotal_amount"])
        self.check(
            got_subtotal == subtotal, reply, f"subtotal {got_subtotal} cents, not {subtotal}"
        )
        delivery = order["delivery"]
        option = body["delivery"]
        self.check(delivery is not None, reply, "no delivery line")
        self.check(delivery["option"] == option, reply, f"delivery {delivery['option']!r}")
        self.check(bool(delivery["label"]), reply, "a delivery line with no label")
        rule = self.run.delivery[option]
        priced = rule.price(subtotal)
        got_delivery = cents(delivery["price"])
        self.check(
            got_delivery == priced,
            reply,
            f"{option} delivery costs {got_delivery} cents on goods of {subtotal}, the rules "
            f"say {priced}",
        )
        total = cents(order["total_amount"])
        expected = subtotal + priced
        self.check(total == expected, reply, f"total {total} cents, expected {expected}")
        kept = order["address"]
        for name in ("recipient", "line1", "city", "postal_code", "country"):
            self.check(kept[name] == address[name], reply, f"address {name} {kept[name]!r}")
        self.check(bool(kept["country_name"]), reply, "the address has no country name")
        customer = order["customer"]
        self.check(customer["email"] == self.email, reply, f"customer {customer['email']!r}")
        self.check_payment(reply, order, "authorised", body["payment"]["card"]["number"])
        return order

    def check_payment(self, reply: Reply, order: dict[str, Any], status: str, number: str) -> None:
        """The order's one payment: in `status`, for its total, on the card `number`."""
        payment = order["payment"]
        self.check(payment is not None, reply, "no payment")
        self.check(payment["status"] == status, reply, f"payment {payment['status']}, not {status}")
        amount, total = cents(payment["amount"]), cents(order["total_amount"])
        self.check(amount == total, reply, f"payment of {amount} cents for a total of {total}")
        self.check(
            payment["last4"] == number[-4:], reply, f"paid with a card ending {payment['last4']}"
        )
        brand = BRANDS.get(number[0], "unknown")
        self.check(payment["brand"] == brand, reply, f"card brand {payment['brand']!r}")
        reference = payment["reference"]
        self.check(isinstance(reference, str) and reference != "", reply, "no provider reference")
        self.check(number not in str(reply.body), reply, "the answer shows the card number")

    def record_sale(
        self, lines: list[Line], order: dict[str, Any], body: dict[str, Any] = CHECKOUT_DETAILS
    ) -> None:
        order_id = str(order["id"])
        self.placed[order_id] = (self.idempotency_key()[IDEMPOTENCY_KEY], body)
        self.run.ledger.placed += 1
        for line in lines:
            self.run.ledger.sold[line.product_id] += line.quantity
        total = cents(order["total_amount"])
        number = body["payment"]["card"]["number"]
        self.run.ledger.orders[order_id] = OrderFacts(self, total, number[-4:])
        checked = self.run.verification
        checked.totals_checked += 1
        checked.delivery[body["delivery"]] += 1
        checked.free_delivery += cents(order["delivery"]["price"]) == 0

    async def after_checkout(self, order: dict[str, Any]) -> None:
        """The cart is empty and the order reads back as placed, also in the list."""
        cart = await self.read_cart("cart emptied")
        if cart["items"] and self.cleared_late():
            cart = await self.wait_until_cleared()
        if cart["items"]:
            raise StepFailed("cart emptied", f"{len(cart['items'])} lines still in the cart")
        reply = await self.call("read order", "GET", f"/api/orders/{order['id']}")
        self.check(reply.data["id"] == order["id"], reply, "another order")
        same_total = money(reply.data["total_amount"]) == money(order["total_amount"])
        self.check(same_total, reply, f"total_amount {reply.data['total_amount']}, not as placed")
        reply = await self.call("list orders", "GET", "/api/orders", params={"limit": "100"})
        self.check(order["id"] in {o["id"] for o in reply.data}, reply, "the order is missing")

    async def fill_planned_cart(self) -> list[Line]:
        """Browse, view this iteration's products and put them in the cart: its lines."""
        lines = self.claim()
        await self.browse()
        seen = [Line(await self.view(line.product_id), line.quantity) for line in lines]
        await self.fill_cart(seen)
        return seen

    async def shop(self) -> tuple[list[Line], dict[str, Any]]:
        """Browse, search, view, fill the cart, check out: the start of every pool scenario."""
        lines = self.claim()
        await self.browse()
        await self.search(lines[0].product)
        seen = [Line(await self.view(line.product_id), line.quantity) for line in lines]
        await self.fill_cart(seen)
        return seen, await self.checkout(seen)

    async def verify_orders(self) -> None:
        """Under --chaos, after the run: the shop holds exactly the orders this shopper was
        told about, and each of its Idempotency-Keys replayed answers the same order."""
        if self.token is None or self.orders_before is None:
            return
        self.iteration = -1  # no session runs: rng and keys are not used
        try:
            orders = await self.own_orders("verify orders")
            new = {str(order["id"]) for order in orders} - self.orders_before
            unknown = sorted(new - set(self.placed))
            if unknown:
                raise StepFailed(
                    "verify orders", f"orders {', '.join(unknown)} that no answer told of"
                )
            lost = sorted(set(self.placed) - new)
            if lost:
                raise StepFailed("verify orders", f"orders {', '.join(lost)} are not in the shop")
            self.run.chaos.orders_checked += len(new)
            for order_id, (key, body) in self.placed.items():
                reply = await self.call(
                    "replay key",
                    "POST",
                    "/api/orders",
                    json_body=body,
                    headers={"Idempotency-Key": key},
                    expect=(201,),
                )
                answered = str(reply.data["id"])
                self.check(answered == order_id, reply, f"{key} answered order {answered}")
                replayed = reply.headers.get("Idempotent-Replayed")
                self.check(replayed == "true", reply, "a replay not marked Idempotent-Replayed")
                self.run.chaos.replays_checked += 1
        except StepFailed as failure:
            self.run.recorder.failed(failure.step, self.label, failure.message, failure.request_id)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            self.run.recorder.failed(self.step, self.label, f"malformed answer: {error!r}")

    # -- scenarios ---------------------------------------------------------------------------

    async def happy(self) -> None:
        _, order = await self.shop()
        await self.after_checkout(order)

    async def cancel(self) -> None:
        lines, order = await self.shop()
        await self.after_checkout(order)
        path = f"/api/orders/{order['id']}/status"
        cancel = {"status": "cancelled"}
        expect: tuple[int, ...] = (200,)
        while True:
            try:
                reply = await self.call(
                    "cancel", "PATCH", path, json_body=cancel, expect=expect, repeatable=False
                )
            except Uncertain:
                expect = (200, 409)  # a lost answer: it may be cancelled already
                continue
            if reply.status == 409:
                reply = await self.call("read order", "GET", f"/api/orders/{order['id']}")
            break
        self.check(reply.data["status"] == "cancelled", reply, f"status {reply.data['status']}")
        history = [entry["status"] for entry in reply.data["history"]]
        self.check(history[-1] == "cancelled", reply, f"history {history}")
        self.run.ledger.cancelled += 1
        self.run.ledger.orders[str(order["id"])].cancelled = True
        for line in lines:
            self.run.ledger.sold[line.product_id] -= line.quantity
            self.run.claimed[line.product_id] -= line.quantity

    async def retry(self) -> None:
        """A checkout sent twice at once, then once more later, with one Idempotency-Key:
        one order, one sale."""
        seen = await self.fill_planned_cart()
        key = self.idempotency_key()

        async def send() -> Reply:
            return await self.call(
                "checkout",
                "POST",
                "/api/orders",
                json_body=CHECKOUT_DETAILS,
                headers=key,
                expect=(201,),
            )

        self.checkout_began = self.run.faults.now() if self.run.faults else 0.0
        first, second = await asyncio.gather(send(), send())
        orders = [self.check_order(reply, seen) for reply in (first, second)]
        self.check(orders[0]["id"] == orders[1]["id"], second, "two orders for one key")
        self.record_sale(seen, orders[0])
        again = await self.call(
            "retry checkout",
            "POST",
            "/api/orders",
            json_body=CHECKOUT_DETAILS,
            headers=key,
            expect=(201,),
        )
        self.check(again.data["id"] == orders[0]["id"], again, "a retry made a new order")
        replayed = again.headers.get("Idempotent-Replayed")
        self.check(replayed == "true", again, "a retry not marked Idempotent-Replayed")
        await self.after_checkout(orders[0])

    async def short_stock(self) -> None:
        """Everyone wants one unit of a product with stock for half of them: the shop must
        sell exactly its stock and refuse the rest with 409, leaving their carts alone."""
        scarce = self.run.scarce
        assert scarce is not None
        product = await self.view(scarce["id"])
        line = Line(product, 1)
        reply = await self.add_to_cart(line, expect=(200, 409))
        if reply.status == 409:
            await self.check_sold_out(reply)
            return
        reply = await self.send_checkout("checkout", [line], expect=(201, 409))
        if reply.status == 409:
            await self.check_sold_out(reply)
            kept = await self.call("cart kept", "GET", f"/api/cart/{self.user_id}")
            self.check_cart(kept, [line])
            await self.call("clear cart", "DELETE", f"/api/cart/{self.user_id}")
            return
        order = self.check_order(reply, [line])
        self.record_sale([line], order)
        await self.after_checkout(order)

    async def declined_card(self) -> None:
        """A checkout with a card the test provider refuses (each shopper and iteration
        another of REFUSED_CARDS): the refusal the card names, no order, the cart as it was;
        then the same checkout (same Idempotency-Key) with a good card is placed."""
        seen = await self.fill_planned_cart()
        # The k-th shopper of this scenario starts at the k-th card, and takes the next
        # one each time round: every card is tried, whatever the mix of scenarios.
        turn = (self.number - 1) // len(self.run.config.scenarios) + self.iteration
        refused = REFUSED_CARDS[turn % len(REFUSED_CARDS)]
        orders_before = {order["id"] for order in await self.own_orders("list orders")}
        # The provider's own failures answer 503 payment_unavailable, also with no fault.
        accept = [refused.code] if refused.status == 503 else []
        reply = await self.send_checkout(
            "refused checkout",
            seen,
            expect=(refused.status,),
            body=checkout_body(card=refused.card),
            accept=accept,
        )
        if refused.status == 402:
            self.check(reply.code == "payment_declined", reply, f"code {reply.code!r}")
            decline = reply.body.get("decline_code")
            self.check(decline == refused.code, reply, f"decline_code {decline!r}")
        else:
            self.check(reply.code == refused.code, reply, f"code {reply.code!r}")
        self.check(refused.card["number"] not in str(reply.body), reply, "it shows the card")
        kept = await self.call("cart kept", "GET", f"/api/cart/{self.user_id}")
        self.check_cart(kept, seen)
        orders_after = {order["id"] for order in await self.own_orders("list orders")}
        new = sorted(orders_after - orders_before)
        self.check(not new, reply, f"refused, yet orders {new} were made")
        self.run.verification.refusals[refused.outcome] += 1
        order = await self.checkout(seen, "checkout", checkout_body(card=MASTERCARD))
        await self.after_checkout(order)

    async def saved_address(self) -> None:
        """The address saved in the address book (sent twice, kept once), and the order
        delivered there by its id: the order keeps the address as it was."""
        address = {**QA_ADDRESS, "label": "QA", "recipient": f"QA Shopper {self.number}"}
        path = "/api/users/addresses"
        first = await self.call("save address", "POST", path, json_body=address, expect=(201,))
        again = await self.call("save address", "POST", path, json_body=address, expect=(201,))
        address_id = first.data["id"]
        self.check(again.data["id"] == address_id, again, "the same address kept twice")
        book = await self.call("address book", "GET", path)
        same = [a for a in book.data["addresses"] if a["recipient"] == address["recipient"]]
        self.check(len(same) == 1, book, f"{len(same)} copies of the address saved twice")
        seen = await self.fill_planned_cart()
        body = checkout_body(address_id=address_id)
        order = await self.checkout(seen, "checkout", body, address)
        self.run.verification.saved_addresses += 1
        await self.after_checkout(order)

    async def express(self) -> None:
        """Express delivery: its price whatever the goods come to (never free)."""
        seen = await self.fill_planned_cart()
        order = await self.checkout(seen, "checkout", checkout_body(delivery="express"))
        await self.after_checkout(order)

    async def guest_merge(self) -> None:
        """A guest on the web pages (a browser with cookies, the forms' CSRF tokens) puts
        the plan in a cart, then registers (or, with an account already, logs in) there:
        the account's cart must then hold exactly the guest's lines, told so on the page,
        and checks out through the API."""
        lines = self.claim()
        seen = [Line(await self.view(line.product_id), line.quantity) for line in lines]
        client = self.run.client
        async with Browser(client.base_url, client.next_request_id, self.run.recorder.timed) as web:
            for line in seen:
                page = await self.page(web, "guest: product page", f"/products/{line.product_id}")
                sent = await self.send_form(
                    web, "guest: add to cart", page, "/cart/items", quantity=line.quantity
                )
                self.check_page(sent, "Added", "no word that it was added")
            units = sum(line.quantity for line in seen)
            page = await self.page(web, "guest: cart page", "/cart")
            counted = f"({units} item{'s' if units > 1 else ''} in your cart)"
            self.check_page(page, counted, f"the header does not say {counted}")
            self.check_page(page, "Log in to check out", "no way to log in to check out")
            if self.token is None:
                await self.register_on_the_page(web)
            else:
                await self.log_in_on_the_page(web)
            self.step = "guest: merged"
            if web.cookie(GUEST_COOKIE):
                raise StepFailed(self.step, "the guest cart's cookie is still set after the merge")
        if self.token is None:
            await self.log_in()
        cart = await self.call("merged cart", "GET", f"/api/cart/{self.user_id}")
        self.check_cart(cart, seen)
        self.run.verification.guest_carts_merged += 1
        order = await self.checkout(seen)
        await self.after_checkout(order)

    async def register_on_the_page(self, web: Browser) -> None:
        """Create the account with the register form, coming back to the cart; on a rerun
        with the same --seed the account exists: empty its cart and log in instead."""
        page = await self.page(web, "guest: register", "/register?next=%2Fcart")
        password = self.run.config.password
        done = await self.send_form(
            web,
            "guest: register",
            page,
            "/register",
            expect=(200, 400),
            email=self.email,
            first_name="QA",
            last_name=f"Shopper {self.number}",
            password=password,
            password_confirm=password,
        )
        if done.path.startswith("/register"):
            # Shown again, with why: only an account that exists is expected.
            self.check_page(done, "already exists", "the register form refused it")
            await self.log_in()
            await self.empty_cart()
            await self.log_in_on_the_page(web)
            return
        self.check_merged(done)

    async def log_in_on_the_page(self, web: Browser) -> None:
        page = await self.page(web, "guest: log in", "/login?next=%2Fcart")
        password = self.run.config.password
        done = await self.send_form(
            web, "guest: log in", page, "/login", email=self.email, password=password
        )
        self.check_merged(done)

    def check_merged(self, page: WebPage) -> None:
        """Back on the cart, told the guest's items are in it now."""
        self.step = "guest: merged"
        if not page.path.startswith("/cart"):
            raise StepFailed(self.step, f"ended at {page.path}, not the cart", page.request_id)
        self.check_page(page, "before logging in", "no word of the guest cart merged")

    async def page(self, web: Browser, step: str, path: str) -> WebPage:
        self.step = step
        page = await web.get(step, path)
        if page.status != 200:
            raise StepFailed(step, page.describe("GET", path), page.request_id)
        return page

    async def send_form(
        self,
        web: Browser,
        step: str,
        page: WebPage,
        action: str,
        expect: tuple[int, ...] = (200,),
        **values: Any,
    ) -> WebPage:
        """Fill in `page`'s form sending to `action` and send it (redirects followed)."""
        self.step = step
        form = page.form(action)
        if form is None:
            raise StepFailed(step, f"no form sending to {action} on {page.path}", page.request_id)
        sent = await web.submit(step, form, **values)
        if sent.status not in expect:
            raise StepFailed(step, sent.describe("POST", action), sent.request_id)
        return sent

    def check_page(self, page: WebPage, words: str, message: str) -> None:
        if words not in page.text:
            raise StepFailed(self.step, f"{page.path}: {message}", page.request_id)

    async def check_sold_out(self, refusal: Reply) -> None:
        """A refusal must say insufficient_stock, and be true: stock only falls during the
        run, so any stock seen after the refusal was there before it."""
        self.check(refusal.code == SOLD_OUT, refusal, f"refused with code {refusal.code!r}")
        assert self.run.scarce is not None
        reply = await self.call("view product", "GET", f"/api/products/{self.run.scarce['id']}")
        left = reply.data["stock"]
        self.check(left == 0, refusal, f"refused for lack of stock, but {left} are left")
        self.run.ledger.sold_out += 1


SCENARIOS: dict[Scenario, Callable[[Shopper], Any]] = {
    Scenario.HAPPY: Shopper.happy,
    Scenario.SHORT_STOCK: Shopper.short_stock,
    Scenario.CANCEL: Shopper.cancel,
    Scenario.RETRY: Shopper.retry,
    Scenario.DECLINED: Shopper.declined_card,
    Scenario.SAVED_ADDRESS: Shopper.saved_address,
    Scenario.EXPRESS: Shopper.express,
    Scenario.GUEST_MERGE: Shopper.guest_merge,
}


# -- the run ---------------------------------------------------------------------------------


async def check_ready(client: ShopClient) -> None:
    """Refuse to start against a shop that says it is not ready, naming what is down (the
    gateway stays ready when a backend is down: its body says which)."""
    reply = await client.call("GET", "/ready")
    if reply.status is None:
        raise client.not_answering(reply)
    down = backends_not_ready({"data": reply.data})
    if reply.status == 200 and not down:
        return
    which = f": {', '.join(down)} not ready" if down else f" ({reply.describe()})"
    raise ShopctlError(
        f"the shop at {client.base_url} is not ready{which}; no shopper was started "
        f"[request {reply.request_id}]"
    )


async def prepare(run: QaRun) -> None:
    """Pick the products to play with and note their stock; make the scarce product."""
    catalogue = await list_all_products(run.client)
    run.catalogue_size = len(catalogue)
    # Under --chaos the shoppers shop until the faults are over: give them room.
    least = CHAOS_MIN_POOL_STOCK if run.config.chaos else MIN_POOL_STOCK
    plenty = sorted(
        (p for p in catalogue if p["stock"] >= least and p["category"] != SCARCE_CATEGORY),
        key=lambda product: product["id"],
    )
    pool_scenarios = set(run.config.scenarios) - {Scenario.SHORT_STOCK}
    if pool_scenarios and not plenty:
        raise ShopctlError(
            f"no product at {run.client.base_url} has {least} or more in stock; "
            f"load the demo catalogue first: {command('seed')}"
        )
    chooser = random.Random(run.config.seed)
    run.pool = chooser.sample(plenty, min(POOL_SIZE, len(plenty))) if pool_scenarios else []
    if pool_scenarios and run.config.duration is None:
        check_enough_stock(run)
    if Scenario.SHORT_STOCK in run.config.scenarios:
        run.scarce = await create_scarce_product(run)
    for product in run.products_touched():
        run.stock_at_start[product["id"]] = product["stock"]


def check_enough_stock(run: QaRun) -> None:
    """With a fixed number of shoppers, every cart is known in advance: make sure the shop
    can sell them all, so a sold-out product is never mistaken for a failure."""
    wanted: Counter[str] = Counter()
    for number in range(1, run.config.users + 1):
        shopper = Shopper(run, number)
        if shopper.scenario is not Scenario.SHORT_STOCK:
            for line in shopper.plan():
                wanted[line.product_id] += line.quantity
    for product in run.pool:
        if wanted[product["id"]] > product["stock"]:
            raise ShopctlError(
                f"{product['name']!r} has {product['stock']} in stock but this run's shoppers "
                f"want {wanted[product['id']]}; restock with {command('seed')} or use fewer --users"
            )


async def create_scarce_product(run: QaRun) -> dict[str, Any]:
    if run.admin_token is None:
        raise ShopctlError("the short-stock scenario needs the admin's credentials")
    contenders = sum(
        1
        for number in range(1, run.config.users + 1)
        if run.config.scenario_of(number) is Scenario.SHORT_STOCK
    )
    body = {
        "name": f"QA short stock {run.client.run_id}",
        "description": "Made by shopctl checkout for its short-stock scenario; deleted after.",
        "price": Decimal("4.99"),
        "category": SCARCE_CATEGORY,
        "stock": max(1, contenders // 2),
    }
    reply = await run.client.call("POST", "/api/products", json_body=body, token=run.admin_token)
    if reply.status != 201:
        raise ShopctlError(
            f"cannot make the short-stock product: {reply.describe()} [request {reply.request_id}]"
        )
    return reply.data


async def delete_scarce_product(run: QaRun) -> None:
    if run.scarce is not None and run.admin_token is not None:
        path = f"/api/products/{run.scarce['id']}"
        reply = await run.client.call("DELETE", path, token=run.admin_token)
        if not reply.ok:
            run.recorder.failed("clean up", "", f"{reply.describe()}", reply.request_id)


async def stock_checks(
    client: ShopClient,
    products: Iterable[dict[str, Any]],
    at_start: Mapping[str, int],
    sold: Mapping[str, int],
    recorder: Recorder,
) -> list[StockCheck]:
    """Units sold + stock left = stock at start, for each of `products` (their stock read
    now through `client`); a product that cannot be read is a failure in `recorder`. The
    checkout benchmark makes the same check of its own run."""
    checks = []
    for product in products:
        reply = await client.call("GET", f"/api/products/{product['id']}")
        left = reply.data["stock"] if reply.ok else None
        if left is None:
            recorder.failed("conservation", "", reply.describe(), reply.request_id)
        checks.append(
            StockCheck(
                product_id=product["id"],
                name=product["name"],
                at_start=at_start[product["id"]],
                sold=sold.get(product["id"], 0),
                left=left,
            )
        )
    return checks


def scarce_verdict(run: QaRun) -> None:
    """With more contenders than stock, exactly the stock was sold."""
    if run.scarce is None:
        return
    stock = run.stock_at_start[run.scarce["id"]]
    sold = run.ledger.sold[run.scarce["id"]]
    contenders = sold + run.ledger.sold_out
    if contenders >= stock and sold != stock:
        run.recorder.failed(
            "short stock", "", f"{sold} of {stock} units sold to {contenders} contenders"
        )


async def run_shoppers(
    run: QaRun, on_session_done: Callable[[], None], stop_at: float | None
) -> None:
    """`users` shoppers, at most `concurrency` at once; each plays once, or, until
    `stop_at` (or, under --chaos, until `run.stop`), again and again (never two sessions of
    one shopper at a time). No new session starts once `max_failures` failures are counted
    or `run.stop` is set; `run.cut_sessions()` ends the ones under way."""
    waiting: asyncio.Queue[Shopper] = asyncio.Queue()
    for number in range(1, run.config.users + 1):
        shopper = Shopper(run, number)
        run.shoppers.append(shopper)
        waiting.put_nowait(shopper)
    again = stop_at is not None or run.config.chaos

    def should_stop() -> bool:
        limit = run.config.max_failures
        if limit is not None and run.recorder.failure_count >= limit:
            return True
        if run.stop.is_set():
            return True
        return stop_at is not None and time.monotonic() >= stop_at

    async def worker() -> None:
        while not should_stop():
            try:
                shopper = waiting.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                await shopper.session()
            except asyncio.CancelledError:
                run.cut_short += 1
                raise
            on_session_done()
            if again:
                waiting.put_nowait(shopper)

    workers = min(run.config.concurrency, run.config.users)
    run.workers = [asyncio.create_task(worker()) for _ in range(workers)]
    await asyncio.gather(*run.workers, return_exceptions=True)


async def start_run(client: ShopClient, config: RunConfig, admin_token: str | None) -> QaRun:
    """Check the shop is ready and prepare the run; nothing is bought yet."""
    await check_ready(client)
    run = QaRun(client, config, admin_token)
    await prepare(run)
    return run


async def run_checkout(
    run: QaRun,
    *,
    target: str,
    on_session_done: Callable[[], None],
    disturbance: Awaitable[None] | None = None,
) -> RunSummary:
    """Let the shoppers go, then verify the stock and clean up. With a `disturbance` (the
    chaos injector), they shop until it is over, and the verification waits for the shop to
    settle and checks orders and keys as well."""
    config = run.config
    started = time.monotonic()
    stop_at = None if config.duration is None else started + config.duration
    try:
        shopping = asyncio.ensure_future(run_shoppers(run, on_session_done, stop_at))
        if disturbance is not None:
            try:
                await disturbance
            finally:
                run.stop.set()
        await shopping
    finally:
        elapsed = time.monotonic() - started
        if config.chaos:
            await settle(run)
        checks = await stock_checks(
            run.client, run.products_touched(), run.stock_at_start, run.ledger.sold, run.recorder
        )
        scarce_verdict(run)
        if config.chaos and not run.cut_short:
            await verify_orders_and_keys(run)
        if not run.cut_short:
            await verify_payments(run)
            await verify_mail(run)
        else:
            run.verification.mail.skipped = "sessions were cut short"
        await delete_scarce_product(run)
    return RunSummary(
        run_id=run.client.run_id,
        target=target,
        url=run.client.base_url,
        seed=config.seed,
        scenarios=[scenario.value for scenario in config.scenarios],
        users=config.users,
        concurrency=config.concurrency,
        duration=config.duration,
        elapsed=elapsed,
        sessions=run.sessions,
        orders_placed=run.ledger.placed,
        orders_cancelled=run.ledger.cancelled,
        sold_out_answers=run.ledger.sold_out,
        browse_only=run.browse_only,
        recorder=run.recorder,
        stock=checks,
        cut_short=run.cut_short,
        chaos=run.chaos if config.chaos else None,
        verification=run.verification,
    )


async def settle(run: QaRun) -> None:
    """Under --chaos: poll until what the faults left is finished (the order service's
    recovery undoes abandoned checkouts and gives their stock back): every product's stock
    adds up and no checkout is unfinished, up to RECOVERY_DEADLINE. A second Ctrl-C stops
    waiting."""
    started = time.monotonic()
    while True:
        scratch = Recorder()
        checks = await stock_checks(
            run.client, run.products_touched(), run.stock_at_start, run.ledger.sold, scratch
        )
        unfinished = await unfinished_checkouts(run)
        if not scratch.failure_count and all(c.ok for c in checks) and not unfinished:
            run.chaos.settled_after = time.monotonic() - started
            return
        if time.monotonic() - started > RECOVERY_DEADLINE:
            run.chaos.settle_note = f"not settled after {RECOVERY_DEADLINE:g} s"
            if unfinished:
                run.recorder.failed(
                    "settle", "", f"a checkout still unfinished {unfinished:.0f} s old"
                )
            return
        if run.hurry.is_set():
            run.chaos.settle_note = "not waited for (interrupted)"
            return
        await asyncio.sleep(0.5)


async def unfinished_checkouts(run: QaRun) -> float:
    """The age of the oldest checkout neither placed nor undone, from the order service's
    metrics (0 when none, or when they cannot be read)."""
    return await order_metric(run, "shop_checkout_oldest_unfinished_seconds") or 0.0


async def order_metric(run: QaRun, name: str) -> float | None:
    """The largest value of the order service's metric `name` (a shop on this machine);
    None when it cannot be read."""
    if run.order_metrics_url is None:
        return None
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
            session.get(run.order_metrics_url) as response,
        ):
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    ]
    return max(values, default=None)


async def verify_orders_and_keys(run: QaRun) -> None:
    """Each shopper's orders in the shop are exactly the ones it was told about (no order
    half-made behind its back, none lost), and each key replayed answers its order."""
    limit = asyncio.Semaphore(run.config.concurrency)

    async def verify(shopper: Shopper) -> None:
        async with limit:
            await shopper.verify_orders()

    await asyncio.gather(*(verify(shopper) for shopper in run.shoppers))


async def verify_payments(run: QaRun) -> None:
    """Every order of the run read back: one authorisation each (a provider reference no
    other order has) for its total, still authorised (captured once shipped), or voided
    (refunded after a capture) once cancelled. A cancel's void may follow it by a moment
    (recovery does it when the provider was away): read again until then."""
    limit = asyncio.Semaphore(run.config.concurrency)
    references: dict[str, str] = {}

    async def verify(order_id: str, facts: OrderFacts) -> None:
        shopper = facts.shopper
        wanted = ("voided", "refunded") if facts.cancelled else ("authorised", "captured")
        deadline = time.monotonic() + RECOVERY_DEADLINE
        async with limit:
            try:
                while True:
                    reply = await shopper.call("read payment", "GET", f"/api/orders/{order_id}")
                    payment = reply.data["payment"]
                    if payment is not None and payment["status"] in wanted:
                        break
                    if time.monotonic() > deadline or run.hurry.is_set():
                        status = payment and payment["status"]
                        raise StepFailed(
                            "read payment",
                            f"order {order_id} ({reply.data['status']}): payment {status}, "
                            f"expected {' or '.join(wanted)}",
                            reply.request_id,
                        )
                    await asyncio.sleep(0.5)
                shopper.check(
                    cents(payment["amount"]) == facts.total_cents,
                    reply,
                    f"order {order_id} paid {payment['amount']}, its total in cents is "
                    f"{facts.total_cents}",
                )
                shopper.check(payment["last4"] == facts.last4, reply, "another card")
                other = references.setdefault(payment["reference"], order_id)
                shopper.check(
                    other == order_id, reply, f"orders {other} and {order_id} share a payment"
                )
                if facts.cancelled:
                    run.verification.payments_voided += 1
                else:
                    run.verification.payments_authorised += 1
            except StepFailed as failure:
                run.recorder.failed(
                    failure.step, shopper.label, failure.message, failure.request_id
                )
            except (KeyError, TypeError, ValueError, InvalidOperation) as error:
                run.recorder.failed("read payment", shopper.label, f"malformed answer: {error!r}")

    await asyncio.gather(
        *(verify(order_id, facts) for order_id, facts in run.ledger.orders.items())
    )


def mail_events(directory: Path, seen: dict[Path, tuple[str, str, str] | None]) -> None:
    """Add to `seen` each e-mail file not read yet: (order id, event, recipient) from its
    Message-ID, or None for one that names no order event."""
    parser = BytesHeaderParser(policy=default_policy)
    for path in mail_files(directory):
        if path in seen:
            continue
        headers = parser.parsebytes(path.read_bytes())
        match = MESSAGE_ID.search(str(headers["Message-ID"] or ""))
        recipient = str(headers[ENVELOPE_TO] or headers["To"] or "")
        seen[path] = (match[1], match[2], recipient) if match else None


async def verify_mail(run: QaRun) -> None:
    """One e-mail per event of the run's orders (placed; cancelled), to its shopper, read
    from the local shop's SMTP sink; none twice. Waits for the ones owed (the order
    service sends every second or so) up to MAIL_DEADLINE (RECOVERY_DEADLINE under
    --chaos). Under --chaos one still missing is counted as not verifiable: an e-mail
    whose sending a fault cut off is given up ('unknown' in the outbox), not sent twice."""
    tally = run.verification.mail
    if run.mail_dir is None:
        tally.skipped = run.mail_skipped
        return
    owed = {(order_id, "placed") for order_id in run.ledger.orders}
    owed |= {(order_id, "cancelled") for order_id, f in run.ledger.orders.items() if f.cancelled}
    tally.expected = len(owed)
    seen: dict[Path, tuple[str, str, str] | None] = {}
    deadline = time.monotonic() + (RECOVERY_DEADLINE if run.config.chaos else MAIL_DEADLINE)
    quiet_since: float | None = None
    while True:
        mail_events(run.mail_dir, seen)
        events = [event for event in seen.values() if event and event[0] in run.ledger.orders]
        arrived = Counter((order_id, kind) for order_id, kind, _ in events)
        missing = sorted(owed - set(arrived))
        now = time.monotonic()
        if not missing or now > deadline or run.hurry.is_set():
            break
        if await order_metric(run, "shop_email_outbox_backlog") == 0:
            quiet_since = quiet_since or now
            if now - quiet_since >= OUTBOX_QUIET:
                break
        else:
            quiet_since = None
        await asyncio.sleep(0.5)
    for order_id, kind, recipient in events:
        shopper = run.ledger.orders[order_id].shopper
        if (order_id, kind) not in owed:
            run.recorder.failed("e-mails", shopper.label, f"a {kind!r} e-mail for order {order_id}")
        elif shopper.email not in recipient:
            run.recorder.failed(
                "e-mails",
                shopper.label,
                f"the {kind} e-mail of order {order_id} went to {recipient}",
            )
    for (order_id, kind), count in sorted(arrived.items()):
        if count > 1:
            tally.duplicates += 1
            shopper = run.ledger.orders[order_id].shopper
            run.recorder.failed(
                "e-mails", shopper.label, f"{count} {kind!r} e-mails for order {order_id}"
            )
    tally.found = sum(1 for event in owed if arrived[event] == 1)
    if run.config.chaos:
        tally.not_verifiable = len(missing)
        return
    tally.missing = len(missing)
    for order_id, kind in missing:
        shopper = run.ledger.orders[order_id].shopper
        run.recorder.failed(
            "e-mails",
            shopper.label,
            f"no {kind!r} e-mail for order {order_id}",
        )
