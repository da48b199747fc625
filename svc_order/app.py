"""The order service owns orders (PostgreSQL database ``orders``) and runs checkout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import ClassVar, Literal

import aiohttp
from aiohttp import web
from pydantic import Field

from shopkit.app import create_service_app
from shopkit.auth import ServiceCredential
from shopkit.background import every
from shopkit.client import ServiceClient
from shopkit.keys import METRICS, POSTGRES, SETTINGS
from shopkit.postgres import POSTGRES_UNAVAILABLE, postgres_ctx, postgres_ready
from shopkit.revocation import TokenCheckingSettings, check_tokens_with_user_service
from shopkit.settings import HttpUrl, PostgresUrl
from svc_order.delivery import (
    DEFAULT_DELIVERY_COUNTRIES,
    CountriesSetting,
    DeliveryRules,
    PriceSetting,
    ThresholdSetting,
)
from svc_order.keys import CARTS, CHECKOUT, DELIVERY, PRODUCTS, STORE, USERS
from svc_order.payments import TestCardProvider
from svc_order.routes import REFUSALS, routes
from svc_order.saga import Checkout, CheckoutCounts
from svc_order.store import OrderStore, OwnerLock

# Each call to another service during a checkout must end well inside the checkout's lease.
CALL_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)


class OrderSettings(TokenCheckingSettings):
    service_name: ClassVar[str] = "order"
    default_port: ClassVar[int] = 3003

    database_url: PostgresUrl = Field(alias="DATABASE_URL")
    product_service_url: HttpUrl = Field(alias="PRODUCT_SERVICE_URL")
    cart_service_url: HttpUrl = Field(alias="CART_SERVICE_URL")
    checkout_lease_seconds: float = Field(30.0, alias="CHECKOUT_LEASE_SECONDS", ge=1, le=3600)
    recovery_interval_seconds: float = Field(10.0, alias="RECOVERY_INTERVAL_SECONDS", gt=0, le=3600)
    # Delivery (svc_order/delivery.py): prices as amounts ("4.95"); standard delivery is free
    # from FREE_DELIVERY_FROM of goods ("off": never); DELIVERY_COUNTRIES: ISO codes.
    delivery_standard_price: PriceSetting = Field(495, alias="DELIVERY_STANDARD_PRICE")
    delivery_express_price: PriceSetting = Field(995, alias="DELIVERY_EXPRESS_PRICE")
    free_delivery_from: ThresholdSetting = Field(5000, alias="FREE_DELIVERY_FROM")
    delivery_countries: CountriesSetting = Field(
        DEFAULT_DELIVERY_COUNTRIES,  # type: ignore[arg-type] - read as the setting's text
        alias="DELIVERY_COUNTRIES",
        validate_default=True,
    )
    # The card provider: only the built-in test one exists yet (see the README, "Payments").
    payment_provider: Literal["test"] = Field("test", alias="PAYMENT_PROVIDER")

    def delivery_rules(self) -> DeliveryRules:
        return DeliveryRules(
            {"standard": self.delivery_standard_price, "express": self.delivery_express_price},
            self.free_delivery_from,
            self.delivery_countries,
        )


async def saga_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the pool's): the store, and the saga with this process's owner
    lock (held while it lives: recovery takes over only the checkouts of dead owners)."""
    settings = app[SETTINGS]
    owner = OwnerLock(settings.database_url)
    await owner.hold()
    try:
        app[STORE] = store = OrderStore(app[POSTGRES])
        app[CHECKOUT] = Checkout(
            store,
            app[PRODUCTS],
            app[CARTS],
            ServiceCredential(settings.jwt_secret.get_secret_value(), "order"),
            settings.checkout_lease_seconds,
            CheckoutCounts(app[METRICS]),
            owner,
            users=app[USERS],
            provider=TestCardProvider(app[POSTGRES]),
            delivery=app[DELIVERY],
        )
        yield
    finally:
        await owner.release()


def create_app(settings: OrderSettings) -> web.Application:
    app = create_service_app(
        settings,
        ready_check=postgres_ready,
        unavailable_errors=POSTGRES_UNAVAILABLE,
        refusals=REFUSALS,
        http_client=True,
    )
    app[PRODUCTS] = ServiceClient(app, "product", settings.product_service_url, CALL_TIMEOUT)
    app[CARTS] = ServiceClient(app, "cart", settings.cart_service_url, CALL_TIMEOUT)
    app[USERS] = ServiceClient(app, "user", settings.user_service_url, CALL_TIMEOUT)
    app[DELIVERY] = settings.delivery_rules()
    check_tokens_with_user_service(
        app, settings.user_service_url, settings.token_status_cache_seconds
    )
    app.cleanup_ctx.append(postgres_ctx("svc_order.migrations"))  # app[POSTGRES]
    app.cleanup_ctx.append(saga_ctx)  # app[STORE], app[CHECKOUT]
    # The first pass runs at start-up: a restarted service takes over at once what its dead
    # predecessor left (its owner lock died with it), not a lease later. A pass that fails
    # (an outage) is tried again at the next one.
    app.cleanup_ctx.append(
        every(
            settings.recovery_interval_seconds,
            "order-recovery",
            lambda app: app[CHECKOUT].recover(),
            first_at_once=True,
        )
    )
    app.router.add_routes(routes)
    return app
