"""What templates get: ``render`` (a template with what every page shows), the Jinja
environment, and the filters and globals templates use (prices, dates, stock levels, order
statuses, pictures)."""

from __future__ import annotations

import hashlib
import html
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
from aiohttp import web

from shopkit.context import REQUEST_ID
from shopkit.money import cents_to_money
from shopkit.uploads import PICTURE_NAME, PICTURE_URL_PREFIX
from svc_gateway.keys import ASSETS, CART_COUNT, GATEWAY_CREDENTIAL
from svc_gateway.pages.access import local_path, session_of
from svc_gateway.session import CSRF_FIELD

SHOP_NAME = "Corner Shop"


def render(
    request: web.Request,
    template: str,
    context: Mapping[str, Any] | None = None,
    *,
    status: int = 200,
) -> web.Response:
    """A page: the template with what every page needs (who is browsing, the CSRF token,
    the flash messages) added to ``context``."""
    session = session_of(request)
    page = {
        "shop_name": SHOP_NAME,
        "user": session.user,
        "csrf_token": session.csrf_token,
        "csrf_field_name": CSRF_FIELD,
        "flashes": session.take_flashes(),
        # Units in the cart, for the header (None: unknown, the cart service did not say).
        "cart_count": request.get(CART_COUNT),
        # Whether guests can fill a cart (the gateway has its service token).
        "guest_carts": request.app[GATEWAY_CREDENTIAL] is not None,
        "current_path": request.path,
        "request_id": REQUEST_ID.get(),
        **(context or {}),
    }
    return aiohttp_jinja2.render_template(template, request, page, status=status)


def money(value: Any) -> str:
    """A price as the API wrote it (two places), e.g. 1299.5 -> $1,299.50."""
    try:
        amount = Decimal(str(value)).quantize(Decimal("0.01"))
    except (InvalidOperation, ValueError):
        return str(value)
    return f"${amount:,.2f}"


def plain_amount(value: Any) -> str:
    """A price for a form field: 12.5 -> 12.50."""
    try:
        return f"{Decimal(str(value)).quantize(Decimal('0.01'))}"
    except (InvalidOperation, ValueError):
        return str(value)


def initial_cap(value: Any) -> str:
    """The first letter made a capital, the rest left alone (``USB cables`` stays)."""
    text = str(value)
    return text[:1].upper() + text[1:]


def when(value: Any) -> str:
    """An API timestamp for people, e.g. 25 Nov 2025, 08:45 UTC."""
    try:
        moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return str(value)
    return moment.strftime("%d %b %Y, %H:%M UTC").lstrip("0")


# White text on each of these has a contrast ratio of at least 4.5:1 (WCAG AA).
_PLACEHOLDER_COLOURS = (
    "#1d4ed8",
    "#047857",
    "#b91c1c",
    "#6d28d9",
    "#c2410c",
    "#0f766e",
    "#be185d",
    "#4338ca",
    "#854d0e",
    "#374151",
)


def placeholder_image(name: str, category: str | None = None) -> str:
    """A generated picture for a product without one: its initial on its category's colour,
    as an SVG data URI (the CSP allows data: images; nothing is fetched)."""
    key = (category or name or "?").lower()
    digest = int(hashlib.sha256(key.encode()).hexdigest(), 16)
    colour = _PLACEHOLDER_COLOURS[digest % len(_PLACEHOLDER_COLOURS)]
    initial = next((char for char in name if char.isalnum()), "?").upper()
    svg = (
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 400 300'>"
        f"<rect width='400' height='300' fill='{colour}'/>"
        "<text x='200' y='150' dy='.35em' text-anchor='middle' fill='#fff' "
        "font-family='Georgia, serif' font-size='140'>"
        f"{html.escape(initial)}</text></svg>"
    )
    return "data:image/svg+xml," + quote(svg, safe="/:=' ")


def image_source(image_url: Any) -> str | None:
    """The product's own image if the page may load it: a path on this site. Anything else
    (another host) is not loaded: everything a page loads comes from the gateway."""
    if isinstance(image_url, str) and local_path(image_url, "") and image_url != "/":
        return image_url
    return None


# A product with this many units or fewer is low on stock: shoppers read "Only 3 left", the
# admin's product list flags it. A constant, not a setting: it is how the pages speak, the
# same for every shop and replica.
LOW_STOCK = 5


def thumbnail_source(image_url: Any) -> str | None:
    """The thumbnail of a product's picture, for lists: an uploaded picture's 400-pixel
    copy (shopkit.uploads.PICTURE_NAME), or the picture itself (a drawing is small)."""
    source = image_source(image_url)
    if source is not None and source.startswith(PICTURE_URL_PREFIX):
        match = PICTURE_NAME.fullmatch(source.removeprefix(PICTURE_URL_PREFIX))
        if match is not None and not match["thumbnail"]:
            return f"{PICTURE_URL_PREFIX}{match['digest']}-400.webp"
    return source


def stock_state(stock: Any) -> tuple[str, str]:
    """(css modifier, words) for a stock level."""
    if not isinstance(stock, int) or stock <= 0:
        return "out", "Out of stock"
    if stock <= LOW_STOCK:
        return "low", f"Only {stock} left"
    return "in", "In stock"


# What a button that moves an order to a status says.
STATUS_ACTIONS = {
    "processing": "Start processing",
    "shipped": "Mark shipped",
    "delivered": "Mark delivered",
    "cancelled": "Cancel order",
}

# What an order's payment status means to its customer.
PAYMENT_STATES = {
    "authorised": "held on the card, taken when the order ships",
    "captured": "paid",
    "voided": "released: nothing was taken",
    "refunded": "refunded",
    "failed": "not taken",
}

STATUS_LABELS = {
    "pending": "Pending",
    "processing": "Processing",
    "shipped": "Shipped",
    "delivered": "Delivered",
    "cancelled": "Cancelled",
}


def setup_templates(app: web.Application) -> None:
    """The pages' Jinja environment on ``app``, with the filters and globals above."""
    env = aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("svc_gateway", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
        default_helpers=False,
    )
    env.globals.update(
        static_url=lambda name: app[ASSETS].url(name),
        placeholder_image=placeholder_image,
        image_source=image_source,
        thumbnail_source=thumbnail_source,
        stock_state=stock_state,
        status_labels=STATUS_LABELS,
        status_actions=STATUS_ACTIONS,
        payment_states=PAYMENT_STATES,
    )
    env.filters.update(
        money=money,
        cents=lambda value: money(cents_to_money(value)),
        plain_amount=plain_amount,
        when=when,
        initial_cap=initial_cap,
    )
