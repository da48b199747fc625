"""The Idempotency-Key header, read one way by the order service and the gateway alike."""

from __future__ import annotations

import re
from collections.abc import Mapping

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


def idempotency_key(headers: Mapping[str, str]) -> str | None:
    """The request's Idempotency-Key, None when it has none; a malformed one is a 400."""
    key = headers.get(HEADER)
    if key is not None and not _KEY.fullmatch(key):
        raise BadRequest(
            "The Idempotency-Key header must be 1 to 255 visible ASCII characters.",
            code="invalid_idempotency_key",
        )
    return key
