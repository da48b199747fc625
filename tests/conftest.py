"""Fixtures shared by every test: real backing servers, real apps, tokens.

A session uses MONGODB_URI / DATABASE_URL / REDIS_URL when they are set and otherwise
starts the embedded servers itself (shopctl.embedded), so the suite runs the same here and
on a laptop with nothing installed.
"""

from __future__ import annotations

import io
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient
from support import ADMIN_EMAIL, ADMIN_PASSWORD, JWT_SECRET, bearer

from shopctl import embedded
from shopkit.auth import issue_token, service_token
from shopkit.logs import configure_logging
from svc_cart.app import CartSettings
from svc_cart.app import create_app as create_cart_app
from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app
from svc_user.app import UserSettings
from svc_user.app import create_app as create_user_app


@contextmanager
def given_or_embedded(variable: str, start: Callable[[], embedded.EmbeddedServer]) -> Iterator[str]:
    """The server the environment names, or an embedded one for as long as it is needed."""
    given = os.environ.get(variable)
    if given:
        yield given
        return
    server = start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo_server_uri() -> Iterator[str]:
    """A MongoDB-protocol server: MONGODB_URI's, or an embedded one for this session."""
    with given_or_embedded("MONGODB_URI", lambda: embedded.start_mongo(None)) as uri:
        yield uri


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


@pytest.fixture(scope="session")
def postgres_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: DATABASE_URL's, or an embedded one for this session."""
    data = tmp_path_factory.mktemp("postgres") / "data"
    with given_or_embedded("DATABASE_URL", lambda: embedded.start_postgres(data)) as uri:
        yield uri


@pytest.fixture
async def postgres_uri(postgres_server_uri: str) -> AsyncIterator[str]:
    """A database of this test's own (the service migrates it), dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(postgres_server_uri)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
        yield embedded.database_url(postgres_server_uri, name)
        await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await connection.close()


def service_env(**values: str) -> dict[str, str]:
    return {"JWT_SECRET": JWT_SECRET, "HOST": "127.0.0.1", **values}


@pytest.fixture
def product_settings(mongo_uri: str) -> ProductSettings:
    return ProductSettings.from_env(service_env(MONGODB_URI=mongo_uri))


@pytest.fixture
def user_settings(postgres_uri: str) -> UserSettings:
    # Few bcrypt rounds keep the suite fast; the default (12) is measured in benchmarks/.
    return UserSettings.from_env(
        service_env(
            DATABASE_URL=postgres_uri,
            BCRYPT_ROUNDS="4",
            ADMIN_EMAIL=ADMIN_EMAIL,
            ADMIN_PASSWORD=ADMIN_PASSWORD,
        )
    )


@pytest.fixture
async def user(aiohttp_client: Any, user_settings: UserSettings) -> TestClient:
    """The real user service over HTTP, on its own database."""
    return await aiohttp_client(create_user_app(user_settings))


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


@pytest.fixture
def json_logs() -> Any:
    """Configure the JSON log lines as run() does, and read them back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("product", "INFO", stream)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line]

    yield lines
    for handler in root.handlers:
        handler.close()
    root.handlers[:], level = saved
    root.setLevel(level)


# -- the cart service: Redis, and the cart app in front of a real product service ------------


@pytest.fixture(scope="session")
def redis_server_uri() -> Iterator[str]:
    """A Redis server: REDIS_URL's, or an embedded one for this session. Tests share it and
    keep apart by using user ids of their own: nothing is ever flushed."""
    with given_or_embedded("REDIS_URL", lambda: embedded.start_redis(None)) as uri:
        yield uri


@pytest.fixture
async def product_server(aiohttp_server: Any, product_settings: ProductSettings) -> TestServer:
    """The real product service on a port of its own, for the services that call it."""
    return await aiohttp_server(create_product_app(product_settings))


@pytest.fixture
async def products(aiohttp_client: Any, product_server: TestServer) -> TestClient:
    """A client of that same product service (to set up and check what the others see)."""
    return await aiohttp_client(product_server)


@pytest.fixture
def cart_settings(redis_server_uri: str, product_server: TestServer) -> CartSettings:
    return CartSettings.from_env(
        service_env(
            REDIS_URL=redis_server_uri,
            PRODUCT_SERVICE_URL=str(product_server.make_url("")),
        )
    )


@pytest.fixture
async def cart(aiohttp_client: Any, cart_settings: CartSettings) -> TestClient:
    """The real cart service over HTTP, on Redis, pricing with the real product service."""
    return await aiohttp_client(create_cart_app(cart_settings))
