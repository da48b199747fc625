"""The cart service's routes: thin handlers over the store and the catalogue.

Every change looks its products up in the catalogue before it writes, so a product
service that is down answers 503 with the cart untouched, and the answer (the whole cart,
priced) needs no second look-up unless another change raced in a product meanwhile.
"""

from __future__ import annotations

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
    AddItem,
    CartItemPath,
    CartOut,
    CartPath,
    ClearQuery,
    SetQuantity,
)
from svc_cart.store import CartChanged, CartFull, NotEnoughStock, QuantityLimit, StoredCart

routes = web.RouteTableDef()

# How a client hears what the store refuses.
REFUSALS: Refusals = {
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
CHANGE_KINDS = ("add", "set", "remove", "clear")

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
    request: web.Request, user_id: str, adding: str | None = None
) -> tuple[dict[str, Product], set[str]]:
    """The products of the cart (and of ``adding``), looked up before anything is written;
    also the ids asked about, so the answer only looks up what a racing change added."""
    before = await request.app[STORE].get(user_id)
    asked = before.product_ids | ({adding} if adding else set())
    return await request.app[CATALOGUE].products(asked), asked


async def _priced_answer(
    request: web.Request,
    user_id: str,
    cart: StoredCart,
    products: dict[str, Product],
    asked: set[str],
) -> web.Response:
    raced_in = cart.product_ids - asked
    if raced_in:
        products = {**products, **await request.app[CATALOGUE].products(raced_in)}
    return ok(priced_cart(user_id, cart, products))


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
    user_id = _cart_owner(request)
    product_id = _product_id(body.product_id)
    products, asked = await _products_before_change(request, user_id, adding=product_id)
    stock = _existing(products, product_id).stock
    cart = await request.app[STORE].add(user_id, product_id, body.quantity, stock=stock)
    request.app[CART_CHANGES].labels("add").inc()
    return await _priced_answer(request, user_id, cart, products, asked)


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
    user_id = _cart_owner(request)
    product_id = _product_id(request.match_info["productId"])
    store = request.app[STORE]
    if body.quantity == 0:
        products, asked = await _products_before_change(request, user_id)
        cart = await store.remove(user_id, product_id)
        change = "remove"
    else:
        products, asked = await _products_before_change(request, user_id, adding=product_id)
        stock = _existing(products, product_id).stock
        cart = await store.set_quantity(user_id, product_id, body.quantity, stock=stock)
        change = "set"
    request.app[CART_CHANGES].labels(change).inc()
    return await _priced_answer(request, user_id, cart, products, asked)


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
    user_id = _cart_owner(request)
    product_id = _product_id(request.match_info["productId"])
    products, asked = await _products_before_change(request, user_id)
    cart = await request.app[STORE].remove(user_id, product_id)
    request.app[CART_CHANGES].labels("remove").inc()
    return await _priced_answer(request, user_id, cart, products, asked)


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
    user_id = _cart_owner(request)
    cart = await request.app[STORE].clear(user_id, expected_version=query.version)
    request.app[CART_CHANGES].labels("clear").inc()
    return ok(priced_cart(user_id, cart, {}))
