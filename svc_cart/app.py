"""The cart service owns the carts (Redis keys ``cart:{userId}``) and prices them with the
product service's current names and prices."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from aiohttp import web
from pydantic import Field

from shopkit.app import create_service_app
from shopkit.client import ServiceClient
from shopkit.keys import METRICS
from shopkit.revocation import TokenCheckingSettings, check_tokens_with_user_service
from shopkit.settings import HttpUrl, RedisUrl
from svc_cart.catalogue import Catalogue, PricedAnswers
from svc_cart.keys import ANSWERS, CART_CHANGES, CATALOGUE, REDIS, STORE
from svc_cart.routes import CHANGE_KINDS, REFUSALS, routes
from svc_cart.store import REDIS_UNAVAILABLE, CartStore, redis_ctx


class CartSettings(TokenCheckingSettings):
    service_name: ClassVar[str] = "cart"
    default_port: ClassVar[int] = 3004

    redis_url: RedisUrl = Field(alias="REDIS_URL")
    product_service_url: HttpUrl = Field(alias="PRODUCT_SERVICE_URL")
    # How old the names and prices a cart read shows may be (0: always ask the catalogue).
    catalogue_cache_seconds: float = Field(1.0, alias="CATALOGUE_CACHE_SECONDS", ge=0, le=60)


async def redis_ready(app: web.Application) -> dict[str, Any]:
    await app[REDIS].ping()
    return {"datastore": "redis"}


async def close_catalogue(app: web.Application) -> None:
    await app[CATALOGUE].close()


async def carts_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the client's): the store over the Redis client."""
    app[STORE] = CartStore(app[REDIS])
    yield


def create_app(settings: CartSettings) -> web.Application:
    app = create_service_app(
        settings,
        ready_check=redis_ready,
        unavailable_errors=REDIS_UNAVAILABLE,
        refusals=REFUSALS,
        http_client=True,
    )
    app[CATALOGUE] = Catalogue(
        ServiceClient(app, "product", settings.product_service_url),
        max_age=settings.catalogue_cache_seconds,
    )
    app[ANSWERS] = PricedAnswers()
    app[CART_CHANGES] = app[METRICS].counter(
        "shop_cart_changes", "Changes made to carts, by kind", "change", known=CHANGE_KINDS
    )
    app.on_shutdown.append(close_catalogue)
    check_tokens_with_user_service(
        app, settings.user_service_url, settings.token_status_cache_seconds
    )
    app.cleanup_ctx.append(redis_ctx)  # app[REDIS]
    app.cleanup_ctx.append(carts_ctx)  # app[STORE]
    app.router.add_routes(routes)
    return app
