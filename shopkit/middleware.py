"""The middleware every service runs: request id, error envelope, access log and metrics."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from shopkit.context import REQUEST_ID
from shopkit.domain import DomainError
from shopkit.errors import HeaderTooLarge, ShopError, UriTooLong, error_body, refusal_error
from shopkit.keys import METRICS, REFUSALS, UNAVAILABLE_ERRORS
from shopkit.logs import request_record
from shopkit.responses import json_response
from shopkit.tracing import record_error_code, record_failure, set_request_id
from shopkit.validation import body_limit, too_large

access_log = logging.getLogger("shop.access")
error_log = logging.getLogger("shop.error")

_GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

# aiohttp's own HTTP errors (unknown route, wrong method, body too large...) in our words.
_HTTP_CODES = {
    400: ("bad_request", "The request is malformed."),
    404: ("not_found", "There is nothing at {method} {path}."),
    405: ("method_not_allowed", "{method} is not allowed on {path}."),
    413: ("payload_too_large", "The request body is larger than the 1 MiB limit."),
}


def _request_id(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    return given if _GOOD_REQUEST_ID.fullmatch(given) else os.urandom(16).hex()


def _route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.StreamResponse:
    if exc.status < 400:  # redirects and 304s pass through as they are
        return exc
    code, message = _HTTP_CODES.get(
        exc.status, (exc.reason.lower().replace(" ", "_"), exc.reason + ".")
    )
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
    record_error_code(code)
    return json_response(
        error_body(message.format(method=request.method, path=request.path), code),
        status=exc.status,
        headers=headers,
    )


def _from_shop_error(exc: ShopError) -> web.Response:
    record_error_code(exc.code)
    return json_response(
        error_body(exc.message, exc.code, exc.details, exc.extra),
        status=exc.status,
        headers=exc.headers,
    )


# aiohttp refuses a request line or a header field longer than its limits itself, in plain
# text, before any middleware runs. The services let it read up to PARSER_LIMIT (shopkit.app)
# and refuse what is longer than these in the envelope, as every other refusal is.
MAX_TARGET = 8190  # bytes of the request target (path and query)
MAX_HEADER = 8190  # bytes of one header line (name, ": ", value)
PARSER_LIMIT = 32 * 1024  # past it, aiohttp's own plain 400 still answers


def check_request_size(request: web.Request) -> None:
    """414 for a target past MAX_TARGET, 431 for a header past MAX_HEADER, in the envelope."""
    if len(request.raw_path) > MAX_TARGET:
        raise UriTooLong(
            f"The address is longer than {MAX_TARGET} bytes; send what it carries in a body."
        )
    for name, value in request.raw_headers:
        if len(name) + len(value) + 2 > MAX_HEADER:
            shown = name.decode("latin-1")[:40]
            raise HeaderTooLarge(f"The {shown!r} header is longer than {MAX_HEADER} bytes.")


async def answer_in_envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The handler's answer; any error it raises answered in the JSON envelope (a 500 for
    what no one expected, logged with the request id)."""
    try:
        check_request_size(request)
        return await handler(request)
    except ShopError as exc:
        return _from_shop_error(exc)
    except DomainError as exc:
        answer = refusal_error(exc, request.app[REFUSALS])
        if answer is None:
            record_failure(exc)
            error_log.exception("a refusal no answer is given for: %r", exc)
            return _internal_error()
        request.app[METRICS].refused(exc, answer.code)
        return _from_shop_error(answer)
    except web.HTTPException as exc:
        return _from_http_exception(request, exc)
    except asyncio.CancelledError:
        raise
    except request.app[UNAVAILABLE_ERRORS] as exc:
        error_log.warning("dependency unavailable: %s", exc)
        record_error_code("upstream_unavailable")
        return json_response(
            error_body(
                "A service this one depends on is not answering; try again shortly.",
                "upstream_unavailable",
            ),
            status=503,
        )
    except Exception as exc:
        record_failure(exc)
        error_log.exception("unhandled error answering %s %s", request.method, request.path)
        return _internal_error()


def _internal_error() -> web.Response:
    record_error_code("internal_error")
    return json_response(
        error_body(
            f"Something went wrong on our side; it was logged as request {REQUEST_ID.get()}.",
            "internal_error",
        ),
        status=500,
    )


@web.middleware
async def shop_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    request_id = _request_id(request)
    token = REQUEST_ID.set(request_id)
    set_request_id(request_id)
    started = time.perf_counter()
    metrics = request.app[METRICS]
    metrics.in_flight.up()
    try:
        response = await answer_in_envelope(request, handler)
        if not response.prepared:
            headers = response.headers
            headers["X-Request-ID"] = request_id
            # Answers are personal (profiles, tokens, carts, orders) unless a route says they
            # may be kept (the catalogue does): no cache stores them, no browser sniffs them.
            headers.setdefault("Cache-Control", "no-store")
            headers.setdefault("X-Content-Type-Options", "nosniff")
        elapsed = time.perf_counter() - started
        method, status = request.method, response.status
        metrics.observe(method, _route_template(request), status, elapsed)
        if access_log.isEnabledFor(logging.INFO):
            path = request.path
            fields = {"method": method, "path": path, "status": status}
            fields["ms"] = round(elapsed * 1000, 2)
            access_log.handle(request_record(access_log.name, f"{method} {path} {status}", fields))
        return response
    finally:
        metrics.in_flight.down()
        REQUEST_ID.reset(token)


# -- Expect: 100-continue -------------------------------------------------------------------
# aiohttp answers a request's Expect header before any middleware runs, in plain text (and
# with a 500 for a value that is not UTF-8), and says "100 Continue" even to a body it will
# refuse as too large. ``expect_continue`` is every route's expect handler instead (wired by
# ``answer_expect_headers``), so those answers are in the envelope too.


def _refused_expectation(
    request: web.Request, status: int, code: str, message: str
) -> web.Response:
    return json_response(
        error_body(message, code),
        status=status,
        headers={
            "X-Request-ID": _request_id(request),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Say "100 Continue" to a client waiting for it, unless its body would be refused."""
    expect = request.headers.get("Expect", "")
    if expect.strip().lower() != "100-continue":
        return _refused_expectation(
            request, 417, "expectation_failed", "Only 'Expect: 100-continue' is understood."
        )
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        refused = too_large(limit)
        return _refused_expectation(request, refused.status, refused.code, refused.message)
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
    return None


async def answer_expect_headers(app: web.Application) -> None:
    """on_startup: every route of ``app`` answers Expect with ``expect_continue``. aiohttp
    offers a route's expect handler only as an argument when the route is added, and the
    services add theirs in many places (route tables, the gateway's proxy), so it is set
    here, once every route exists. (A path that matches no route still gets aiohttp's own
    handling: its answer is a 404 or 405 either way.)"""
    for route in app.router.routes():
        route._expect_handler = expect_continue  # private: see the docstring
