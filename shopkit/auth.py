"""Tokens: HS256 JWTs signed with JWT_SECRET, and the role checks built on them."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from aiohttp import web

from shopkit.errors import Forbidden, Unauthorized
from shopkit.keys import SETTINGS

ALGORITHM = "HS256"
TOKEN_LIFETIME = timedelta(hours=24)
ROLES = frozenset({"customer", "admin", "service"})
_REQUIRED_CLAIMS = ["sub", "email", "role", "iat", "exp"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: from a verified token."""

    user_id: str
    email: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_act_for(self, user_id: str) -> bool:
        """A customer acts only for itself; an admin or a service for anyone."""
        return self.role in ("admin", "service") or self.user_id == str(user_id)


def issue_token(
    secret: str,
    *,
    sub: str,
    email: str,
    role: str,
    lifetime: timedelta = TOKEN_LIFETIME,
    now: datetime | None = None,
) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    issued = now or datetime.now(UTC)
    claims = {
        "sub": str(sub),
        "email": email,
        "role": role,
        "iat": int(issued.timestamp()),
        "exp": int((issued + lifetime).timestamp()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def service_token(secret: str, service: str) -> str:
    """A token one service presents to another (e.g. order -> product stock changes)."""
    return issue_token(
        secret, sub=f"service:{service}", email=f"{service}@services.shop", role="service"
    )


def verify_token(secret: str, token: str) -> Identity:
    """The identity a token proves, or 401 (invalid, tampered, another algorithm, expired)."""
    identity, expires = _verified(secret, token)
    if expires <= time.time():
        raise Unauthorized("Your token has expired; log in again.", code="token_expired")
    return identity


# A client sends the same token with every request, and checking its signature and claims is
# a fifth of a cheap request's CPU: the outcome of a successful check is remembered (keyed by
# the whole token, signature included, so a changed token is checked afresh); only the
# expiry depends on the time, and it is checked on every call. Failures are not remembered.
@functools.lru_cache(maxsize=4096)
def _verified(secret: str, token: str) -> tuple[Identity, float]:
    # The algorithm is pinned: a token signed with anything else, or "none", is refused.
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": _REQUIRED_CLAIMS, "verify_exp": False},
        )
    except jwt.InvalidTokenError:
        raise Unauthorized("The token is invalid.", code="invalid_token") from None
    role, email, sub, expires = claims["role"], claims["email"], claims["sub"], claims["exp"]
    if role not in ROLES or not isinstance(email, str) or not sub:
        raise Unauthorized("The token is invalid.", code="invalid_token")
    if isinstance(expires, bool) or not isinstance(expires, int | float):
        raise Unauthorized("The token is invalid.", code="invalid_token")
    return Identity(user_id=sub, email=email, role=role), float(expires)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "The Authorization header must be 'Bearer <token>'.", code="invalid_token"
        )
    return token.strip()


def authenticate(request: web.Request) -> Identity:
    """The caller's identity, or 401."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("Log in first: this needs an Authorization: Bearer token.")
    return verify_token(request.app[SETTINGS].jwt_secret.get_secret_value(), token)


def require_roles(request: web.Request, *roles: str) -> Identity:
    """The caller's identity if its role is one of ``roles`` (any role when none given)."""
    identity = authenticate(request)
    if roles and identity.role not in roles:
        raise Forbidden(f"This needs the {' or '.join(roles)} role.")
    return identity
