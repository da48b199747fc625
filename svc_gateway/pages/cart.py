"""The cart and checkout: adding to the cart, changing and removing lines, and placing the
order."""

from __future__ import annotations

import re
import secrets
from typing import Any

import orjson
from aiohttp import web

from shopkit.client import ServiceReply
from shopkit.domain import MAX_CART_QUANTITY, MAX_IDS_PER_CALL
from shopkit.errors import NotFound, UpstreamUnavailable
from svc_gateway.checkout_forwarding import certain_checkout
from svc_gateway.keys import BACKENDS, CHECKOUT_DEADLINE
from svc_gateway.pages.access import Redirect, require_user, session_of
from svc_gateway.pages.backend import BackendRefused, call_backend_or_raise, segment
from svc_gateway.pages.forms import parse_quantity, readable, submit_form
from svc_gateway.pages.params import PRODUCT_NOT_FOUND, is_product_id, product_id_of
from svc_gateway.pages.rendering import render

# The checkout form's idempotency key, as the cart page makes it (secrets.token_urlsafe).
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")


def _cart_path(user_id: str, *rest: str) -> str:
    return "/".join([f"/api/cart/{segment(user_id)}", *rest])


def _line_name(cart: dict[str, Any], product_id: str) -> str:
    for item in cart.get("items", []):
        if item["product_id"] == product_id:
            return item["name"]
    return "the product"


async def add_to_cart(request: web.Request) -> web.Response:
    user = require_user(request, "Log in to fill your cart.")
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
        _cart_path(user.user_id, "items"),
        json={"product_id": product_id, "quantity": quantity},
        success=lambda cart: f"Added {units} of {_line_name(cart, product_id)} to your cart.",
        redirect_to=back,
    )


async def cart_page(request: web.Request) -> web.Response:
    user = require_user(request, "Log in to see your cart.")
    cart = (await call_backend_or_raise(request, "cart", "GET", _cart_path(user.user_id)))["data"]
    # The cart holds no stock levels: the products' own, to say where stock is short.
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
    context = {
        "cart": cart,
        "lines": lines,
        "short": any(line["short"] for line in lines),
        "max_quantity": MAX_CART_QUANTITY,
        # A new key for each showing of the cart: a double click or a refresh of this one
        # checkout sends the same key, and the order service answers with the first order.
        "idempotency_key": secrets.token_urlsafe(24),
    }
    return render(request, "cart.html", context)


async def change_quantity(request: web.Request) -> web.Response:
    user = require_user(request)
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
        _cart_path(user.user_id, "items", product_id),
        json={"quantity": quantity},
        success=lambda cart: (
            f"You now have {quantity} of {_line_name(cart, product_id)} in your cart."
            if quantity
            else "Removed it from your cart."
        ),
        redirect_to="/cart",
    )


async def remove_from_cart(request: web.Request) -> web.Response:
    user = require_user(request)
    product_id = product_id_of(request, "product_id")
    return await submit_form(
        request,
        "cart",
        "DELETE",
        _cart_path(user.user_id, "items", product_id),
        success=lambda _: "Removed it from your cart.",
        redirect_to="/cart",
    )


async def clear_cart(request: web.Request) -> web.Response:
    user = require_user(request)
    await call_backend_or_raise(request, "cart", "DELETE", _cart_path(user.user_id))
    session_of(request).flash("success", "Your cart is empty now.")
    raise Redirect("/cart")


async def _check_out_cart(request: web.Request, key: str) -> ServiceReply:
    """The cart checked out as the API's checkout is: sent again with the same key when an
    answer is lost, until the outcome is certain (svc_gateway/checkout_forwarding.py), so a
    shopper whose order was placed never sees an error page instead of the confirmation."""
    client = request.app[BACKENDS].get("order")
    if client is None:
        raise UpstreamUnavailable("The order service is not configured on this gateway.")
    headers = {"Idempotency-Key": key, "Authorization": f"Bearer {session_of(request).token}"}
    answer = await certain_checkout(
        client, "/api/orders", headers, None, request.app[CHECKOUT_DEADLINE]
    )
    if answer.status >= 500:
        raise UpstreamUnavailable("The order service is unavailable right now; try again shortly.")
    try:
        return ServiceReply(answer.status, orjson.loads(answer.body))
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable("The order service answered with something unreadable.") from None


async def checkout(request: web.Request) -> web.Response:
    require_user(request, "Log in to check out.")
    form = await request.post()
    session = session_of(request)
    key = form.get("idempotency_key")
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        session.flash("error", "Something was missing from the checkout form; please try again.")
        raise Redirect("/cart")
    reply = await _check_out_cart(request, key)
    if reply.status >= 400:
        # Empty cart, short stock, a product gone: nothing was bought; back to the cart.
        session.flash("error", readable(BackendRefused(reply)))
        raise Redirect("/cart")
    raise Redirect(f"/orders/{reply.data['id']}/confirmation")
