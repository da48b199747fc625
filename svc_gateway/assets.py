"""The pages' static files, served from memory under content-hashed names.

``shop.css`` is served as ``/static/shop.<hash>.css``: a new version is a new URL, so each
one can be cached for a year (``immutable``) and a deploy never serves a stale stylesheet.
The files are few and small, so they are read once at start-up.

The catalogue's pictures (``static/catalogue/``) are different: product documents store
their URL, so each keeps one stable, unhashed address, ``/images/catalogue/<name>``, cached
for a day and revalidated by its ETag.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath

from aiohttp import web

from shopkit.errors import NotFound, error_body
from shopkit.openapi import endpoint
from shopkit.responses import etag_matches, json_response
from svc_gateway.keys import ASSETS, CATALOGUE_IMAGES

STATIC_PREFIX = "/static/"
CACHE_FOREVER = "public, max-age=31536000, immutable"
CATALOGUE_PREFIX = "/images/catalogue/"
CATALOGUE_FOLDER = "static/catalogue"
CACHE_A_DAY = "public, max-age=86400"
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
    # The same bytes gzip-compressed, for a client that accepts it (large text files only).
    gzipped: bytes | None = None


class Assets:
    """Static files by name, each reachable under its content-hashed name (below ``prefix``);
    with ``compress``, each is kept gzip-compressed too."""

    def __init__(
        self, files: Mapping[str, bytes], prefix: str = STATIC_PREFIX, *, compress: bool = False
    ) -> None:
        self._prefix = prefix
        self._hashed_names: dict[str, str] = {}
        self._by_hashed_name: dict[str, Asset] = {}
        for name, body in files.items():
            path = PurePosixPath(name)
            digest = hashlib.sha256(body).hexdigest()[:12]
            hashed = f"{path.stem}.{digest}{path.suffix}"
            content_type = _CONTENT_TYPES.get(path.suffix, "application/octet-stream")
            # mtime=0: the same bytes whenever and wherever they are compressed.
            gzipped = gzip.compress(body, mtime=0) if compress else None
            if gzipped is not None and len(gzipped) >= len(body):
                gzipped = None  # a tiny file: not worth a second representation
            self._hashed_names[name] = hashed
            self._by_hashed_name[hashed] = Asset(body, content_type, f'"{digest}"', gzipped)

    def url(self, name: str) -> str:
        """The URL of a static file, e.g. ``shop.css`` -> ``/static/shop.3f9a0c1d2e4b.css``."""
        return self._prefix + self._hashed_names[name]

    def get(self, hashed_name: str) -> Asset | None:
        return self._by_hashed_name.get(hashed_name)

    def named(self, name: str) -> Asset | None:
        """A file by its own name, e.g. ``kitchen-skillet.svg`` (for stable URLs)."""
        hashed = self._hashed_names.get(name)
        return None if hashed is None else self._by_hashed_name[hashed]


def read_assets(package: str = "svc_gateway", folder: str = "static") -> Assets:
    """The files directly in ``folder`` (a path inside the package; sub-folders are not read)."""
    root = resources.files(package).joinpath(*folder.split("/"))
    files = {
        entry.name: entry.read_bytes()
        for entry in root.iterdir()
        if entry.is_file() and PurePosixPath(entry.name).suffix in _CONTENT_TYPES
    }
    return Assets(files)


async def load_assets(app: web.Application) -> None:
    """on_startup: read the static files and the catalogue's pictures (small files, once)."""
    app[ASSETS] = read_assets()
    app[CATALOGUE_IMAGES] = read_assets(folder=CATALOGUE_FOLDER)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (by name or ``*``, not at q=0)."""
    for item in accept_encoding.lower().split(","):
        coding, _, parameters = item.partition(";")
        if coding.strip() not in ("gzip", "*"):
            continue
        weight = parameters.strip().removeprefix("q=").strip() if parameters else "1"
        try:
            return float(weight) > 0
        except ValueError:
            return False
    return False


def file_response(request: web.Request, asset: Asset, cache_control: str) -> web.Response:
    """The file, or a 304 when the client's copy is current; gzip-compressed when the asset
    has a compressed copy and the client accepts it (each copy with its own ETag)."""
    headers = {"Cache-Control": cache_control, "ETag": asset.etag}
    body = asset.body
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"  # so a shared cache keeps the two copies apart
        if _accepts_gzip(request.headers.get("Accept-Encoding", "")):
            body = asset.gzipped
            headers["ETag"] = asset.etag[:-1] + '-gzip"'  # another representation, another tag
            headers["Content-Encoding"] = "gzip"
    if etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
        headers.pop("Content-Encoding", None)
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": asset.content_type})


async def static_file(request: web.Request) -> web.Response:
    asset = request.app[ASSETS].get(request.match_info["name"])
    if asset is None:
        raise NotFound("There is no such file.")
    return file_response(request, asset, CACHE_FOREVER)


@endpoint(
    "A picture of the demo catalogue, by its file name",
    description="The address product documents store as imageUrl, so it never changes with "
    "the picture: cached for a day and revalidated with its ETag (If-None-Match: 304).",
    raw=True,
    response={"type": "string"},
    content_type="image/svg+xml",
    errors=(404,),
)
async def catalogue_image(request: web.Request) -> web.Response:
    asset = request.app[CATALOGUE_IMAGES].named(request.match_info["name"])
    if asset is None:
        # Asked for by an <img> or a script, not read by a person: the API's JSON 404.
        body = error_body("There is no such image in the catalogue.", NotFound.code)
        return json_response(body, status=404)
    return file_response(request, asset, CACHE_A_DAY)
