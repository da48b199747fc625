"""Calling other shop services: one pooled session per app, timeouts, the request id passed
on, and every way a dependency can fail turned into one 503 ``upstream_unavailable``."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from shopkit.context import REQUEST_ID
from shopkit.errors import UpstreamUnavailable
from shopkit.keys import HTTP_SESSION
from shopkit.responses import dumps

log = logging.getLogger("shop.client")

DEFAULT_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)
# Bodies larger than this are streamed from a reader (aiohttp warns of one large write).
_ONE_WRITE = 1024 * 1024


async def http_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the app's one ClientSession, pooled and closed on shutdown."""
    connector = aiohttp.TCPConnector(limit=200, limit_per_host=100, ttl_dns_cache=60)
    async with aiohttp.ClientSession(
        connector=connector, timeout=DEFAULT_TIMEOUT, json_serialize=lambda v: dumps(v).decode()
    ) as session:
        app[HTTP_SESSION] = session
        yield


@dataclass(frozen=True, slots=True)
class ServiceReply:
    status: int
    body: Any

    @property
    def data(self) -> Any:
        return self.body.get("data") if isinstance(self.body, dict) else None


class ServiceClient:
    """A client for one other service, named for the error messages it produces."""

    def __init__(
        self,
        app: web.Application,
        name: str,
        base_url: str,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.app = app
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _unavailable(self, why: str) -> UpstreamUnavailable:
        log.warning("%s service unavailable: %s", self.name, why)
        return UpstreamUnavailable(
            f"The {self.name} service is unavailable right now ({why}); try again shortly."
        )

    def _headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        merged = dict(headers or {})
        request_id = REQUEST_ID.get()
        if request_id != "-":
            merged["X-Request-ID"] = request_id
        return merged

    @contextlib.asynccontextmanager
    async def open(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | io.BytesIO | aiohttp.FormData | None = None,
        timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 - aiohttp's own
        auto_decompress: bool = True,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The raw response, whatever its status; a dead or slow service raises 503."""
        session = self.app[HTTP_SESSION]
        if isinstance(data, bytes) and len(data) > _ONE_WRITE:
            # A large body (a picture's upload) is sent in chunks, not as one write that
            # holds the event loop; a new reader on each call, so a retry sends it whole.
            data = io.BytesIO(data)
        try:
            async with session.request(
                method,
                self.base_url + path,
                headers=self._headers(headers),
                data=data,
                timeout=timeout or self.timeout,
                allow_redirects=False,
                auto_decompress=auto_decompress,
            ) as response:
                yield response
        except TimeoutError:
            raise self._unavailable("it did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise self._unavailable(type(exc).__name__) from None

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        form: aiohttp.FormData | None = None,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 - aiohttp's own
    ) -> ServiceReply:
        """A call answered in JSON, sending ``json`` or a multipart ``form``. Any status
        below 500 is returned for the caller to judge; a 5xx, a connection error, a timeout
        or a body that is not JSON raises 503."""
        merged = dict(headers or {})
        if token is not None:
            merged["Authorization"] = f"Bearer {token}"
        body: bytes | aiohttp.FormData | None = form
        if json is not None:
            body = dumps(json)
            merged["Content-Type"] = "application/json"
        async with self.open(method, path, headers=merged, data=body, timeout=timeout) as response:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError, asyncio.IncompleteReadError):
                raise self._unavailable("the answer was cut off") from None
            if response.status >= 500:
                raise self._unavailable(f"it answered {response.status}")
            try:
                parsed = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                raise self._unavailable("it answered with something that is not JSON") from None
            return ServiceReply(response.status, parsed)

    async def get(self, path: str, **kwargs: Any) -> ServiceReply:
        return await self.request("GET", path, **kwargs)
