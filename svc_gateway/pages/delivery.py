"""Delivery as the pages show it: the order service's options priced for a cart (the
checkout's choices, the cart page's word on free delivery). The order service prices each
order itself, by the same rules."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shopkit.errors import UpstreamUnavailable
from shopkit.money import money_to_cents
from shopkit.parsing import parse_amount
from svc_gateway.pages.backend import QUICK_TIMEOUT, call_backend

OPTIONS_PATH = "/api/orders/delivery-options"


def amount_cents(amount: Any) -> int:
    """An amount as the API writes it (12.5) in whole cents."""
    return money_to_cents(parse_amount(str(amount)))


def delivery_choices(options: list[dict[str, Any]], subtotal_cents: int) -> list[dict[str, Any]]:
    """Each option with what it costs on goods of ``subtotal_cents``, the total with it and,
    for one that is free from some amount, how much more would make it free."""
    choices = []
    for option in options:
        free_from = None if option.get("free_from") is None else amount_cents(option["free_from"])
        free = free_from is not None and subtotal_cents >= free_from
        price = 0 if free else amount_cents(option["price"])
        choices.append(
            {
                **option,
                "cents": price,
                "total_cents": subtotal_cents + price,
                "free_from_cents": free_from,
                "to_free_cents": None if free_from is None else max(free_from - subtotal_cents, 0),
            }
        )
    return choices


async def quick_delivery_options(request: web.Request) -> list[dict[str, Any]]:
    """The delivery options, for a page that only adds them to what it shows: none when the
    order service cannot say quickly."""
    try:
        reply = await call_backend(
            request, "order", "GET", OPTIONS_PATH, as_shopper=False, timeout=QUICK_TIMEOUT
        )
    except UpstreamUnavailable:
        return []
    data = reply.data if reply.status == 200 else None
    options = data.get("options") if isinstance(data, dict) else None
    return options if isinstance(options, list) else []


def free_delivery_offer(
    options: list[dict[str, Any]], subtotal_cents: int
) -> dict[str, Any] | None:
    """The first option that is free from some amount of goods, priced for these
    (``to_free_cents`` 0: free already); None when there is none."""
    choices = delivery_choices(options, subtotal_cents)
    return next((choice for choice in choices if choice["free_from_cents"] is not None), None)
