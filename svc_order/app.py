"""The order service owns orders (PostgreSQL database ``orders``) and runs checkout."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, ClassVar, Literal

import aiohttp
from aiohttp import web
from pydantic import AfterValidator, Field

from shopkit.app import create_service_app
from shopkit.auth import ServiceCredential
from shopkit.background import every
from shopkit.client import ServiceClient
from shopkit.keys import METRICS, POSTGRES, SETTINGS
from shopkit.logs import mask_url
from shopkit.postgres import POSTGRES_UNAVAILABLE, postgres_ctx, postgres_ready
from shopkit.revocation import TokenCheckingSettings, check_tokens_with_user_service
from shopkit.settings import HttpUrl, PostgresUrl, ServiceSettings
from svc_order.delivery import (
    DEFAULT_DELIVERY_COUNTRIES,
    CountriesSetting,
    DeliveryRules,
    PriceSetting,
    ThresholdSetting,
)
from svc_order.keys import CARTS, CHECKOUT, DELIVERY, MAILER, PRODUCTS, STORE, USERS
from svc_order.mailer import EmailCounts, EmailSender, MailSettings, SmtpServer, check_sender
from svc_order.outbox import Outbox
from svc_order.payments import TestCardProvider
from svc_order.routes import REFUSALS, routes
from svc_order.saga import Checkout, CheckoutCounts
from svc_order.store import OrderStore, OwnerLock

log = logging.getLogger("shop.order")


def _check_smtp_url(value: str) -> str:
    SmtpServer.from_url(value.strip())
    return value.strip()


SmtpUrl = Annotated[str, AfterValidator(_check_smtp_url)]
Sender = Annotated[str, AfterValidator(check_sender)]

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

    # The customers' e-mails (svc_order/mailer.py). Without SMTP_URL none is sent: they are
    # recorded in the outbox and wait there (its backlog is still measured).
    secret_variables: ClassVar[frozenset[str]] = ServiceSettings.secret_variables | {"SMTP_URL"}
    smtp_url: SmtpUrl | None = Field(None, alias="SMTP_URL")
    mail_from: Sender = Field("Corner Shop <orders@shop.local>", alias="MAIL_FROM")
    # The web shop's address as customers reach it, for the links in the e-mails.
    storefront_url: HttpUrl | None = Field(None, alias="STOREFRONT_URL")
    email_interval_seconds: float = Field(1.0, alias="EMAIL_INTERVAL_SECONDS", gt=0, le=3600)
    email_retry_seconds: float = Field(30.0, alias="EMAIL_RETRY_SECONDS", gt=0, le=3600)
    email_max_attempts: int = Field(8, alias="EMAIL_MAX_ATTEMPTS", ge=1, le=100)
    smtp_timeout_seconds: float = Field(30.0, alias="SMTP_TIMEOUT_SECONDS", gt=0, le=300)


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


async def mail_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the pool's): the e-mail sender (app[MAILER])."""
    settings = app[SETTINGS]
    server = None if settings.smtp_url is None else SmtpServer.from_url(settings.smtp_url)
    if server is None:
        log.warning("SMTP_URL is not set: the customers' e-mails wait in the outbox, unsent")
    else:
        log.info("sending the customers' e-mails through %s", mask_url(settings.smtp_url))
    app[MAILER] = EmailSender(
        Outbox(app[POSTGRES]),
        server,
        MailSettings(
            sender=settings.mail_from,
            storefront_url=settings.storefront_url,
            retry_seconds=settings.email_retry_seconds,
            max_attempts=settings.email_max_attempts,
            timeout_seconds=settings.smtp_timeout_seconds,
        ),
        EmailCounts(app[METRICS]),
    )
    yield


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
    app.cleanup_ctx.append(mail_ctx)  # app[MAILER]
    # Every replica sends: each claims its e-mails with SKIP LOCKED (svc_order/outbox.py).
    app.cleanup_ctx.append(
        every(
            settings.email_interval_seconds,
            "email-sender",
            lambda app: app[MAILER].run_pass(),
            first_at_once=True,
            passing=POSTGRES_UNAVAILABLE,
        )
    )
    app.router.add_routes(routes)
    return app
