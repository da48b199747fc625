"""The product service's data layer: the ``products`` collection, via PyMongo's async API.

Money is kept as integer cents (``price_cents``): exact, and the MongoDB-protocol server we
develop against (nx-27017) cannot store Decimal128.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from shopkit.app import StartupError
from shopkit.errors import NotFound
from shopkit.keys import SETTINGS
from shopkit.logs import mask_url
from shopkit.money import cents_to_money, money_to_cents
from shopkit.parsing import parse_product_id
from shopkit.readiness import DatastoreAnswers
from svc_product.catalogue import CatalogueAnswers, CatalogueVersion
from svc_product.keys import ANSWERS, MONGO, MONGO_ANSWERS, STORE

log = logging.getLogger("shop.product.store")

_SORTS = {
    "price": [("price_cents", ASCENDING), ("_id", ASCENDING)],
    "-price": [("price_cents", DESCENDING), ("_id", ASCENDING)],
    "name": [("sort_name", ASCENDING), ("_id", ASCENDING)],
    "-createdAt": [("createdAt", DESCENDING), ("_id", DESCENDING)],
}
# sort_name and the stock markers are ours, not the client's (see svc_product.stock); the
# stock_moves maps are what an older version kept in the document (moved out at start-up).
PUBLIC = {
    "sort_name": False,
    "pending": False,
    "pending_count": False,
    "stock_moves": False,
    "stock_moved_at": False,
}


class ProductNotFound(NotFound):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"There is no product with id {product_id!r}.", code="product_not_found")


def object_id(product_id: str) -> ObjectId:
    # A malformed id cannot name a product, so it is simply not found (never a 500).
    canonical = parse_product_id(product_id)
    if canonical is None:
        raise ProductNotFound(product_id)
    return ObjectId(canonical)


def _now() -> datetime:
    # BSON dates keep milliseconds; trim now so what we answer is what a re-read gives.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _iso(moment: datetime | str) -> str:
    if isinstance(moment, str):  # defensive: see the $currentDate note in update()
        return moment
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def product_out(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored product as the API shows it (see schemas.ProductOut)."""
    return {
        "id": str(doc["_id"]),
        "name": doc["name"],
        "description": doc.get("description", ""),
        "price": cents_to_money(doc["price_cents"]),
        "category": doc["category"],
        "stock": doc["stock"],
        "imageUrl": doc.get("imageUrl"),
        "createdAt": _iso(doc["createdAt"]),
        "updatedAt": _iso(doc["updatedAt"]),
    }


def _stored_fields(fields: dict[str, Any]) -> dict[str, Any]:
    stored = dict(fields)
    if "price" in stored:
        stored["price_cents"] = money_to_cents(stored.pop("price"))
    if "name" in stored:
        stored["sort_name"] = stored["name"].casefold()
    return stored


def catalogue_filter(
    *,
    ids: list[str] | None = None,
    q: str | None = None,
    category: str | None = None,
    min_cents: int | None = None,
    max_cents: int | None = None,
    in_stock: bool = False,
) -> dict[str, Any]:
    """The MongoDB filter for a catalogue query. User text only ever reaches the server
    escaped, as the value of ``$regex`` (never as an operator or a compiled pattern)."""
    query: dict[str, Any] = {}
    if ids is not None:
        # A malformed id names no product, so it simply matches nothing.
        query["_id"] = {"$in": [ObjectId(i) for i in map(parse_product_id, ids) if i]}
    words = (q or "").split()[:10]
    if words:
        # Every word must appear in the name or the description, case-insensitively. A
        # regex, not $text: it behaves the same on MongoDB and on nx-27017 (whose $text
        # differs), and a catalogue this size scans in well under a millisecond.
        query["$and"] = [
            {
                "$or": [
                    {field: {"$regex": re.escape(word), "$options": "i"}}
                    for field in ("name", "description")
                ]
            }
            for word in words
        ]
    if category:
        query["category"] = category
    if min_cents is not None or max_cents is not None:
        query["price_cents"] = {
            op: cents
            for op, cents in (("$gte", min_cents), ("$lte", max_cents))
            if cents is not None
        }
    if in_stock:
        query["stock"] = {"$gt": 0}
    return query


class ProductStore:
    def __init__(self, collection: AsyncCollection, version: CatalogueVersion) -> None:
        self.collection = collection
        self.version = version

    async def changed(self) -> None:
        """After every write to the catalogue (the stock ledger's too), before it answers."""
        await self.version.bump()

    async def ensure_indexes(self) -> None:
        """Idempotent: creating an index that exists is a no-op."""
        await self.collection.create_index([("category", ASCENDING), ("price_cents", ASCENDING)])
        await self.collection.create_index([("price_cents", ASCENDING)])
        await self.collection.create_index([("sort_name", ASCENDING)])
        await self.collection.create_index([("createdAt", DESCENDING)])

    async def find_page(
        self, query: dict[str, Any], *, sort: str, page: int, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        cursor = (
            self.collection.find(query, PUBLIC)
            .sort(_SORTS[sort])
            .skip((page - 1) * limit)
            .limit(limit)
        )
        if "_id" in query:
            # Products by id (at most 100): a first page that is not full is all there is,
            # and nx-27017's count_documents answers 0 for an ObjectId filter anyway.
            docs = await cursor.to_list(length=limit)
            if page == 1 and len(docs) < limit:
                return docs, len(docs)
            ids = await self.collection.find(query, {"_id": True}).to_list(length=None)
            return docs, len(ids)
        docs, total = await asyncio.gather(cursor.to_list(length=limit), self._count(query))
        return docs, total

    async def _count(self, query: dict[str, Any]) -> int:
        # $match + $count, not count_documents ($match + $group + $sum): the same count and
        # the same index use on MongoDB, and a tenth of the cost on nx-27017 (1.3 ms against
        # 11 over 200 products), where counting was two thirds of a list's cost.
        cursor = await self.collection.aggregate([{"$match": query}, {"$count": "total"}])
        rows = await cursor.to_list(length=1)
        return rows[0]["total"] if rows else 0

    async def categories(self) -> list[dict[str, Any]]:
        pipeline = [{"$group": {"_id": "$category", "count": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
        cursor = await self.collection.aggregate(pipeline)
        return [{"name": row["_id"], "count": row["count"]} async for row in cursor]

    async def get(self, product_id: str) -> dict[str, Any]:
        doc = await self.collection.find_one({"_id": object_id(product_id)}, PUBLIC)
        if doc is None:
            raise ProductNotFound(product_id)
        return doc

    async def create(self, fields: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        doc = {**_stored_fields(fields), "createdAt": now, "updatedAt": now}
        if doc.get("imageUrl") is None:
            doc.pop("imageUrl", None)
        result = await self.collection.insert_one(doc)
        doc["_id"] = result.inserted_id
        await self.changed()
        return doc

    async def update(self, product_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {
            # $currentDate, not $set of a datetime: nx-27017 stores a $set datetime as text.
            "$currentDate": {"updatedAt": True},
        }
        stored = _stored_fields(fields)
        if "imageUrl" in stored and stored["imageUrl"] is None:
            del stored["imageUrl"]
            changes["$unset"] = {"imageUrl": ""}
        if stored:
            changes["$set"] = stored
        doc = await self.collection.find_one_and_update(
            {"_id": object_id(product_id)},
            changes,
            projection=PUBLIC,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise ProductNotFound(product_id)
        await self.changed()
        return doc

    async def delete(self, product_id: str) -> None:
        result = await self.collection.delete_one({"_id": object_id(product_id)})
        if result.deleted_count == 0:
            raise ProductNotFound(product_id)
        await self.changed()


class MongoAnswers(monitoring.CommandListener, monitoring.ServerHeartbeatListener):
    """Notes each command MongoDB answers, and each heartbeat that could not reach it."""

    def __init__(self, answers: DatastoreAnswers) -> None:
        self.answers = answers

    def started(self, event: Any) -> None:
        pass

    def succeeded(self, event: Any) -> None:
        if isinstance(event, monitoring.CommandSucceededEvent):
            self.answers.answered()

    def failed(self, event: Any) -> None:
        if isinstance(event, monitoring.ServerHeartbeatFailedEvent):
            self.answers.failed()


async def mongo_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the MongoDB client, checked and indexed before the service takes traffic."""
    uri = app[SETTINGS].mongodb_uri
    answers = app[MONGO_ANSWERS] = DatastoreAnswers()
    client: AsyncMongoClient = AsyncMongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        appname="shop-product",
        event_listeners=[MongoAnswers(answers)],
    )
    database = client.get_default_database("products")
    log.info("connecting to MongoDB at %s, database %s", mask_url(uri), database.name)
    version = CatalogueVersion(database["meta"])
    store = ProductStore(database["products"], version)
    try:
        await client.admin.command("ping")
        await store.ensure_indexes()
    except PyMongoError as exc:
        await client.close()
        raise StartupError(f"MongoDB at {mask_url(uri)} is not answering: {exc}") from None
    app[MONGO] = client
    app[STORE] = store
    app[ANSWERS] = CatalogueAnswers(version)
    yield
    await version.close()
    await client.close()
