"""Who is browsing, and what the pages keep in cookies: the login, a CSRF nonce, flash messages,
a guest's cart.

Four cookies, all ``HttpOnly``, ``SameSite=Lax``, ``Path=/`` and ``Secure`` over HTTPS:

- ``shop_session``: the JWT the user service issued at log-in, as it is. The gateway reads
  its claims only to know who is browsing (the header, the cart's user id, whether to offer
  the admin pages); every backend still verifies the token itself. With ``JWT_SECRET`` set
  the gateway verifies it too, and asks the user service (as every service does, see
  shopkit.revocation) whether it was revoked: a forged, expired or revoked cookie simply
  means "logged out", on every page.
- ``shop_csrf``: a random nonce for this browser. Every form that changes something carries
  ``HMAC(key, nonce | session token)`` and the gateway refuses a POST without the right one
  (a signed double-submit token): another site can neither read the nonce nor compute the
  HMAC, and a token stops working when the login it was made for changes.
- ``shop_flash``: messages for the next page (Post/Redirect/Get), signed so that a crafted
  cookie cannot put words in the shop's mouth; deleted once a page has shown them.
- ``shop_guest``: the id of a guest's cart (128 random bits, made when a guest first adds
  to a cart), signed so that only ids this shop made are used; it lives as long as the
  cart (7 days after its last change, renewed with it). The cart service keeps the cart;
  the gateway reaches it with its own service token, never through the public API. At
  login or registration the cart is merged into the account's and the cookie deleted.

The keys come from ``SESSION_SECRET``, else are derived from ``JWT_SECRET`` (HMAC with a
purpose label, so a CSRF token never doubles as anything else), else are random per process
(fine for one gateway; replicas then refuse each other's forms, hence the warning).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from shopkit.auth import TOKEN_LIFETIME, Identity, unverified_identity, verify_token
from shopkit.errors import Unauthorized, UpstreamUnavailable
from shopkit.revocation import TokenStatus

log = logging.getLogger("shop.gateway.session")

SESSION_COOKIE = "shop_session"
CSRF_COOKIE = "shop_csrf"
FLASH_COOKIE = "shop_flash"
CSRF_FIELD = "csrf_token"
FLASH_LEVELS = ("success", "info", "error")
# Flash messages ride in a cookie (at most 4 KiB): a few short sentences at most.
MAX_FLASHES = 4
MAX_FLASH_TEXT = 300

GUEST_COOKIE = "shop_guest"
# As long as the cart it names: a cart expires 7 days after its last change (the cart
# service's CART_TTL_SECONDS), and every change renews the cookie with it.
GUEST_COOKIE_SECONDS = 7 * 24 * 3600

_NONCE = re.compile(r"^[A-Za-z0-9_-]{32}$")
_GUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: bytes, purpose: str) -> bytes:
    return hmac.new(secret, f"shop gateway {purpose}".encode(), hashlib.sha256).digest()


@dataclass(frozen=True)
class SessionKeys:
    """The keys the page cookies are signed with, and the secret to verify logins with."""

    csrf: bytes
    flash: bytes
    jwt_secret: str | None
    guest: bytes = b""  # signs the guest cart cookie

    @classmethod
    def from_secrets(cls, session_secret: str | None, jwt_secret: str | None) -> SessionKeys:
        if session_secret:
            root = session_secret.encode()
        elif jwt_secret:
            root = _derive(jwt_secret.encode(), "session secret")
        else:
            log.warning(
                "neither SESSION_SECRET nor JWT_SECRET is set: page forms are signed with a "
                "random key, so forms rendered by another gateway replica (or before a "
                "restart) will be refused"
            )
            root = os.urandom(32)
        return cls(
            _derive(root, "csrf"), _derive(root, "flash"), jwt_secret, _derive(root, "guest")
        )


@dataclass(frozen=True, slots=True)
class Flash:
    level: str  # one of FLASH_LEVELS
    text: str


def read_token(keys: SessionKeys, token: str) -> Identity | None:
    """Who the token names, or None for a token that is malformed, expired, whose claims are
    not exactly as issued or (when the gateway knows JWT_SECRET) not signed with it."""
    if keys.jwt_secret is not None:
        try:
            return verify_token(keys.jwt_secret, token)
        except Unauthorized:
            return None
    return unverified_identity(token)


def _sign(key: bytes, message: str) -> str:
    return _b64(hmac.new(key, message.encode(), hashlib.sha256).digest())


def encode_flashes(key: bytes, flashes: list[Flash]) -> str:
    payload = _b64(json.dumps([[flash.level, flash.text] for flash in flashes]).encode())
    return f"{payload}.{_sign(key, payload)}"


def decode_flashes(key: bytes, value: str | None) -> list[Flash]:
    """The messages in a flash cookie; nothing for a cookie that is absent or not ours."""
    if not value or "." not in value or not value.isascii():  # ours are base64 and ASCII
        return []
    payload, _, signature = value.partition(".")
    if not hmac.compare_digest(signature, _sign(key, payload)):
        return []
    try:
        items: Any = json.loads(_unb64(payload))
    except ValueError:
        return []
    return [
        Flash(item[0], item[1])
        for item in items[:MAX_FLASHES]
        if isinstance(item, list)
        and len(item) == 2
        and item[0] in FLASH_LEVELS
        and isinstance(item[1], str)
    ]


def encode_guest_id(key: bytes, guest_id: str) -> str:
    return f"{guest_id}.{_sign(key, guest_id)}"


def decode_guest_id(key: bytes, value: str | None) -> str | None:
    """The guest cart id a cookie holds; None for a cookie that is absent or not ours."""
    if not value or not value.isascii():
        return None
    guest_id, _, signature = value.partition(".")
    if not _GUEST_ID.match(guest_id) or not hmac.compare_digest(signature, _sign(key, guest_id)):
        return None
    return guest_id


def is_https(request: web.Request) -> bool:
    """Served over HTTPS, here or at a proxy in front (``X-Forwarded-Proto``). Trusting the
    header is safe for its one use, the cookies' Secure flag: a client that lies about it
    only keeps its own cookies from coming back over plain HTTP."""
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "")
    return forwarded.split(",")[0].strip().lower() == "https"


class PageSession:
    """One page request's view of the cookies, and the changes to write back with the answer.

    Handlers read ``user`` and ``token``, call ``log_in`` / ``log_out`` / ``flash``; the page
    middleware calls ``apply`` on whatever response goes out."""

    def __init__(self, request: web.Request, keys: SessionKeys) -> None:
        self._keys = keys
        self.secure = is_https(request)
        cookies = request.cookies
        self._cookie_token = cookies.get(SESSION_COOKIE) or None
        self.token: str | None = None
        self.user: Identity | None = None
        if self._cookie_token is not None:
            self.user = read_token(keys, self._cookie_token)
            if self.user is not None:
                self.token = self._cookie_token
        self._logged_in = False
        nonce = cookies.get(CSRF_COOKIE, "")
        self._nonce: str | None = nonce if _NONCE.match(nonce) else None
        self._new_nonce = False
        self._had_flash_cookie = FLASH_COOKIE in cookies
        self._incoming = decode_flashes(keys.flash, cookies.get(FLASH_COOKIE))
        self._shown = False
        self._outgoing: list[Flash] = []
        self._had_guest_cookie = GUEST_COOKIE in cookies
        self.guest_id = decode_guest_id(keys.guest, cookies.get(GUEST_COOKIE))
        self._guest_touched = False

    # -- a guest's cart -------------------------------------------------------------------------

    def guest_cart(self) -> str:
        """This browser's guest cart id, made now if it has none; its cookie is (re)set with
        the answer, for as long as the cart lives after a change."""
        if self.guest_id is None:
            self.guest_id = secrets.token_hex(16)
        self._guest_touched = True
        return self.guest_id

    def end_guest_cart(self) -> None:
        """Forget the guest cart (merged into an account's, or its shopper logged out)."""
        self.guest_id, self._guest_touched = None, False

    # -- logging in and out -------------------------------------------------------------------

    def log_in(self, token: str) -> Identity:
        user = read_token(self._keys, token)
        if user is None:
            # The user service issued a token this gateway cannot read: a JWT_SECRET mismatch.
            raise ValueError("the user service issued a token this gateway cannot read")
        self.token, self.user, self._logged_in = token, user, True
        # A new login starts a new CSRF nonce: nothing planted before it carries over.
        self._nonce, self._new_nonce = secrets.token_urlsafe(24), True
        return user

    def log_out(self) -> None:
        self.token, self.user, self._logged_in = None, None, False

    async def confirm(self, status: TokenStatus | None) -> None:
        """Log out a browser whose login was revoked (a logout elsewhere, a password change,
        an account removed). When the user service cannot say, the login stands for this
        page: every backend it calls checks the token itself and answers 503 meanwhile."""
        if status is None or self.user is None or self._logged_in:
            return
        try:
            await status.ensure_current(self.user)
        except Unauthorized:
            self.log_out()
            self.flash("info", "Your session has ended; please log in again.")
        except UpstreamUnavailable:
            pass

    # -- CSRF ---------------------------------------------------------------------------------

    def _csrf_for(self, nonce: str) -> str:
        return _sign(self._keys.csrf, f"{nonce}|{self.token or ''}")

    def csrf_token(self) -> str:
        """The token a form must carry; starts this browser's nonce if it has none yet."""
        if self._nonce is None:
            self._nonce, self._new_nonce = secrets.token_urlsafe(24), True
        return self._csrf_for(self._nonce)

    def csrf_valid(self, submitted: object) -> bool:
        if not isinstance(submitted, str) or not submitted or self._nonce is None:
            return False
        if self._new_nonce:  # made during this request: no form can carry it yet
            return False
        return hmac.compare_digest(submitted.encode(), self._csrf_for(self._nonce).encode())

    # -- flash messages -------------------------------------------------------------------------

    def flash(self, level: str, text: str) -> None:
        """A message for the next page this browser sees."""
        if level not in FLASH_LEVELS:
            raise ValueError(f"unknown flash level {level!r}")
        if len(text) > MAX_FLASH_TEXT:
            text = text[: MAX_FLASH_TEXT - 1] + "…"
        self._outgoing.append(Flash(level, text))

    def take_flashes(self) -> list[Flash]:
        """The messages to show on the page being rendered (they are then gone)."""
        taken = ([] if self._shown else self._incoming) + self._outgoing
        self._shown, self._outgoing = True, []
        return taken

    # -- writing back ---------------------------------------------------------------------------

    def apply(self, response: web.StreamResponse) -> None:
        """Set or clear the cookies this request changed."""
        flags: dict[str, Any] = {
            "path": "/",
            "httponly": True,
            "samesite": "Lax",
            "secure": self.secure or None,
        }
        if self._logged_in and self.token is not None:
            max_age = int(TOKEN_LIFETIME.total_seconds())
            response.set_cookie(SESSION_COOKIE, self.token, max_age=max_age, **flags)
        elif self._cookie_token is not None and self.token is None:
            response.del_cookie(SESSION_COOKIE, **flags)  # logged out, or a token gone bad
        if self._new_nonce and self._nonce is not None:
            response.set_cookie(CSRF_COOKIE, self._nonce, **flags)
        pending = ([] if self._shown else self._incoming) + self._outgoing
        if pending:
            value = encode_flashes(self._keys.flash, pending[-MAX_FLASHES:])
            response.set_cookie(FLASH_COOKIE, value, max_age=300, **flags)
        elif self._had_flash_cookie:
            response.del_cookie(FLASH_COOKIE, **flags)
        if self._guest_touched and self.guest_id is not None:
            value = encode_guest_id(self._keys.guest, self.guest_id)
            response.set_cookie(GUEST_COOKIE, value, max_age=GUEST_COOKIE_SECONDS, **flags)
        elif self._had_guest_cookie and self.guest_id is None:
            response.del_cookie(GUEST_COOKIE, **flags)  # merged, logged out, or not ours
