"""Turning request bodies and query strings into pydantic models, or a 400 with details.

Bodies are strict (``"12"`` is not a number, ``1.5`` is not an integer, unknown fields are
refused); JSON floats are parsed as ``Decimal`` so that money never passes through a binary
float. Query strings are text by nature, so query models convert, but still refuse unknown
or repeated parameters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Self, TypeVar

from aiohttp import web
from aiohttp.streams import EofStream
from multidict import MultiMapping
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from shopkit.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedEncoding,
    ValidationFailed,
)
from shopkit.keys import LARGER_BODIES, SETTINGS
from shopkit.parsing import QueryInt, check_text

M = TypeVar("M", bound=BaseModel)

MAX_BODY = 1024 * 1024  # 1 MiB, compressed or not; larger bodies get 413


@dataclass(frozen=True, slots=True)
class LargerBody:
    """Requests (this method, a path matching ``path`` whole) whose body may be up to
    ``limit`` bytes instead of MAX_BODY: an app lists them under ``LARGER_BODIES``."""

    method: str
    path: re.Pattern[str]
    limit: int


def body_limit(request: web.Request) -> int:
    """The most bytes this request's body may hold: MAX_BODY, unless its app lists the
    request among its ``LARGER_BODIES`` (an upload)."""
    for rule in request.app.get(LARGER_BODIES, ()):
        if request.method == rule.method and rule.path.fullmatch(request.path):
            return rule.limit
    return MAX_BODY


def larger_reader(request: web.Request, limit: int) -> web.Request:
    """``request`` itself, or for a limit above the app's own (aiohttp's client_max_size) a
    copy that reads up to ``limit`` bytes (the body is not read yet: both share it)."""
    if limit <= request.client_max_size:
        return request
    return request.clone(client_max_size=limit)


MAX_PAGE = 10_000
MAX_PAGE_SIZE = 100
# ?page= and ?limit= of every list.
PageNumber = QueryInt(1, MAX_PAGE)
PageSize = QueryInt(1, MAX_PAGE_SIZE)


class Body(BaseModel):
    """Base of every request body model: strict types, unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", str_strip_whitespace=True)


def _partial_schema(schema: dict[str, Any]) -> None:
    schema["minProperties"] = 1
    for prop in schema["properties"].values():
        if prop.get("default", "") is None and "anyOf" not in prop:
            del prop["default"]  # null is not a value a client may send


class PartialBody(Body):
    """A body that changes only the fields it gives, at least one.

    Fields are declared ``name: T = None``: the default is never validated, so an explicit
    null is refused unless the field's type allows it (``T | None``)."""

    model_config = ConfigDict(json_schema_extra=_partial_schema)

    @model_validator(mode="after")
    def _something_to_change(self) -> Self:
        if not self.model_fields_set:
            raise ValueError("give at least one field to change")
        return self


class Query(BaseModel):
    """Base of every query-string model: text converted, unknown parameters refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw, parse_float=Decimal, parse_constant=_reject_constant)
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None
    except ArithmeticError:  # a number past what a Decimal holds: 1e1000000000000000000
        raise BadRequest(
            "The request body holds a number too large to read.", code="invalid_json"
        ) from None
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise BadRequest(
            f"The request body is not valid JSON: {reason}.", code="invalid_json"
        ) from None


# Content-Encodings a body may arrive in, and the zlib window that reads each. The services
# ask aiohttp not to decode bodies itself (create_service_app): its decoder turns a body that
# is not what its header says into a 500, and br / zstd into a plain-text 400 before any
# middleware runs. Here every failure is one of ours, in the envelope.
_ZLIB_WINDOWS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 0}
IDENTITY_ENCODINGS = frozenset({"", "identity"})


def content_encoding(request: web.Request) -> str:
    """The body's Content-Encoding, trimmed and lower-cased ("" when there is none); several
    header lines are read as one list (RFC 9110), so "identity" then "gzip" is not taken for
    identity alone."""
    return ", ".join(request.headers.getall("Content-Encoding", [])).strip().lower()


class ClientWentAway(BadRequest):
    """The client closed the connection before its body arrived: nobody hears the answer,
    and it is not a server error."""

    code = "incomplete_body"


async def read_body(request: web.Request) -> bytes:
    """The request body, decoded from gzip or deflate; 400 when it cannot be decoded, 413
    past ``body_limit(request)`` (before or after decoding), 415 for any other encoding."""
    encoding = content_encoding(request)
    if encoding not in IDENTITY_ENCODINGS and encoding not in _ZLIB_WINDOWS:
        raise _unsupported(encoding)  # before reading what could not be read anyway
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)  # before reading what would be refused anyway
    async with reading_body(request, limit):
        raw = await larger_reader(request, limit).read()
    return decode_body(raw, encoding, limit)


@contextlib.asynccontextmanager
async def reading_body(request: web.Request, limit: int) -> AsyncIterator[None]:
    """Around reading a request's body: the app's time limit for it, and each way reading
    can fail as one of our errors (408, 413 past ``limit``, a client that went away)."""
    within = request.app[SETTINGS].body_timeout_seconds
    try:
        async with asyncio.timeout(within):
            yield
    except TimeoutError:
        raise RequestTimeout(
            f"The request body did not arrive within {within:g} seconds; send it again."
        ) from None
    except web.HTTPRequestEntityTooLarge:
        raise too_large(limit) from None
    except (ConnectionError, asyncio.IncompleteReadError, EofStream) as exc:
        raise ClientWentAway(
            "The connection closed before the whole request body arrived."
        ) from exc


def _unsupported(encoding: str) -> UnsupportedEncoding:
    return UnsupportedEncoding(
        f"The body's Content-Encoding {encoding[:40]!r} is not one this service accepts; "
        "send it uncompressed, or as gzip or deflate.",
        extra={"accepted": ["identity", "gzip", "deflate"]},
    )


def size_in_words(limit: int) -> str:
    """A byte limit as people say it: 1048576 -> "1 MiB", 5308416 -> "5.06 MiB"."""
    return f"{limit / 2**20:.3g} MiB" if limit >= 2**20 else f"{limit / 2**10:.3g} KiB"


def too_large(limit: int = MAX_BODY) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than the {size_in_words(limit)} limit.")


def decode_body(raw: bytes, encoding: str, limit: int = MAX_BODY) -> bytes:
    """``raw`` decoded from ``encoding`` (a trimmed, lower-cased Content-Encoding), at most
    ``limit`` bytes once decoded."""
    if encoding in IDENTITY_ENCODINGS or not raw:
        return raw
    if encoding not in _ZLIB_WINDOWS:
        raise _unsupported(encoding)
    window = _ZLIB_WINDOWS[encoding]
    if encoding == "deflate":
        # "deflate" is meant to be zlib-wrapped, but many clients send raw deflate: the
        # first byte tells them apart (RFC 1950: its low four bits are 8), as aiohttp does.
        window = zlib.MAX_WBITS if raw[0] & 0x0F == 8 else -zlib.MAX_WBITS
    decoder = zlib.decompressobj(window)
    try:
        body = decoder.decompress(raw, limit + 1)  # bounded: a small bomb stays small
    except zlib.error:
        raise _undecodable(encoding) from None
    if len(body) > limit or decoder.unconsumed_tail:
        raise too_large(limit)
    if not decoder.eof or decoder.unused_data:
        raise _undecodable(encoding)
    return body


def _undecodable(encoding: str) -> BadRequest:
    return BadRequest(
        f"The request body is not valid {encoding} data, as its Content-Encoding says.",
        code="invalid_content_encoding",
    )


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object (whitespace is not
    empty: it is not JSON either, and a 400 like any other)."""
    raw = await read_body(request)
    if not raw:
        return {}
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def _length_message(bound: str, key: str) -> Callable[[dict[str, Any]], str]:
    def message(ctx: dict[str, Any]) -> str:
        length = ctx.get(key)
        if ctx.get("field_type") == "List":
            return f"must have {bound} {length} item{'s' if length != 1 else ''}"
        if bound == "at least" and length == 1:
            return "must not be empty"
        return f"must be {bound} {length} characters long"

    return message


# pydantic words a length rule after a validator as "Value should have at least 1 item after
# validation, not 0": said here as a person would, for text and lists alike.
_LENGTH_MESSAGES = {
    "too_short": _length_message("at least", "min_length"),
    "string_too_short": _length_message("at least", "min_length"),
    "too_long": _length_message("at most", "max_length"),
    "string_too_long": _length_message("at most", "max_length"),
}


def error_details(exc: ValidationError, whole: str = "body") -> list[dict[str, str]]:
    """``[{"field", "message"}]``; a rule about the whole input names ``whole`` as its field."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or whole
        if error["type"] == "extra_forbidden":
            message = "is not a known field"
        elif error["type"] == "missing":
            message = "is required"
        elif error["type"] in _LENGTH_MESSAGES:
            message = _LENGTH_MESSAGES[error["type"]](error.get("ctx") or {})
        else:
            message = error["msg"].removeprefix("Value error, ")
        details.append({"field": field, "message": message})
    return details


def _fail(exc: ValidationError, whole: str, what: str) -> ValidationFailed:
    details = error_details(exc, whole)
    first = details[0]
    field, message = first["field"], first["message"]
    problem = message if field == whole else f"{field}: {message}"
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ValidationFailed(f"The {what} is invalid: {problem}{more}.", details=details)


def _text_problems(value: Any, path: tuple[str, ...]) -> list[dict[str, str]]:
    """Every string in a parsed body or query, keys included, checked once: no control
    characters but tab and line breaks, no lone surrogates. Fields that must be a single
    line say so in their own type (shopkit.parsing.Line)."""
    if isinstance(value, str):
        try:
            check_text(value, multiline=True)
        except ValueError as exc:
            return [{"field": ".".join(path) or "body", "message": str(exc)}]
        return []
    problems: list[dict[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            problems += _text_problems(key, path) or _text_problems(item, (*path, str(key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += _text_problems(item, (*path, str(index)))
    return problems


def _refuse_bad_text(data: Any, what: str) -> None:
    details = _text_problems(data, ())
    if details:
        first = details[0]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        raise ValidationFailed(
            f"The {what} is invalid: {first['field']}: {first['message']}{more}.",
            details=details,
        )


def validate_body(model: type[M], data: Mapping[str, Any]) -> M:
    _refuse_bad_text(data, "request body")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise _fail(exc, "body", "request body") from None


def validate_query(model: type[M], query: MultiMapping[str]) -> M:
    repeated = sorted({key for key in query if len(query.getall(key)) > 1})
    if repeated:
        details = [{"field": key, "message": "is given more than once"} for key in repeated]
        raise ValidationFailed(
            f"The query string is invalid: {repeated[0]} is given more than once.", details=details
        )
    values = dict(query)
    _refuse_bad_text(values, "query string")
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _fail(exc, "query", "query string") from None
