"""The product service's app keys, shared by its views and its data layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from pymongo import AsyncMongoClient

from shopkit.readiness import DatastoreAnswers

if TYPE_CHECKING:
    from svc_product.store import ProductStore

MONGO = web.AppKey("mongo", AsyncMongoClient)
STORE: web.AppKey[ProductStore] = web.AppKey("store")
# When MongoDB last answered the service's own operations: the ready check's proof.
MONGO_ANSWERS = web.AppKey("mongo_answers", DatastoreAnswers)
