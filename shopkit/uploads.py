"""Files sent as multipart/form-data: the limits the gateway and the product service agree
on, the requests that may carry such a body, and reading one.

Every other body is JSON (or a page's URL-encoded form) of at most 1 MiB
(shopkit.validation.MAX_BODY). A product picture is larger: its route, and the gateway's
routes that carry it there, are listed as ``LargerBody`` rules in their apps'
``LARGER_BODIES``, which both the body reader and the ``Expect: 100-continue`` answer follow.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler
from multidict import MultiDictProxy

from shopkit.errors import BadRequest, UnsupportedEncoding, UnsupportedMediaType
from shopkit.validation import (
    IDENTITY_ENCODINGS,
    LargerBody,
    body_limit,
    content_encoding,
    larger_reader,
    reading_body,
    too_large,
)

# A product picture as uploaded (before it is re-encoded): a phone's photo fits.
PICTURE_MAX_BYTES = 5 * 1024 * 1024
# The whole body of an upload: the picture and the form around it (boundaries, a CSRF token).
UPLOAD_BODY_LIMIT = 6 * 1024 * 1024

# The product service's upload route, as the product service and the gateway's API see it.
PICTURE_UPLOAD = LargerBody("POST", re.compile(r"/api/products/[^/]+/image"), UPLOAD_BODY_LIMIT)

# Where the gateway serves product pictures (the Ingress routes /images to it), and the
# names there: a digest of the full-size picture's bytes (so a name always means the same
# bytes and may be cached for good), and "-400" before the extension for its thumbnail.
PICTURE_URL_PREFIX = "/images/products/"
PICTURE_NAME = re.compile(r"(?P<digest>[0-9a-f]{32})(?P<thumbnail>-400)?\.webp")
PICTURE_NAME_PATTERN = "^" + PICTURE_NAME.pattern + "$"
PICTURE_MEDIA_TYPE = "image/webp"
# A picture's answers may be kept by anyone, for a year: its name changes with its bytes.
PICTURE_CACHE_CONTROL = "public, max-age=31536000, immutable"


def picture_url(digest: str) -> str:
    """A product's imageUrl for the picture with this digest."""
    return f"{PICTURE_URL_PREFIX}{digest}.webp"


def picture_etag(name: str) -> str:
    """The ETag of the picture served under ``name`` (a valid PICTURE_NAME)."""
    return '"' + name.removesuffix(".webp") + '"'


# The form data read from a request, kept so that a second reader (the handler after the
# gateway's CSRF check) gets what the first read.
FORM_DATA: web.RequestKey[MultiDictProxy[Any]] = web.RequestKey("form_data")


async def read_form_data(request: web.Request) -> MultiDictProxy[Any]:
    """The request's multipart/form-data body, read once, within ``body_limit(request)``
    (aiohttp spools each file past 1 MiB to a temporary file). 415 for another media type
    or any Content-Encoding, 413 past the limit, 400 when it is not valid form data."""
    if FORM_DATA in request:
        return request[FORM_DATA]
    if request.content_type != "multipart/form-data":
        raise UnsupportedMediaType(
            "Send the file as multipart/form-data (an HTML form with "
            'enctype="multipart/form-data", or curl -F).'
        )
    if content_encoding(request) not in IDENTITY_ENCODINGS:
        raise UnsupportedEncoding("Form data is sent uncompressed; nothing was changed.")
    limit = body_limit(request)
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    try:
        async with reading_body(request, limit):
            form = await larger_reader(request, limit).post()
    except web.HTTPBadRequest as exc:  # aiohttp's own refusal: too many fields
        raise BadRequest(f"The form could not be read: {exc.text}", code="invalid_form") from None
    except (ValueError, LookupError, HttpProcessingError):
        # No boundary, a broken part (its headers too), a part without a name, a charset
        # nobody knows.
        raise BadRequest(
            "The form could not be read: it is not valid multipart/form-data.",
            code="invalid_form",
        ) from None
    request[FORM_DATA] = form
    return form


@web.middleware
async def uploads_closed(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every middleware stack's: the files a request's form data spooled are closed (their
    temporary files removed) once it is answered, whoever read them and however it ended."""
    try:
        return await handler(request)
    finally:
        form = request.get(FORM_DATA)
        if form is not None:
            for value in form.values():
                if isinstance(value, web.FileField):
                    value.file.close()
