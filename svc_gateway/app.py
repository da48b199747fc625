"""The gateway owns no data: it routes /api/* to the services and serves the shop's pages."""

from __future__ import annotations

from typing import Annotated, ClassVar

import aiohttp
import aiohttp_cors
from aiohttp import web
from pydantic import BeforeValidator, Field, SecretStr

from shopkit.app import create_service_app
from shopkit.auth import ServiceCredential
from shopkit.client import ServiceClient
from shopkit.keys import LARGER_BODIES
from shopkit.revocation import check_tokens_with_user_service
from shopkit.settings import HttpUrl, ServiceSettings
from shopkit.uploads import PICTURE_UPLOAD
from svc_gateway.assets import load_assets
from svc_gateway.docs import api_docs_ctx
from svc_gateway.keys import BACKENDS, CHECKOUT_DEADLINE, GATEWAY_CREDENTIAL, SESSION_KEYS
from svc_gateway.pages.admin import PAGE_PICTURE_UPLOAD
from svc_gateway.pages.middleware import page_middleware
from svc_gateway.pages.rendering import setup_templates
from svc_gateway.paths import path_guard
from svc_gateway.proxy import API_PREFIXES, METHODS, gateway_ready
from svc_gateway.routes import API_ROUTES, DOCS_ROUTES, PAGE_ROUTES
from svc_gateway.session import SessionKeys


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class GatewaySettings(ServiceSettings):
    service_name: ClassVar[str] = "gateway"
    default_port: ClassVar[int] = 3000
    secret_variables: ClassVar[frozenset[str]] = ServiceSettings.secret_variables | {
        "SESSION_SECRET"
    }

    # Optional: the API verifies no token here (each backend does). The pages use it to
    # verify the login cookie, and derive their signing key from it without SESSION_SECRET.
    jwt_secret: SecretStr | None = Field(None, alias="JWT_SECRET", min_length=32)
    # Signs the pages' CSRF tokens and flash messages; replicas must share it.
    session_secret: SecretStr | None = Field(None, alias="SESSION_SECRET", min_length=32)
    product_service_url: HttpUrl | None = Field(None, alias="PRODUCT_SERVICE_URL")
    user_service_url: HttpUrl | None = Field(None, alias="USER_SERVICE_URL")
    order_service_url: HttpUrl | None = Field(None, alias="ORDER_SERVICE_URL")
    cart_service_url: HttpUrl | None = Field(None, alias="CART_SERVICE_URL")
    cors_origins: Annotated[list[str], BeforeValidator(_comma_list)] = Field(
        default_factory=list, alias="CORS_ORIGINS"
    )
    upstream_timeout: float = Field(10.0, alias="UPSTREAM_TIMEOUT", gt=0, le=300)
    # Proxies in front of the gateway that append the client to X-Forwarded-For (an ingress
    # controller: 1). 0: clients connect directly and whatever they send there is ignored.
    trusted_proxy_hops: int = Field(0, alias="TRUSTED_PROXY_HOPS", ge=0, le=10)
    # A checkout whose answer was lost is asked again (same Idempotency-Key) until its
    # outcome is certain or this many seconds pass: long enough for a crashed order
    # service to be restarted (see svc_gateway/checkout_forwarding.py).
    checkout_deadline: float = Field(30.0, alias="CHECKOUT_DEADLINE_SECONDS", gt=0, le=300)

    def backend_urls(self) -> dict[str, str]:
        """Backend name -> base URL, for the backends that are configured."""
        urls = {name: getattr(self, f"{name}_service_url") for name in API_PREFIXES.values()}
        return {name: url for name, url in urls.items() if url}


def create_app(settings: GatewaySettings) -> web.Application:
    app = create_service_app(settings, ready_check=gateway_ready, http_client=True)
    # The API: a client per configured backend, and how long a checkout may take.
    timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout, connect=2)
    app[BACKENDS] = {
        name: ServiceClient(app, name, url, timeout=timeout)
        for name, url in settings.backend_urls().items()
    }
    app[CHECKOUT_DEADLINE] = settings.checkout_deadline
    # The bodies over 1 MiB: a picture's upload, through the API and through the admin's form.
    app[LARGER_BODIES] = (PICTURE_UPLOAD, PAGE_PICTURE_UPLOAD)
    if settings.jwt_secret is not None and settings.user_service_url is not None:
        # The pages treat a revoked login cookie as logged out (svc_gateway.session).
        check_tokens_with_user_service(app, settings.user_service_url)
    # The pages: the keys their cookies are signed with, their templates, their files
    # (read at start-up) and their middleware, inside shopkit's.
    app[SESSION_KEYS] = SessionKeys.from_secrets(
        settings.session_secret.get_secret_value() if settings.session_secret else None,
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else None,
    )
    # Guests' carts are reached with the gateway's own service token (svc_gateway/pages/cart.py).
    app[GATEWAY_CREDENTIAL] = (
        ServiceCredential(settings.jwt_secret.get_secret_value(), "gateway")
        if settings.jwt_secret is not None
        else None
    )
    setup_templates(app)
    app.on_startup.append(load_assets)
    app.middlewares.append(page_middleware)
    # Inside shop_middleware and the pages' middleware: a refused path is the JSON 404 under
    # /api and the shop's HTML 404 page elsewhere.
    app.middlewares.append(path_guard)
    app.router.add_routes(PAGE_ROUTES)
    api_routes = app.router.add_routes(API_ROUTES)
    # The API's documentation: Swagger UI's files and the merged document, made when first
    # asked for (after the HTTP session's context, so it stops before the session closes).
    app.cleanup_ctx.append(api_docs_ctx)
    app.router.add_routes(DOCS_ROUTES)
    if settings.cors_origins:
        options = aiohttp_cors.ResourceOptions(
            allow_credentials=False,
            expose_headers=("X-Request-ID", "ETag", "Location", "Retry-After", "Idempotency-Key"),
            allow_headers=(
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "If-None-Match",
                "X-Request-ID",
            ),
            allow_methods=METHODS,
            max_age=600,
        )
        cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(settings.cors_origins, options))
        for route in api_routes:
            cors.add(route)
    return app
