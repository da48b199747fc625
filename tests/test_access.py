"""Tokens from the user service are honoured by the other services, all through the gateway."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from support import admin_login_headers, bearer, call, product_body

from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app
from svc_user.app import UserSettings
from svc_user.app import create_app as create_user_app


@pytest.fixture
async def shop(
    aiohttp_server: Any,
    aiohttp_client: Any,
    product_settings: ProductSettings,
    user_settings: UserSettings,
) -> TestClient:
    """The gateway in front of real product and user services."""
    product = await aiohttp_server(create_product_app(product_settings))
    user = await aiohttp_server(create_user_app(user_settings))
    settings = GatewaySettings.from_env(
        {
            "PRODUCT_SERVICE_URL": str(product.make_url("")),
            "USER_SERVICE_URL": str(user.make_url("")),
        }
    )
    return await aiohttp_client(create_gateway_app(settings))


async def test_an_admin_who_logged_in_runs_the_catalogue(shop: TestClient) -> None:
    admin = await admin_login_headers(shop)
    created = await call(
        shop, "POST", "/api/products", json=product_body(), headers=admin, expected_status=201
    )
    product_id = created["data"]["id"]
    await call(
        shop,
        "PATCH",
        f"/api/products/{product_id}/stock",
        json={"quantity": 5},
        headers=admin,
        expected_status=200,
    )
    await call(shop, "DELETE", f"/api/products/{product_id}", headers=admin, expected_status=200)


async def test_a_registered_customer_may_browse_but_not_change_the_catalogue(
    shop: TestClient,
) -> None:
    body = {"email": "ann@shop.test", "password": "s3cret-enough"}
    registered = await call(shop, "POST", "/api/users/register", json=body, expected_status=201)
    customer = bearer(registered["data"]["token"])
    await call(shop, "GET", "/api/products", headers=customer, expected_status=200)
    reply = await call(
        shop, "POST", "/api/products", json=product_body(), headers=customer, expected_status=403
    )
    assert reply["code"] == "forbidden"
    profile = await call(shop, "GET", "/api/users/profile", headers=customer, expected_status=200)
    assert profile["data"]["email"] == "ann@shop.test"


async def test_the_gateway_is_ready_only_with_both_backends(shop: TestClient) -> None:
    reply = await call(shop, "GET", "/ready", expected_status=200)
    backends = reply["data"]["backends"]
    assert backends["product"]["ready"] and backends["user"]["ready"]
