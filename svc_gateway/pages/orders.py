"""A shopper's orders: the list, one order, the confirmation after checkout, and cancelling."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from shopkit.domain import ORDER_TRANSITIONS
from svc_gateway.pages.access import require_user
from svc_gateway.pages.backend import call_backend_or_raise, segment
from svc_gateway.pages.forms import submit_form
from svc_gateway.pages.params import ORDER_NOT_FOUND, order_id_of, page_numbers, page_of
from svc_gateway.pages.rendering import render

ORDERS_PAGE_SIZE = 10


async def _order(request: web.Request, order_id: str) -> dict[str, Any]:
    path = f"/api/orders/{order_id}"
    reply = await call_backend_or_raise(request, "order", "GET", path, not_found=ORDER_NOT_FOUND)
    return reply["data"]


async def orders_page(request: web.Request) -> web.Response:
    user = require_user(request, "Log in to see your orders.")
    page = page_of(request.query)
    query = urlencode({"page": page, "limit": ORDERS_PAGE_SIZE})
    listing = await call_backend_or_raise(
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


async def order_confirmation(request: web.Request) -> web.Response:
    require_user(request, "Log in to see your orders.")
    order = await _order(request, order_id_of(request))
    return render(request, "confirmation.html", {"order": order})


async def cancel_order(request: web.Request) -> web.Response:
    require_user(request)
    order_id = order_id_of(request)
    return await submit_form(
        request,
        "order",
        "PATCH",
        f"/api/orders/{order_id}/status",
        json={"status": "cancelled"},
        not_found=ORDER_NOT_FOUND,
        success=lambda _: f"Order #{order_id} is cancelled.",
        redirect_to=f"/orders/{order_id}",
    )
