"""The Idempotency-Key header, read one way by the order service and the gateway alike."""

from __future__ import annotations

import re

from multidict import CIMultiDictProxy

from shopkit.errors import BadRequest

HEADER = "Idempotency-Key"
# Visible ASCII only: a header's bytes beyond ASCII are decoded differently by different
# readers (k\xe8y and k\xe9y came out as one key through the gateway), so they are refused.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
# The header as an OpenAPI parameter, for the routes that read it.
PARAMETER = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string", "pattern": f"^{_KEY.pattern}$"},
    "description": "1 to 255 visible ASCII characters; a repeat with the same key by the same "
    "user answers the first outcome (anything else is 400 invalid_idempotency_key)",
}


def idempotency_key(headers: CIMultiDictProxy[str]) -> str | None:
    """The request's Idempotency-Key, None when it has none; a malformed one, or more than
    one (which would a reader take?), is a 400."""
    keys = headers.getall(HEADER, [])
    if not keys:
        return None
    key = keys[0]
    if len(keys) > 1 or not _KEY.fullmatch(key):
        raise BadRequest(
            "The Idempotency-Key header must be given once, as 1 to 255 visible ASCII characters.",
            code="invalid_idempotency_key",
        )
    return key
