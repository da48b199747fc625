"""The page middleware: each page request's session (who is browsing, the CSRF nonce, the
flash messages), the CSRF check of every form post, whatever a handler raises turned into an
HTML page, and the security headers every page carries. /api/* is left to shopkit's
middleware and keeps its JSON envelope."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from shopkit.app import SERVICE_PATHS
from shopkit.context import REQUEST_ID
from shopkit.errors import (
    BadRequest,
    ShopError,
    UnsupportedEncoding,
    UnsupportedMediaType,
    UpstreamUnavailable,
)
from shopkit.keys import TOKEN_STATUS
from shopkit.middleware import answer_in_envelope
from shopkit.uploads import read_form_data
from shopkit.validation import (
    IDENTITY_ENCODINGS,
    MAX_BODY,
    body_limit,
    content_encoding,
    read_body,
    size_in_words,
)
from svc_gateway.assets import STATIC_PREFIX
from svc_gateway.keys import CART_COUNT, PAGE_SESSION, SESSION_KEYS
from svc_gateway.pages.access import Redirect, login_url, return_path
from svc_gateway.pages.backend import BackendRefused
from svc_gateway.pages.cart import cart_count, merge_guest_cart
from svc_gateway.pages.rendering import render
from svc_gateway.session import CSRF_FIELD, PageSession

log = logging.getLogger("shop.gateway.pages")

# Pictures (the catalogue's drawings, the products' pictures) are not pages.
PICTURES_PREFIX = "/images/"

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
_HTTP_MESSAGES = {
    404: "There is no page at this address. It may have moved, or the link may be mistyped.",
    405: "This page cannot be used that way.",
    413: "What you sent is larger than the shop accepts ({limit}).",
}


def is_page_path(path: str) -> bool:
    """Paths that are not pages: the API keeps its JSON, and so do the service endpoints."""
    return not (path == "/api" or path.startswith("/api/") or path in SERVICE_PATHS)


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
    read it again from ``request.post()``, which keeps it. A form that uploads a file
    (multipart, on the routes the app allows a larger body) is read by
    shopkit.uploads.read_form_data, which keeps it for the handler too."""
    if content_encoding(request) not in IDENTITY_ENCODINGS:
        raise UnsupportedEncoding("The shop's forms are sent uncompressed; nothing was changed.")
    if request.content_type == "multipart/form-data":  # read_body would leave post() nothing
        if body_limit(request) > MAX_BODY:
            return await read_form_data(request)
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


async def _page_response(
    request: web.Request, handler: Handler, session: PageSession
) -> web.StreamResponse:
    """The handler's page, once a form post's CSRF token is checked; whatever it raises
    becomes the page for it (a redirect, the login page, an error page)."""
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
            return _see_other(login_url(return_path(request)))
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
        if exc.status == 413:
            message = message.format(limit=size_in_words(body_limit(request)))
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
    if request.path.startswith(PICTURES_PREFIX):
        # Pictures are asked for by an <img>, never read by a person: their errors are the
        # API's JSON, with the pages' headers all the same (an SVG may hold a script).
        return _with_page_headers(await answer_in_envelope(request, handler))
    session = PageSession(request, request.app[SESSION_KEYS])
    await session.confirm(request.app.get(TOKEN_STATUS))  # a revoked login is logged out
    request[PAGE_SESSION] = session
    if not request.path.startswith(STATIC_PREFIX):
        if request.method in ("GET", "HEAD"):
            # A guest cart still here after a login: its merge failed then; try again.
            await merge_guest_cart(request, on_the_way=True)
        # The header's count: one quick read of the cart (none for a guest without one),
        # and a page without the count when the cart service is down or slow. Also for a
        # form sent, as a refused one is shown again with the header.
        request[CART_COUNT] = await cart_count(request)
    response = await _page_response(request, handler, session)
    session.apply(response)
    return _with_page_headers(response)


def _with_page_headers(response: web.StreamResponse) -> web.StreamResponse:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type == "text/html":
        # Pages carry CSRF tokens and personal data: never stored by a shared cache.
        response.headers.setdefault("Cache-Control", "no-store")
    return response
