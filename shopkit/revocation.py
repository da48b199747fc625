"""Revocation: a token is good only while its iat is at or after its user's
``tokens_valid_from``, which a logout, a password change or a removed account moves on.

The user service owns that number (a column of ``users``). Every other service asks it over
HTTP (``GET /internal/users/{id}/token-status``, service tokens only, never routed by the
gateway) and remembers each answer for TOKEN_STATUS_CACHE_SECONDS (default 2), with one
call in flight per user however many requests wait for it: on most requests the check is a
dict look-up. A check that cannot be confirmed (the user service down) is a 503
upstream_unavailable, never a pass. Service tokens name no user and skip the check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from pydantic import Field

from shopkit.auth import Identity, ServiceCredential, authenticate
from shopkit.client import ServiceClient
from shopkit.errors import Forbidden, Unauthorized, UpstreamUnavailable
from shopkit.keys import SETTINGS, TOKEN_STATUS
from shopkit.settings import HttpUrl, ServiceSettings

log = logging.getLogger("shop.revocation")

# user id -> its tokens_valid_from (epoch seconds), or None: there is no such user.
TokenSource = Callable[[int], Awaitable[int | None]]

DEFAULT_CACHE_SECONDS = 2.0
CACHE_LIMIT = 100_000  # users remembered at most; past it the cache starts again
# A token check waits this long for the user service before answering 503.
CHECK_TIMEOUT = aiohttp.ClientTimeout(total=2, connect=1)


class TokenStatus:
    """Each user's tokens_valid_from, from ``source``, remembered for ``ttl`` seconds (0:
    asked every time, as the user service asks its own database)."""

    def __init__(self, source: TokenSource, ttl: float) -> None:
        self.source = source
        self.ttl = ttl
        # user id -> (monotonic time the answer was asked for, the answer)
        self._known: dict[int, tuple[float, int | None]] = {}
        self._pending: dict[int, asyncio.Future[int | None]] = {}

    async def valid_from(self, user_id: int) -> int | None:
        """The user's tokens_valid_from, or None when the user does not exist."""
        if self.ttl <= 0:
            return await self.source(user_id)
        known = self._known.get(user_id)
        if known is not None and time.monotonic() - known[0] < self.ttl:
            return known[1]
        pending = self._pending.get(user_id)
        if pending is None:
            pending = asyncio.ensure_future(self._ask(user_id))
            # Every waiter may have gone (clients hung up): the outcome is still observed.
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._pending[user_id] = pending
        # Shielded: one waiter cancelled (its client gone) must not cancel the others' call.
        return await asyncio.shield(pending)

    async def _ask(self, user_id: int) -> int | None:
        # The moment asked, not answered, counts: the answer is at least that fresh.
        asked_at = time.monotonic()
        try:
            answer = await self.source(user_id)
        finally:
            self._pending.pop(user_id, None)
        if len(self._known) >= CACHE_LIMIT:
            self._known.clear()
        self._known[user_id] = (asked_at, answer)
        return answer

    async def ensure_current(self, identity: Identity) -> None:
        """401 when the token's user is gone or the token was issued before its user's
        tokens_valid_from; 503 when that cannot be found out now."""
        if identity.role == "service" or identity.user_number is None:
            return  # Claims guarantees a user_number for every other role
        valid_from = await self.valid_from(identity.user_number)
        if valid_from is None:
            raise Unauthorized(
                "The account this token names no longer exists.", code="invalid_token"
            )
        if identity.issued_at < valid_from:
            raise Unauthorized(
                "This token was ended by a logout or a password change; log in again.",
                code="token_revoked",
            )


async def authorize(request: web.Request, roles: tuple[str, ...]) -> Identity:
    """The caller's identity: a valid, unrevoked token (else 401) whose role is one of
    ``roles``, any role when empty (else 403). Revocation comes first: a revoked token is
    not anyone, whatever it asks for."""
    identity = authenticate(request)
    await request.app[TOKEN_STATUS].ensure_current(identity)
    if roles and identity.role not in roles:
        raise Forbidden(f"This needs the {' or '.join(roles)} role.")
    return identity


def user_service_source(client: ServiceClient, credential: ServiceCredential) -> TokenSource:
    """Asks the user service's internal token-status route, with this service's token."""

    async def ask(user_id: int) -> int | None:
        reply = await client.get(f"/internal/users/{user_id}/token-status", token=credential.token)
        body = reply.body if isinstance(reply.body, dict) else {}
        if reply.status == 404 and body.get("code") == "user_not_found":
            return None
        data = reply.data if reply.status == 200 else None
        valid_from = data.get("tokens_valid_from") if isinstance(data, dict) else None
        if type(valid_from) is not int:
            log.warning("token status of user %s: unexpected answer %s", user_id, reply.status)
            raise UpstreamUnavailable(
                "The user service could not confirm this token right now; try again shortly."
            )
        return valid_from

    return ask


class TokenCheckingSettings(ServiceSettings):
    """The settings of a service that verifies users' tokens: it must be able to ask the
    user service whether they were revoked."""

    user_service_url: HttpUrl = Field(alias="USER_SERVICE_URL")
    # How old a user's revocation state may be (0: ask the user service on every request).
    token_status_cache_seconds: float = Field(
        DEFAULT_CACHE_SECONDS, alias="TOKEN_STATUS_CACHE_SECONDS", ge=0, le=30
    )


def check_tokens_with_user_service(
    app: web.Application, url: str, ttl: float = DEFAULT_CACHE_SECONDS
) -> None:
    """Wire the revocation check of a service that is not the user service (the app needs
    its HTTP client: ``create_service_app(http_client=True)``)."""
    settings = app[SETTINGS]
    secret = settings.jwt_secret.get_secret_value()
    credential = ServiceCredential(secret, settings.service_name)
    client = ServiceClient(app, "user", url, CHECK_TIMEOUT)
    app[TOKEN_STATUS] = TokenStatus(user_service_source(client, credential), ttl)
