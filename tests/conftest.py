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
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pymongo import AsyncMongoClient
from support import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    JWT_SECRET,
    TEST_ACCOUNTS,
    add_accounts,
    bearer,
    postgres,
)

from shopctl import embedded
from shopkit.auth import issue_token, service_token
from shopkit.logs import BufferedStreamHandler, configure_logging
from svc_cart.app import CartSettings
from svc_cart.app import create_app as create_cart_app
from svc_order.app import OrderSettings
from svc_order.app import create_app as create_order_app
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


@asynccontextmanager
async def throwaway_database(server_uri: str) -> AsyncIterator[str]:
    """A new empty database on the server, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    async with postgres(server_uri) as connection:
        await connection.execute(f'CREATE DATABASE "{name}"')
        yield embedded.database_url(server_uri, name)
        await connection.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
async def postgres_uri(postgres_server_uri: str) -> AsyncIterator[str]:
    """A database of this test's own (the order service's, if any), dropped afterwards."""
    async with throwaway_database(postgres_server_uri) as uri:
        yield uri


def service_env(**values: str) -> dict[str, str]:
    return {"JWT_SECRET": JWT_SECRET, "HOST": "127.0.0.1", **values}


@pytest.fixture
async def users_postgres_uri(postgres_server_uri: str) -> AsyncIterator[str]:
    """The user service's database of this test's own, dropped afterwards."""
    # Not postgres_uri, the order service's: both keep a schema_migrations table.
    async with throwaway_database(postgres_server_uri) as uri:
        yield uri


@pytest.fixture
def user_settings(users_postgres_uri: str) -> UserSettings:
    """The user service's settings: its own database, the test admin, cheap bcrypt."""
    # Few bcrypt rounds keep the suite fast; the default (12) is measured in benchmarks/.
    return UserSettings.from_env(
        service_env(
            DATABASE_URL=users_postgres_uri,
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
async def user_server(aiohttp_server: Any, user_settings: UserSettings) -> TestServer:
    """The real user service on a port of its own, holding the accounts test tokens name."""
    # Every other service asks it whether a token was revoked (USER_SERVICE_URL). Its
    # accounts: the admin (id 1, made at start-up) and customers 2 to TEST_ACCOUNTS - 1
    # (support.customer); accounts registered later get ids after them.
    server = await aiohttp_server(create_user_app(user_settings))
    async with postgres(user_settings.database_url) as connection:
        await add_accounts(connection, range(2, TEST_ACCOUNTS))
        await connection.execute(f"ALTER TABLE users ALTER COLUMN id RESTART WITH {TEST_ACCOUNTS}")
    return server


@pytest.fixture
def user_service_url(user_server: TestServer) -> str:
    """USER_SERVICE_URL for the services that check tokens."""
    return str(user_server.make_url(""))


@pytest.fixture
def product_settings(mongo_uri: str, user_service_url: str) -> ProductSettings:
    """The product service's settings: its own database, the real user service."""
    return ProductSettings.from_env(
        service_env(MONGODB_URI=mongo_uri, USER_SERVICE_URL=user_service_url)
    )


@pytest.fixture
async def product(aiohttp_client: Any, product_settings: ProductSettings) -> TestClient:
    """The real product service over HTTP, on its own database."""
    return await aiohttp_client(create_product_app(product_settings))


@pytest.fixture
def admin_headers() -> dict[str, str]:
    """Headers of the admin (id 1), with a token as the user service would issue it."""
    return bearer(issue_token(JWT_SECRET, sub="1", email="admin@shop.test", role="admin"))


@pytest.fixture
def customer_headers() -> dict[str, str]:
    """Headers of customer 2, with a token as the user service would issue it."""
    return bearer(issue_token(JWT_SECRET, sub="2", email="ann@shop.test", role="customer"))


@pytest.fixture
def service_headers() -> dict[str, str]:
    """Headers of the order service (a service token: stock moves with a reference)."""
    return bearer(service_token(JWT_SECRET, "order"))


@pytest.fixture
def json_logs() -> Any:
    """Configure the JSON log lines as run() does, and read them back."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = io.StringIO()
    configure_logging("product", "INFO", stream)

    def lines() -> list[dict[str, Any]]:
        for handler in root.handlers:  # info lines wait up to FLUSH_INTERVAL to be written
            if isinstance(handler, BufferedStreamHandler):
                handler.flush_now()
        return [json.loads(line) for line in stream.getvalue().splitlines() if line]

    yield lines
    for handler in root.handlers:
        handler.close()
    root.handlers[:], level = saved
    root.setLevel(level)


# -- the cart service: Redis, and the cart app in front of a real product service ------------


@pytest.fixture(scope="session")
def redis_server_uri() -> Iterator[str]:
    """A Redis server: REDIS_URL's, or an embedded one for this session."""
    # Tests share it and keep apart by using user ids of their own: nothing is ever flushed.
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
def catalogue_cache_seconds() -> str:
    """The cart service's CATALOGUE_CACHE_SECONDS: its default, unless a test parametrizes it."""
    return "1"


@pytest.fixture
def cart_settings(
    redis_server_uri: str,
    product_server: TestServer,
    user_service_url: str,
    catalogue_cache_seconds: str,
) -> CartSettings:
    """The cart service's settings: the shared Redis, the real product and user services."""
    return CartSettings.from_env(
        service_env(
            REDIS_URL=redis_server_uri,
            PRODUCT_SERVICE_URL=str(product_server.make_url("")),
            USER_SERVICE_URL=user_service_url,
            CATALOGUE_CACHE_SECONDS=catalogue_cache_seconds,
        )
    )


@pytest.fixture
async def cart(aiohttp_client: Any, cart_settings: CartSettings) -> TestClient:
    """The real cart service over HTTP, on Redis, pricing with the real product service."""
    return await aiohttp_client(create_cart_app(cart_settings))


@pytest.fixture
async def cart_server(aiohttp_server: Any, cart_settings: CartSettings) -> TestServer:
    """The real cart service on a port of its own, for the services that call it."""
    return await aiohttp_server(create_cart_app(cart_settings))


# -- the order service: PostgreSQL, in front of the real product (and cart) service ----------


@pytest.fixture
def order_cart_service_url() -> str:
    """The order service's CART_SERVICE_URL: nothing there, unless a module overrides this."""
    # Checkouts of explicit items never ask the cart service; test_order_cart.py gives it one.
    return "http://127.0.0.1:9"


@pytest.fixture
def order_settings(
    postgres_uri: str,
    product_server: TestServer,
    user_service_url: str,
    order_cart_service_url: str,
) -> OrderSettings:
    """The order service's settings: its own database, recovery only when a test runs it."""
    return OrderSettings.from_env(
        service_env(
            DATABASE_URL=postgres_uri,
            PRODUCT_SERVICE_URL=str(product_server.make_url("")),
            USER_SERVICE_URL=user_service_url,
            CART_SERVICE_URL=order_cart_service_url,
            RECOVERY_INTERVAL_SECONDS="3600",
        )
    )


@pytest.fixture
async def orders(aiohttp_client: Any, order_settings: OrderSettings) -> TestClient:
    """The real order service over HTTP, on its own database (see order_settings)."""
    return await aiohttp_client(create_order_app(order_settings))


# == The whole shop behind the gateway, as a browser sees it (tests/test_pages*.py) ============
# Every service real and listening on a port of its own, the gateway in front of them with
# the environment `shopctl up` gives it. Imports are local to keep this block self-contained.


@pytest.fixture
async def shop_services(
    aiohttp_server: Any,
    product_server: TestServer,
    user_server: TestServer,
    user_settings: UserSettings,
    cart_server: TestServer,
    postgres_uri: str,
) -> AsyncIterator[dict[str, TestServer]]:
    """The product, user, cart and order services, all real, by backend name."""
    import secrets

    order_settings = OrderSettings.from_env(
        service_env(
            DATABASE_URL=postgres_uri,
            PRODUCT_SERVICE_URL=str(product_server.make_url("")),
            CART_SERVICE_URL=str(cart_server.make_url("")),
            USER_SERVICE_URL=str(user_server.make_url("")),
        )
    )
    order_server = await aiohttp_server(create_order_app(order_settings))
    # Carts live in a Redis shared with other tests (and maybe other runs): accounts made
    # now get user ids of their own, far from the small ids every fresh database starts at.
    first_id = 10**12 + secrets.randbelow(10**15)
    async with postgres(user_settings.database_url) as connection:
        await connection.execute(f"ALTER TABLE users ALTER COLUMN id RESTART WITH {first_id}")
    yield {
        "product": product_server,
        "user": user_server,
        "cart": cart_server,
        "order": order_server,
    }
    # Stopped here, before their databases are dropped (aiohttp_server would stop them later).
    for server in (order_server, cart_server, user_server):
        await server.close()


@pytest.fixture
def gateway_env(shop_services: dict[str, TestServer]) -> dict[str, str]:
    """The gateway's environment in front of shop_services, JWT_SECRET too as shopctl up's."""
    urls = {
        f"{name.upper()}_SERVICE_URL": str(server.make_url(""))
        for name, server in shop_services.items()
    }
    return service_env(**urls)


@pytest.fixture
async def web_shop(aiohttp_client: Any, gateway_env: dict[str, str]) -> TestClient:
    """A browser on the whole shop: a gateway client (keeps cookies, follows redirects)."""
    from svc_gateway.app import GatewaySettings
    from svc_gateway.app import create_app as create_gateway_app

    return await aiohttp_client(create_gateway_app(GatewaySettings.from_env(gateway_env)))
