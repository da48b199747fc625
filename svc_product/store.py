"""The product service's data layer: the ``products`` collection, via PyMongo's async API.

Money is kept as integer cents (``price_cents``): exact, and the MongoDB-protocol server we
develop against (nx-27017) cannot store Decimal128.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, ReturnDocument, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import PyMongoError

from shopkit.app import StartupError
from shopkit.background import repeating
from shopkit.errors import Conflict, NotFound
from shopkit.keys import SETTINGS
from shopkit.logs import mask_url
from shopkit.money import cents_to_money, money_to_cents
from shopkit.parsing import parse_product_id
from shopkit.readiness import DatastoreAnswers
from svc_product.keys import MONGO, MONGO_ANSWERS, STORE

log = logging.getLogger("shop.product.store")

MAX_STOCK = 1_000_000_000
_SORTS = {
    "price": [("price_cents", ASCENDING), ("_id", ASCENDING)],
    "-price": [("price_cents", DESCENDING), ("_id", ASCENDING)],
    "name": [("sort_name", ASCENDING), ("_id", ASCENDING)],
    "-createdAt": [("createdAt", DESCENDING), ("_id", DESCENDING)],
}
# sort_name and the stock moves are ours, not the client's.
_PUBLIC = {"sort_name": False, "stock_moves": False, "stock_moved_at": False}
# Each stock change made with a reference is remembered in the product's stock_moves map,
# reference -> units (or "undone"), in the same atomic update as the change, so a retried
# change never applies twice and an undo applies exactly once. (One document, one update:
# no multi-document transaction, which a standalone MongoDB does not offer.) The map gains
# one small entry per order line; stock_moved_at says when (epoch seconds), so that
# prune_stock_moves can forget the entries of checkouts that ended long ago.
UNDONE = "undone"


class ProductNotFound(NotFound):
    def __init__(self, product_id: str) -> None:
        super().__init__(f"There is no product with id {product_id!r}.", code="product_not_found")


class StockChangeUndone(Conflict):
    """A change whose reference was undone (before or after it arrived): it never applies,
    and says so, so that its sender does not believe it took (or added) stock."""

    def __init__(self, reference: str) -> None:
        super().__init__(
            f"The stock change {reference!r} was undone; it changes nothing.",
            code="stock_change_undone",
        )


class ReferenceReused(Conflict):
    def __init__(self, reference: str) -> None:
        super().__init__(
            f"The reference {reference!r} was used for another stock change of this product.",
            code="reference_reused",
        )


class NotEnoughStock(Conflict):
    def __init__(self, available: int, wanted: int) -> None:
        super().__init__(
            f"Not enough stock: {available} left, {wanted} asked for.",
            code="insufficient_stock",
            extra={"available": available},
        )


def _object_id(product_id: str) -> ObjectId:
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
    def __init__(self, collection: AsyncCollection) -> None:
        self.collection = collection

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
            self.collection.find(query, _PUBLIC)
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
        docs, total = await asyncio.gather(
            cursor.to_list(length=limit), self.collection.count_documents(query)
        )
        return docs, total

    async def categories(self) -> list[dict[str, Any]]:
        pipeline = [{"$group": {"_id": "$category", "count": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
        cursor = await self.collection.aggregate(pipeline)
        return [{"name": row["_id"], "count": row["count"]} async for row in cursor]

    async def get(self, product_id: str) -> dict[str, Any]:
        doc = await self.collection.find_one({"_id": _object_id(product_id)}, _PUBLIC)
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
            {"_id": _object_id(product_id)},
            changes,
            projection=_PUBLIC,
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise ProductNotFound(product_id)
        return doc

    async def _with_moves(self, oid: ObjectId, product_id: str) -> dict[str, Any]:
        # The whole map, not just one move: nx-27017 ignores a projection of a nested field.
        # Only undos read it, and they are rare (a failed or crashed checkout).
        current = await self.collection.find_one({"_id": oid}, {"stock": True, "stock_moves": True})
        if current is None:
            raise ProductNotFound(product_id)
        return current

    async def undo_stock_change(self, product_id: str, reference: str) -> dict[str, Any]:
        """Reverse the change made under ``reference``, exactly once. A reference that was
        never applied is marked undone, so that the change, should it still arrive (a
        request in flight when its sender crashed), is refused as already done."""
        oid = _object_id(product_id)
        key = f"stock_moves.{reference}"
        for _ in range(5):  # each round either finishes or lost a race that changed the move
            moves = (await self._with_moves(oid, product_id)).get("stock_moves", {})
            units = moves.get(reference)
            if units == UNDONE:
                return await self.get(product_id)
            marked = {key: UNDONE, f"stock_moved_at.{reference}": int(time.time())}
            if units is None:
                selector: dict[str, Any] = {"_id": oid, key: {"$exists": False}}
                change: dict[str, Any] = {"$set": marked}
            else:
                selector = {"_id": oid, key: units}
                if units > 0:  # taking back units that were added needs them to be there
                    selector["stock"] = {"$gte": units}
                change = {
                    "$inc": {"stock": -units},
                    "$set": marked,
                    "$currentDate": {"updatedAt": True},
                }
            doc = await self.collection.find_one_and_update(
                selector, change, projection=_PUBLIC, return_document=ReturnDocument.AFTER
            )
            if doc is not None:
                return doc
            if units is not None and units > 0:
                current = await self._with_moves(oid, product_id)
                if current.get("stock_moves", {}).get(reference) == units:
                    raise NotEnoughStock(current["stock"], units)
        raise Conflict(
            "The stock of this product kept changing; try the undo again.", code="stock_busy"
        )

    async def delete(self, product_id: str) -> None:
        result = await self.collection.delete_one({"_id": _object_id(product_id)})
        if result.deleted_count == 0:
            raise ProductNotFound(product_id)

    async def change_stock(
        self, product_id: str, delta: int, reference: str | None = None
    ) -> dict[str, Any]:
        """Add ``delta`` units atomically. The condition lives in the update's filter, so a
        change that would go below zero (or past MAX_STOCK) matches nothing and changes
        nothing, however many callers race. With a ``reference``, the change applies at
        most once: a repeat changes nothing and answers the product as it is; a change
        whose reference was undone changes nothing and is refused (StockChangeUndone), so
        that no caller takes it for stock taken; the reference of another change is
        refused too (ReferenceReused)."""
        oid = _object_id(product_id)
        guard = {"$gte": -delta} if delta < 0 else {"$lte": MAX_STOCK - delta}
        selector: dict[str, Any] = {"_id": oid, "stock": guard}
        change: dict[str, Any] = {"$inc": {"stock": delta}, "$currentDate": {"updatedAt": True}}
        if reference is not None:
            selector[f"stock_moves.{reference}"] = {"$exists": False}
            change["$set"] = {
                f"stock_moves.{reference}": delta,
                f"stock_moved_at.{reference}": int(time.time()),
            }
        doc = await self.collection.find_one_and_update(
            selector, change, projection=_PUBLIC, return_document=ReturnDocument.AFTER
        )
        if doc is not None:
            return doc
        current = await self.collection.find_one({"_id": oid}, {"stock": True})
        if current is None:
            raise ProductNotFound(product_id)
        if reference is not None:
            # Filters on the one move, not a read of the map: nx-27017 ignores a projection
            # of a nested field, and a busy product's map holds a day of moves.
            move = f"stock_moves.{reference}"
            if await self.collection.find_one({"_id": oid, move: delta}, {"_id": True}):
                return await self.get(product_id)  # done before: idempotent
            if await self.collection.find_one({"_id": oid, move: UNDONE}, {"_id": True}):
                raise StockChangeUndone(reference)
            if await self.collection.find_one({"_id": oid, move: {"$exists": True}}, {"_id": True}):
                raise ReferenceReused(reference)
        if delta < 0:
            raise NotEnoughStock(current["stock"], -delta)
        raise Conflict(
            f"Stock cannot exceed {MAX_STOCK} units ({current['stock']} now, {delta} to add).",
            code="stock_limit",
        )

    async def prune_stock_moves(self, older_than: float) -> int:
        """Forget the stock moves recorded before ``older_than`` (epoch seconds); how many
        were forgotten. Only the checkout saga uses references, and a checkout either ends
        or is undone within its lease (seconds), so nothing retries or undoes a move a day
        old. Moves recorded before moves had times are stamped now, and forgotten one
        keeping period later. Each product is one update, guarded by the times it read, so
        a move stamped again meanwhile (an undo) is left for the next round."""
        forgotten = 0
        now = int(time.time())
        wanted = {"stock_moves": True, "stock_moved_at": True}
        async for doc in self.collection.find({"stock_moves": {"$exists": True}}, wanted):
            moves, stamps = doc.get("stock_moves") or {}, doc.get("stock_moved_at") or {}
            unstamped = [reference for reference in moves if reference not in stamps]
            if unstamped:
                stamp = {f"stock_moved_at.{reference}": now for reference in unstamped}
                await self.collection.update_one({"_id": doc["_id"]}, {"$set": stamp})
            old = {
                ref: moment
                for ref, moment in stamps.items()
                if isinstance(moment, int | float) and moment < older_than
            }
            if not old:
                continue
            guard = {f"stock_moved_at.{ref}": moment for ref, moment in old.items()}
            forget = {f"stock_moves.{ref}": "" for ref in old}
            forget.update({f"stock_moved_at.{ref}": "" for ref in old})
            result = await self.collection.update_one(
                {"_id": doc["_id"], **guard}, {"$unset": forget}
            )
            forgotten += len(old) if result.modified_count else 0
        return forgotten


async def prune_stock_moves_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: every STOCK_MOVES_PRUNE_INTERVAL seconds, forget the stock moves older
    than STOCK_MOVES_KEEP_SECONDS (each replica does; doing it twice changes nothing)."""
    settings = app[SETTINGS]

    async def prune() -> None:
        older_than = time.time() - settings.stock_moves_keep_seconds
        try:
            forgotten = await app[STORE].prune_stock_moves(older_than)
        except PyMongoError as exc:  # the datastore away: said briefly, tried next round
            log.warning("could not prune stock moves: %s", exc)
            return
        if forgotten:
            log.info("forgot %d stock moves older than a keeping period", forgotten)

    async with repeating("prune-stock-moves", prune, settings.stock_moves_prune_interval):
        yield


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
    store = ProductStore(database["products"])
    try:
        await client.admin.command("ping")
        await store.ensure_indexes()
    except PyMongoError as exc:
        await client.close()
        raise StartupError(f"MongoDB at {mask_url(uri)} is not answering: {exc}") from None
    app[MONGO] = client
    app[STORE] = store
    yield
    await client.close()
