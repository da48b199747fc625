"""The pages' static files, served from memory under content-hashed names.

``shop.css`` is served as ``/static/shop.<hash>.css``: a new version is a new URL, so each
one can be cached for a year (``immutable``) and a deploy never serves a stale stylesheet.
The files are few and small, so they are read once at start-up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath

from aiohttp import web

from shopkit.errors import NotFound
from svc_gateway.keys import ASSETS

STATIC_PREFIX = "/static/"
CACHE_FOREVER = "public, max-age=31536000, immutable"
_CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


class Assets:
    """Static files by name, each reachable under its content-hashed name."""

    def __init__(self, files: Mapping[str, bytes]) -> None:
        self._hashed_names: dict[str, str] = {}
        self._by_hashed_name: dict[str, Asset] = {}
        for name, body in files.items():
            path = PurePosixPath(name)
            digest = hashlib.sha256(body).hexdigest()[:12]
            hashed = f"{path.stem}.{digest}{path.suffix}"
            content_type = _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            self._hashed_names[name] = hashed
            self._by_hashed_name[hashed] = Asset(body, content_type, f'"{digest}"')

    def url(self, name: str) -> str:
        """The URL of a static file, e.g. ``shop.css`` -> ``/static/shop.3f9a0c1d2e4b.css``."""
        return STATIC_PREFIX + self._hashed_names[name]

    def get(self, hashed_name: str) -> Asset | None:
        return self._by_hashed_name.get(hashed_name)


def read_assets(package: str = "svc_gateway", folder: str = "static") -> Assets:
    root = resources.files(package) / folder
    files = {
        entry.name: entry.read_bytes()
        for entry in root.iterdir()
        if entry.is_file() and PurePosixPath(entry.name).suffix in _CONTENT_TYPES
    }
    return Assets(files)


async def load_assets(app: web.Application) -> None:
    """on_startup: read the static files (a handful of small files, once)."""
    app[ASSETS] = read_assets()


async def static_file(request: web.Request) -> web.Response:
    asset = request.app[ASSETS].get(request.match_info["name"])
    if asset is None:
        raise NotFound("There is no such file.")
    headers = {"Cache-Control": CACHE_FOREVER, "ETag": asset.etag}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=asset.body, headers={**headers, "Content-Type": asset.content_type})
