"""The gateway in front of a real product service, both over real HTTP."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from support import call, change_stock, create_product, product_body

from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app
from svc_gateway.proxy import BUFFERED_BODY_LIMIT
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app


def gateway_settings(**urls: str) -> GatewaySettings:
    return GatewaySettings.from_env({"HOST": "127.0.0.1", **urls})


@pytest.fixture
async def gateway(aiohttp_client: Any, product_server: TestServer) -> TestClient:
    """A gateway in front of the real product service, allowing one CORS origin."""
    settings = gateway_settings(
        PRODUCT_SERVICE_URL=str(product_server.make_url("")),
        CORS_ORIGINS="https://shop.example",
    )
    return await aiohttp_client(create_gateway_app(settings))


async def test_reads_pass_through_unchanged(
    gateway: TestClient, product_server: TestServer, admin_headers: dict[str, str]
) -> None:
    created = await create_product(gateway, admin_headers, name="Lamp", category="home")
    query = "/api/products?q=lamp&category=home&sort=price&limit=5"
    through = await gateway.get(query)
    assert through.status == 200
    async with aiohttp.ClientSession() as direct:
        direct_body = await (await direct.get(product_server.make_url(query))).read()
    assert await through.read() == direct_body
    assert through.headers["ETag"]
    by_id = await call(gateway, "GET", f"/api/products/{created['id']}", expected_status=200)
    assert by_id["data"] == created


async def test_large_answers_are_streamed_through_unchanged(
    gateway: TestClient, product_server: TestServer, admin_headers: dict[str, str]
) -> None:
    for number in range(60):
        await create_product(
            gateway, admin_headers, name=f"Poster {number}", description="x" * 5000
        )
    query = "/api/products?limit=100&sort=name"
    through = await gateway.get(query)
    body = await through.read()
    assert len(body) > BUFFERED_BODY_LIMIT  # so this took the streaming path
    async with aiohttp.ClientSession() as direct:
        assert body == await (await direct.get(product_server.make_url(query))).read()
    assert through.headers["X-Request-ID"]


async def test_head_answers_what_get_would_without_the_body(
    gateway: TestClient, product_server: TestServer, admin_headers: dict[str, str]
) -> None:
    """HEAD, which every service answers wherever it answers GET, is forwarded too: the
    headers GET gets (its length and ETag), no body; a 404 is a 404; other methods stay
    refused."""
    created = await create_product(gateway, admin_headers)
    for path in (f"/api/products/{created['id']}", "/api/products?limit=100"):
        got = await gateway.get(path)
        head = await gateway.head(path)
        assert head.status == 200 and await head.read() == b""
        assert head.headers["Content-Length"] == str(len(await got.read())), path
        assert head.headers["ETag"] == got.headers["ETag"]
        assert head.headers["Content-Type"] == got.headers["Content-Type"]
        assert head.headers["X-Request-ID"]
    missing = await gateway.head("/api/products/" + "0" * 24)
    assert missing.status == 404 and await missing.read() == b""
    trace = await gateway.request("TRACE", "/api/products")
    assert trace.status == 405 and (await trace.json())["code"] == "method_not_allowed"


async def test_conditional_requests_pass_through(
    gateway: TestClient, admin_headers: dict[str, str]
) -> None:
    created = await create_product(gateway, admin_headers)
    path = f"/api/products/{created['id']}"
    first = await gateway.get(path)
    again = await gateway.get(path, headers={"If-None-Match": first.headers["ETag"]})
    assert again.status == 304


async def test_writes_forward_the_token_and_the_backend_decides(
    gateway: TestClient, admin_headers: dict[str, str], customer_headers: dict[str, str]
) -> None:
    await call(gateway, "POST", "/api/products", json=product_body(), expected_status=401)
    await call(
        gateway,
        "POST",
        "/api/products",
        json=product_body(),
        headers=customer_headers,
        expected_status=403,
    )
    created = await create_product(gateway, admin_headers)
    body = await change_stock(gateway, admin_headers, created["id"], -11, expected_status=409)
    assert body["code"] == "insufficient_stock"
    body = await call(
        gateway,
        "POST",
        "/api/products",
        json=product_body(price="1"),
        headers=admin_headers,
        expected_status=400,
    )
    assert body["details"] == [{"field": "price", "message": "must be a number"}]


async def test_the_request_id_follows_the_request(
    aiohttp_server: Any, aiohttp_client: Any, product_settings: ProductSettings
) -> None:
    seen: list[str] = []

    async def remember(request: web.Request, response: web.StreamResponse) -> None:
        seen.append(request.headers.get("X-Request-ID", ""))

    product_app = create_product_app(product_settings)
    product_app.on_response_prepare.append(remember)
    product_server = await aiohttp_server(product_app)
    settings = gateway_settings(PRODUCT_SERVICE_URL=str(product_server.make_url("")))
    gateway = await aiohttp_client(create_gateway_app(settings))

    response = await gateway.get("/api/products", headers={"X-Request-ID": "follow-me-42"})
    assert response.headers["X-Request-ID"] == "follow-me-42"
    assert seen == ["follow-me-42"]
    made_up = await gateway.get("/api/products")
    assert seen[-1] == made_up.headers["X-Request-ID"]


async def test_paths_only_match_whole_prefixes(gateway: TestClient) -> None:
    await call(gateway, "GET", "/api/productsX", expected_status=404)
    await call(gateway, "GET", "/api/nothing", expected_status=404)


async def test_unconfigured_backends_are_503(gateway: TestClient) -> None:
    for path in ("/api/users/login", "/api/cart/1", "/api/orders"):
        body = await call(gateway, "GET", path, expected_status=503)
        assert body["code"] == "upstream_unavailable"


async def test_ready_names_each_backend(gateway: TestClient) -> None:
    body = await call(gateway, "GET", "/ready", expected_status=200)
    backends = body["data"]["backends"]
    assert backends["product"]["ready"] is True
    assert backends["user"] == {"ready": False, "configured": False}


async def test_a_stopped_backend_is_503_not_a_hang(
    gateway: TestClient, product_server: TestServer
) -> None:
    await product_server.close()
    body = await call(gateway, "GET", "/api/products", expected_status=503)
    assert body["code"] == "upstream_unavailable"
    assert "product service" in body["error"]
    # The gateway itself can still serve (pages, other backends): it stays ready, and its
    # /ready names the backend that is down.
    body = await call(gateway, "GET", "/ready", expected_status=200)
    assert body["data"]["backends"]["product"] == {"ready": False, "error": "no answer"}


@pytest.fixture
async def silent_backend(aiohttp_server: Any) -> AsyncIterator[TestServer]:
    """An HTTP server that accepts requests and never answers them."""
    never = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await never.wait()
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hang)
    server = await aiohttp_server(app)
    yield server
    never.set()


async def test_a_slow_backend_is_503_after_the_timeout(
    aiohttp_client: Any, silent_backend: TestServer
) -> None:
    settings = gateway_settings(
        PRODUCT_SERVICE_URL=str(silent_backend.make_url("")), UPSTREAM_TIMEOUT="0.3"
    )
    gateway = await aiohttp_client(create_gateway_app(settings))
    body = await call(gateway, "GET", "/api/products", expected_status=503)
    assert "did not answer in time" in body["error"]
    body = await call(gateway, "GET", "/ready", expected_status=200)
    assert body["data"]["backends"]["product"]["ready"] is False


async def test_bodies_over_one_mebibyte_stop_at_the_gateway(
    gateway: TestClient, admin_headers: dict[str, str]
) -> None:
    huge = io.BytesIO(b'{"name": "' + b"x" * (1024 * 1024) + b'"}')
    body = await call(
        gateway,
        "POST",
        "/api/products",
        data=huge,
        headers={**admin_headers, "Content-Type": "application/json"},
        expected_status=413,
    )
    assert body["code"] == "payload_too_large"


async def test_cors_allows_only_the_configured_origins(gateway: TestClient) -> None:
    preflight = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type",
    }
    allowed = await gateway.options("/api/products", headers=preflight)
    assert allowed.status == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    refused = await gateway.options(
        "/api/products", headers={**preflight, "Origin": "https://evil.example"}
    )
    assert refused.status == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    simple = await gateway.get("/api/products", headers={"Origin": "https://shop.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]


async def test_gateway_has_health_metrics_and_docs(gateway: TestClient) -> None:
    await call(gateway, "GET", "/health", expected_status=200)
    await gateway.get("/api/products")
    metrics = await (await gateway.get("/metrics")).text()
    assert 'route="/api/products",service="gateway",status="200"' in metrics
    document = await (await gateway.get("/openapi.json")).json()
    assert "/api/products/{tail}" in document["paths"]
