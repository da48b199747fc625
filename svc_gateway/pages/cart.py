"""The cart: adding to it, changing and removing lines; a guest's cart, merged into the
account's at login; the count in every page's header. (The checkout is pages/checkout.py.)

A logged-in shopper's cart is reached as the API reaches it (``/api/cart/{userId}``, the
shopper's token). A guest's is the cart service's internal guest cart named by the guest
cookie (svc_gateway/session.py), reached with the gateway's own service token: the public
API has no route to it. Checking out needs an account: a guest is sent to log in or
register and comes back to the cart, merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shopkit.domain import MAX_CART_LINES, MAX_CART_QUANTITY, MAX_IDS_PER_CALL
from shopkit.errors import NotFound, UpstreamUnavailable
from svc_gateway.keys import GATEWAY_CREDENTIAL
from svc_gateway.pages.access import Redirect, require_user, session_of
from svc_gateway.pages.backend import (
    QUICK_TIMEOUT,
    call_backend,
    call_backend_or_raise,
    finish_all,
    segment,
)
from svc_gateway.pages.delivery import amount_cents, free_delivery_offer, quick_delivery_options
from svc_gateway.pages.forms import parse_quantity, submit_form
from svc_gateway.pages.params import PRODUCT_NOT_FOUND, is_product_id, product_id_of
from svc_gateway.pages.rendering import render


@dataclass(frozen=True, slots=True)
class BrowsingCart:
    """The cart this browser fills: where the cart service keeps it and the token to send
    (None: the shopper's own)."""

    path: str
    token: str | None = None

    def at(self, *rest: str) -> str:
        return "/".join([self.path, *rest])


def guest_carts_on(request: web.Request) -> bool:
    """Whether guests can fill a cart: the gateway has a service token (JWT_SECRET)."""
    return request.app[GATEWAY_CREDENTIAL] is not None


def _guest_cart(request: web.Request, guest_id: str) -> BrowsingCart:
    credential = request.app[GATEWAY_CREDENTIAL]
    assert credential is not None  # only asked for when guest_carts_on
    return BrowsingCart(f"/internal/guest-carts/{segment(guest_id)}", credential.token)


def cart_to_change(request: web.Request, login_message: str) -> BrowsingCart:
    """The cart a form changes: the shopper's, or this guest's (made now if it has none,
    and its cookie renewed: the cart lives 7 days after its last change). Without guest
    carts, a guest is sent to log in."""
    session = session_of(request)
    if session.user is None and guest_carts_on(request):
        return _guest_cart(request, session.guest_cart())
    user = require_user(request, login_message)
    return BrowsingCart(f"/api/cart/{segment(user.user_id)}")


def cart_to_read(request: web.Request) -> BrowsingCart | None:
    """The cart this browser has: the shopper's, this guest's, or None (a guest who never
    added anything, or guest carts are off)."""
    session = session_of(request)
    if session.user is not None:
        return BrowsingCart(f"/api/cart/{segment(session.user.user_id)}")
    if session.guest_id is None or not guest_carts_on(request):
        return None
    return _guest_cart(request, session.guest_id)


async def cart_count(request: web.Request) -> int | None:
    """Units in this browser's cart, for the header: 0 with no cart (no call made), None
    when the cart service cannot say quickly (the page shows the cart without a count)."""
    cart = cart_to_read(request)
    if cart is None:
        return 0
    try:
        reply = await call_backend(
            request, "cart", "GET", cart.path, token=cart.token, timeout=QUICK_TIMEOUT
        )
    except UpstreamUnavailable:
        return None
    data = reply.data if reply.status == 200 else None
    count = data.get("item_count") if isinstance(data, dict) else None
    return count if isinstance(count, int) else None


# What the shopper is told about a guest cart's line the merge could not add whole.
_CUT_REASONS = {
    "stock": "that is all the stock",
    "quantity_limit": f"a cart holds at most {MAX_CART_QUANTITY} of one product",
    "cart_full": f"a cart holds at most {MAX_CART_LINES} different products",
    "unavailable": "it is no longer sold",
}


def _items(units: int) -> str:
    return "1 item" if units == 1 else f"{units} items"


def merge_messages(merged: dict[str, Any]) -> list[tuple[str, str]]:
    """(level, sentence) telling the shopper what a merge did: what was added, and each
    line cut and why."""
    messages = []
    units = merged["units_added"]
    if units:
        verb = "is" if units == 1 else "are"
        text = f"The {_items(units)} you put in your cart before logging in {verb} in it now."
        messages.append(("success", text))
    cut = [
        f"{line['name'] or 'a product'}: "
        + (f"{line['added']} of {line['requested']}" if line["added"] else "none")
        + f" ({_CUT_REASONS.get(line['reason'], line['reason'])})"
        for line in merged["cut"]
    ]
    if cut:
        text = "Not everything from before you logged in could be added to your cart: "
        messages.append(("info", text + "; ".join(cut) + "."))
    return messages


async def merge_guest_cart(request: web.Request, *, on_the_way: bool = False) -> None:
    """Merge this browser's guest cart into the logged-in shopper's cart (at login and
    registration; ``on_the_way``: a page found a guest cart left over by a merge that
    failed, and tries again quietly and quickly). Done, the guest cookie is deleted and
    the shopper told what was added; not done (the cart service down), the cookie stays
    for the next page to try again: the guest cart is never dropped unmerged."""
    session = session_of(request)
    user, guest_id = session.user, session.guest_id
    if user is None or guest_id is None:
        return
    if not guest_carts_on(request) or user.user_number is None:
        session.end_guest_cart()
        return
    guest = _guest_cart(request, guest_id)
    try:
        reply = await call_backend(
            request,
            "cart",
            "POST",
            guest.at("merge"),
            json={"user_id": user.user_number},
            token=guest.token,
            timeout=QUICK_TIMEOUT if on_the_way else None,
        )
    except UpstreamUnavailable:
        reply = None
    if reply is None or reply.status != 200:
        if not on_the_way:
            session.flash(
                "error",
                "What you put in your cart before logging in could not be added to it just "
                "now; it will be, on one of the next pages you open.",
            )
        return
    session.end_guest_cart()
    for level, text in merge_messages(reply.data):
        session.flash(level, text)


def _line_name(cart: dict[str, Any], product_id: str) -> str:
    for item in cart.get("items", []):
        if item["product_id"] == product_id:
            return item["name"]
    return "the product"


async def add_to_cart(request: web.Request) -> web.Response:
    cart = cart_to_change(request, "Log in to fill your cart.")
    form = await request.post()
    product_id = str(form.get("product_id", ""))
    if not is_product_id(product_id):
        raise NotFound(PRODUCT_NOT_FOUND)
    back = f"/products/{product_id}"
    quantity = parse_quantity(form.get("quantity"), 1, MAX_CART_QUANTITY)
    if quantity is None:
        session_of(request).flash("error", f"Choose a quantity from 1 to {MAX_CART_QUANTITY}.")
        raise Redirect(back)
    units = "1 unit" if quantity == 1 else f"{quantity} units"
    return await submit_form(
        request,
        "cart",
        "POST",
        cart.at("items"),
        json={"product_id": product_id, "quantity": quantity},
        token=cart.token,
        success=lambda data: f"Added {units} of {_line_name(data, product_id)} to your cart.",
        redirect_to=back,
    )


# What the cart page shows for a guest who has not added anything yet.
_NO_CART = {"items": [], "total": 0, "item_count": 0}


async def priced_cart(request: web.Request) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """This browser's cart, and its lines with the products' stock and category (the cart
    holds no stock levels): where stock is short, the line says so (``short``)."""
    browsing = cart_to_read(request)
    cart = _NO_CART
    if browsing is not None:
        reply = await call_backend_or_raise(
            request, "cart", "GET", browsing.path, token=browsing.token
        )
        cart = reply["data"]
    products: dict[str, dict[str, Any]] = {}
    if cart["items"]:
        ids = ",".join(item["product_id"] for item in cart["items"])
        path = f"/api/products?ids={ids}&limit={MAX_IDS_PER_CALL}"
        listing = await call_backend_or_raise(request, "product", "GET", path, as_shopper=False)
        products = {product["id"]: product for product in listing["data"]}
    lines = []
    for item in cart["items"]:
        product = products.get(item["product_id"], {})
        available = product.get("stock", 0)
        lines.append(
            {
                **item,
                "category": product.get("category"),
                "stock": available,
                "short": item["quantity"] > available,
            }
        )
    return cart, lines


async def cart_page(request: web.Request) -> web.Response:
    session = session_of(request)
    if session.user is None and not guest_carts_on(request):
        require_user(request, "Log in to see your cart.")
    (cart, lines), options = await finish_all(priced_cart(request), quick_delivery_options(request))
    subtotal_cents = sum(amount_cents(line["subtotal"]) for line in lines)
    offer = free_delivery_offer(options, subtotal_cents) if lines else None
    context = {
        "cart": cart,
        "delivery_offer": offer,
        "cart_count": cart["item_count"],  # the header's, from this fresher answer
        "guest": session.user is None,
        "lines": lines,
        "short": any(line["short"] for line in lines),
        "max_quantity": MAX_CART_QUANTITY,
    }
    return render(request, "cart.html", context)


async def change_quantity(request: web.Request) -> web.Response:
    cart = cart_to_change(request, "Log in to change your cart.")
    product_id = product_id_of(request, "product_id")
    form = await request.post()
    quantity = parse_quantity(form.get("quantity"), 0, MAX_CART_QUANTITY)
    if quantity is None:
        session_of(request).flash("error", f"Choose a quantity from 0 to {MAX_CART_QUANTITY}.")
        raise Redirect("/cart")
    return await submit_form(
        request,
        "cart",
        "PUT",
        cart.at("items", product_id),
        json={"quantity": quantity},
        token=cart.token,
        success=lambda data: (
            f"You now have {quantity} of {_line_name(data, product_id)} in your cart."
            if quantity
            else "Removed it from your cart."
        ),
        redirect_to="/cart",
    )


async def remove_from_cart(request: web.Request) -> web.Response:
    cart = cart_to_change(request, "Log in to change your cart.")
    product_id = product_id_of(request, "product_id")
    return await submit_form(
        request,
        "cart",
        "DELETE",
        cart.at("items", product_id),
        token=cart.token,
        success=lambda _: "Removed it from your cart.",
        redirect_to="/cart",
    )


async def clear_cart(request: web.Request) -> web.Response:
    cart = cart_to_change(request, "Log in to change your cart.")
    await call_backend_or_raise(request, "cart", "DELETE", cart.path, token=cart.token)
    session_of(request).flash("success", "Your cart is empty now.")
    raise Redirect("/cart")
