"""The gateway as a door: only the services' public routes go through, whatever the path's
spelling; its /ready names the backends and their state, never their URLs; an
Idempotency-Key is judged as the order service judges it. All over real HTTP, in front of
the real services (the web_shop fixture), with requests written byte for byte."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import RawAnswer, bearer, call, create_product, raw, send_raw

from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app


async def shopper(client: TestClient) -> dict[str, str]:
    """The headers of a newly registered customer (a real account: services check that a
    token's user exists)."""
    email = f"door-{uuid.uuid4().hex[:10]}@shop.test"
    body = {"email": email, "password": "a long enough password"}
    reply = await call(client, "POST", "/api/users/register", json=body, expected_status=201)
    return bearer(reply["data"]["token"])


def assert_not_found(answer: RawAnswer, target: str) -> None:
    assert answer.status == 404, (target, answer.status, answer.text)
    body = answer.json()
    assert body["success"] is False and body["code"] == "not_found", (target, body)
    assert answer.headers["x-request-id"]
    # Nothing of a backend's own endpoints: no metrics, no readiness, no OpenAPI document.
    for telltale in ("# HELP", "# TYPE", '"openapi"', '"datastore"', "postgresql", "mongodb"):
        assert telltale not in answer.text, (target, answer.text)


# Every spelling that some reader (aiohttp, yarl, a proxy, a file system) might turn into a
# backend's /health, /ready, /metrics or /openapi.json.
INTERNAL_SPELLINGS = [
    "/api/cart/%2e%2e/%2e%2e/metrics",
    "/api/cart/1/%2e%2e/%2e%2e/%2e%2e/metrics",
    "/api/users/../../ready",
    "/api/users/./../../ready",
    "/api/products/..%2f..%2fopenapi.json",
    "/api/products/..%2F..%2Fhealth",
    "/api/orders/%2E%2E/%2E%2E/metrics",
    "/api/orders/%2E./%2E./ready",
    "/api/users/.%2e/.%2e/openapi.json",
    "/api/users/%2e%2e%2f%2e%2e%2fready",
    "/api/cart/..%5c..%5cmetrics",
    "/api/cart/..\\..\\metrics",
    "/api/products//../../metrics",
    "/api/products/x//../../../health",
    "/api//cart/../../ready",
    "/api/products/%252e%252e/%252e%252e/metrics",
    "/api/products/%25252e%25252e/metrics",
    "/api/products/%c0%ae%c0%ae/%c0%ae%c0%ae/metrics",
    "/api/products/%00/../../metrics",
    "/api/products/.../metrics",
    "/api/products/.",
    "/api/products/..",
    "/api/products/",
    "/api/users/..;/..;/ready",
    "/api/../metrics",
    "/api/%2e%2e/ready",
    "/api/products/../../api/../openapi.json",
    "http://evil.example/api/users/../../ready",
    "/api%2fproducts/../../metrics",
]


@pytest.mark.parametrize("query", ["", "?page=1", "?next=/../../metrics&x=%2e%2e"])
async def test_no_spelling_reaches_a_backends_own_endpoints(
    web_shop: TestClient, query: str
) -> None:
    for spelling in INTERNAL_SPELLINGS:
        if spelling == "/api/users/..;/..;/ready":
            # Not a dot segment: a plain (unknown) id, which the user service itself 404s.
            answer = await raw(web_shop, spelling + query)
            assert answer.status == 404, answer.text
            continue
        assert_not_found(await raw(web_shop, spelling + query), spelling + query)


@pytest.mark.parametrize("name", ["health", "ready", "metrics", "openapi.json"])
async def test_each_backends_own_endpoint_stays_private(web_shop: TestClient, name: str) -> None:
    for prefix in ("products", "users", "cart", "orders"):
        for target in (
            f"/api/{prefix}/../{name}",
            f"/api/{prefix}/%2e%2e/%2e%2e/{name}",
            f"/api/{prefix}/..%2f..%2f{name}",
            f"/api/{prefix}/x/..%2F..%2F..%2F{name}?x=1",
        ):
            assert_not_found(await raw(web_shop, target), target)


async def test_public_routes_still_go_through_however_they_are_spelled(
    web_shop: TestClient, admin_headers: dict[str, str]
) -> None:
    product = await create_product(web_shop, admin_headers, name="Door Mat")
    for target in (
        f"/api/products/{product['id']}",
        f"/api/%70roducts/{product['id']}",  # an encoded letter is that letter
        f"/api/products/{product['id']}?fields=all",
    ):
        answer = await raw(web_shop, target)
        assert answer.status == 200, (target, answer.text)
        assert answer.json()["data"]["id"] == product["id"]
    listing = await raw(web_shop, "/api/products?q=door%20mat&limit=5")
    assert listing.status == 200 and listing.json()["data"][0]["id"] == product["id"]
    # The gateway's own endpoints are its own, and only at their own paths.
    assert (await raw(web_shop, "/health")).status == 200
    assert (await raw(web_shop, "/ready")).status == 200


async def test_ready_names_each_backend_and_its_state_but_never_its_url(
    web_shop: TestClient, shop_services: dict[str, TestServer]
) -> None:
    answer = await raw(web_shop, "/ready")
    assert answer.status == 200
    backends = answer.json()["data"]["backends"]
    assert backends == {name: {"ready": True} for name in ("cart", "order", "product", "user")}
    for server in shop_services.values():
        assert str(server.port) not in answer.text
        assert "127.0.0.1" not in answer.text and "http" not in answer.text


async def test_one_backend_down_leaves_the_gateway_ready_and_serving_the_rest(
    web_shop: TestClient, shop_services: dict[str, TestServer], admin_headers: dict[str, str]
) -> None:
    product = await create_product(web_shop, admin_headers)
    await shop_services["cart"].close()
    body = await call(web_shop, "GET", "/ready", expected_status=200)
    backends = body["data"]["backends"]
    assert backends["cart"]["ready"] is False
    assert backends["product"] == {"ready": True}
    assert str(shop_services["cart"].port) not in json.dumps(body)
    # What does not need the cart service keeps working; what does is a clean 503.
    await call(web_shop, "GET", f"/api/products/{product['id']}", expected_status=200)
    reply = await call(web_shop, "GET", "/api/cart/1", headers=admin_headers, expected_status=503)
    assert reply["code"] == "upstream_unavailable"


async def test_an_unconfigured_backend_is_named_not_configured(
    aiohttp_client: Any, gateway_env: dict[str, str]
) -> None:
    env = {key: value for key, value in gateway_env.items() if key != "ORDER_SERVICE_URL"}
    gateway = await aiohttp_client(create_gateway_app(GatewaySettings.from_env(env)))
    body = await call(gateway, "GET", "/ready", expected_status=200)
    assert body["data"]["backends"]["order"] == {"ready": False, "configured": False}
    assert body["data"]["backends"]["user"] == {"ready": True}


@pytest.mark.parametrize(
    "key",
    [b"k\xe8y", b"k\xe9y", "ключ".encode(), b"two words", b"tab\tkey", b"x" * 256],
)
async def test_a_key_that_is_not_visible_ascii_is_refused_as_the_order_service_does(
    web_shop: TestClient, shop_services: dict[str, TestServer], key: bytes
) -> None:
    customer_headers = await shopper(web_shop)
    body = b'{"items": [{"product_id": "0123456789abcdef01234567", "quantity": 1}]}'
    headers: dict[str, str | bytes] = {
        **customer_headers,
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        "Idempotency-Key": key,
    }
    answers = []
    for port in (web_shop.server.port, shop_services["order"].port):
        answer = await asyncio.to_thread(send_raw, port, "POST", "/api/orders", headers, body)
        assert answer.status == 400, answer.text
        answers.append(answer.json())
    through, direct = answers
    assert through["code"] == direct["code"] == "invalid_idempotency_key"
    assert through["error"] == direct["error"]
