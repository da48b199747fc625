"""The app and request keys shopkit itself uses; each service adds its own in its keys.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from shopkit.auth import Identity
    from shopkit.errors import Refusals
    from shopkit.metrics import Metrics
    from shopkit.postgres import FairPool
    from shopkit.revocation import TokenStatus
    from shopkit.settings import ServiceSettings
    from shopkit.validation import LargerBody

SETTINGS: web.AppKey[ServiceSettings] = web.AppKey("settings")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
# This process's PID and when it built the app (a timestamp), as /health names them.
PROCESS: web.AppKey[tuple[int, str]] = web.AppKey("process")
# Raises when the service's own datastore does not answer; /ready calls it.
READY_CHECK = web.AppKey("ready_check", Callable[[web.Application], Awaitable[None]])
HTTP_SESSION = web.AppKey("http_session", aiohttp.ClientSession)
# The pool of a service that owns a PostgreSQL database (user, order).
POSTGRES: web.AppKey[FairPool] = web.AppKey("postgres")
# Exception types that mean "a dependency is down" and answer 503 instead of 500.
UNAVAILABLE_ERRORS = web.AppKey("unavailable_errors", tuple)
# How a client hears each refusal (shopkit.domain.DomainError) the data layers raise.
REFUSALS: web.AppKey[Refusals] = web.AppKey("refusals")
# Whether a user's token was revoked (shopkit.revocation); every service that checks tokens.
TOKEN_STATUS: web.AppKey[TokenStatus] = web.AppKey("token_status")

# The requests that may carry a body over the 1 MiB limit (uploads), and their limits.
LARGER_BODIES: web.AppKey[tuple[LargerBody, ...]] = web.AppKey("larger_bodies")

IDENTITY: web.RequestKey[Identity] = web.RequestKey("identity")
