"""Tokens: HS256 JWTs signed with JWT_SECRET, their claims read through one strict model, the
role checks built on them, and the revocation check every service runs (see README, "Tokens
and revocation")."""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import jwt
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from shopkit.errors import Unauthorized
from shopkit.keys import SETTINGS
from shopkit.parsing import MAX_ID, parse_id

ALGORITHM = "HS256"
TOKEN_LIFETIME = timedelta(hours=24)
ROLES = frozenset({"customer", "admin", "service"})
# A token may say it was issued this far in the future: the user service issues a token
# right after a logout with iat = the second the logout revoked from (up to a few seconds
# ahead), and hosts' clocks differ a little.
IAT_LEEWAY_SECONDS = 60
# NumericDates are whole seconds between 1970 and the year 5138: bounded, so that a huge
# or non-finite exp can never mean "never expires".
MAX_TIMESTAMP = 10**11
_SERVICE_SUB = re.compile(r"service:[a-z][a-z0-9_-]{0,31}")
_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
INVALID = "The token is invalid."


class Claims(BaseModel):
    """Exactly the claims the user service issues, in exactly their shapes; anything else
    (another claim, a list for a role, "²" or 40 digits for a sub, a float, bool or string
    for a date, exp not after iat or more than TOKEN_LIFETIME after it) is refused."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    sub: Annotated[str, Field(min_length=1, max_length=40)]
    email: Annotated[str, Field(min_length=1, max_length=320, pattern=_NO_CONTROL)]
    role: Literal["customer", "admin", "service"]
    iat: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP)]
    exp: Annotated[int, Field(ge=0, le=MAX_TIMESTAMP)]

    @model_validator(mode="after")
    def _consistent(self) -> Claims:
        if self.role == "service":
            if not _SERVICE_SUB.fullmatch(self.sub):
                raise ValueError("a service's sub is service:<name>")
        elif parse_id(self.sub) is None:
            raise ValueError(f"a user's sub is a decimal user id from 1 to {MAX_ID}")
        if not 0 < self.exp - self.iat <= TOKEN_LIFETIME.total_seconds():
            raise ValueError("exp must come after iat, within the token lifetime")
        return self


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is calling: from a verified token."""

    user_id: str  # the sub claim: a user's canonical decimal id, or "service:<name>"
    email: str
    role: str
    issued_at: int = 0  # the iat claim
    # The user's id as a number; None for a service. Derived from user_id, never given.
    user_number: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        number = None if self.role == "service" else parse_id(self.user_id)
        object.__setattr__(self, "user_number", number)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_act_for(self, user_id: int | str) -> bool:
        """A customer acts only for itself; an admin or a service for anyone. ``user_id``
        is compared exactly as written: "٦٦" or "007" is nobody's id."""
        if self.role in ("admin", "service"):
            return True
        return self.user_number is not None and str(self.user_number) == str(user_id)


def issue_token(
    secret: str,
    *,
    sub: str,
    email: str,
    role: str,
    lifetime: timedelta = TOKEN_LIFETIME,
    now: datetime | None = None,
    not_before: int = 0,
) -> str:
    """A signed token. Its iat is now, or ``not_before`` (a user's tokens_valid_from) when
    that is later, so that a login right after a logout in the same second still works."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    issued = math.floor((now or datetime.now(UTC)).timestamp())
    issued = max(issued, not_before)
    claims = {
        "sub": str(sub),
        "email": email,
        "role": role,
        "iat": issued,
        "exp": issued + int(lifetime.total_seconds()),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def service_token(secret: str, service: str) -> str:
    """A token one service presents to another (e.g. order -> product stock changes)."""
    return issue_token(
        secret, sub=f"service:{service}", email=f"{service}@services.shop", role="service"
    )


class ServiceCredential:
    """A service's own token, issued afresh well before the last one expires (a token
    made once at start-up would stop working after TOKEN_LIFETIME)."""

    def __init__(self, secret: str, service: str) -> None:
        self._secret, self._service = secret, service
        self._token, self._renew_at = "", 0.0

    @property
    def token(self) -> str:
        now = time.monotonic()
        if now >= self._renew_at:
            self._token = service_token(self._secret, self._service)
            self._renew_at = now + TOKEN_LIFETIME.total_seconds() / 2
        return self._token


def identity_of(claims: object) -> Identity:
    """The identity in a token's claims (any decoded JSON), or 401 invalid_token."""
    try:
        valid = Claims.model_validate(claims)
    except ValidationError:
        raise Unauthorized(INVALID, code="invalid_token") from None
    return Identity(user_id=valid.sub, email=valid.email, role=valid.role, issued_at=valid.iat)


def verify_token(secret: str, token: str) -> Identity:
    """The identity a token proves, or 401 (invalid, tampered, another algorithm, claims
    not exactly as issued, expired, or issued too far in the future)."""
    identity, expires = _verified(secret, token)
    now = time.time()
    if expires <= now:
        raise Unauthorized("Your token has expired; log in again.", code="token_expired")
    if identity.issued_at > now + IAT_LEEWAY_SECONDS:
        raise Unauthorized(INVALID, code="invalid_token")
    return identity


# PyJWT checks the signature and the algorithm only; the claims are ours to judge (its own
# iat check would refuse a token issued a second ahead, see IAT_LEEWAY_SECONDS).
_DECODE_OPTIONS: dict[str, Any] = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}


# A client sends the same token with every request, and checking its signature and claims is
# a fifth of a cheap request's CPU: the outcome of a successful check is remembered (keyed by
# the whole token, signature included, so a changed token is checked afresh); only the
# expiry depends on the time, and it is checked on every call. Failures are not remembered.
@functools.lru_cache(maxsize=4096)
def _verified(secret: str, token: str) -> tuple[Identity, int]:
    # The algorithm is pinned: a token signed with anything else, or "none", is refused.
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options=_DECODE_OPTIONS)
    except (jwt.InvalidTokenError, ValueError, RecursionError):
        # RecursionError: a header nested thousands deep, read before the signature is.
        raise Unauthorized(INVALID, code="invalid_token") from None
    identity = identity_of(claims)
    return identity, claims["exp"]


def unverified_identity(token: str) -> Identity | None:
    """Who an unsigned-checked token names (for a gateway without JWT_SECRET, which only
    shows who is browsing: every backend verifies the token itself), or None."""
    try:
        claims = jwt.decode(
            token, algorithms=[ALGORITHM], options={**_DECODE_OPTIONS, "verify_signature": False}
        )
        identity = identity_of(claims)
    except (jwt.InvalidTokenError, ValueError, RecursionError, Unauthorized):
        return None
    if claims["exp"] <= time.time():
        return None
    return identity


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
    """The caller's identity from its token's signature and claims, or 401. Revocation is
    checked by ``shopkit.revocation.authorize``, the one way routes check a caller."""
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("Log in first: this needs an Authorization: Bearer token.")
    return verify_token(request.app[SETTINGS].jwt_secret.get_secret_value(), token)
