"""An async client for the shop's public API, as `seed` and `checkout` use it.

Every call sends its own `X-Request-ID` (the run's id and a counter), so a failure can be
looked up in the services' logs even when no answer came back, and every reply carries how
long it took. Network failures and timeouts become replies with no status, never exceptions:
a QA run reports them like any other failure.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Self

import aiohttp

from shopctl.environments import AdminCredentials
from shopctl.errors import ShopctlError
from shopkit.responses import dumps

DEFAULT_TIMEOUT = 30.0
PAGE_LIMIT = 100
# Answers that mean "not done, try again later"; anything else is final.
RETRYABLE = {429, 502, 503, 504}
ATTEMPTS = 3


@dataclass(frozen=True)
class Reply:
    """One answer (or the lack of one: `status` is None and `error` says why)."""

    method: str
    path: str
    status: int | None
    body: Any
    request_id: str
    seconds: float
    error: str = ""
    # The response's headers (case-insensitive), empty when nothing answered.
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def data(self) -> Any:
        return self.body.get("data") if isinstance(self.body, dict) else None

    @property
    def code(self) -> str | None:
        return self.body.get("code") if isinstance(self.body, dict) else None

    def describe(self) -> str:
        """One line: what was asked and what came back, e.g.
        `POST /api/orders -> 409 insufficient_stock: Only 2 left of "Mug"`."""
        asked = f"{self.method} {self.path}"
        if self.status is None:
            return f"{asked} -> no answer: {self.error}"
        message = self.body.get("error") if isinstance(self.body, dict) else None
        detail = f" {self.code}: {message}" if message else ""
        return f"{asked} -> {self.status}{detail}"


def new_run_id(prefix: str) -> str:
    """A short id naming one run; its calls' request ids start with it."""
    return f"{prefix}-{secrets.token_hex(4)}"


class ShopClient:
    """One connection pool to one gateway; use as `async with ShopClient(...) as client`."""

    def __init__(
        self,
        base_url: str,
        run_id: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        connections: int = 100,
        when_down: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # What to do when nothing answers (Environment.when_down): ends that error.
        self.when_down = when_down
        self.run_id = run_id
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._connections = connections
        self._counter = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=self._connections),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    def next_request_id(self) -> str:
        """The id the next request of this run goes out with."""
        return f"{self.run_id}-{next(self._counter):06d}"

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        token: str | None = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        assert self._session is not None, "use ShopClient in `async with`"
        request_id = self.next_request_id()
        sent = {"Accept": "application/json", "X-Request-ID": request_id, **(headers or {})}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        data = None
        if json_body is not None:
            # Money goes out as exact JSON numbers (Decimal -> 24.90), as the shop wants it.
            data = dumps(json_body)
            sent["Content-Type"] = "application/json"
        started = time.perf_counter()
        try:
            async with self._session.request(
                method, self.base_url + path, data=data, params=params, headers=sent
            ) as response:
                raw = await response.read()
                status = response.status
                headers = response.headers
                request_id = headers.get("X-Request-ID", request_id)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            reason = str(error) or type(error).__name__
            if isinstance(error, TimeoutError):
                reason = f"no answer within {self._timeout.total:g} s"
            return Reply(
                method, path, None, None, request_id, time.perf_counter() - started, reason
            )
        elapsed = time.perf_counter() - started
        try:
            body = json.loads(raw, parse_float=Decimal) if raw else None
        except ValueError:
            body = None
        return Reply(method, path, status, body, request_id, elapsed, headers=headers)

    def not_answering(self, reply: Reply) -> ShopctlError:
        """The error for a call nothing answered: why, then what to do about it."""
        then = f"; {self.when_down}" if self.when_down else ""
        return ShopctlError(f"the shop at {self.base_url} does not answer ({reply.error}){then}")

    async def admin_token(self, credentials: AdminCredentials) -> str:
        """An admin's token: the one given, or one from logging in. Anything else is a
        ShopctlError saying what to fix."""
        if credentials.token:
            reply = await self.call("GET", "/api/users/profile", token=credentials.token)
            token = credentials.token
        else:
            login = {"email": credentials.email, "password": credentials.password}
            reply = await self.call("POST", "/api/users/login", json_body=login)
            token = (reply.data or {}).get("token") if reply.ok else None
        if reply.status is None:
            raise self.not_answering(reply)
        if not reply.ok:
            raise ShopctlError(
                f"cannot act as the admin {credentials.email} (from {credentials.source}): "
                f"{reply.describe()} [request {reply.request_id}]"
            )
        user = (reply.data or {}).get("user", reply.data) or {}
        if user.get("role") != "admin":
            raise ShopctlError(
                f"{credentials.email} (from {credentials.source}) is not an admin at "
                f"{self.base_url}"
            )
        return token


async def call_with_retries(
    client: ShopClient, method: str, path: str, *, retry_on_silence: bool, **kwargs: Any
) -> Reply:
    """A call retried (with back-off) while the shop says "later" (429, 503, ...). Without an
    answer it is retried only when repeating it is harmless (`retry_on_silence`)."""
    for attempt in range(1, ATTEMPTS + 1):
        reply = await client.call(method, path, **kwargs)
        busy = reply.status in RETRYABLE or (reply.status is None and retry_on_silence)
        if not busy or attempt == ATTEMPTS:
            return reply
        await asyncio.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


async def list_all_products(client: ShopClient) -> list[dict[str, Any]]:
    """Every product in the shop, page by page."""
    products: list[dict[str, Any]] = []
    page = 1
    while True:
        params = {"limit": str(PAGE_LIMIT), "page": str(page), "sort": "name"}
        reply = await call_with_retries(
            client, "GET", "/api/products", params=params, retry_on_silence=True
        )
        if not reply.ok or not isinstance(reply.data, list):
            raise ShopctlError(
                f"cannot read the catalogue: {reply.describe()} [request {reply.request_id}]"
            )
        products.extend(reply.data)
        total = reply.body.get("total", 0)
        if not reply.data or len(products) >= total:
            return products
        page += 1
