"""The product service owns the catalogue (MongoDB database ``products``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from aiohttp import web
from pydantic import Field
from pymongo.errors import ConnectionFailure, PyMongoError

from shopkit.app import StartupError, create_service_app
from shopkit.background import every
from shopkit.keys import LARGER_BODIES, METRICS
from shopkit.readiness import DatastoreAnswers
from shopkit.revocation import TokenCheckingSettings, check_tokens_with_user_service
from shopkit.settings import MongoUrl
from shopkit.uploads import PICTURE_UPLOAD
from svc_product.catalogue import CatalogueAnswers, CatalogueVersion
from svc_product.keys import ANSWERS, MONGO, MONGO_ANSWERS, PICTURE_TURNS, PICTURES, STOCK, STORE
from svc_product.picture_store import PictureStore
from svc_product.routes import REFUSALS, STOCK_CONFLICT_CODES, routes
from svc_product.stock import (
    SETTLE_AFTER,
    SETTLE_INTERVAL,
    STOCK_CONFLICTS,
    StockLedger,
    housekeeping,
)
from svc_product.store import (
    KEYWORDS_BACKFILL_INTERVAL,
    ProductStore,
    mongo_ctx,
    products_database,
)

log = logging.getLogger("shop.product")


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
    # How often pictures no product points at (for a week) are looked for and forgotten.
    pictures_sweep_interval: float = Field(3_600, alias="PICTURES_SWEEP_INTERVAL", gt=0, le=86_400)


async def mongo_ready(app: web.Application) -> dict[str, Any]:
    """Ready when MongoDB answered the service's own work just now (a ping would queue
    behind that work: see shopkit.readiness), or answers a ping."""
    if not app[MONGO_ANSWERS].recently():
        await app[MONGO].admin.command("ping")
    return {"datastore": "mongodb"}


async def catalogue_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx (after the client's): the catalogue's store, its kept answers and the
    stock ledger, indexed before the service takes traffic; at the end, the stock markers
    this process won are settled now rather than by the next sweep."""
    database = products_database(app[MONGO])
    version = CatalogueVersion(database["meta"])
    store = app[STORE] = ProductStore(database["products"], version)
    app[ANSWERS] = CatalogueAnswers(version)
    ledger = app[STOCK] = StockLedger(store.collection, database["stock_moves"], store.changed)
    app[PICTURES] = PictureStore(database["product_images"], store.collection)
    try:
        await store.ensure_indexes()
        await ledger.ensure_indexes()
        adopted = await ledger.adopt_old_moves()
    except PyMongoError as exc:
        raise StartupError(f"MongoDB could not prepare the catalogue: {exc}") from None
    if adopted:
        log.info("moved %d stock records out of product documents", adopted)
    yield
    with contextlib.suppress(PyMongoError, asyncio.CancelledError):
        await ledger.settle_won()
    await version.close()


async def forget_unused_pictures(app: web.Application) -> None:
    forgotten = await app[PICTURES].forget_unused()
    if forgotten:
        log.info("forgot %d pictures no product points at", forgotten)


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
    app[MONGO_ANSWERS] = DatastoreAnswers()
    # A picture's upload is the one body over 1 MiB this service reads (shopkit.uploads).
    app[LARGER_BODIES] = (PICTURE_UPLOAD,)
    app[PICTURE_TURNS] = asyncio.Semaphore(1)
    # Counted where every refusal is answered (shopkit's middleware), by the code the client
    # hears: whichever route refused (one change, a checkout's batch, an undo), and with
    # no counting in the ledger, which knows nothing of codes.
    metrics = app[METRICS]
    metrics.count_refusals(
        STOCK_CONFLICTS,
        metrics.counter(
            "shop_stock_conflicts",
            "Stock changes refused, by the code answered",
            "code",
            known=STOCK_CONFLICT_CODES,
        ),
    )
    app.cleanup_ctx.append(mongo_ctx)  # app[MONGO]
    app.cleanup_ctx.append(catalogue_ctx)  # app[STORE], app[ANSWERS], app[STOCK]
    # A round that finds MongoDB away is one warning line; the next round tries again.
    away = (PyMongoError,)
    app.cleanup_ctx.append(
        every(
            SETTLE_INTERVAL,
            "settle-stock-markers",
            lambda app: app[STOCK].settle_won(SETTLE_AFTER),
            passing=away,
        )
    )
    app.cleanup_ctx.append(
        every(
            settings.stock_moves_prune_interval,
            "stock-housekeeping",
            lambda app: housekeeping(app[STOCK], settings.stock_moves_keep_seconds),
            passing=away,
        )
    )
    app.cleanup_ctx.append(
        every(
            settings.pictures_sweep_interval,
            "forget-unused-pictures",
            forget_unused_pictures,
            passing=away,
        )
    )
    app.cleanup_ctx.append(
        every(
            KEYWORDS_BACKFILL_INTERVAL,
            "search-keywords",
            lambda app: app[STORE].backfill_keywords(),
            first_at_once=True,
            passing=away,
        )
    )
    app.router.add_routes(routes)
    return app
