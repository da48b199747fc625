"""A checkout forwarded to the order service until its outcome is certain, for the API's
``POST /api/orders`` and the cart page's checkout alike: the client learns the real outcome,
never a guess.

When the connection to the order service breaks after a ``POST /api/orders`` was sent (the
service crashed, was killed, or the answer timed out), the order may exist or not. So the
gateway gives every checkout an Idempotency-Key (the client's own, or an unguessable one it
makes up) and, when an answer is lost, sends the same request again with that same key: the
order service then answers the order that key already placed (201, Idempotent-Replayed),
places it now, or refuses it for certain. Tries are bounded by a deadline with backoff; a
client gets 503 only when no order was placed, and in the one case the gateway cannot
settle in time (the order service stays away) a 504 ``checkout_outcome_unknown`` naming the
key, with which a later retry finds out without buying twice.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

import aiohttp
import orjson
from multidict import CIMultiDictProxy

from shopkit.client import ServiceClient
from shopkit.context import REQUEST_ID
from shopkit.errors import ShopError, UpstreamUnavailable
from shopkit.idempotency import HEADER
from shopkit.keys import HTTP_SESSION

log = logging.getLogger("shop.gateway.checkout")

FIRST_PAUSE = 0.05  # seconds before the first retry; doubled each time, up to MAX_PAUSE
MAX_PAUSE = 1.0
# A 503 from the order service after an answer was lost: asked again this many times
# (it may have come from a database blip while the lost attempt's outcome was being read).
UNAVAILABLE_RETRIES = 3
# Answers that say nothing certain about the order: a bug's 500, or a proxy's 502 / 504.
_UNCERTAIN_STATUSES = frozenset({500, 502, 504})
# A 500 is the order service's own answer: asked again this many times (a crash of one
# replica behind a load balancer looks alike), then passed on, since an input that always
# makes it fail would otherwise be sent again until the deadline.
SERVER_ERROR_RETRIES = 2


class OutcomeUnknown(ShopError):
    status = 504
    code = "checkout_outcome_unknown"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    reason: str | None
    headers: CIMultiDictProxy[str]
    body: bytes


class _NotSent(Exception):
    """The order service could not be reached: this attempt placed nothing."""


class _Lost(Exception):
    """The request may have reached the order service, and its answer did not come back."""


def checkout_key(given: str | None) -> str:
    """The key a checkout is sent with: the client's, or one of the gateway's own."""
    return given if given is not None else f"gw-{secrets.token_urlsafe(24)}"


async def _attempt(
    client: ServiceClient,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
    per_try: aiohttp.ClientTimeout,
) -> Answer:
    session = client.app[HTTP_SESSION]
    try:
        async with session.post(
            client.base_url + target,
            headers=headers,
            data=body,
            timeout=per_try,
            allow_redirects=False,
            auto_decompress=False,
        ) as response:
            raw = await response.read()
            return Answer(response.status, response.reason, response.headers, raw)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise _NotSent(type(exc).__name__) from None
    except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError) as exc:
        # Reset, disconnected, cut off or too slow: the request may have been acted on.
        raise _Lost(type(exc).__name__ if str(exc) == "" else str(exc)) from None


def _code(answer: Answer) -> str | None:
    try:
        body = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return None
    return body.get("code") if isinstance(body, dict) else None


async def certain_checkout(
    client: ServiceClient,
    target: str,
    headers: dict[str, str],
    body: bytes | None,
    deadline_seconds: float,
) -> Answer:
    """POST the checkout until its outcome is certain or ``deadline_seconds`` pass.
    ``headers`` must already carry the Idempotency-Key (see ``checkout_key``)."""
    key = headers[HEADER]
    request_id = REQUEST_ID.get()
    if request_id != "-":
        headers = {**headers, "X-Request-ID": request_id}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_seconds
    maybe_placed = False  # some attempt may have reached the order service
    unavailable_answers = 0
    server_errors = 0
    pause = FIRST_PAUSE
    last: Answer | None = None
    while True:
        left = max(deadline - loop.time(), 0.1)
        per_try = aiohttp.ClientTimeout(
            total=min(client.timeout.total or left, left), connect=client.timeout.connect
        )
        try:
            last = await _attempt(client, target, headers, body, per_try)
        except _NotSent as exc:
            if not maybe_placed:
                raise UpstreamUnavailable(
                    f"The order service is unavailable right now ({exc}); no order was placed. "
                    "Try again shortly."
                ) from None
            why = f"order service unreachable ({exc})"
            last = None
        except _Lost as exc:
            maybe_placed = True
            why = f"answer lost ({exc})"
            last = None
        else:
            if last.status == 500 and server_errors >= SERVER_ERROR_RETRIES:
                return last
            if last.status in _UNCERTAIN_STATUSES:
                maybe_placed = True
                server_errors += last.status == 500
                why = f"answered {last.status}"
            elif last.status == 409 and maybe_placed and _code(last) == "checkout_in_progress":
                why = "the lost attempt is still in progress"  # ours: wait for its outcome
            elif last.status == 503 and maybe_placed and unavailable_answers < UNAVAILABLE_RETRIES:
                unavailable_answers += 1
                why = "answered 503 after an answer was lost"
            else:
                return last  # the real outcome: placed, replayed, or refused for certain
        if loop.time() + pause >= deadline:
            break
        log.warning("checkout with key %s: %s; asking again in %.2f s", key, why, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)
    if (
        last is not None
        and last.status not in _UNCERTAIN_STATUSES
        and _code(last) != ("checkout_in_progress")
    ):
        return last
    log.error("checkout with key %s: outcome still unknown after %.0f s", key, deadline_seconds)
    raise OutcomeUnknown(
        "The order service stopped answering during this checkout, so whether the order "
        "was placed is not known yet. Send the same request again with this Idempotency-Key "
        "header to find out: it will not buy twice.",
        headers={HEADER: key, "Retry-After": "5"},
        extra={"idempotency_key": key},
    )
