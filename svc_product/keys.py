"""The product service's app keys, shared by its views and its data layer."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import web
from pymongo import AsyncMongoClient

from shopkit.readiness import DatastoreAnswers

if TYPE_CHECKING:
    from svc_product.catalogue import CatalogueAnswers
    from svc_product.picture_store import PictureStore
    from svc_product.stock import StockLedger
    from svc_product.store import ProductStore

MONGO = web.AppKey("mongo", AsyncMongoClient)
STORE: web.AppKey[ProductStore] = web.AppKey("store")
STOCK: web.AppKey[StockLedger] = web.AppKey("stock")
# Catalogue answers, encoded once per catalogue version (see svc_product.catalogue).
ANSWERS: web.AppKey[CatalogueAnswers] = web.AppKey("answers")
# When MongoDB last answered the service's own operations: the ready check's proof.
MONGO_ANSWERS = web.AppKey("mongo_answers", DatastoreAnswers)
# Product pictures (svc_product.picture_store), and the turn each upload waits for: Pillow
# decodes one picture at a time per process, so its memory is never paid twice at once.
PICTURES: web.AppKey[PictureStore] = web.AppKey("pictures")
PICTURE_TURNS = web.AppKey("picture_turns", asyncio.Semaphore)
