"""The shopper's pages: the catalogue, a product, the account, the cart, checkout and orders."""

from __future__ import annotations

import logging
import re
import secrets
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import orjson
from aiohttp import web
from multidict import MultiMapping

from shopkit.client import ServiceReply
from shopkit.client_address import client_behind_hops
from shopkit.domain import MAX_CART_QUANTITY, MAX_IDS_PER_CALL, ORDER_TRANSITIONS
from shopkit.errors import NotFound, UpstreamUnavailable
from shopkit.keys import SETTINGS
from svc_gateway.checkout_forwarding import certain_checkout
from svc_gateway.keys import BACKENDS, CHECKOUT_DEADLINE
from svc_gateway.pages import (
    ORDER_NOT_FOUND,
    PRODUCT_NOT_FOUND,
    BackendRefused,
    Redirect,
    call_backend,
    fetch,
    field_errors,
    gather,
    is_product_id,
    local_path,
    order_id_of,
    page_numbers,
    page_of,
    parse_quantity,
    product_id_of,
    readable,
    render,
    report_change,
    require_user,
    segment,
    session_of,
)

log = logging.getLogger("shop.gateway.pages")
routes = web.RouteTableDef()

CATALOGUE_PAGE_SIZE = 12
ORDERS_PAGE_SIZE = 10
SORTS = {
    "-createdAt": "Newest first",
    "price": "Price: low to high",
    "-price": "Price: high to low",
    "name": "Name: A to Z",
}
DEFAULT_SORT = "-createdAt"
FILTER_LABELS = {
    "q": "Search",
    "category": "Category",
    "minPrice": "Lowest price",
    "maxPrice": "Highest price",
    "page": "Page",
}
# The checkout form's idempotency key, as this page makes it (secrets.token_urlsafe).
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")


# -- the catalogue ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueFilters:
    """The catalogue's search, filters, sort and page, as the page's query string holds them
    (the same names the product API uses)."""

    q: str = ""
    category: str = ""
    min_price: str = ""
    max_price: str = ""
    in_stock: bool = False
    sort: str = DEFAULT_SORT
    page: int = 1

    @classmethod
    def from_query(cls, query: MultiMapping[str]) -> CatalogueFilters:
        def text(name: str, limit: int) -> str:
            return query.get(name, "").strip()[:limit]

        sort = query.get("sort", DEFAULT_SORT)
        return cls(
            q=text("q", 100),
            category=text("category", 60),
            min_price=text("minPrice", 20),
            max_price=text("maxPrice", 20),
            in_stock=query.get("inStock") == "true",
            sort=sort if sort in SORTS else DEFAULT_SORT,
            page=page_of(query),
        )

    @property
    def active(self) -> bool:
        """Anything narrower than the whole catalogue."""
        return bool(self.q or self.category or self.min_price or self.max_price or self.in_stock)

    def params(self, **changes: str) -> dict[str, str]:
        """The query string's values (defaults left out), with ``changes`` applied; a change
        to "" drops that value."""
        values = {
            "q": self.q,
            "category": self.category,
            "minPrice": self.min_price,
            "maxPrice": self.max_price,
            "inStock": "true" if self.in_stock else "",
            "sort": "" if self.sort == DEFAULT_SORT else self.sort,
            "page": "" if self.page == 1 else str(self.page),
        }
        values.update(changes)
        return {name: value for name, value in values.items() if value}

    def url(self, **changes: str) -> str:
        """This catalogue page with ``changes``; changing a filter goes back to page 1."""
        if "page" not in changes:
            changes["page"] = ""
        params = self.params(**changes)
        return "/?" + urlencode(params) if params else "/"

    def page_url(self, page: int) -> str:
        return self.url(page="" if page == 1 else str(page))

    def api_query(self) -> str:
        params = self.params(page=str(self.page), limit=str(CATALOGUE_PAGE_SIZE))
        if self.sort != DEFAULT_SORT:
            params["sort"] = self.sort
        return urlencode(params)


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    filters = CatalogueFilters.from_query(request.query)
    listing, categories = await gather(
        call_backend(
            request, "product", "GET", "/api/products?" + filters.api_query(), as_shopper=False
        ),
        fetch(request, "product", "GET", "/api/products/categories", as_shopper=False),
    )
    problem = None
    if listing.status == 400:
        # A filter the API refuses (a price that is not a number...): say which, show none.
        problem = readable(BackendRefused(listing), FILTER_LABELS)
        products, total = [], 0
    elif listing.status >= 400:
        raise BackendRefused(listing)
    else:
        products, total = listing.body["data"], listing.body["total"]
    last_page = max(1, -(-total // CATALOGUE_PAGE_SIZE))
    return render(
        request,
        "home.html",
        {
            "filters": filters,
            "products": products,
            "total": total,
            "categories": categories["data"],
            "sorts": SORTS,
            "problem": problem,
            "last_page": last_page,
            "page_numbers": page_numbers(filters.page, last_page),
        },
    )


@routes.get("/products/{id}")
async def product_page(request: web.Request) -> web.Response:
    path = f"/api/products/{product_id_of(request)}"
    reply = await fetch(
        request, "product", "GET", path, as_shopper=False, not_found=PRODUCT_NOT_FOUND
    )
    product = reply["data"]
    return render(
        request,
        "product.html",
        {"product": product, "max_quantity": min(product["stock"], MAX_CART_QUANTITY)},
    )


# -- accounts -----------------------------------------------------------------------------------

REGISTER_FIELDS = {
    "email": "Email",
    "password": "Password",
    "password_confirm": "Password again",
    "first_name": "First name",
    "last_name": "Last name",
}
LOGIN_FIELDS = {"email": "Email", "password": "Password"}


def _next_of(data: MultiMapping[Any]) -> str:
    return local_path(data.get("next"), "/")


def _log_in(request: web.Request, token: str) -> None:
    try:
        session_of(request).log_in(token)
    except ValueError:
        log.error("cannot read the token the user service issued: is JWT_SECRET the same?")
        raise UpstreamUnavailable(
            "Logging in is not possible right now; please try again later."
        ) from None


def _account_form(request: web.Request, template: str) -> web.Response:
    """The login or registration form; someone already logged in goes on to ``next``."""
    next_path = _next_of(request.query)
    if session_of(request).user is not None:
        raise Redirect(next_path)
    return render(request, template, {"values": {}, "errors": {}, "next": next_path})


def _shopper_address(request: web.Request) -> dict[str, str]:
    """Headers naming the shopper's address to the user service, which limits logins by it
    and remembers where each account registered and logged in (README "Login limits")."""
    return {
        "X-Forwarded-For": client_behind_hops(request, request.app[SETTINGS].trusted_proxy_hops)
    }


@routes.get("/register")
async def register_page(request: web.Request) -> web.Response:
    return _account_form(request, "register.html")


@routes.post("/register")
async def register(request: web.Request) -> web.Response:
    form = await request.post()
    values = {name: str(form.get(name, "")) for name in ("email", "first_name", "last_name")}
    password = str(form.get("password", ""))
    next_path = _next_of(form)
    errors: dict[str, str] = {}
    if password != form.get("password_confirm", ""):
        errors["password_confirm"] = "The two passwords are not the same."
    else:
        reply = await call_backend(
            request,
            "user",
            "POST",
            "/api/users/register",
            json={**values, "password": password},
            # The shopper's address, not ours: it becomes a known address of the account.
            headers=_shopper_address(request),
            as_shopper=False,
        )
        if reply.status == 201:
            _log_in(request, reply.data["token"])
            user = reply.data["user"]
            session_of(request).flash(
                "success", f"Welcome, {user['first_name'] or user['email']}! Your account is ready."
            )
            raise Redirect(next_path)
        refusal = BackendRefused(reply)
        if reply.status == 409:
            errors["email"] = "An account with this email already exists. Log in instead?"
        elif reply.status == 400:
            errors = field_errors(refusal, REGISTER_FIELDS)
        else:
            raise refusal
    context = {"values": values, "errors": errors, "next": next_path}
    return render(request, "register.html", context, status=400)


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    return _account_form(request, "login.html")


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    values = {"email": str(form.get("email", ""))}
    next_path = _next_of(form)
    reply = await call_backend(
        request,
        "user",
        "POST",
        "/api/users/login",
        json={"email": values["email"], "password": str(form.get("password", ""))},
        # The shopper's address, not ours: the user service limits failed logins by it.
        headers=_shopper_address(request),
        as_shopper=False,
    )
    if reply.status == 200:
        _log_in(request, reply.data["token"])
        user = reply.data["user"]
        session_of(request).flash(
            "success", f"Welcome back, {user['first_name'] or user['email']}."
        )
        raise Redirect(next_path)
    refusal = BackendRefused(reply)
    if reply.status == 400:
        errors = field_errors(refusal, LOGIN_FIELDS)
    elif reply.status in (401, 429):
        errors = {"_form": refusal.message}  # same words for an unknown email and a bad password
    else:
        raise refusal
    context = {"values": values, "errors": errors, "next": next_path}
    return render(request, "login.html", context, status=reply.status)


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    """Log out everywhere: the user service ends every token of this user (so a copy of the
    cookie stops working too), then this browser forgets its own."""
    session = session_of(request)
    if session.user is not None:
        try:
            reply = await call_backend(request, "user", "POST", "/api/users/logout")
            ended = reply.status in (200, 401)  # 401: that token had already ended
        except UpstreamUnavailable:
            ended = False
        session.log_out()
        if ended:
            session.flash("info", "You have logged out. See you soon!")
        else:
            session.flash(
                "error",
                "You are logged out in this browser, but your other sessions could not be "
                "ended right now: log out again later, or change your password.",
            )
    raise Redirect("/")


PROFILE_FIELDS = {"first_name": "First name", "last_name": "Last name"}
PASSWORD_FIELDS = {
    "current_password": "Current password",
    "password": "New password",
    "password_confirm": "New password again",
}


async def _profile_page(
    request: web.Request,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    password_errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    profile = (await fetch(request, "user", "GET", "/api/users/profile"))["data"]
    context = {
        "profile": profile,
        "values": values or profile,
        "errors": errors or {},
        "password_errors": password_errors or {},
    }
    return render(request, "profile.html", context, status=status)


@routes.get("/profile")
async def profile_page(request: web.Request) -> web.Response:
    require_user(request, "Log in to see your profile.")
    return await _profile_page(request)


@routes.post("/profile")
async def update_profile(request: web.Request) -> web.Response:
    require_user(request)
    form = await request.post()
    values = {name: str(form.get(name, "")) for name in PROFILE_FIELDS}
    reply = await call_backend(request, "user", "PUT", "/api/users/profile", json=values)
    if reply.status == 400:
        errors = field_errors(BackendRefused(reply), PROFILE_FIELDS)
        return await _profile_page(request, values=values, errors=errors, status=400)
    if reply.status >= 400:
        raise BackendRefused(reply)
    session_of(request).flash("success", "Your name is saved.")
    raise Redirect("/profile")


@routes.post("/profile/password")
async def change_password(request: web.Request) -> web.Response:
    require_user(request)
    form = await request.post()
    current, new = str(form.get("current_password", "")), str(form.get("password", ""))
    errors: dict[str, str] = {}
    if not current:
        errors["current_password"] = "Enter your current password."
    if new != form.get("password_confirm", ""):
        errors["password_confirm"] = "The two new passwords are not the same."
    if not errors:
        body = {"current_password": current, "password": new}
        reply = await call_backend(request, "user", "PUT", "/api/users/profile", json=body)
        if reply.status == 200:
            # Every other session just ended; this browser goes on with the fresh token.
            _log_in(request, reply.data["token"])
            session_of(request).flash("success", "Your password is changed.")
            raise Redirect("/profile")
        refusal = BackendRefused(reply)
        if reply.status == 403:
            errors = {"current_password": "This is not your current password."}
        elif reply.status == 400:
            errors = field_errors(refusal, PASSWORD_FIELDS)
        else:
            raise refusal
    return await _profile_page(request, password_errors=errors, status=400)


# -- the cart -----------------------------------------------------------------------------------


def _cart_path(user_id: str, *rest: str) -> str:
    return "/".join([f"/api/cart/{segment(user_id)}", *rest])


def _line_name(cart: dict[str, Any], product_id: str) -> str:
    for item in cart.get("items", []):
        if item["product_id"] == product_id:
            return item["name"]
    return "the product"


@routes.post("/cart/items")
async def add_to_cart(request: web.Request) -> web.Response:
    user = require_user(request, "Log in to fill your cart.")
    form = await request.post()
    product_id = str(form.get("product_id", ""))
    if not is_product_id(product_id):
        raise NotFound(PRODUCT_NOT_FOUND)
    back = f"/products/{product_id}"
    session = session_of(request)
    quantity = parse_quantity(form.get("quantity"), 1, MAX_CART_QUANTITY)
    if quantity is None:
        session.flash("error", f"Choose a quantity from 1 to {MAX_CART_QUANTITY}.")
        raise Redirect(back)
    body = {"product_id": product_id, "quantity": quantity}
    reply = await call_backend(
        request, "cart", "POST", _cart_path(user.user_id, "items"), json=body
    )
    units = "1 unit" if quantity == 1 else f"{quantity} units"
    report_change(
        request,
        reply,
        lambda cart: f"Added {units} of {_line_name(cart, product_id)} to your cart.",
    )
    raise Redirect(back)


@routes.get("/cart")
async def cart_page(request: web.Request) -> web.Response:
    user = require_user(request, "Log in to see your cart.")
    cart = (await fetch(request, "cart", "GET", _cart_path(user.user_id)))["data"]
    # The cart holds no stock levels: the products' own, to say where stock is short.
    products: dict[str, dict[str, Any]] = {}
    if cart["items"]:
        ids = ",".join(item["product_id"] for item in cart["items"])
        path = f"/api/products?ids={ids}&limit={MAX_IDS_PER_CALL}"
        listing = await fetch(request, "product", "GET", path, as_shopper=False)
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


@routes.post("/cart/items/{product_id}")
async def change_quantity(request: web.Request) -> web.Response:
    user = require_user(request)
    product_id = product_id_of(request, "product_id")
    form = await request.post()
    session = session_of(request)
    quantity = parse_quantity(form.get("quantity"), 0, MAX_CART_QUANTITY)
    if quantity is None:
        session.flash("error", f"Choose a quantity from 0 to {MAX_CART_QUANTITY}.")
        raise Redirect("/cart")
    path = _cart_path(user.user_id, "items", product_id)
    reply = await call_backend(request, "cart", "PUT", path, json={"quantity": quantity})
    report_change(
        request,
        reply,
        lambda cart: (
            f"You now have {quantity} of {_line_name(cart, product_id)} in your cart."
            if quantity
            else "Removed it from your cart."
        ),
    )
    raise Redirect("/cart")


@routes.post("/cart/items/{product_id}/remove")
async def remove_from_cart(request: web.Request) -> web.Response:
    user = require_user(request)
    product_id = product_id_of(request, "product_id")
    path = _cart_path(user.user_id, "items", product_id)
    reply = await call_backend(request, "cart", "DELETE", path)
    report_change(request, reply, lambda cart: "Removed it from your cart.")
    raise Redirect("/cart")


@routes.post("/cart/clear")
async def clear_cart(request: web.Request) -> web.Response:
    user = require_user(request)
    await fetch(request, "cart", "DELETE", _cart_path(user.user_id))
    session_of(request).flash("success", "Your cart is empty now.")
    raise Redirect("/cart")


async def _certain_checkout(request: web.Request, key: str) -> ServiceReply:
    """The cart checked out as the API's checkout is: sent again with the same key when an
    answer is lost, until the outcome is certain (svc_gateway/checkout_forwarding.py), so a shopper
    whose order was placed never sees an error page instead of the confirmation."""
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


@routes.post("/checkout")
async def checkout(request: web.Request) -> web.Response:
    require_user(request, "Log in to check out.")
    form = await request.post()
    session = session_of(request)
    key = form.get("idempotency_key")
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        session.flash("error", "Something was missing from the checkout form; please try again.")
        raise Redirect("/cart")
    reply = await _certain_checkout(request, key)
    if reply.status >= 400:
        # Empty cart, short stock, a product gone: nothing was bought; back to the cart.
        session.flash("error", readable(BackendRefused(reply)))
        raise Redirect("/cart")
    raise Redirect(f"/orders/{reply.data['id']}/confirmation")


# -- orders -------------------------------------------------------------------------------------


async def _order(request: web.Request, order_id: str) -> dict[str, Any]:
    path = f"/api/orders/{order_id}"
    return (await fetch(request, "order", "GET", path, not_found=ORDER_NOT_FOUND))["data"]


@routes.get("/orders")
async def orders_page(request: web.Request) -> web.Response:
    user = require_user(request, "Log in to see your orders.")
    page = page_of(request.query)
    query = urlencode({"page": page, "limit": ORDERS_PAGE_SIZE})
    listing = await fetch(
        request, "order", "GET", f"/api/orders/user/{segment(user.user_id)}?{query}"
    )
    last_page = max(1, -(-listing["total"] // ORDERS_PAGE_SIZE))
    context = {
        "orders": listing["data"],
        "total": listing["total"],
        "page": page,
        "last_page": last_page,
        "page_numbers": page_numbers(page, last_page),
        "page_url": lambda number: f"/orders?page={number}",
    }
    return render(request, "orders.html", context)


@routes.get("/orders/{id}")
async def order_page(request: web.Request) -> web.Response:
    user = require_user(request, "Log in to see your orders.")
    order = await _order(request, order_id_of(request))
    context = {
        "order": order,
        "line_subtotals": [
            Decimal(str(line["price"])) * line["quantity"] for line in order["items"]
        ],
        "own": str(order["user_id"]) == user.user_id,
        "next_statuses": ORDER_TRANSITIONS[order["status"]] if user.is_admin else (),
    }
    return render(request, "order.html", context)


@routes.get("/orders/{id}/confirmation")
async def order_confirmation(request: web.Request) -> web.Response:
    require_user(request, "Log in to see your orders.")
    order = await _order(request, order_id_of(request))
    return render(request, "confirmation.html", {"order": order})


@routes.post("/orders/{id}/cancel")
async def cancel_order(request: web.Request) -> web.Response:
    require_user(request)
    order_id = order_id_of(request)
    path = f"/api/orders/{order_id}/status"
    reply = await call_backend(request, "order", "PATCH", path, json={"status": "cancelled"})
    report_change(
        request, reply, lambda order: f"Order #{order_id} is cancelled.", not_found=ORDER_NOT_FOUND
    )
    raise Redirect(f"/orders/{order_id}")
