"""The page layer: what every shop page shares, between its handler and the backends.

Page handlers (``pages_shop``, ``pages_admin``) call the backends through the gateway's
``ServiceClient``s with the shopper's token, render Jinja templates, and raise to leave:
``Redirect`` for Post/Redirect/Get, ``NotFound`` / ``Forbidden`` (shopkit's errors) for an
error page, and a backend's refusal arrives as ``BackendRefused``. The page middleware turns
all of that into HTML: error pages instead of the API's JSON envelope (``/api/*`` keeps its
JSON: the middleware does not touch it), checks the CSRF token of every form post, writes
the session cookies back and adds the security headers.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import quote, urlencode, urlsplit

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy, MultiMapping

from shopkit.auth import Identity
from shopkit.client import ServiceReply
from shopkit.context import REQUEST_ID
from shopkit.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    ShopError,
    UnsupportedEncoding,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from shopkit.keys import TOKEN_STATUS
from shopkit.middleware import answer_in_envelope
from shopkit.parsing import parse_id, parse_int, parse_product_id
from shopkit.validation import IDENTITY_ENCODINGS, MAX_PAGE, content_encoding, read_body
from svc_gateway.assets import (
    CATALOGUE_PREFIX,
    STATIC_PREFIX,
    catalogue_image,
    load_assets,
    static_file,
)
from svc_gateway.keys import ASSETS, BACKENDS, PAGE_SESSION, SESSION_KEYS
from svc_gateway.session import CSRF_FIELD, PageSession, SessionKeys

log = logging.getLogger("shop.gateway.pages")

SHOP_NAME = "Corner Shop"
# Paths that are not pages: the API keeps its JSON, and so do the service endpoints.
_SERVICE_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json"})
_UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; frame-ancestors 'none'; form-action 'self'; base-uri 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

_ERROR_TITLES = {
    400: "That did not work",
    401: "Please log in",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    409: "That clashes with the current state",
    413: "Too much at once",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "Temporarily unavailable",
}


def is_page_path(path: str) -> bool:
    return not (path == "/api" or path.startswith("/api/") or path in _SERVICE_PATHS)


class Redirect(Exception):
    """Leave the handler with a 303 See Other to ``location`` (a path on this site)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class BackendRefused(ShopError):
    """A backend answered 4xx: its status, its sentence, its code and any field details."""

    def __init__(self, reply: ServiceReply) -> None:
        body = reply.body if isinstance(reply.body, dict) else {}
        message = body.get("error")
        if not isinstance(message, str) or not message:
            message = "The shop could not do that."
        details = body.get("details")
        super().__init__(
            message,
            code=str(body.get("code") or "refused"),
            details=details if isinstance(details, list) else None,
        )
        self.status = reply.status
        self.body = body


# -- the shopper and the backends ---------------------------------------------------------------


def session_of(request: web.Request) -> PageSession:
    return request[PAGE_SESSION]


# Longer paths than this are nowhere on this site; redirected to, they would make a Location
# header past what clients read (aiohttp's: 8 KiB).
MAX_LOCAL_PATH = 2048


def local_path(value: object, default: str = "/") -> str:
    """``value`` if it is a path on this site (so redirecting to it is safe), else default."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//"):
        return default
    if len(value) > MAX_LOCAL_PATH:  # a Location header that long breaks clients
        return default
    if "\\" in value or any(ord(char) < 32 for char in value):
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return default
    return value


def login_url(next_path: str | None = None) -> str:
    if not next_path or next_path == "/":
        return "/login"
    return "/login?" + urlencode({"next": next_path})


def _return_path(request: web.Request) -> str | None:
    """Where to come back to after logging in: this page, or for a form the page it was on."""
    if request.method in ("GET", "HEAD"):
        return request.path_qs
    referer = request.headers.get("Referer")
    if referer:
        parts = urlsplit(referer)
        if parts.netloc == request.host:
            return local_path(parts.path + (f"?{parts.query}" if parts.query else ""), "/")
    return None


def require_user(request: web.Request, message: str = "Log in to continue.") -> Identity:
    """The logged-in shopper; anyone else is sent to the login page (and back afterwards)."""
    session = session_of(request)
    if session.user is None:
        session.flash("info", message)
        raise Redirect(login_url(_return_path(request)))
    return session.user


def require_admin(request: web.Request) -> Identity:
    user = require_user(request, "Log in as an administrator to continue.")
    if not user.is_admin:
        raise Forbidden("This page is for the shop's administrators only.")
    return user


PRODUCT_NOT_FOUND = "We could not find that product; it may have been removed."
ORDER_NOT_FOUND = "We could not find that order."


def is_product_id(value: str) -> bool:
    return parse_product_id(value) == value


def product_id_of(request: web.Request, name: str = "id") -> str:
    """The product id in the path; one that cannot name a product is simply not found."""
    value = request.match_info[name]
    if not is_product_id(value):
        raise NotFound(PRODUCT_NOT_FOUND)
    return value


def order_id_of(request: web.Request) -> str:
    value = request.match_info["id"]
    if parse_id(value) is None:
        raise NotFound(ORDER_NOT_FOUND)
    return value


def page_of(query: MultiMapping[str]) -> int:
    """The page asked for in the query string; anything odd is the first page."""
    try:
        return parse_int(query.get("page", "1"), low=1, high=MAX_PAGE)
    except ValueError:
        return 1


def segment(value: str | int) -> str:
    """A value made safe to put in a backend path as one segment."""
    return quote(str(value), safe="")


async def call_backend(
    request: web.Request,
    backend: str,
    method: str,
    path: str,
    *,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    as_shopper: bool = True,
) -> ServiceReply:
    """A backend's answer, whatever its status below 500 (a dead or failing backend raises
    503). ``as_shopper`` sends the shopper's token, as a browser calling /api/ would."""
    client = request.app[BACKENDS].get(backend)
    if client is None:
        raise UpstreamUnavailable(f"The {backend} service is not configured on this gateway.")
    token = session_of(request).token if as_shopper else None
    return await client.request(method, path, json=json, token=token, headers=headers)


async def fetch(
    request: web.Request,
    backend: str,
    method: str,
    path: str,
    *,
    not_found: str | None = None,
    **kwargs: Any,
) -> Any:
    """A backend's whole JSON body on success; a refusal raises ``BackendRefused``, or with
    ``not_found`` a 404 is the 404 page saying that."""
    reply = await call_backend(request, backend, method, path, **kwargs)
    if reply.status == 404 and not_found is not None:
        raise NotFound(not_found)
    if reply.status >= 400:
        raise BackendRefused(reply)
    return reply.body


def report_change(
    request: web.Request,
    reply: ServiceReply,
    success: Callable[[Any], str],
    *,
    not_found: str | None = None,
) -> None:
    """Say on the next page how a change went: ``success(data)``, or the backend's refusal
    in its own words; with ``not_found``, a 404 is the 404 page saying that instead."""
    if reply.status == 404 and not_found is not None:
        raise NotFound(not_found)
    session = session_of(request)
    if reply.status >= 400:
        session.flash("error", readable(BackendRefused(reply)))
    else:
        session.flash("success", success(reply.data))


T = TypeVar("T")


async def gather(*calls: Awaitable[T]) -> list[T]:
    """Run calls at once; the first failure is raised once all have finished (so none is
    left running, or failing unobserved)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)  # type: ignore[arg-type]


# -- forms -------------------------------------------------------------------------------------

_FRIENDLIER = {
    "String should have at least 1 character": "Fill this in.",
    "is required": "Fill this in.",
    "must be a number": "Enter a number, such as 12.50.",
    "Input should be a valid integer": "Enter a whole number.",
}


def _sentence(message: str) -> str:
    message = _FRIENDLIER.get(message, message)
    message = message[:1].upper() + message[1:]
    return message if message.endswith((".", "!", "?")) else message + "."


def field_errors(refusal: BackendRefused, fields: Mapping[str, str]) -> dict[str, str]:
    """The API's validation details as ``{form field: sentence}``, for the fields the form
    has; a detail about anything else is added to ``_form`` (the message over the form)."""
    errors: dict[str, str] = {}
    others = []
    for detail in refusal.details or []:
        if not isinstance(detail, dict):
            continue
        field, message = str(detail.get("field", "")), str(detail.get("message", ""))
        if field in fields and field not in errors:
            errors[field] = _sentence(message)
        elif message:
            others.append(f"{fields.get(field, field)}: {message}")
    if others or not errors:
        errors["_form"] = "; ".join(others) + "." if others else refusal.message
    return errors


def readable(refusal: BackendRefused, labels: Mapping[str, str] | None = None) -> str:
    """A refusal as one sentence for a flash message, naming fields as the form does."""
    details = [detail for detail in refusal.details or [] if isinstance(detail, dict)]
    if not details:
        return refusal.message
    labels = labels or {}
    return _sentence(
        "; ".join(
            f"{labels.get(str(detail.get('field')), str(detail.get('field')))}: "
            f"{detail.get('message')}"
            for detail in details
        )
    )


def parse_quantity(value: object, low: int, high: int) -> int | None:
    """A whole number from a form field within [low, high], or None."""
    try:  # typed by a person: spaces around it are no reason to refuse it
        return parse_int(value.strip() if isinstance(value, str) else value, low=low, high=high)
    except ValueError:
        return None


def page_numbers(current: int, last: int, around: int = 2) -> list[int | None]:
    """The page links to offer: the first, the last and those near the current one, with
    None where a gap goes (shown as an ellipsis)."""
    shown = {1, last, *range(max(1, current - around), min(last, current + around) + 1)}
    numbers: list[int | None] = []
    previous = 0
    for number in sorted(shown):
        if number - previous > 1:
            numbers.append(None)
        numbers.append(number)
        previous = number
    return numbers


# -- what templates show -------------------------------------------------------------------------


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


def stock_state(stock: Any) -> tuple[str, str]:
    """(css modifier, words) for a stock level."""
    if not isinstance(stock, int) or stock <= 0:
        return "out", "Out of stock"
    if stock <= 5:
        return "low", f"Only {stock} left"
    return "in", "In stock"


# What a button that moves an order to a status says.
STATUS_ACTIONS = {
    "processing": "Start processing",
    "shipped": "Mark shipped",
    "delivered": "Mark delivered",
    "cancelled": "Cancel order",
}

STATUS_LABELS = {
    "pending": "Pending",
    "processing": "Processing",
    "shipped": "Shipped",
    "delivered": "Delivered",
    "cancelled": "Cancelled",
}


# -- rendering -------------------------------------------------------------------------------------


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
        "current_path": request.path,
        "request_id": REQUEST_ID.get(),
        **(context or {}),
    }
    return aiohttp_jinja2.render_template(template, request, page, status=status)


def error_page(
    request: web.Request,
    status: int,
    message: str,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    response = render(
        request,
        "error.html",
        {
            "status": status,
            "title": title or _ERROR_TITLES.get(status, "That did not work"),
            "message": message,
        },
        status=status,
    )
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


async def read_form(request: web.Request) -> MultiDictProxy[Any]:
    """The posted form (URL-encoded, as every page's form is), read once through shopkit's
    body reader so that a cut-off or oversized body is one of our errors; the handlers then
    read it again from ``request.post()``, which keeps it."""
    if content_encoding(request) not in IDENTITY_ENCODINGS:
        raise UnsupportedEncoding("The shop's forms are sent uncompressed; nothing was changed.")
    if request.content_type == "multipart/form-data":  # read_body would leave post() nothing
        raise UnsupportedMediaType("The shop's forms are sent URL-encoded; nothing was changed.")
    await read_body(request)
    try:
        return await request.post()
    except (UnicodeDecodeError, LookupError, ValueError):
        # Bytes that are not text in the charset the form names, or a charset nobody knows.
        raise BadRequest(
            "The form could not be read (it is not UTF-8 text); nothing was changed.",
            code="unreadable_form",
        ) from None


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


_HTTP_MESSAGES = {
    404: "There is no page at this address. It may have moved, or the link may be mistyped.",
    405: "This page cannot be used that way.",
    413: "What you sent is larger than the shop accepts (1 MiB).",
}


async def _answer(
    request: web.Request, handler: Handler, session: PageSession
) -> web.StreamResponse:
    try:
        if request.method in _UNSAFE_METHODS and request.match_info.http_exception is None:
            form = await read_form(request)
            if not session.csrf_valid(form.get(CSRF_FIELD)):
                return error_page(
                    request,
                    403,
                    "This form could not be verified, so nothing was changed. It may have been "
                    "open for a long time, or you logged in or out since it was shown: go back, "
                    "reload the page and try again.",
                    title="This form has expired",
                )
        return await handler(request)
    except Redirect as leave:
        return _see_other(leave.location)
    except BackendRefused as exc:
        if exc.status == 401:
            # The token expired or its account is gone: log out and ask for a new login.
            session.log_out()
            session.flash("info", "Your session has ended; please log in again.")
            return _see_other(login_url(_return_path(request)))
        return error_page(request, exc.status, exc.message)
    except UpstreamUnavailable as exc:
        return error_page(request, 503, exc.message, headers={"Retry-After": "5"})
    except ShopError as exc:
        return error_page(request, exc.status, exc.message, headers=exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {name: value for name, value in exc.headers.items() if name == "Allow"}
        message = _HTTP_MESSAGES.get(exc.status, exc.reason + ".")
        return error_page(request, exc.status, message, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on page %s %s", request.method, request.path)
        return error_page(
            request,
            500,
            "Something went wrong on our side. It was logged as request "
            f"{REQUEST_ID.get()}; please try again.",
        )


@web.middleware
async def page_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Runs inside shopkit's middleware, for page requests only (not /api/*)."""
    # Judged on the path as sent and as decoded: decoding makes "/api/%2e%2e/x" look like a
    # page's path, and "/ap%69/cart" like the API's; either way it is not a page.
    if not (is_page_path(request.path) and is_page_path(request.rel_url.raw_path)):
        return await handler(request)
    if request.path.startswith(CATALOGUE_PREFIX):
        # Pictures are asked for by an <img>, never read by a person: their errors are the
        # API's JSON, with the pages' headers all the same (an SVG may hold a script).
        return _with_page_headers(await answer_in_envelope(request, handler))
    session = PageSession(request, request.app[SESSION_KEYS])
    await session.confirm(request.app.get(TOKEN_STATUS))  # a revoked login is logged out
    request[PAGE_SESSION] = session
    response = await _answer(request, handler, session)
    session.apply(response)
    return _with_page_headers(response)


def _with_page_headers(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type == "text/html":
        # Pages carry CSRF tokens and personal data: never stored by a shared cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response


def setup_pages(app: web.Application, keys: SessionKeys) -> None:
    """Wire the pages' machinery into the gateway: templates, static files, the middleware.
    Call before adding the page routes."""
    app[SESSION_KEYS] = keys
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
        stock_state=stock_state,
        status_labels=STATUS_LABELS,
        status_actions=STATUS_ACTIONS,
    )
    env.filters.update(money=money, plain_amount=plain_amount, when=when, initial_cap=initial_cap)
    app.on_startup.append(load_assets)
    app.middlewares.append(page_middleware)
    app.router.add_get(STATIC_PREFIX + "{name}", static_file, name="static")
    app.router.add_get(CATALOGUE_PREFIX + "{name}", catalogue_image, name="catalogue_image")
