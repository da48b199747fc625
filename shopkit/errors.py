"""The shop's error types and the one place that shapes an error body."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shopkit.domain import DomainError, ProductNotFound


class ShopError(Exception):
    """An expected failure with an HTTP status, a machine code and a sentence for a person."""

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class BadRequest(ShopError):
    status = 400
    code = "bad_request"


class ValidationFailed(ShopError):
    status = 400
    code = "validation_error"


class Unauthorized(ShopError):
    status = 401
    code = "unauthorized"


class Forbidden(ShopError):
    status = 403
    code = "forbidden"


class NotFound(ShopError):
    status = 404
    code = "not_found"


class RequestTimeout(ShopError):
    status = 408
    code = "request_timeout"


class Conflict(ShopError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ShopError):
    status = 413
    code = "payload_too_large"


class UriTooLong(ShopError):
    status = 414
    code = "uri_too_long"


class HeaderTooLarge(ShopError):
    status = 431
    code = "header_too_large"


class UnsupportedMediaType(ShopError):
    status = 415
    code = "unsupported_media_type"


class UnsupportedEncoding(UnsupportedMediaType):
    code = "unsupported_content_encoding"


class TooManyRequests(ShopError):
    status = 429
    code = "too_many_requests"


class UpstreamUnavailable(ShopError):
    status = 503
    code = "upstream_unavailable"


class ServiceBusy(ShopError):
    """This service has more work queued than it will take on; the client should retry
    (say when with a Retry-After header)."""

    status = 503
    code = "busy"


def error_body(
    message: str,
    code: str,
    details: list[dict[str, str]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The failure envelope every service answers with.

    ``{"success": false, "error": "<sentence for a person>", "code": "<snake_case>"}``, plus
    ``"details": [{"field": ..., "message": ...}]`` for a validation failure. Callers may add
    keys (``extra``) but never remove these.
    """
    body: dict[str, Any] = {"success": False, "error": message, "code": code}
    if details is not None:
        body["details"] = details
    if extra:
        body.update(extra)
    return body


# -- a data layer's refusals, as a client hears them -------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """How a client hears one kind of ``DomainError``: the error class (its status), a machine
    code, a sentence made from the error's facts (``str.format``), the facts that are also
    keys of the body (``keys``, when the error has them), and headers (``Retry-After``)."""

    error: type[ShopError]
    code: str
    message: str
    keys: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)

    def answer(self, refused: DomainError) -> ShopError:
        facts = refused.facts
        extra = {key: facts[key] for key in self.keys if key in facts}
        message = self.message.format(**facts)
        return self.error(message, code=self.code, extra=extra, headers=self.headers)


Refusals = Mapping[type[DomainError], Refusal]

# Refusals more than one service meets (the cart prices lines with the product service's ids).
SHARED_REFUSALS: Refusals = {
    ProductNotFound: Refusal(
        NotFound, "product_not_found", "There is no product with id {id!r}.", ("product_id",)
    )
}


def refusal_error(refused: DomainError, refusals: Refusals) -> ShopError | None:
    """The answer ``refusals`` gives the most specific kind of ``refused``, if any."""
    for kind in type(refused).__mro__:
        refusal = refusals.get(kind)
        if refusal is not None:
            return refusal.answer(refused)
    return None
