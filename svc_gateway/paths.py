"""The gateway's one path check: every request's path is decoded and judged before routing,
and the API path forwarded to a backend is rebuilt from the segments that passed.

A backend (aiohttp, and yarl in the client that calls it) reads a path its own way: it
decodes ``%2e`` into a dot, removes dot segments, and so ``/api/cart/%2e%2e/%2e%2e/metrics``
became the cart service's own ``/metrics``. Rather than predict every reader's spelling
rules, the gateway accepts only paths whose segments mean the same to any reader (no dot
segments, no encoded slash or backslash, no empty segment, no double encoding, no control
characters, valid UTF-8), and forwards the path it rebuilt from them, never the client's.
"""

from __future__ import annotations

from urllib.parse import quote, unquote_to_bytes

from aiohttp import web
from aiohttp.typedefs import Handler

from shopkit.errors import NotFound

# What a segment may not contain once decoded: path separators of any platform, a percent
# sign (a second decoding elsewhere would turn %252e into a dot), control characters.
_FORBIDDEN = frozenset("/\\%") | frozenset(chr(code) for code in (*range(0x20), 0x7F))
# Characters a rebuilt segment keeps as they are: RFC 3986's unreserved ones and the
# sub-delimiters aiohttp and yarl never decode or split on.
_SAFE = "-._~!$&'()*+,;=:@"


class NoSuchPath(NotFound):
    def __init__(self) -> None:
        super().__init__("There is nothing at this path.", code="not_found")


def checked_segments(raw_path: str) -> list[str]:
    """The decoded segments of a request's path (as sent, without its query string); raises
    ``NoSuchPath`` for any path that could mean something else to another reader."""
    if not raw_path.startswith("/"):
        raise NoSuchPath()
    if raw_path == "/":
        return []
    segments = []
    for raw in raw_path[1:].split("/"):
        try:
            segment = unquote_to_bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise NoSuchPath() from None
        if not segment or segment.strip(".") == "" or not _FORBIDDEN.isdisjoint(segment):
            raise NoSuchPath()  # empty (//), dot segments (., .., ...), %2f, \, %25, NUL
        segments.append(segment)
    return segments


def rebuilt_path(segments: list[str]) -> str:
    """The path a backend is sent: the checked segments, each percent-encoded afresh."""
    return "/" + "/".join(quote(segment, safe=_SAFE) for segment in segments)


@web.middleware
async def path_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every path the gateway serves (API, pages, its own endpoints) passes the one check;
    anything else is the JSON 404, whatever route its decoded form would have matched."""
    checked_segments(request.rel_url.raw_path)
    return await handler(request)
