"""The gateway owns nothing: it routes /api/* to the services and (later) serves the pages."""

from __future__ import annotations

from typing import Annotated, ClassVar

import aiohttp
import aiohttp_cors
from aiohttp import web
from pydantic import BeforeValidator, Field, SecretStr

from shopkit.app import create_service_app
from shopkit.client import ServiceClient
from shopkit.openapi import endpoint
from shopkit.responses import ok
from shopkit.settings import HttpUrl, ServiceSettings
from svc_gateway.keys import BACKENDS
from svc_gateway.proxy import METHODS, ROUTES, backends_ready, proxy_to


def _comma_list(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class GatewaySettings(ServiceSettings):
    service_name: ClassVar[str] = "gateway"
    default_port: ClassVar[int] = 3000

    # The gateway verifies no token itself (each backend does); the pages will use it.
    jwt_secret: SecretStr | None = Field(None, alias="JWT_SECRET", min_length=32)
    product_service_url: HttpUrl | None = Field(None, alias="PRODUCT_SERVICE_URL")
    user_service_url: HttpUrl | None = Field(None, alias="USER_SERVICE_URL")
    order_service_url: HttpUrl | None = Field(None, alias="ORDER_SERVICE_URL")
    cart_service_url: HttpUrl | None = Field(None, alias="CART_SERVICE_URL")
    cors_origins: Annotated[list[str], BeforeValidator(_comma_list)] = Field(
        default_factory=list, alias="CORS_ORIGINS"
    )
    upstream_timeout: float = Field(10.0, alias="UPSTREAM_TIMEOUT", gt=0, le=300)

    def backend_urls(self) -> dict[str, str]:
        """Backend name -> base URL, for the backends that are configured."""
        urls = {name: getattr(self, f"{name}_service_url") for name in ROUTES.values()}
        return {name: url for name, url in urls.items() if url}


@endpoint("What this is", response=dict)
async def index(request: web.Request) -> web.Response:
    return ok(
        {
            "service": "gateway",
            "message": "The web shop's pages arrive in a later release; the API is under /api/.",
            "api": [f"/api/{prefix}" for prefix in ROUTES],
        }
    )


def create_app(settings: GatewaySettings) -> web.Application:
    app = create_service_app(settings, ready_check=backends_ready, http_client=True)
    timeout = aiohttp.ClientTimeout(total=settings.upstream_timeout, connect=2)
    app[BACKENDS] = {
        name: ServiceClient(app, name, url, timeout=timeout)
        for name, url in settings.backend_urls().items()
    }
    app.router.add_get("/", index)
    proxy_routes = []
    for prefix, backend in ROUTES.items():
        handler = proxy_to(backend)
        for path in (f"/api/{prefix}", f"/api/{prefix}/{{tail:.*}}"):
            for method in METHODS:
                proxy_routes.append(app.router.add_route(method, path, handler))
    if settings.cors_origins:
        options = aiohttp_cors.ResourceOptions(
            allow_credentials=False,
            expose_headers=("X-Request-ID", "ETag", "Location", "Retry-After"),
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
        for route in proxy_routes:
            cors.add(route)
    return app
