"""Who is browsing, and where a page may send them: the login and admin checks, logging in
with a token the user service issued, and redirects that only ever go to a path on this site."""

from __future__ import annotations

import logging
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from shopkit.auth import Identity
from shopkit.errors import Forbidden, UpstreamUnavailable
from svc_gateway.keys import PAGE_SESSION
from svc_gateway.session import PageSession

log = logging.getLogger("shop.gateway.pages")

# Longer paths than this are nowhere on this site; redirected to, they would make a Location
# header past what clients read (aiohttp's: 8 KiB).
MAX_LOCAL_PATH = 2048


class Redirect(Exception):
    """Leave the handler with a 303 See Other to ``location`` (a path on this site)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


def session_of(request: web.Request) -> PageSession:
    return request[PAGE_SESSION]


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


def return_path(request: web.Request) -> str | None:
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
        raise Redirect(login_url(return_path(request)))
    return session.user


def require_admin(request: web.Request) -> Identity:
    user = require_user(request, "Log in as an administrator to continue.")
    if not user.is_admin:
        raise Forbidden("This page is for the shop's administrators only.")
    return user


def log_in(request: web.Request, token: str) -> None:
    """This browser logs in with a token the user service just issued."""
    try:
        session_of(request).log_in(token)
    except ValueError:
        log.error("cannot read the token the user service issued: is JWT_SECRET the same?")
        raise UpstreamUnavailable(
            "Logging in is not possible right now; please try again later."
        ) from None
