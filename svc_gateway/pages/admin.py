"""The administrators' pages: the catalogue (create, edit, restock, delete) and the orders.

Every handler starts with ``require_admin`` (a customer gets the 403 page); the backends
check the admin's token again on every change.
"""

from __future__ import annotations

import asyncio
import io
import re
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from multidict import MultiMapping

from shopkit.domain import MAX_STOCK, ORDER_TRANSITIONS
from shopkit.parsing import MAX_ID, parse_amount, parse_int
from shopkit.uploads import PICTURE_MAX_BYTES, UPLOAD_BODY_LIMIT, read_form_data
from shopkit.validation import LargerBody, size_in_words
from svc_gateway.pages.access import Redirect, local_path, require_admin, session_of
from svc_gateway.pages.backend import BackendRefused, call_backend_or_raise, finish_all
from svc_gateway.pages.forms import ShowForm, submit_form
from svc_gateway.pages.params import (
    ORDER_NOT_FOUND,
    PRODUCT_NOT_FOUND,
    order_id_of,
    page_numbers,
    page_of,
    product_id_of,
)
from svc_gateway.pages.rendering import LOW_STOCK, STATUS_LABELS, plain_amount, render

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
# The picture form's one field, as the product service's upload route names it.
PICTURE_FIELD = "image"
# The admin's picture form: its body may be as large as the API's upload (shopkit.uploads).
PAGE_PICTURE_UPLOAD = LargerBody(
    "POST", re.compile(r"/admin/products/[^/]+/image"), UPLOAD_BODY_LIMIT
)
PICTURE_HINT = (
    f"A JPEG, PNG, WebP or GIF of at most {size_in_words(PICTURE_MAX_BYTES)}. It is shown "
    "instead of the image URL's picture, without the file's hidden details (such as where "
    "a photo was taken)."
)


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


async def admin_home(request: web.Request) -> web.Response:
    require_admin(request)
    raise Redirect("/admin/products")


# -- products -----------------------------------------------------------------------------------


async def admin_products(request: web.Request) -> web.Response:
    require_admin(request)
    q = request.query.get("q", "").strip()[:100]
    category = request.query.get("category", "").strip()[:60]
    page = page_of(request.query)
    kept = {key: value for key, value in (("q", q), ("category", category)) if value}
    params: dict[str, Any] = {"sort": "name", "page": page, "limit": PRODUCTS_PAGE_SIZE, **kept}
    listing, categories = await finish_all(
        call_backend_or_raise(
            request, "product", "GET", "/api/products?" + urlencode(params), as_shopper=False
        ),
        call_backend_or_raise(
            request, "product", "GET", "/api/products/categories", as_shopper=False
        ),
    )
    last_page = max(1, -(-listing["total"] // PRODUCTS_PAGE_SIZE))

    def page_url(number: int) -> str:
        return "/admin/products?" + urlencode({**kept, "page": number})

    context = {
        "products": listing["data"],
        "total": listing["total"],
        "q": q,
        "category": category,
        "categories": categories["data"],
        "low_stock": LOW_STOCK,
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
    picture_errors: dict[str, str] | None = None,
) -> web.Response:
    context = {
        "product": product,
        "values": values,
        "errors": errors,
        "picture_errors": picture_errors or {},
        "picture_hint": PICTURE_HINT,
    }
    return render(request, "admin/product_form.html", context, status=status)


def _edit_values(product: dict[str, Any]) -> dict[str, str]:
    return {
        "name": product["name"],
        "description": product["description"],
        "price": plain_amount(product["price"]),
        "category": product["category"],
        "imageUrl": product["imageUrl"] or "",
    }


def _product_form_again(
    request: web.Request, form: MultiMapping[Any], product_id: str | None
) -> ShowForm:
    """The product form as it was sent, with the errors to correct (and, when editing, the
    product as it is now)."""

    async def show(errors: dict[str, str], status: int) -> web.Response:
        product = None if product_id is None else await _product(request, product_id)
        values = _form_values(form)
        return _product_form(request, product=product, values=values, errors=errors, status=status)

    return show


async def new_product_page(request: web.Request) -> web.Response:
    require_admin(request)
    return _product_form(request, product=None, values={"stock": "0"}, errors={})


async def create_product(request: web.Request) -> web.Response:
    require_admin(request)
    form = await request.post()
    return await submit_form(
        request,
        "product",
        "POST",
        "/api/products",
        json=product_body(form, creating=True),
        show_form=_product_form_again(request, form, None),
        fields=PRODUCT_FIELDS,
        success=lambda product: f"Created “{product['name']}”.",
        redirect_to="/admin/products",
    )


async def _product(request: web.Request, product_id: str) -> dict[str, Any]:
    path = f"/api/products/{product_id}"
    reply = await call_backend_or_raise(
        request, "product", "GET", path, not_found=PRODUCT_NOT_FOUND
    )
    return reply["data"]


async def edit_product_page(request: web.Request) -> web.Response:
    require_admin(request)
    product = await _product(request, product_id_of(request))
    return _product_form(request, product=product, values=_edit_values(product), errors={})


async def update_product(request: web.Request) -> web.Response:
    require_admin(request)
    product_id = product_id_of(request)
    form = await request.post()
    return await submit_form(
        request,
        "product",
        "PUT",
        f"/api/products/{product_id}",
        json=product_body(form, creating=False),
        not_found=PRODUCT_NOT_FOUND,
        show_form=_product_form_again(request, form, product_id),
        fields=PRODUCT_FIELDS,
        success=lambda product: f"Saved “{product['name']}”.",
        redirect_to="/admin/products",
    )


async def upload_picture(request: web.Request) -> web.Response:
    """The picture form (multipart): its file sent on to the product service, which judges
    and keeps it; a refusal is shown next to the file field, on the edit page."""
    require_admin(request)
    product_id = product_id_of(request)
    form = await read_form_data(request)  # read already, for its CSRF token
    upload = form.get(PICTURE_FIELD)
    if not isinstance(upload, web.FileField) or not upload.filename:
        return await _picture_refused(request, product_id, "Choose a picture to upload.")
    sent = aiohttp.FormData()
    # A file spooled to disk is read in a thread; a small one is in memory anyway.
    data = await asyncio.to_thread(upload.file.read, PICTURE_MAX_BYTES + 1)
    sent.add_field(
        PICTURE_FIELD, io.BytesIO(data), filename=upload.filename, content_type=upload.content_type
    )
    try:
        product = await call_backend_or_raise(
            request,
            "product",
            "POST",
            f"/api/products/{product_id}/image",
            form=sent,
            not_found=PRODUCT_NOT_FOUND,
        )
    except BackendRefused as refusal:
        if refusal.status in (400, 413, 415):
            return await _picture_refused(request, product_id, refusal.message)
        raise
    session_of(request).flash("success", f"New picture for “{product['data']['name']}”.")
    raise Redirect(f"/admin/products/{product_id}/edit")


async def _picture_refused(request: web.Request, product_id: str, message: str) -> web.Response:
    product = await _product(request, product_id)
    return _product_form(
        request,
        product=product,
        values=_edit_values(product),
        errors={},
        picture_errors={PICTURE_FIELD: message},
        status=400,
    )


async def restock_product(request: web.Request) -> web.Response:
    require_admin(request)
    product_id = product_id_of(request)
    form = await request.post()
    back = local_path(form.get("next"), "/admin/products")
    change = _whole(str(form.get("quantity", "")))
    if not isinstance(change, int) or change == 0 or abs(change) > MAX_STOCK:
        session_of(request).flash(
            "error", "Enter the units to add (or, with a minus sign, to take away)."
        )
        raise Redirect(back)
    return await submit_form(
        request,
        "product",
        "PATCH",
        f"/api/products/{product_id}/stock",
        json={"quantity": change},
        not_found=PRODUCT_NOT_FOUND,
        success=lambda product: f"“{product['name']}” now has {product['stock']} in stock.",
        redirect_to=back,
    )


async def delete_product(request: web.Request) -> web.Response:
    require_admin(request)
    product_id = product_id_of(request)
    form = await request.post()
    product = await _product(request, product_id)
    await call_backend_or_raise(request, "product", "DELETE", f"/api/products/{product_id}")
    session_of(request).flash("success", f"Deleted “{product['name']}”.")
    raise Redirect(local_path(form.get("next"), "/admin/products"))


# -- orders -------------------------------------------------------------------------------------


async def admin_orders(request: web.Request) -> web.Response:
    require_admin(request)
    status = request.query.get("status", "")
    if status not in STATUS_LABELS:
        status = ""
    # A name, an e-mail or a part of one, or a customer's number, as typed (the order
    # service judges it; anything odd is a 400 page naming the field).
    customer = " ".join(request.query.get("customer", "").split())[:254]
    page = page_of(request.query)
    filters = {
        **({"status": status} if status else {}),
        **({"customer": customer} if customer else {}),
    }
    params: dict[str, Any] = {**filters, "page": page, "limit": ORDERS_PAGE_SIZE}
    listing = await call_backend_or_raise(
        request, "order", "GET", "/api/orders?" + urlencode(params)
    )
    last_page = max(1, -(-listing["total"] // ORDERS_PAGE_SIZE))

    def page_url(number: int) -> str:
        return "/admin/orders?" + urlencode({**filters, "page": number})

    context = {
        "orders": listing["data"],
        "total": listing["total"],
        "status": status,
        "customer": customer,
        "next_statuses": ORDER_TRANSITIONS,
        "page": page,
        "last_page": last_page,
        "page_numbers": page_numbers(page, last_page),
        "page_url": page_url,
        "here": request.path_qs,
    }
    return render(request, "admin/orders.html", context)


async def change_order_status(request: web.Request) -> web.Response:
    require_admin(request)
    order_id = order_id_of(request)
    form = await request.post()
    back = local_path(form.get("next"), "/admin/orders")
    status = form.get("status")
    if not isinstance(status, str) or status not in STATUS_LABELS:
        session_of(request).flash("error", "Choose the status to move the order to.")
        raise Redirect(back)
    label = STATUS_LABELS[status].lower()
    return await submit_form(
        request,
        "order",
        "PATCH",
        f"/api/orders/{order_id}/status",
        json={"status": status},
        not_found=ORDER_NOT_FOUND,
        success=lambda _: f"Order #{order_id} is now {label}.",
        redirect_to=back,
    )
