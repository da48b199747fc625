"""The cart: adding to it, changing and removing lines (the checkout is pages/checkout.py)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shopkit.domain import MAX_CART_QUANTITY, MAX_IDS_PER_CALL
from shopkit.errors import NotFound
from svc_gateway.pages.access import Redirect, require_user, session_of
from svc_gateway.pages.backend import call_backend_or_raise, segment
from svc_gateway.pages.forms import parse_quantity, submit_form
from svc_gateway.pages.params import PRODUCT_NOT_FOUND, is_product_id, product_id_of
from svc_gateway.pages.rendering import render


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


async def priced_cart(request: web.Request, user_id: str) -> tuple[dict[str, Any], list[Any]]:
    """The shopper's cart, and its lines with the products' stock and category (the cart
    holds no stock levels): where stock is short, the line says so (``short``)."""
    cart = (await call_backend_or_raise(request, "cart", "GET", _cart_path(user_id)))["data"]
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
    user = require_user(request, "Log in to see your cart.")
    cart, lines = await priced_cart(request, user.user_id)
    context = {
        "cart": cart,
        "lines": lines,
        "short": any(line["short"] for line in lines),
        "max_quantity": MAX_CART_QUANTITY,
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
