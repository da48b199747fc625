"""The administrators' pages: the catalogue (create, edit, restock, delete) and the orders.

Every handler starts with ``require_admin`` (a customer gets the 403 page); the backends
check the admin's token again on every change.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiMapping

from shopkit.domain import MAX_STOCK, ORDER_TRANSITIONS
from shopkit.errors import NotFound
from shopkit.parsing import MAX_ID, parse_amount, parse_int
from svc_gateway.pages import (
    ORDER_NOT_FOUND,
    PRODUCT_NOT_FOUND,
    STATUS_LABELS,
    BackendRefused,
    Redirect,
    call_backend,
    fetch,
    field_errors,
    local_path,
    order_id_of,
    page_numbers,
    page_of,
    plain_amount,
    product_id_of,
    render,
    report_change,
    require_admin,
    session_of,
)

routes = web.RouteTableDef()

PRODUCTS_PAGE_SIZE = 20
ORDERS_PAGE_SIZE = 20
PRODUCT_FIELDS = {
    "name": "Name",
    "description": "Description",
    "price": "Price",
    "category": "Category",
    "stock": "Stock",
    "imageUrl": "Image URL",
}


_GROUPED = re.compile(r"[0-9]{1,3}(,[0-9]{3})+(\.[0-9]*)?")


def _number(text: str) -> Decimal | str:
    """A form's price as an exact decimal for the API; anything else is sent as it is, so
    the API's own validation says what is wrong with it, next to the field."""
    amount = text.strip().removeprefix("$")
    if _GROUPED.fullmatch(amount):  # 1,250.00: commas only as thousands separators
        amount = amount.replace(",", "")
    try:
        return parse_amount(amount)
    except ValueError:
        return text


def _whole(text: str) -> int | str:
    try:
        return parse_int(text.strip(), low=-MAX_ID, high=MAX_ID)
    except ValueError:
        return text


def product_body(form: MultiMapping[Any], *, creating: bool) -> dict[str, Any]:
    """The product form as the product API's body. Editing sends every field but the stock
    (restocking changes it atomically); an emptied image URL removes the image."""
    body: dict[str, Any] = {
        "name": str(form.get("name", "")).strip(),
        "description": str(form.get("description", "")).strip(),
        "price": _number(str(form.get("price", ""))),
        "category": str(form.get("category", "")).strip(),
    }
    if creating:
        body["stock"] = _whole(str(form.get("stock", "")) or "0")
    image = str(form.get("imageUrl", "")).strip()
    if image:
        body["imageUrl"] = image
    elif not creating:
        body["imageUrl"] = None
    return body


def _form_values(form: MultiMapping[Any]) -> dict[str, str]:
    return {name: str(form.get(name, "")) for name in PRODUCT_FIELDS}


@routes.get("/admin")
async def admin_home(request: web.Request) -> web.Response:
    require_admin(request)
    raise Redirect("/admin/products")


# -- products -----------------------------------------------------------------------------------


@routes.get("/admin/products")
async def admin_products(request: web.Request) -> web.Response:
    require_admin(request)
    q = request.query.get("q", "").strip()[:100]
    page = page_of(request.query)
    params: dict[str, Any] = {"sort": "name", "page": page, "limit": PRODUCTS_PAGE_SIZE}
    if q:
        params["q"] = q
    listing = await fetch(
        request, "product", "GET", "/api/products?" + urlencode(params), as_shopper=False
    )
    last_page = max(1, -(-listing["total"] // PRODUCTS_PAGE_SIZE))

    def page_url(number: int) -> str:
        return "/admin/products?" + urlencode({**({"q": q} if q else {}), "page": number})

    context = {
        "products": listing["data"],
        "total": listing["total"],
        "q": q,
        "page": page,
        "last_page": last_page,
        "page_numbers": page_numbers(page, last_page),
        "page_url": page_url,
        "here": request.path_qs,
    }
    return render(request, "admin/products.html", context)


def _product_form(
    request: web.Request,
    *,
    product: dict[str, Any] | None,
    values: dict[str, str],
    errors: dict[str, str],
    status: int = 200,
) -> web.Response:
    context = {"product": product, "values": values, "errors": errors}
    return render(request, "admin/product_form.html", context, status=status)


@routes.get("/admin/products/new")
async def new_product_page(request: web.Request) -> web.Response:
    require_admin(request)
    return _product_form(request, product=None, values={"stock": "0"}, errors={})


@routes.post("/admin/products/new")
async def create_product(request: web.Request) -> web.Response:
    require_admin(request)
    form = await request.post()
    body = product_body(form, creating=True)
    reply = await call_backend(request, "product", "POST", "/api/products", json=body)
    if reply.status == 400:
        errors = field_errors(BackendRefused(reply), PRODUCT_FIELDS)
        return _product_form(
            request, product=None, values=_form_values(form), errors=errors, status=400
        )
    if reply.status >= 400:
        raise BackendRefused(reply)
    session_of(request).flash("success", f"Created “{reply.data['name']}”.")
    raise Redirect("/admin/products")


async def _product(request: web.Request, product_id: str) -> dict[str, Any]:
    path = f"/api/products/{product_id}"
    return (await fetch(request, "product", "GET", path, not_found=PRODUCT_NOT_FOUND))["data"]


@routes.get("/admin/products/{id}/edit")
async def edit_product_page(request: web.Request) -> web.Response:
    require_admin(request)
    product = await _product(request, product_id_of(request))
    values = {
        "name": product["name"],
        "description": product["description"],
        "price": plain_amount(product["price"]),
        "category": product["category"],
        "imageUrl": product["imageUrl"] or "",
    }
    return _product_form(request, product=product, values=values, errors={})


@routes.post("/admin/products/{id}/edit")
async def update_product(request: web.Request) -> web.Response:
    require_admin(request)
    product_id = product_id_of(request)
    form = await request.post()
    body = product_body(form, creating=False)
    reply = await call_backend(request, "product", "PUT", f"/api/products/{product_id}", json=body)
    if reply.status == 404:
        raise NotFound(PRODUCT_NOT_FOUND)
    if reply.status == 400:
        product = await _product(request, product_id)
        errors = field_errors(BackendRefused(reply), PRODUCT_FIELDS)
        return _product_form(
            request, product=product, values=_form_values(form), errors=errors, status=400
        )
    if reply.status >= 400:
        raise BackendRefused(reply)
    session_of(request).flash("success", f"Saved “{reply.data['name']}”.")
    raise Redirect("/admin/products")


@routes.post("/admin/products/{id}/stock")
async def restock_product(request: web.Request) -> web.Response:
    require_admin(request)
    product_id = product_id_of(request)
    form = await request.post()
    back = local_path(form.get("next"), "/admin/products")
    session = session_of(request)
    change = _whole(str(form.get("quantity", "")))
    if not isinstance(change, int) or change == 0 or abs(change) > MAX_STOCK:
        session.flash("error", "Enter the units to add (or, with a minus sign, to take away).")
        raise Redirect(back)
    path = f"/api/products/{product_id}/stock"
    reply = await call_backend(request, "product", "PATCH", path, json={"quantity": change})
    report_change(
        request,
        reply,
        lambda product: f"“{product['name']}” now has {product['stock']} in stock.",
        not_found=PRODUCT_NOT_FOUND,
    )
    raise Redirect(back)


@routes.post("/admin/products/{id}/delete")
async def delete_product(request: web.Request) -> web.Response:
    require_admin(request)
    product_id = product_id_of(request)
    form = await request.post()
    product = await _product(request, product_id)
    await fetch(request, "product", "DELETE", f"/api/products/{product_id}")
    session_of(request).flash("success", f"Deleted “{product['name']}”.")
    raise Redirect(local_path(form.get("next"), "/admin/products"))


# -- orders -------------------------------------------------------------------------------------


@routes.get("/admin/orders")
async def admin_orders(request: web.Request) -> web.Response:
    require_admin(request)
    status = request.query.get("status", "")
    if status not in STATUS_LABELS:
        status = ""
    page = page_of(request.query)
    params: dict[str, Any] = {"page": page, "limit": ORDERS_PAGE_SIZE}
    if status:
        params["status"] = status
    listing = await fetch(request, "order", "GET", "/api/orders?" + urlencode(params))
    last_page = max(1, -(-listing["total"] // ORDERS_PAGE_SIZE))

    def page_url(number: int) -> str:
        return "/admin/orders?" + urlencode(
            {**({"status": status} if status else {}), "page": number}
        )

    context = {
        "orders": listing["data"],
        "total": listing["total"],
        "status": status,
        "next_statuses": ORDER_TRANSITIONS,
        "page": page,
        "last_page": last_page,
        "page_numbers": page_numbers(page, last_page),
        "page_url": page_url,
        "here": request.path_qs,
    }
    return render(request, "admin/orders.html", context)


@routes.post("/admin/orders/{id}/status")
async def change_order_status(request: web.Request) -> web.Response:
    require_admin(request)
    order_id = order_id_of(request)
    form = await request.post()
    back = local_path(form.get("next"), "/admin/orders")
    session = session_of(request)
    status = form.get("status")
    if not isinstance(status, str) or status not in STATUS_LABELS:
        session.flash("error", "Choose the status to move the order to.")
        raise Redirect(back)
    path = f"/api/orders/{order_id}/status"
    reply = await call_backend(request, "order", "PATCH", path, json={"status": status})
    label = STATUS_LABELS[status].lower()
    report_change(
        request,
        reply,
        lambda order: f"Order #{order_id} is now {label}.",
        not_found=ORDER_NOT_FOUND,
    )
    raise Redirect(back)
