"""The checkout: where the order goes (a saved address or a new one), how (a delivery option
the order service prices), how it is paid (a card, for the built-in test provider), then the
order placed once, whatever the network does."""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from shopkit.client import ServiceReply
from shopkit.domain import country_names
from shopkit.errors import UpstreamUnavailable
from shopkit.parsing import parse_id
from svc_gateway.checkout_forwarding import certain_checkout
from svc_gateway.keys import BACKENDS, CHECKOUT_DEADLINE
from svc_gateway.pages.access import Redirect, require_user, session_of
from svc_gateway.pages.addresses import ADDRESS_FIELDS, address_values
from svc_gateway.pages.backend import (
    BackendRefused,
    call_backend,
    call_backend_or_raise,
    finish_all,
)
from svc_gateway.pages.cart import priced_cart
from svc_gateway.pages.delivery import OPTIONS_PATH, amount_cents, delivery_choices
from svc_gateway.pages.forms import field_errors, readable
from svc_gateway.pages.rendering import render

# The checkout form's idempotency key, as the checkout page makes it (secrets.token_urlsafe).
_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9_-]{16,128}")
NEW_ADDRESS = "new"
CARD_FIELDS = {
    "card_number": "Card number",
    "exp_month": "Expiry month",
    "exp_year": "Expiry year",
    "cvc": "Security code",
}
FIELDS = {**ADDRESS_FIELDS, **CARD_FIELDS, "delivery": "Delivery", "address_choice": "Address"}
# Where the order service's validation details point, as the form's fields.
_DETAIL_FIELDS = {
    **{f"address.{name}": name for name in ADDRESS_FIELDS},
    "address_id": "address_choice",
    "payment.card.number": "card_number",
    "payment.card.exp_month": "exp_month",
    "payment.card.exp_year": "exp_year",
    "payment.card.cvc": "cvc",
}
# Refusals about what this form says (the rest are about the cart: back to it).
_CORRECTABLE = frozenset(
    {
        "validation_error",
        "payment_declined",
        "payment_unavailable",
        "country_not_delivered",
        "address_not_found",
    }
)
CARD_YEARS = 12  # expiry years offered, from this one
TEST_CARDS = (
    ("4242 4242 4242 4242", "is accepted"),
    ("4000 0000 0000 0002", "is declined"),
    ("4000 0000 0000 9995", "is declined for insufficient funds"),
)


async def _checkout_data(request: web.Request) -> dict[str, Any]:
    """The cart with its stock, the shopper's addresses and the delivery options, at once."""
    (cart, lines), book, delivery = await finish_all(
        priced_cart(request),
        call_backend_or_raise(request, "user", "GET", "/api/users/addresses"),
        call_backend_or_raise(request, "order", "GET", OPTIONS_PATH),
    )
    return {
        "lines": lines,
        "item_count": cart["item_count"],
        "book": book["data"],
        "delivery": delivery["data"],
    }


async def _page(
    request: web.Request,
    *,
    values: MultiMapping[Any] | dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    require_user(request, "Log in to check out.")
    data = await _checkout_data(request)
    lines = data["lines"]
    session = session_of(request)
    if not lines:
        session.flash("info", "Your cart is empty: add something to check out.")
        raise Redirect("/cart")
    if any(line["short"] for line in lines):
        session.flash("error", "Some items are short of stock: lower their quantities first.")
        raise Redirect("/cart")
    subtotal_cents = sum(amount_cents(line["subtotal"]) for line in lines)
    delivered_to = set(data["delivery"]["countries"])
    addresses = [
        {**address, "delivered": address["country"] in delivered_to}
        for address in data["book"]["addresses"]
    ]
    choices = delivery_choices(data["delivery"]["options"], subtotal_cents)
    shown = dict(values or {})
    first = next((a for a in addresses if a["delivered"]), None)
    shown.setdefault("address_choice", str(first["id"]) if first else NEW_ADDRESS)
    shown.setdefault("delivery", choices[0]["option"] if choices else "")
    # What was typed comes back, but never the card's number or security code.
    shown.pop("card_number", None)
    shown.pop("cvc", None)
    year = datetime.now(UTC).year
    context = {
        "lines": lines,
        # The header's count: the page middleware reads it for GETs only, and this page is
        # also the answer to a POST (a declined card, a field to correct).
        "cart_count": data["item_count"],
        "subtotal_cents": subtotal_cents,
        "addresses": addresses,
        "address_limit": data["book"]["limit"],
        "choices": choices,
        "countries": {code: name for code, name in country_names().items() if code in delivered_to},
        "values": shown,
        "errors": errors or {},
        "months": {str(month): f"{month:02d}" for month in range(1, 13)},
        "years": {str(year + n): str(year + n) for n in range(CARD_YEARS)},
        "test_cards": TEST_CARDS,
        "new_address": NEW_ADDRESS,
        # A new key for each showing of the form: a double click sends the same one, and
        # the order service answers the first order; a form shown again gets a fresh one.
        "idempotency_key": secrets.token_urlsafe(24),
    }
    return render(request, "checkout.html", context, status=status)


async def checkout_page(request: web.Request) -> web.Response:
    return await _page(request)


def _card(form: MultiMapping[Any]) -> dict[str, Any] | dict[str, str]:
    """The card as the order service takes it, or the errors that keep it from being sent."""
    number = re.sub(r"[\s-]", "", str(form.get("card_number", "")))
    errors = {}
    if not re.fullmatch(r"[0-9]{12,19}", number):
        errors["card_number"] = "Enter the 12 to 19 digits on the front of the card."
    cvc = str(form.get("cvc", "")).strip()
    if not re.fullmatch(r"[0-9]{3,4}", cvc):
        errors["cvc"] = "Enter the 3 or 4 digits of the security code."
    month, year = parse_id(str(form.get("exp_month", ""))), parse_id(str(form.get("exp_year", "")))
    if month is None or not 1 <= month <= 12:
        errors["exp_month"] = "Choose the month the card expires."
    if year is None or not 2000 <= year <= 2099:
        errors["exp_year"] = "Choose the year the card expires."
    if errors:
        return {"_errors": errors}
    return {"number": number, "exp_month": month, "exp_year": year, "cvc": cvc}


async def _address(request: web.Request, form: MultiMapping[Any]) -> dict[str, Any]:
    """The checkout's address: a saved one's id, or the new one, which goes with the order
    as typed (so the same form sent twice is the same checkout, whatever else happens) and
    is kept in the address book too when the shopper asks (``kept``: its id there)."""
    choice = str(form.get("address_choice", ""))
    if choice != NEW_ADDRESS:
        address_id = parse_id(choice)
        if address_id is None:
            return {"_errors": {"address_choice": "Choose where the order goes."}}
        return {"address_id": address_id}
    address = address_values(form)
    if not form.get("save_address"):
        return {"address": address}
    # Kept once however often the form is sent: the user service keeps an address once.
    reply = await call_backend(request, "user", "POST", "/api/users/addresses", json=address)
    if reply.status == 400:
        return {"_errors": field_errors(BackendRefused(reply), ADDRESS_FIELDS)}
    # Too many kept, or the user service refused it: the order takes it all the same.
    return {"address": address, "kept": reply.data["id"] if reply.status == 201 else None}


async def _place(request: web.Request, key: str, body: dict[str, Any]) -> ServiceReply:
    """The checkout sent until its outcome is certain (svc_gateway/checkout_forwarding.py),
    so a shopper whose order was placed never sees an error instead of the confirmation."""
    client = request.app[BACKENDS].get("order")
    if client is None:
        raise UpstreamUnavailable("The order service is not configured on this gateway.")
    headers = {
        "Idempotency-Key": key,
        "Authorization": f"Bearer {session_of(request).token}",
        "Content-Type": "application/json",
    }
    answer = await certain_checkout(
        client, "/api/orders", headers, orjson.dumps(body), request.app[CHECKOUT_DEADLINE]
    )
    try:
        reply = ServiceReply(answer.status, orjson.loads(answer.body))
    except orjson.JSONDecodeError:
        raise UpstreamUnavailable("The order service answered with something unreadable.") from None
    if answer.status >= 500 and reply.body.get("code") != "payment_unavailable":
        raise UpstreamUnavailable("The order service is unavailable right now; try again shortly.")
    return reply


def _errors_of(refusal: BackendRefused) -> dict[str, str]:
    """A refusal as the form's errors: validation details next to their fields, a refused
    card under the card, the rest over the form."""
    if refusal.code == "payment_declined":
        # The order service's sentence already says nothing was charged and what to do.
        return {"card_number": refusal.message}
    if refusal.code == "payment_unavailable":
        return {"_form": refusal.message}
    details = [
        {**detail, "field": _DETAIL_FIELDS.get(str(detail.get("field")), detail.get("field"))}
        for detail in refusal.details or []
        if isinstance(detail, dict)
    ]
    if details:
        refusal.details = details
        return field_errors(refusal, FIELDS)
    return {"_form": refusal.message}


async def checkout(request: web.Request) -> web.Response:
    require_user(request, "Log in to check out.")
    form = await request.post()
    session = session_of(request)
    key = form.get("idempotency_key")
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        session.flash("error", "Something was missing from the checkout form; please try again.")
        raise Redirect("/checkout")
    card, address = _card(form), await _address(request, form)
    values = dict(form)
    kept = address.pop("kept", None)
    if kept is not None:  # kept in the book just now: chosen from there if the form comes back
        values["address_choice"] = str(kept)
    delivery = str(form.get("delivery", ""))
    errors = {**card.get("_errors", {}), **address.get("_errors", {})}
    if not delivery:
        errors["delivery"] = "Choose how the order is delivered."
    if errors:
        return await _page(request, values=values, errors=errors, status=400)
    body = {**address, "delivery": delivery, "payment": {"card": card}}
    reply = await _place(request, key, body)
    if reply.status < 400:
        raise Redirect(f"/orders/{reply.data['id']}/confirmation")
    refusal = BackendRefused(reply)
    if refusal.code in _CORRECTABLE or (reply.status == 400 and refusal.details):
        # Something to correct on this form (a field, the card, the address): shown again.
        return await _page(request, values=values, errors=_errors_of(refusal), status=400)
    # Short stock, an empty cart, a product gone: nothing was bought; back to the cart.
    session.flash("error", readable(refusal))
    raise Redirect("/cart")
