"""The cart's view of the product service: current names, prices, images and stock, many
products in one call, and a stored cart priced with them as the API shows it.

Reading a cart may use what was looked up at most ``max_age`` seconds ago
(CATALOGUE_CACHE_SECONDS, default 1): a cart read is then one Redis round trip instead of
also a product service call and a MongoDB query, and a price or name change shows in carts
within that second. Changing a cart always looks its products up afresh, because it checks
their stock; checkout never takes a price from the cart at all."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from shopkit.client import ServiceClient
from shopkit.domain import MAX_IDS_PER_CALL, timestamp
from shopkit.errors import UpstreamUnavailable
from shopkit.money import CENT, LenientMoney
from shopkit.responses import ok_body
from svc_cart.schemas import CartItemOut, CartOut, GuestCartOut
from svc_cart.store import GUEST_PREFIX, StoredCart

CACHE_LIMIT = 10_000  # products (and answers) remembered at most; past it they start again
# Encoded answers kept at most (a full cart's is about 20 KiB; the pod has 192 MiB).
ANSWER_BYTES = 8 * 1024 * 1024


class Product(BaseModel):
    """What the cart needs of a product, read from the product service's answer."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    name: str
    # The JSON number the product service wrote with two places, parsed back exactly.
    price: LenientMoney
    stock: int
    imageUrl: str | None = None


_PRODUCTS = TypeAdapter(list[Product])


LookUp = asyncio.Future[dict[str, Product]]


class Catalogue:
    def __init__(self, client: ServiceClient, max_age: float = 0.0) -> None:
        self.client = client
        self.max_age = max_age
        # id -> (when it was looked up, the product, or None: the catalogue has no such id)
        self._seen: dict[str, tuple[float, Product | None]] = {}
        # Look-ups shared by cart reads (see _shared_look_up): id -> the one in flight that
        # asks about it; the ids the next one will ask about, and its outcome.
        self._asking: dict[str, LookUp] = {}
        self._next_ids: set[str] = set()
        self._next: LookUp | None = None
        self._answering: set[asyncio.Task[None]] = set()  # kept referenced until done
        # Products read after half their max_age, to be looked up again before they expire
        # (see products), and the timer that will.
        self._to_renew: set[str] = set()
        self._renewal: asyncio.TimerHandle | None = None
        self._closed = False  # no renewal once the service is stopping

    async def products(self, ids: Collection[str], *, fresh: bool = True) -> dict[str, Product]:
        """The products among ``ids`` that exist, by id. ``fresh=False`` (reading a cart)
        accepts what was looked up at most ``max_age`` seconds ago; anything else is asked
        of the product service. A product service that is down, slow or answers nonsense
        raises 503."""
        found: dict[str, Product] = {}
        wanted = set(ids)
        if not fresh and self.max_age > 0:
            now = time.monotonic()
            oldest, renew_from = now - self.max_age, now - self.max_age / 2
            for product_id in ids:
                seen = self._seen.get(product_id)
                if seen is not None and seen[0] >= oldest:
                    wanted.discard(product_id)
                    if seen[1] is not None:
                        found[product_id] = seen[1]
                    if seen[0] < renew_from and product_id not in self._asking:
                        self._renew_soon(product_id)
        if wanted and not fresh and self.max_age > 0:
            found.update(await self._shared_look_up(wanted))
        elif wanted:
            looked_up = await self._look_up(sorted(wanted))
            found.update(looked_up)
            self._remember(wanted, looked_up)
        return found

    async def _shared_look_up(self, wanted: set[str]) -> dict[str, Product]:
        """The products among ``wanted`` from look-ups shared with other cart reads: an id
        already being asked about waits for that answer, and the ids asked for in one turn
        of the event loop go in one call. Under load every remembered product expires about
        once per ``max_age``, and without this each read that finds one expired would make
        a call of its own (a hundred carts: a hundred calls a second, and as many MongoDB
        queries, instead of a few)."""
        loop = asyncio.get_running_loop()
        look_ups: set[LookUp] = set()
        for product_id in wanted:
            look_up = self._asking.get(product_id)
            if look_up is None:
                if self._next is None:
                    self._next = loop.create_future()
                    loop.call_soon(self._ask_next)
                look_up = self._asking[product_id] = self._next
                self._next_ids.add(product_id)
            look_ups.add(look_up)
        found: dict[str, Product] = {}
        for look_up in look_ups:
            # Shielded: a request that is cancelled (its client gone) leaves the call to
            # the others waiting for it.
            found.update(await asyncio.shield(look_up))
        return {product_id: found[product_id] for product_id in wanted if product_id in found}

    def _ask_next(self) -> None:
        look_up, asked = self._next, self._next_ids
        self._next, self._next_ids = None, set()
        assert look_up is not None  # scheduled only with a look-up to make
        self._start(look_up, asked)

    def _renew_soon(self, product_id: str) -> None:
        """Look a product that reads still use up again before it expires, together with
        the others found at half their age in the next quarter of ``max_age``. Under load
        a read then never finds a product expired and never waits for a look-up, and the
        catalogue is asked a few times per ``max_age`` for many products at once, rather
        than once for each product (as each expired at its own moment). What reads show
        is never older than ``max_age`` either way."""
        if self._closed:
            return
        self._to_renew.add(product_id)
        if self._renewal is None:
            loop = asyncio.get_running_loop()
            self._renewal = loop.call_later(self.max_age / 4, self._renew)

    def _renew(self) -> None:
        self._renewal = None
        renewing = {product_id for product_id in self._to_renew if product_id not in self._asking}
        self._to_renew = set()
        if renewing:
            look_up: LookUp = asyncio.get_running_loop().create_future()
            for product_id in renewing:
                self._asking[product_id] = look_up  # a read finding one expired waits for it
            self._start(look_up, renewing)

    def _start(self, look_up: LookUp, asked: set[str]) -> None:
        # Every waiter may have gone: the outcome is still observed (no "never retrieved").
        look_up.add_done_callback(lambda done: done.cancelled() or done.exception())
        task = asyncio.ensure_future(self._look_up_for_waiters(look_up, asked))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def close(self) -> None:
        """on_shutdown: no look-up is started or left running once the service stops."""
        self._closed = True
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)

    async def _look_up_for_waiters(self, look_up: LookUp, asked: set[str]) -> None:
        try:
            looked_up = await self._look_up(sorted(asked))
        except asyncio.CancelledError:
            look_up.cancel()
            raise
        except Exception as exc:  # a 503 for every read waiting for it
            look_up.set_exception(exc)
        else:
            self._remember(asked, looked_up)
            look_up.set_result(looked_up)
        finally:
            for product_id in asked:
                if self._asking.get(product_id) is look_up:
                    del self._asking[product_id]

    def _remember(self, asked: set[str], found: Mapping[str, Product]) -> None:
        if self.max_age <= 0:
            return
        if len(self._seen) + len(asked) > CACHE_LIMIT:
            self._seen.clear()
        now = time.monotonic()
        for product_id in asked:
            self._seen[product_id] = (now, found.get(product_id))

    async def _look_up(self, wanted: list[str]) -> dict[str, Product]:
        """One call per MAX_IDS_PER_CALL ids (a cart holds at most MAX_CART_LINES products,
        so one call but in a rare race)."""
        found: dict[str, Product] = {}
        for start in range(0, len(wanted), MAX_IDS_PER_CALL):
            batch = ",".join(wanted[start : start + MAX_IDS_PER_CALL])
            reply = await self.client.get(f"/api/products?ids={batch}&limit={MAX_IDS_PER_CALL}")
            if reply.status != 200:
                raise UpstreamUnavailable(
                    f"The product service answered {reply.status} to a product look-up; "
                    "try again shortly."
                )
            try:
                products = _PRODUCTS.validate_python(reply.data)
            except ValidationError:
                raise UpstreamUnavailable(
                    "The product service answered a product look-up with something "
                    "unexpected; try again shortly."
                ) from None
            found.update((product.id, product) for product in products)
        return found


def _iso_from_ms(moment_ms: int) -> str:
    return timestamp(datetime.fromtimestamp(moment_ms / 1000, UTC))


class PricedAnswers:
    """The last answer each cart's read gave, encoded, sent again while neither the cart
    nor any of its products changed (the same StoredCart and the same Product objects: the
    store and the catalogue hand out the objects they remember, and new ones once anything
    may have changed). Pricing and encoding a cart took a tenth of a read's CPU."""

    def __init__(self) -> None:
        # owner -> (the cart, its products as priced, the encoded answer). The entry
        # keeps those objects alive, so an identity check cannot meet a recycled id().
        self._last: dict[str, tuple[StoredCart, tuple[Product | None, ...], bytes]] = {}
        self._bytes = 0  # of the answers kept

    def body(self, owner: str, cart: StoredCart, products: Mapping[str, Product]) -> bytes:
        """``{"success": true, "data": <the priced cart>}``, encoded."""
        priced_with = tuple(products.get(product_id) for product_id, _ in cart.lines)
        last = self._last.get(owner)
        if (
            last is not None
            and last[0] is cart
            and all(before is now for before, now in zip(last[1], priced_with, strict=True))
        ):
            return last[2]
        body = ok_body(priced_cart(owner, cart, products))
        if last is not None:
            self._bytes -= len(last[2])
        if len(self._last) >= CACHE_LIMIT or self._bytes + len(body) > ANSWER_BYTES:
            self._last.clear()
            self._bytes = 0
        self._last[owner] = (cart, priced_with, body)
        self._bytes += len(body)
        return body


def priced_cart(
    owner: str, cart: StoredCart, products: Mapping[str, Product]
) -> CartOut | GuestCartOut:
    """A stored cart as the API shows it (its shape: schemas.CartOut, for a guest
    schemas.GuestCartOut), with each product's current name, price and image. A product the
    catalogue no longer has is left out, and counts toward neither the total nor
    item_count. Money is Decimal throughout: 3 x 19.99 is 59.97 exactly."""
    items: list[CartItemOut] = []
    total = Decimal("0.00")
    item_count = 0
    for product_id, quantity in cart.lines:
        product = products.get(product_id)
        if product is None:
            continue
        subtotal = (product.price * quantity).quantize(CENT)
        items.append(
            {
                "product_id": product_id,
                "name": product.name,
                "price": product.price,
                "quantity": quantity,
                "imageUrl": product.imageUrl,
                "subtotal": subtotal,
            }
        )
        total += subtotal
        item_count += quantity
    expires_at_ms = cart.expires_at_ms
    expires_at = None if expires_at_ms is None else _iso_from_ms(expires_at_ms)
    if owner.startswith(GUEST_PREFIX):
        return {
            "guest_id": owner.removeprefix(GUEST_PREFIX),
            "merged_into": None,
            "items": items,
            "total": total,
            "item_count": item_count,
            "expires_at": expires_at,
            "version": cart.version,
        }
    return {
        "user_id": int(owner),
        "items": items,
        "total": total,
        "item_count": item_count,
        "expires_at": expires_at,
        "version": cart.version,
    }
