"""The cart service's routes: thin handlers over the store and the catalogue.

Accounts' carts are under /api/cart/{userId}. Guests' carts are under
/internal/guest-carts/{guestId}, for service tokens only (the gateway's pages): never
under /api/, so the gateway never forwards them and no client of the API reaches a guest
cart, whatever id it tries.

Every change looks its products up in the catalogue before it writes, so a product
service that is down answers 503 with the cart untouched, and the answer (the whole cart,
priced) needs no second look-up unless another change raced in a product meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from shopkit.domain import MAX_CART_LINES, MAX_CART_QUANTITY, ProductNotFound
from shopkit.errors import Conflict, Forbidden, NotFound, Refusal, Refusals
from shopkit.keys import IDENTITY
from shopkit.openapi import endpoint
from shopkit.parsing import parse_id, parse_product_id
from shopkit.responses import encoded_response, ok
from svc_cart.catalogue import Product, priced_cart
from svc_cart.keys import ANSWERS, CART_CHANGES, CATALOGUE, STORE
from svc_cart.schemas import (
    GUEST_ID_PATTERN,
    AddItem,
    CartItemPath,
    CartOut,
    CartPath,
    ClearQuery,
    GuestCartItemPath,
    GuestCartOut,
    GuestCartPath,
    MergeCut,
    MergeInto,
    MergeOut,
    SetQuantity,
)
from svc_cart.store import (
    CartChanged,
    CartFull,
    CartMerged,
    NotEnoughStock,
    QuantityLimit,
    StoredCart,
    UnknownProducts,
    guest_owner,
)

routes = web.RouteTableDef()

# How a client hears what the store refuses.
REFUSALS: Refusals = {
    # Caught by the guest routes, which make the change in the account's cart instead; only
    # a cart merged twice over in between gets here.
    CartMerged: Refusal(
        Conflict,
        "cart_merged",
        "This guest cart was just merged into an account's cart: change that one.",
    ),
    NotEnoughStock: Refusal(
        Conflict,
        "insufficient_stock",
        "Not enough stock: {available} left, and your cart already holds {in_cart}.",
        ("available", "in_cart"),
    ),
    QuantityLimit: Refusal(
        Conflict,
        "quantity_limit",
        "A cart holds at most {limit} units of one product (it holds {in_cart}).",
        ("limit", "in_cart"),
    ),
    CartFull: Refusal(
        Conflict, "cart_full", "A cart holds at most {limit} different products.", ("limit",)
    ),
    CartChanged: Refusal(
        Conflict,
        "cart_changed",
        "The cart changed since it was read (it is at version {version} now); nothing was cleared.",
        ("version",),
    ),
}

# The kinds of change a cart takes, as shop_cart_changes_total counts them: each change a
# route makes (answered 200, also one that leaves the cart as it was); a PUT of quantity 0
# takes the product out, so it is a remove.
CHANGE_KINDS = ("add", "set", "remove", "clear", "merge")

_ACCESS = (
    "Only the cart's owner (the token's sub is userId), an admin or a service reaches a "
    "cart; anyone else gets 403. A userId that is not a positive integer is 404."
)


def _cart_owner(request: web.Request) -> str:
    """The userId in the path: every cart route's access hook has already checked it."""
    return request.match_info["userId"]


def _check_cart_access(request: web.Request) -> None:
    """Each cart route's access hook (run before its body is read): 404 for a userId that
    names no one, 403 for someone else's cart."""
    user_id = _cart_owner(request)
    # User ids are written plainly (parse_id): "007" would be a second key for user 7.
    if parse_id(user_id) is None:
        raise NotFound(f"There is no cart for user {user_id!r}.", code="cart_not_found")
    if not request[IDENTITY].may_act_for(user_id):
        raise Forbidden("A customer reaches only its own cart.")


def _product_id(value: str) -> str:
    # A malformed id names no product: not found, like the product service says.
    product_id = parse_product_id(value)
    if product_id is None:
        raise ProductNotFound(value)
    return product_id


def _existing(products: dict[str, Product], product_id: str) -> Product:
    product = products.get(product_id)
    if product is None:
        raise ProductNotFound(product_id)
    return product


async def _products_before_change(
    request: web.Request, owner: str, adding: str | None = None
) -> tuple[dict[str, Product], set[str]]:
    """The products of the cart (and of ``adding``), looked up before anything is written;
    also the ids asked about, so the answer only looks up what a racing change added."""
    before = await request.app[STORE].get(owner)
    asked = before.product_ids | ({adding} if adding else set())
    return await request.app[CATALOGUE].products(asked), asked


async def _priced(
    request: web.Request,
    owner: str,
    cart: StoredCart,
    products: dict[str, Product],
    asked: set[str],
) -> Any:
    raced_in = cart.product_ids - asked
    if raced_in:
        products = {**products, **await request.app[CATALOGUE].products(raced_in)}
    return priced_cart(owner, cart, products)


async def _priced_answer(
    request: web.Request,
    owner: str,
    cart: StoredCart,
    products: dict[str, Product],
    asked: set[str],
) -> web.Response:
    return ok(await _priced(request, owner, cart, products, asked))


@routes.get("/api/cart/{userId}")
@endpoint(
    "A cart, priced with the catalogue's current names, prices and images",
    response=CartOut,
    roles=(),
    access=_check_cart_access,
    path=CartPath,
    errors=(403, 404, 503),
    description="A cart never filled, emptied or expired is an empty cart (200), not a 404. "
    "Names, prices and images may be up to CATALOGUE_CACHE_SECONDS (default 1) old; a "
    "change to the cart always prices it afresh. " + _ACCESS,
)
async def get_cart(request: web.Request) -> web.Response:
    user_id = _cart_owner(request)
    cart = await request.app[STORE].get(user_id)
    products = await request.app[CATALOGUE].products(cart.product_ids, fresh=False)
    return encoded_response(request.app[ANSWERS].body(user_id, cart, products))


@routes.post("/api/cart/{userId}/items")
@endpoint(
    "Add units of a product to a cart",
    body=AddItem,
    response=CartOut,
    roles=(),
    access=_check_cart_access,
    path=CartPath,
    errors=(403, 404, 409, 503),
    description="Answers the whole cart (200: the cart exists either way). A product "
    "already in the cart gets the units added to its quantity. 404 product_not_found: no "
    "such product. 409 insufficient_stock: the cart would hold more than the stock; 409 "
    f"quantity_limit: more than {MAX_CART_QUANTITY} units of one product; 409 cart_full: more "
    f"than {MAX_CART_LINES} different products. Nothing changes on any error. " + _ACCESS,
)
async def add_item(request: web.Request, body: AddItem) -> web.Response:
    return ok(await _add(request, _cart_owner(request), body))


# A change made to one cart: the owner whose cart it is, the cart as stored after it, the
# products looked up for it and the ids asked about (see _products_before_change).
Changed = tuple[str, StoredCart, dict[str, Product], set[str]]


async def _add(request: web.Request, owner: str, body: AddItem) -> Any:
    return await _priced(request, *await _add_change(request, owner, body))


async def _add_change(request: web.Request, owner: str, body: AddItem) -> Changed:
    product_id = _product_id(body.product_id)
    products, asked = await _products_before_change(request, owner, adding=product_id)
    stock = _existing(products, product_id).stock
    cart = await request.app[STORE].add(owner, product_id, body.quantity, stock=stock)
    request.app[CART_CHANGES].labels("add").inc()
    return owner, cart, products, asked


@routes.put("/api/cart/{userId}/items/{productId}")
@endpoint(
    "Set how many units of a product a cart holds (0 takes it out)",
    body=SetQuantity,
    response=CartOut,
    roles=(),
    access=_check_cart_access,
    path=CartItemPath,
    errors=(403, 404, 409, 503),
    description="Answers the whole cart. A product not yet in the cart is put in (the "
    "quantity is set, whatever it was). Above the product's stock is 409 "
    "insufficient_stock and changes nothing; 0 takes the product out, also one the "
    "catalogue no longer has. " + _ACCESS,
)
async def set_quantity(request: web.Request, body: SetQuantity) -> web.Response:
    owner = _cart_owner(request)
    return ok(await _priced(request, *await _set_change(request, owner, body)))


async def _set_change(request: web.Request, owner: str, body: SetQuantity) -> Changed:
    product_id = _product_id(request.match_info["productId"])
    store = request.app[STORE]
    if body.quantity == 0:
        products, asked = await _products_before_change(request, owner)
        cart = await store.remove(owner, product_id)
        change = "remove"
    else:
        products, asked = await _products_before_change(request, owner, adding=product_id)
        stock = _existing(products, product_id).stock
        cart = await store.set_quantity(owner, product_id, body.quantity, stock=stock)
        change = "set"
    request.app[CART_CHANGES].labels(change).inc()
    return owner, cart, products, asked


@routes.delete("/api/cart/{userId}/items/{productId}")
@endpoint(
    "Take a product out of a cart",
    response=CartOut,
    roles=(),
    access=_check_cart_access,
    path=CartItemPath,
    errors=(403, 404, 503),
    description="Answers the whole cart. Taking out a product the cart does not hold "
    "changes nothing and is not an error (a repeated click). " + _ACCESS,
)
async def remove_item(request: web.Request) -> web.Response:
    owner = _cart_owner(request)
    return ok(await _priced(request, *await _remove_change(request, owner)))


async def _remove_change(request: web.Request, owner: str) -> Changed:
    product_id = _product_id(request.match_info["productId"])
    products, asked = await _products_before_change(request, owner)
    cart = await request.app[STORE].remove(owner, product_id)
    request.app[CART_CHANGES].labels("remove").inc()
    return owner, cart, products, asked


@routes.delete("/api/cart/{userId}")
@endpoint(
    "Empty a cart; with ?version=N only if it is still at version N",
    query=ClearQuery,
    response=CartOut,
    roles=(),
    access=_check_cart_access,
    path=CartPath,
    errors=(403, 404, 409),
    description="Answers the emptied cart. With ?version=N (the version a GET answered) "
    "the cart is emptied only if nothing changed it since; otherwise 409 cart_changed, "
    "with the current version, and nothing changes. The order service clears a cart it "
    "checked out this way, so that items added during the checkout stay. " + _ACCESS,
)
async def clear_cart(request: web.Request, query: ClearQuery) -> web.Response:
    return ok(await _clear(request, _cart_owner(request), query))


async def _clear(request: web.Request, owner: str, query: ClearQuery) -> Any:
    cart = await request.app[STORE].clear(owner, expected_version=query.version)
    request.app[CART_CHANGES].labels("clear").inc()
    return priced_cart(owner, cart, {})


# -- guests' carts: for the gateway's pages, with a service token ------------------------------

_GUEST_ACCESS = (
    "Service tokens only (the gateway's pages act for guests); any other caller gets 403. "
    "Not under /api/, so the gateway never forwards it. A guestId that is not 32 lower-case "
    "hex digits is 404. A guest cart expires as an account's does (7 days after its last "
    "change)."
)
_MERGED = (
    " A guest cart merged into an account's cart a moment ago (MERGED_MARKER_SECONDS, 10 "
    "minutes) takes no more changes itself: the change is made in that account's cart, and "
    "merged_into names it (a page shown before the login, in another tab, loses nothing)."
)


def _guest_id(request: web.Request) -> str:
    return request.match_info["guestId"]


def _check_guest_cart(request: web.Request) -> None:
    """The guest routes' access hook (the role check has passed): 404 for a malformed id."""
    guest_id = _guest_id(request)
    if not _GUEST_ID.fullmatch(guest_id):
        raise NotFound(f"There is no guest cart {guest_id!r}.", code="cart_not_found")


_GUEST_ID = re.compile(GUEST_ID_PATTERN.strip("^$"))


def _as_guest_cart(guest_id: str, merged_into: int | None, priced: Any) -> GuestCartOut:
    """A priced cart (a guest's, or the account's its change went to) as the guest routes
    answer it."""
    return {
        "guest_id": guest_id,
        "merged_into": merged_into,
        "items": priced["items"],
        "total": priced["total"],
        "item_count": priced["item_count"],
        "expires_at": priced["expires_at"],
        "version": priced["version"],
    }


async def _guest_change(
    request: web.Request, change: Callable[[str], Awaitable[Changed]]
) -> web.Response:
    """A change to a guest cart, or to the account's cart it was merged into (see _MERGED)."""
    guest_id = _guest_id(request)
    merged_into = None
    try:
        changed = await change(guest_owner(guest_id))
    except CartMerged as merged:
        merged_into = int(merged.facts["user_id"])
        changed = await change(str(merged_into))
    return ok(_as_guest_cart(guest_id, merged_into, await _priced(request, *changed)))


@routes.get("/internal/guest-carts/{guestId}")
@endpoint(
    "Internal: a guest's cart, priced (service tokens only)",
    response=GuestCartOut,
    roles=("service",),
    access=_check_guest_cart,
    path=GuestCartPath,
    errors=(404, 503),
    description="A guest cart never filled, expired or merged into an account's cart is "
    "empty (200). " + _GUEST_ACCESS,
)
async def get_guest_cart(request: web.Request) -> web.Response:
    owner = guest_owner(_guest_id(request))
    cart = await request.app[STORE].get(owner)
    products = await request.app[CATALOGUE].products(cart.product_ids, fresh=False)
    return encoded_response(request.app[ANSWERS].body(owner, cart, products))


@routes.post("/internal/guest-carts/{guestId}/items")
@endpoint(
    "Internal: add units of a product to a guest's cart (service tokens only)",
    body=AddItem,
    response=GuestCartOut,
    roles=("service",),
    access=_check_guest_cart,
    path=GuestCartPath,
    errors=(404, 409, 503),
    description="As POST /api/cart/{userId}/items, with the same refusals. "
    + _GUEST_ACCESS
    + _MERGED,
)
async def add_guest_item(request: web.Request, body: AddItem) -> web.Response:
    return await _guest_change(request, lambda owner: _add_change(request, owner, body))


@routes.put("/internal/guest-carts/{guestId}/items/{productId}")
@endpoint(
    "Internal: set how many units of a product a guest's cart holds (service tokens only)",
    body=SetQuantity,
    response=GuestCartOut,
    roles=("service",),
    access=_check_guest_cart,
    path=GuestCartItemPath,
    errors=(404, 409, 503),
    description="As PUT /api/cart/{userId}/items/{productId}. " + _GUEST_ACCESS + _MERGED,
)
async def set_guest_quantity(request: web.Request, body: SetQuantity) -> web.Response:
    return await _guest_change(request, lambda owner: _set_change(request, owner, body))


@routes.delete("/internal/guest-carts/{guestId}/items/{productId}")
@endpoint(
    "Internal: take a product out of a guest's cart (service tokens only)",
    response=GuestCartOut,
    roles=("service",),
    access=_check_guest_cart,
    path=GuestCartItemPath,
    errors=(404, 503),
    description="As DELETE /api/cart/{userId}/items/{productId}. " + _GUEST_ACCESS + _MERGED,
)
async def remove_guest_item(request: web.Request) -> web.Response:
    return await _guest_change(request, lambda owner: _remove_change(request, owner))


@routes.delete("/internal/guest-carts/{guestId}")
@endpoint(
    "Internal: empty a guest's cart (service tokens only)",
    query=ClearQuery,
    response=GuestCartOut,
    roles=("service",),
    access=_check_guest_cart,
    path=GuestCartPath,
    errors=(404, 409),
    description="As DELETE /api/cart/{userId}. A guest cart merged into an account's cart "
    "is empty already: emptying it changes nothing, and never empties the account's cart "
    "(which holds more than the guest's page showed). " + _GUEST_ACCESS,
)
async def clear_guest_cart(request: web.Request, query: ClearQuery) -> web.Response:
    guest_id = _guest_id(request)
    cleared = await _clear(request, guest_owner(guest_id), query)
    return ok(_as_guest_cart(guest_id, None, cleared))


# Merges retried at most this often when products are added to the guest cart meanwhile.
MERGE_ATTEMPTS = 5


@routes.post("/internal/guest-carts/{guestId}/merge")
@endpoint(
    "Internal: add a guest's cart to an account's cart, at login or registration "
    "(service tokens only)",
    body=MergeInto,
    response=MergeOut,
    roles=("service",),
    access=_check_guest_cart,
    path=GuestCartPath,
    errors=(404, 409, 503),
    description="In one step (a Redis script): each of the guest cart's lines is added to "
    "the account's cart (quantities summed; a product the account's cart holds keeps its "
    "line and place), capped at the product's stock, at "
    f"{MAX_CART_QUANTITY} units and at {MAX_CART_LINES} products, and the guest cart is "
    "emptied for good (changes sent to it afterwards go to the account's cart for a while, "
    "see the guest routes). The caps never take away what the account's cart held. "
    "`cut` names each line not added whole and why; a product the catalogue no longer has "
    "is left out. A guest cart that is empty, expired or merged already (a second login "
    "at once) adds nothing: units_added 0. 409 cart_changed: products kept being added to "
    "the guest cart while it was merged; nothing changed, try again. " + _GUEST_ACCESS,
)
async def merge_guest_cart(request: web.Request, body: MergeInto) -> web.Response:
    guest_id, user_id = _guest_id(request), str(body.user_id)
    store, catalogue = request.app[STORE], request.app[CATALOGUE]
    guest = await store.get(guest_owner(guest_id))
    asked = set(guest.product_ids)
    products = await catalogue.products(asked)  # fresh: the stock caps what is added
    for _ in range(MERGE_ATTEMPTS):
        stocks = {
            product_id: products[product_id].stock if product_id in products else -1
            for product_id in asked
        }
        try:
            merge = await store.merge(guest_id, user_id, stocks)
        except UnknownProducts as added:  # an add to the guest cart raced in: look it up
            asked.update(added.ids)
            products.update(await catalogue.products(added.ids))
            continue
        break
    else:
        raise CartChanged(version=(await store.get(guest_owner(guest_id))).version)
    request.app[CART_CHANGES].labels("merge").inc()
    cart = await _priced(request, user_id, merge.cart, products, asked)
    cut: list[MergeCut] = [
        {
            "product_id": line.product_id,
            "name": products[line.product_id].name if line.product_id in products else None,
            "requested": line.requested,
            "added": line.added,
            "reason": line.reason,  # type: ignore[typeddict-item]
        }
        for line in merge.cut
    ]
    answer: MergeOut = {"cart": cart, "units_added": merge.units_added, "cut": cut}
    return ok(answer)
