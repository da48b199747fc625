"""Product pictures, served at the address a product's imageUrl holds
(``/images/products/<digest>.webp``): fetched from the product service, which keeps them.

A name is a digest of the picture's bytes, so an answer is cached for a year (immutable),
and a client that sends the ETag it holds is answered 304 here, without asking anyone.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from shopkit.errors import NotFound, UpstreamUnavailable, error_body
from shopkit.openapi import endpoint
from shopkit.responses import etag_matches, json_response
from shopkit.uploads import (
    PICTURE_CACHE_CONTROL,
    PICTURE_MEDIA_TYPE,
    PICTURE_NAME,
    PICTURE_URL_PREFIX,
    picture_etag,
)
from svc_gateway.keys import BACKENDS

# A picture is at most a few hundred KiB; anything larger from the product service is wrong.
_MOST_BYTES = 4 * 1024 * 1024


def _not_found() -> web.Response:
    # Asked for by an <img>, not read by a person: the API's JSON 404.
    return json_response(error_body("There is no such picture.", NotFound.code), status=404)


@endpoint(
    "A product's picture, by the name in its imageUrl",
    description="<digest>.webp, or <digest>-400.webp for its thumbnail (400 pixels). A name "
    "always means the same bytes: cached for a year (immutable), with an ETag "
    "(If-None-Match: 304).",
    raw=True,
    response={"type": "string", "format": "binary"},
    content_type=PICTURE_MEDIA_TYPE,
    errors=(404, 503),
)
async def product_picture(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if PICTURE_NAME.fullmatch(name) is None:
        return _not_found()
    headers = {"Cache-Control": PICTURE_CACHE_CONTROL, "ETag": picture_etag(name)}
    if_none_match = request.headers.get("If-None-Match", "")
    if if_none_match.strip() != "*" and etag_matches(if_none_match, headers["ETag"]):
        return web.Response(status=304, headers=headers)  # its bytes never change
    client = request.app[BACKENDS].get("product")
    if client is None:
        raise UpstreamUnavailable("The product service is not configured on this gateway.")
    async with client.open("GET", f"/api/products/images/{name}") as upstream:
        if upstream.status == 404:
            return _not_found()
        length = upstream.content_length
        if upstream.status != 200 or length is None or length > _MOST_BYTES:
            raise UpstreamUnavailable(
                f"The product service could not give the picture (it answered {upstream.status})."
            )
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, TimeoutError):
            raise UpstreamUnavailable("The product service broke off the picture.") from None
    return web.Response(body=body, content_type=PICTURE_MEDIA_TYPE, headers=headers)


ROUTE = web.get(PICTURE_URL_PREFIX + "{name}", product_picture, name="product_picture")
