"""The API's documentation at /api/docs: Swagger UI, from swagger-ui-py's files, showing the
public API's one document (svc_gateway/public_document.py).

Nothing is read or asked for until someone opens the docs: Swagger UI's files (1.6 MB) are
read once then, and the document is made from the backends' own and kept for a while. The
page has a CSP of its own, as strict as the shop pages' (scripts from this origin only, no
inline script), plus what Swagger UI needs: its CSS's data: images and calls to this
origin's API ("Try it out").
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

import aiohttp_jinja2
from aiohttp import web

from shopkit.errors import NotFound
from shopkit.openapi import endpoint
from shopkit.responses import dumps
from svc_gateway.assets import CACHE_FOREVER, Asset, Assets, file_response
from svc_gateway.keys import API_DOCS
from svc_gateway.pages.middleware import SECURITY_HEADERS
from svc_gateway.pages.rendering import SHOP_NAME
from svc_gateway.public_document import public_document

DOCS_PATH = "/api/docs"
DOCUMENT_PATH = "/api/docs/openapi.json"
DOCS_FILES_PREFIX = "/api/docs/assets/"
# All of swagger-ui-py's static folder that the page uses (not its editor, its standalone
# preset's top bar, or its source maps).
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "index.css")
# How long a made document is served before the backends are asked again: a document with
# every service for a minute; one missing a service for a few seconds, so that the service's
# routes are back soon after it is, yet a service that is down is not asked on every load.
COMPLETE_DOCUMENT_SECONDS = 60.0
PARTIAL_DOCUMENT_SECONDS = 5.0

DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'none'; "
    "base-uri 'none'"
)
DOCS_SECURITY_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY,
}


@dataclass(frozen=True, slots=True)
class DocsFiles:
    """Swagger UI's files and ours, by content-hashed name, and the page that loads them."""

    assets: Assets
    page: Asset


@dataclass(frozen=True, slots=True)
class KeptDocument:
    asset: Asset
    expires_at: float  # on the event loop's clock


def read_docs_assets() -> Assets:
    """Swagger UI's files from swagger-ui-py's wheel, and ours (docs_static/); blocking."""
    swagger_ui = resources.files("swagger_ui").joinpath("static")
    files = {name: swagger_ui.joinpath(name).read_bytes() for name in SWAGGER_UI_FILES}
    ours = resources.files("svc_gateway").joinpath("docs_static")
    files |= {entry.name: entry.read_bytes() for entry in ours.iterdir() if entry.is_file()}
    return Assets(files, DOCS_FILES_PREFIX, compress=True)


def _json_asset(body: bytes) -> Asset:
    digest = hashlib.sha256(body).hexdigest()[:16]
    return Asset(body, "application/json", f'"{digest}"', gzip.compress(body, mtime=0))


class ApiDocs:
    """What /api/docs serves, made when first asked for. One task makes each thing for
    everyone waiting, and is shielded from any one of them going away."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._files: asyncio.Task[DocsFiles] | None = None
        self._kept: KeptDocument | None = None
        self._making: asyncio.Task[KeptDocument] | None = None

    async def files(self) -> DocsFiles:
        task = self._files
        if task is None or (task.done() and (task.cancelled() or task.exception())):
            task = self._files = asyncio.create_task(self._read_files(), name="api docs files")
        return await asyncio.shield(task)

    async def _read_files(self) -> DocsFiles:
        assets = await asyncio.to_thread(read_docs_assets)
        html = (
            aiohttp_jinja2.get_env(self._app)
            .get_template("api_docs.html")
            .render(shop_name=SHOP_NAME, docs_url=assets.url, document_url=DOCUMENT_PATH)
        )
        body = html.encode()
        digest = hashlib.sha256(body).hexdigest()[:16]
        return DocsFiles(assets, Asset(body, "text/html; charset=utf-8", f'"{digest}"'))

    async def document(self) -> Asset:
        """The public document, as made at most a minute ago (a few seconds, if a service
        was missing from it)."""
        kept = self._kept
        if kept is not None and asyncio.get_running_loop().time() < kept.expires_at:
            return kept.asset
        if self._making is None or self._making.done():
            self._making = asyncio.create_task(self._make_document(), name="api docs document")
        return (await asyncio.shield(self._making)).asset

    async def _make_document(self) -> KeptDocument:
        document = await public_document(self._app)
        complete = "x-missing-services" not in document
        lifetime = COMPLETE_DOCUMENT_SECONDS if complete else PARTIAL_DOCUMENT_SECONDS
        kept = KeptDocument(
            _json_asset(dumps(document)), asyncio.get_running_loop().time() + lifetime
        )
        self._kept = kept
        return kept

    async def close(self) -> None:
        for task in (self._files, self._making):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def api_docs_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the docs' state; a document still being made when the app stops is
    abandoned (listed after the HTTP session's context, so it stops before the session
    closes)."""
    docs = ApiDocs(app)
    app[API_DOCS] = docs
    yield
    await docs.close()


def _with_docs_headers(response: web.Response) -> web.Response:
    response.headers.update(DOCS_SECURITY_HEADERS)
    return response


@endpoint(
    "This documentation: Swagger UI showing the public API's document",
    raw=True,
    response={"type": "string"},
    content_type="text/html",
)
async def docs_page(request: web.Request) -> web.Response:
    files = await request.app[API_DOCS].files()
    return _with_docs_headers(file_response(request, files.page, "no-cache"))


@endpoint(
    "The public API's OpenAPI document: every service's public routes, merged",
    description="The routes of the product, user, cart and order services as this gateway "
    "serves them, with the gateway's own. A service that cannot be asked for its document "
    "is left out for a few seconds and named in `info.description` and "
    "`x-missing-services`.",
    raw=True,
    response={"type": "object"},
)
async def docs_document(request: web.Request) -> web.Response:
    asset = await request.app[API_DOCS].document()
    return _with_docs_headers(file_response(request, asset, "no-cache"))


async def docs_file(request: web.Request) -> web.Response:
    """A file of the docs page, by content-hashed name (like the shop's /static/ files)."""
    files = await request.app[API_DOCS].files()
    asset = files.assets.get(request.match_info["name"])
    if asset is None:
        raise NotFound("There is no such file.")
    return _with_docs_headers(file_response(request, asset, CACHE_FOREVER))
