"""JSON encoding and the success envelope."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from aiohttp import web

JSON_TYPE = "application/json"


def _encode_default(value: Any) -> Any:
    # Money is a Decimal quantised to cents; a Fragment writes it as a JSON number with
    # exactly two places (59.97, 0.30), never through a binary float.
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value).encode())
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_encode_default)


def json_response(
    body: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return encoded_response(dumps(body), status=status, headers=headers)


def encoded_response(
    raw: bytes, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer already encoded (by ``dumps`` or ``ok_body``)."""
    return web.Response(body=raw, status=status, content_type=JSON_TYPE, headers=headers)


def ok_body(data: Any) -> bytes:
    """``{"success": true, "data": ...}`` encoded: for an answer kept to be sent again."""
    return dumps({"success": True, "data": data})


def ok(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``{"success": true, "data": ...}``."""
    return encoded_response(ok_body(data), status=status, headers=headers)


def ok_page(items: list[Any], *, total: int, page: int, limit: int) -> dict[str, Any]:
    """The list envelope: ``data`` plus ``count`` (in this page), ``total``, ``page``, ``limit``."""
    return {
        "success": True,
        "data": items,
        "count": len(items),
        "total": total,
        "page": page,
        "limit": limit,
    }


@dataclass(frozen=True, slots=True)
class Encoded:
    """A JSON body encoded once, with its strong ETag (so it can be kept and served again)."""

    raw: bytes
    etag: str

    @classmethod
    def of(cls, body: Any) -> Encoded:
        raw = dumps(body)
        return cls(raw, '"' + hashlib.blake2b(raw, digest_size=16).hexdigest() + '"')


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names this ETag (weakly compared, as RFC 9110
    asks for ``If-None-Match``), or is ``*``."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return etag in (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))


def answer_encoded(
    request: web.Request, encoded: Encoded, *, cache_control: str = "public, max-age=5"
) -> web.Response:
    """The encoded body with its ETag; a matching ``If-None-Match`` gets a bodiless 304."""
    headers = {"ETag": encoded.etag, "Cache-Control": cache_control}
    if etag_matches(request.headers.get("If-None-Match"), encoded.etag):
        return web.Response(status=304, headers=headers)
    return encoded_response(encoded.raw, headers=headers)
