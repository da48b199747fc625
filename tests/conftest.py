"""Fixtures shared by every test: real backing servers, real apps, tokens.

A session uses MONGODB_URI / DATABASE_URL / REDIS_URL when they are set and otherwise
starts the embedded servers itself (shopctl.embedded), so the suite runs the same here and
on a laptop with nothing installed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from pymongo import AsyncMongoClient
from support import JWT_SECRET, bearer

from shopctl import embedded
from shopkit.auth import issue_token, service_token
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app


@pytest.fixture(scope="session")
def mongo_server_uri() -> Iterator[str]:
    """A MongoDB-protocol server: MONGODB_URI's, or an embedded one for this session."""
    given = os.environ.get("MONGODB_URI")
    if given:
        yield given
        return
    server = embedded.start_mongo(None)
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
async def mongo_uri(mongo_server_uri: str) -> AsyncIterator[str]:
    """A database of this test's own, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    yield embedded.database_url(mongo_server_uri, name)
    client: AsyncMongoClient = AsyncMongoClient(mongo_server_uri, serverSelectionTimeoutMS=5000)
    try:
        await client.drop_database(name)
    finally:
        await client.close()


def service_env(**values: str) -> dict[str, str]:
    return {"JWT_SECRET": JWT_SECRET, "HOST": "127.0.0.1", **values}


@pytest.fixture
def product_settings(mongo_uri: str) -> ProductSettings:
    return ProductSettings.from_env(service_env(MONGODB_URI=mongo_uri))


@pytest.fixture
async def product(aiohttp_client: Any, product_settings: ProductSettings) -> TestClient:
    """The real product service over HTTP, on its own database."""
    return await aiohttp_client(create_product_app(product_settings))


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return bearer(issue_token(JWT_SECRET, sub="1", email="admin@shop.test", role="admin"))


@pytest.fixture
def customer_headers() -> dict[str, str]:
    return bearer(issue_token(JWT_SECRET, sub="2", email="ann@shop.test", role="customer"))


@pytest.fixture
def service_headers() -> dict[str, str]:
    return bearer(service_token(JWT_SECRET, "order"))
