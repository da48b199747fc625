"""The product service's data layer: the ``products`` collection, via PyMongo's async API.

Money is kept as integer cents (``price_cents``): exact, and the MongoDB-protocol server we
develop against (nx-27017) cannot store Decimal128.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, UpdateOne, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from shopkit.app import StartupError
from shopkit.domain import DomainError, ProductNotFound, timestamp
from shopkit.keys import SETTINGS
from shopkit.logs import mask_url
from shopkit.money import cents_to_money, money_to_cents
from shopkit.parsing import parse_product_id
from shopkit.readiness import DatastoreAnswers
from svc_product.catalogue import CatalogueVersion
from svc_product.keys import MONGO, MONGO_ANSWERS
from svc_product.schemas import ProductOut
from svc_product.search import keywords, query_words

log = logging.getLogger("shop.product.store")

_SORTS = {
    "price": [("price_cents", ASCENDING), ("_id", ASCENDING)],
    "-price": [("price_cents", DESCENDING), ("_id", ASCENDING)],
    "name": [("sort_name", ASCENDING), ("_id", ASCENDING)],
    "-createdAt": [("createdAt", DESCENDING), ("_id", DESCENDING)],
}
# sort_name, keywords and the stock markers are ours, not the client's (see svc_product.stock); the
# stock_moves maps are what an older version kept in the document (moved out at start-up).
PUBLIC = {
    "sort_name": False,
    "keywords": False,
    "pending": False,
    "pending_count": False,
    "stock_moves": False,
    "stock_moved_at": False,
}


class ProductBusy(DomainError):
    """The product kept changing under every attempt to update it."""


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
    return timestamp(moment)


def product_out(doc: dict[str, Any]) -> ProductOut:
    """A stored product as the API shows it (its shape: schemas.ProductOut)."""
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


# The fields the search keywords are made of.
_TEXT = ("name", "description")


def _stored_fields(fields: dict[str, Any], text: dict[str, str] | None = None) -> dict[str, Any]:
    """The stored form of the API's `fields`. When they change the name or the description,
    the search keywords are computed again from both: the ones given, the others from
    `text` (the stored name and description, for an update that gives only one)."""
    stored = dict(fields)
    if "price" in stored:
        stored["price_cents"] = money_to_cents(stored.pop("price"))
    if "name" in stored:
        stored["sort_name"] = stored["name"].casefold()
    if "name" in stored or "description" in stored:
        both = {**(text or {}), **{key: stored[key] for key in _TEXT if key in stored}}
        stored["keywords"] = keywords(both["name"], both.get("description", ""))
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
    """The MongoDB filter for a catalogue query. User text only ever reaches the server as
    plain values (keywords, a category), never as an operator or a pattern."""
    query: dict[str, Any] = {}
    if ids is not None:
        # A malformed id names no product, so it simply matches nothing.
        query["_id"] = {"$in": [ObjectId(i) for i in map(parse_product_id, ids) if i]}
    if q and q.strip():
        # Every word must begin a word of the name or the description (svc_product.search):
        # a multikey index look-up on MongoDB. Not $text, which nx-27017 answers differently;
        # not $regex, a scan of the catalogue. A query of punctuation only matches nothing.
        # Longest first: MongoDB scans the index for one word of an $all (the first, in
        # the versions that document it) and checks the others on each document found.
        words = sorted(query_words(q), key=len, reverse=True)
        query["keywords"] = {"$all": words} if words else {"$in": []}
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
        """After every write to the catalogue (the stock ledger's too), before it answers.
        The write is done by then: a bump that fails must not answer it as failed (a
        client would send a create or a plain stock change again), so it is logged, and
        the answers kept meanwhile are made again within MAX_AGE_SECONDS."""
        try:
            await self.version.bump()
        except PyMongoError as exc:
            log.warning("a catalogue write is done but its version was not bumped: %s", exc)

    async def ensure_indexes(self) -> None:
        """Idempotent: creating an index that exists is a no-op. Each public sort is an
        index, alone (the catalogue's pages) and after the category (a category's pages),
        so that MongoDB reads a page in order from an index and stops after it, whatever
        the catalogue's size; the search keywords are a multikey index."""
        # An index must end with the sort's _id too: without it MongoDB cannot give the
        # whole order from the index and sorts every match in memory. nx-27017 keeps _id
        # outside the document and cannot index it beside other fields: it refuses such an
        # index on a collection with documents, and on an empty one creates it and then
        # refuses every insert ("JSON path error near '_id'"). It names itself in buildInfo;
        # there the indexes go without _id.
        build = await self.collection.database.client.admin.command("buildInfo")
        with_id = build.get("process") != "nx_27017"
        for sort in _SORTS.values():
            keys = sort if with_id else [key for key in sort if key[0] != "_id"]
            await self.collection.create_index(keys)
            await self.collection.create_index([("category", ASCENDING), *keys])
        await self.collection.create_index([("keywords", ASCENDING)])

    async def add_missing_keywords(self, batch: int = 500) -> int:
        """Give search keywords to the products stored without them (by a version before
        keywords, or created by one still running beside this one in a rolling upgrade);
        how many it gave. Each write applies only while the product has no keywords and the name and
        description that were read, so replicas doing this at once, or an update racing
        it, never leave keywords made of an old text. Cheap when none is missing: one
        look-up of the missing (null) entries of the keywords index."""
        given = 0
        after: ObjectId | None = None
        while True:
            selector: dict[str, Any] = {"keywords": {"$exists": False}}
            if after is not None:
                selector["_id"] = {"$gt": after}
            cursor = self.collection.find(selector, {key: True for key in _TEXT})
            docs = await cursor.sort("_id", ASCENDING).limit(batch).to_list(length=batch)
            if not docs:
                if given:
                    await self.changed()  # searches may find more now
                return given
            writes = []
            for doc in docs:
                # No {"description": None} guard: nx-27017 matches None wrongly.
                unchanged = {key: doc.get(key, {"$exists": False}) for key in _TEXT}
                words = keywords(doc.get("name", ""), doc.get("description", ""))
                writes.append(
                    UpdateOne(
                        {"_id": doc["_id"], "keywords": {"$exists": False}, **unchanged},
                        {"$set": {"keywords": words}},
                    )
                )
            result = await self.collection.bulk_write(writes, ordered=False)
            given += result.modified_count
            after = docs[-1]["_id"]

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
        # The count command, not count_documents (an aggregate of $match and a constant
        # $group): on MongoDB both count the matches with the same index, but nx-27017
        # answers that aggregate by decoding every product in Python (0.6 s at 10k
        # products, whatever the filter; the categories' $group by field stays cheap, 3 ms),
        # and the count command in SQL. Without a filter MongoDB answers it
        # from the collection's metadata, at once (after an unclean shutdown that figure
        # may be off until the collection is validated).
        reply = await self.collection.database.command("count", self.collection.name, query=query)
        return int(reply["n"])

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
        oid = object_id(product_id)
        for _ in range(5):  # each round either finishes or lost a race for the other text
            selector, text = await self._text_guard(oid, product_id, fields)
            changes: dict[str, Any] = {
                # $currentDate, not $set of a datetime: nx-27017 stores a $set datetime as text.
                "$currentDate": {"updatedAt": True},
            }
            stored = _stored_fields(fields, text)
            if "imageUrl" in stored and stored["imageUrl"] is None:
                del stored["imageUrl"]
                changes["$unset"] = {"imageUrl": ""}
            if stored:
                changes["$set"] = stored
            doc = await self.collection.find_one_and_update(
                selector, changes, projection=PUBLIC, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                await self.changed()
                return doc
            if text is None:
                raise ProductNotFound(product_id)
        raise ProductBusy()

    async def _text_guard(
        self, oid: ObjectId, product_id: str, fields: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, str] | None]:
        """(the update's selector, the stored name and description) for an update of
        `fields`. The keywords are made of both texts: an update that gives only one reads
        the other, and applies only while it is still what was read, so that two updates
        racing (one of the name, one of the description) never leave keywords made of a
        text the product no longer has."""
        given = [key for key in _TEXT if key in fields]
        if len(given) != 1:
            return {"_id": oid}, None
        other = "description" if given == ["name"] else "name"
        current = await self.collection.find_one({"_id": oid}, {key: True for key in _TEXT})
        if current is None:
            raise ProductNotFound(product_id)
        # An old product may have no description; {"description": None} would be the
        # natural guard, but nx-27017 matches None wrongly.
        value = current.get(other)
        guard = value if value is not None else {"$exists": False}
        text = {"name": current["name"], "description": current.get("description", "")}
        return {"_id": oid, other: guard}, text

    async def delete(self, product_id: str) -> None:
        result = await self.collection.delete_one({"_id": object_id(product_id)})
        if result.deleted_count == 0:
            raise ProductNotFound(product_id)
        await self.changed()

    async def backfill_keywords(self) -> None:
        """add_missing_keywords, said in the log: run at start-up and every
        KEYWORDS_BACKFILL_INTERVAL (the service answers meanwhile, and such products are
        found by search once they have them)."""
        given = await self.add_missing_keywords()
        if given:
            log.info("gave search keywords to %d products stored without them", given)


# How often each replica looks for products stored without search keywords.
KEYWORDS_BACKFILL_INTERVAL = 600.0


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
    """cleanup_ctx: the MongoDB client (``app[MONGO]``), checked before the service takes
    traffic; its answers noted in ``app[MONGO_ANSWERS]``."""
    uri = app[SETTINGS].mongodb_uri
    client: AsyncMongoClient = AsyncMongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=5000,
        appname="shop-product",
        event_listeners=[MongoAnswers(app[MONGO_ANSWERS])],
    )
    log.info(
        "connecting to MongoDB at %s, database %s", mask_url(uri), products_database(client).name
    )
    try:
        await client.admin.command("ping")
    except PyMongoError as exc:
        await client.close()
        raise StartupError(f"MongoDB at {mask_url(uri)} is not answering: {exc}") from None
    app[MONGO] = client
    yield
    await client.close()


def products_database(client: AsyncMongoClient) -> AsyncDatabase:
    """The database the URI names, else ``products``."""
    return client.get_default_database("products")
