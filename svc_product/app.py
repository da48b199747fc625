"""The product service owns the catalogue (MongoDB database ``products``)."""

from __future__ import annotations

from typing import Any, ClassVar

from aiohttp import web
from pydantic import Field
from pymongo.errors import ConnectionFailure

from shopkit.app import create_service_app
from shopkit.revocation import TokenCheckingSettings, check_tokens_with_user_service
from shopkit.settings import MongoUrl
from svc_product.keys import MONGO, MONGO_ANSWERS
from svc_product.routes import REFUSALS, routes
from svc_product.stock import stock_ctx
from svc_product.store import keywords_backfill_ctx, mongo_ctx


class ProductSettings(TokenCheckingSettings):
    service_name: ClassVar[str] = "product"
    default_port: ClassVar[int] = 3001

    mongodb_uri: MongoUrl = Field(alias="MONGODB_URI")
    # How long the record of a checkout's stock change is kept (it must outlive any retry or
    # undo of that checkout, whose lease is 30 s, and any request still in flight), and how
    # often old records are forgotten and changes a crash left half-done are finished.
    stock_moves_keep_seconds: float = Field(86_400, alias="STOCK_MOVES_KEEP_SECONDS", ge=600)
    stock_moves_prune_interval: float = Field(
        3_600, alias="STOCK_MOVES_PRUNE_INTERVAL", gt=0, le=86_400
    )


async def mongo_ready(app: web.Application) -> dict[str, Any]:
    """Ready when MongoDB answered the service's own work just now (a ping would queue
    behind that work: see shopkit.readiness), or answers a ping."""
    if not app[MONGO_ANSWERS].recently():
        await app[MONGO].admin.command("ping")
    return {"datastore": "mongodb"}


def create_app(settings: ProductSettings) -> web.Application:
    # The HTTP client is for the user service: the admin routes check tokens' revocation.
    app = create_service_app(
        settings,
        ready_check=mongo_ready,
        unavailable_errors=(ConnectionFailure,),
        refusals=REFUSALS,
        http_client=True,
    )
    check_tokens_with_user_service(
        app, settings.user_service_url, settings.token_status_cache_seconds
    )
    app.cleanup_ctx.append(mongo_ctx)
    app.cleanup_ctx.append(stock_ctx)
    app.cleanup_ctx.append(keywords_backfill_ctx)
    app.router.add_routes(routes)
    return app
