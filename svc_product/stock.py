"""Stock changes the checkout saga can repeat and undo: each applies once, and an undo once.

A change made with a reference (``order-<id>``) is recorded in its own collection,
``stock_moves``, one document per product and reference under a unique ``_id``, so that
the product documents the catalogue reads never grow with sales. A standalone MongoDB has
no multi-document transaction (and the embedded server's transactions are not isolated),
so the stock change and its record cannot be written in one step. Instead every step is
*applied, then claimed*:

1. **Apply**: one atomic update of the product changes its stock and leaves a marker under
   ``pending.<reference>`` (a fresh token, the units and the time), on the condition that
   no marker for that reference is there: at most one application is ever in flight.
2. **Claim**: the record is written (a take: insert under the unique id; an undo: the record
   changed from taken to undone, conditionally). Exactly one application wins the claim.
3. **Settle**: the winner's marker is removed (the change stays); a loser reverses its own
   marker (the change is taken back, in the same atomic update that removes the marker).

Whoever finds a marker (a repeat, an undo, the sweep after a crash) settles it by the same
rule, comparing it with the record: the token the record names stays, any other is
reversed, and a marker whose claim was never written is claimed on its owner's behalf. So
a crash between any two steps leaves a state the next reader finishes, and no step applies
twice: a repeat that arrives while the marker is there changes nothing and answers as
the first does; one that arrives later (a straggler its sender gave up on) applies, loses
the claim and reverses itself, so for that moment its units are held twice, never sold
twice. Markers live about a second (settled in batches); the sweep
finishes the few a crash left. Records are forgotten after STOCK_MOVES_KEEP_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from bson import ObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from shopkit.domain import MAX_STOCK, DomainError, ProductNotFound
from svc_product.store import PUBLIC, object_id

log = logging.getLogger("shop.product.stock")

# A marker is "<kind>:<token>:<units applied>:<epoch seconds>"; kind t (a take or any change
# with a reference) or u (an undo's reversal).
TAKE, UNDO = "t", "u"
TAKEN, UNDONE = "taken", "undone"
NEVER = "never"  # the undo token of a reference undone before any change arrived
# Settling a marker that lost, or whose record is not yet written, waits this long before a
# sweep treats it as left by a crash (its owner normally settles it within milliseconds).
ORPHAN_AFTER_SECONDS = 30.0
ATTEMPTS = 10  # rounds of apply / settle before a busy reference answers 409 stock_busy
# How often this process removes the markers it won, and how old they must be by then (see
# StockLedger.settle_won): a marker lives between half a second and a second.
SETTLE_INTERVAL = 0.5
SETTLE_AFTER = 0.5


# What a stock change may be refused for (svc_product.routes says how a client hears each).
# change_many adds the ``product_id`` of the change refused.


class StockChangeUndone(DomainError):
    """A change whose ``reference`` was undone (before or after it arrived): it never
    applies, and says so, so that its sender does not believe it took (or added) stock."""


class ReferenceReused(DomainError):
    """``reference`` was used for another change of this product."""


class NotEnoughStock(DomainError):
    """Taking ``wanted`` units would leave less than none: ``available`` are left."""


class StockLimit(DomainError):
    """Adding ``added`` units to ``available`` would pass MAX_STOCK (``limit``)."""


class StockBusy(DomainError):
    """The product's stock kept changing under every attempt (see ATTEMPTS)."""


# Every refusal of a stock change: the stock stays as it was. The app counts them by the code
# each is answered with (shop_stock_conflicts_total).
STOCK_CONFLICTS = (NotEnoughStock, StockLimit, StockBusy, StockChangeUndone, ReferenceReused)


@dataclass(frozen=True, slots=True)
class Marker:
    kind: str
    token: str
    units: int  # as applied to the stock
    at: float

    @classmethod
    def new(cls, kind: str, units: int) -> Marker:
        return cls(kind, secrets.token_hex(8), units, time.time())

    @classmethod
    def parse(cls, text: Any) -> Marker | None:
        try:
            kind, token, units, at = str(text).split(":")
            return cls(kind, token, int(units), float(at))
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"{self.kind}:{self.token}:{self.units}:{self.at:.3f}"

    @staticmethod
    def at_of(text: str) -> float:
        return float(text.rsplit(":", 1)[1])


async def _rounds() -> AsyncIterator[int]:
    """The rounds of a step that may lose a race (to a repeat, an undo or a sweep): from the
    third on, each after a short random pause, so that racers stop meeting each other."""
    for attempt in range(ATTEMPTS):
        if attempt >= 2:
            await asyncio.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 6)))
        yield attempt


def _within(stock: int, delta: int) -> bool:
    return 0 <= stock + delta <= MAX_STOCK


def _refuse(stock: int, delta: int) -> NoReturn:
    if delta < 0:
        raise NotEnoughStock(available=stock, wanted=-delta)
    raise StockLimit(available=stock, added=delta, limit=MAX_STOCK)


def _guard(delta: int) -> dict[str, int]:
    """The stock condition under which adding ``delta`` keeps it within 0..MAX_STOCK."""
    return {"$gte": -delta} if delta < 0 else {"$lte": MAX_STOCK - delta}


class StockLedger:
    """Stock changes on ``products``, with their records in ``moves``."""

    def __init__(
        self,
        products: AsyncCollection,
        moves: AsyncCollection,
        changed: Callable[[], Awaitable[None]],
    ) -> None:
        self.products = products
        self.moves = moves
        # Awaited after every stock change, before it answers (the catalogue's answers
        # name the stock: see svc_product.catalogue).
        self.changed = changed
        # Markers this process won and has yet to remove: product -> {reference: marker}.
        self._to_settle: dict[ObjectId, dict[str, str]] = defaultdict(dict)
        self.applied = 0  # stock changes made, reversals included (see _announced)

    async def ensure_indexes(self) -> None:
        await self.moves.create_index([("at", ASCENDING)])
        await self.products.create_index([("pending_count", ASCENDING)], sparse=True)

    # -- changing stock -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _announced(self) -> AsyncIterator[None]:
        """Tell ``changed`` once, on the way out, if any stock changed meanwhile (a change
        of another caller's may count too: one more bump is harmless, one fewer is not)."""
        before = self.applied
        try:
            yield
        finally:
            if self.applied != before:
                await self.changed()

    async def change_many(
        self, reference: str, changes: list[tuple[str, int]]
    ) -> list[dict[str, Any]]:
        """Each (product id, delta) as ``change`` makes it under ``reference``, in order;
        the first refused stops the rest, its error naming the product (``product_id``).
        The changes before it stay made: the caller undoes them by the reference."""
        done = []
        async with self._announced():
            for product_id, delta in changes:
                try:
                    done.append(await self._change(product_id, delta, reference))
                except DomainError as refused:
                    refused.facts["product_id"] = product_id
                    raise
        return done

    async def change(
        self, product_id: str, delta: int, reference: str | None = None
    ) -> dict[str, Any]:
        """Add ``delta`` units atomically (see _change); the product as it is after."""
        async with self._announced():
            return await self._change(product_id, delta, reference)

    async def _change(
        self, product_id: str, delta: int, reference: str | None = None
    ) -> dict[str, Any]:
        """Add ``delta`` units atomically; the product as it is after. The condition lives
        in the update's filter, so a change that would go below zero (or past MAX_STOCK)
        matches nothing and changes nothing, however many callers race. With a
        ``reference`` the change applies at most once: a repeat answers the product as it
        is, a change whose reference was undone is refused (StockChangeUndone), and the
        reference of another change too (ReferenceReused)."""
        oid = object_id(product_id)
        if reference is None:
            doc = await self.products.find_one_and_update(
                {"_id": oid, "stock": _guard(delta)},
                {"$inc": {"stock": delta}, "$currentDate": {"updatedAt": True}},
                projection=PUBLIC,
                return_document=ReturnDocument.AFTER,
            )
            if doc is None:
                _refuse((await self._current(oid, product_id))["stock"], delta)
            self.applied += 1
            return doc
        async for attempt in _rounds():
            # The first try applies at once: a repeat is rare (a straggler of a request
            # its sender gave up on), and is caught either way, by the marker while it is
            # there, else by the claim, after which it reverses itself. Reading the record
            # first on every take would cost each take a third operation.
            if attempt:
                record = await self.moves.find_one({"_id": _record_id(oid, reference)})
                if record is not None:
                    return await self._answer_repeat(oid, product_id, reference, delta, record)
            marker = Marker.new(TAKE, delta)
            doc = await self._apply(oid, reference, marker, _guard(delta))
            if doc is None:
                current = await self._current(oid, product_id)
                if reference in current.get("pending", {}):
                    await self._settle_found(oid, reference, current["pending"][reference])
                    continue  # a repeat in flight: its outcome decides ours
                if await self.moves.find_one({"_id": _record_id(oid, reference)}) is not None:
                    continue  # claimed meanwhile: answered as a repeat
                if _within(current["stock"], delta):
                    continue  # a marker was there and is gone now: try again
                _refuse(current["stock"], delta)
            try:
                await self.moves.insert_one(
                    {
                        "_id": _record_id(oid, reference),
                        "units": delta,
                        "state": TAKEN,
                        "take": marker.token,
                        "undo": "",
                        "at": time.time(),
                    }
                )
            except DuplicateKeyError:
                # Another application of this reference claimed first (a repeat, or an
                # undo): ours is reversed, and the record decides the answer.
                await self._settle_found(oid, reference, str(marker))
                continue
            self._won(oid, reference, marker)
            return doc
        raise StockBusy()

    async def _answer_repeat(
        self, oid: ObjectId, product_id: str, reference: str, delta: int, record: dict[str, Any]
    ) -> dict[str, Any]:
        if record["state"] == UNDONE:
            await self._settle_all(oid, reference)
            raise StockChangeUndone(reference=reference)
        if record["units"] != delta:
            raise ReferenceReused(reference=reference)
        await self._settle_all(oid, reference)
        return await self._public(oid, product_id)  # done before: idempotent

    async def undo(self, product_id: str, reference: str) -> dict[str, Any]:
        """Reverse the change made under ``reference``, exactly once. A reference that was
        never applied is recorded undone, so that the change, should it still arrive (a
        request in flight when its sender crashed), is refused as already done."""
        async with self._announced():
            return await self._undo(product_id, reference)

    async def _undo(self, product_id: str, reference: str) -> dict[str, Any]:
        oid = object_id(product_id)
        key = _record_id(oid, reference)
        async for _ in _rounds():
            await self._settle_all(oid, reference)
            record = await self.moves.find_one({"_id": key})
            if record is None:
                await self._current(oid, product_id)  # a missing product is a 404
                never = {"_id": key, "units": 0, "state": UNDONE, "take": "", "undo": NEVER}
                try:
                    await self.moves.insert_one({**never, "at": time.time()})
                except DuplicateKeyError:
                    continue
                await self._settle_all(oid, reference)  # a take that slipped in is reversed
                return await self._public(oid, product_id)
            if record["state"] == UNDONE:
                return await self._public(oid, product_id)
            units = -record["units"]
            marker = Marker.new(UNDO, units)
            doc = await self._apply(oid, reference, marker, _guard(units))
            if doc is None:
                current = await self._current(oid, product_id)
                if reference in current.get("pending", {}) or _within(current["stock"], units):
                    continue  # a marker was in the way: settled at the top of the next round
                # Taking back units that were added needs them to be there.
                _refuse(current["stock"], units)
            claimed = await self.moves.update_one(
                {"_id": key, "state": TAKEN, "take": record["take"]},
                {"$set": {"state": UNDONE, "undo": marker.token}},
            )
            await self._settle_found(oid, reference, str(marker))
            if claimed.modified_count:
                return await self._public(oid, product_id)
        raise StockBusy()

    # -- the steps ------------------------------------------------------------------------

    async def _apply(
        self, oid: ObjectId, reference: str, marker: Marker, guard: dict[str, int]
    ) -> dict[str, Any] | None:
        """Step 1: change the stock and leave the marker, unless a marker is there."""
        doc = await self.products.find_one_and_update(
            {"_id": oid, "stock": guard, f"pending.{reference}": {"$exists": False}},
            {
                "$inc": {"stock": marker.units, "pending_count": 1},
                "$set": {f"pending.{reference}": str(marker)},
                "$currentDate": {"updatedAt": True},
            },
            projection=PUBLIC,
            return_document=ReturnDocument.AFTER,
        )
        if doc is not None:
            self.applied += 1
        return doc

    def _won(self, oid: ObjectId, reference: str, marker: Marker) -> None:
        """Step 3 for a winner: its marker goes with the next batch (see settle_won)."""
        self._to_settle[oid][reference] = str(marker)

    async def settle_won(self, older_than: float = 0.0) -> None:
        async with self._announced():  # a marker found lost is reversed
            await self._settle_won(older_than)

    async def _settle_won(self, older_than: float) -> None:
        """Remove the markers this process won at least ``older_than`` seconds ago, one
        update per product. A marker is left there for that moment on purpose: a repeat
        arriving meanwhile (the usual duplicate) meets it and changes nothing, instead of
        applying and then reversing."""
        due = time.time() - older_than
        batch: dict[ObjectId, dict[str, str]] = {}
        for oid, won in list(self._to_settle.items()):
            ready = {ref: value for ref, value in won.items() if Marker.at_of(value) <= due}
            if ready:
                batch[oid] = ready
                for reference in ready:
                    del won[reference]
            if not won:
                del self._to_settle[oid]
        for oid, markers in batch.items():
            removed = await self.products.update_one(
                {"_id": oid, **{f"pending.{ref}": value for ref, value in markers.items()}},
                {
                    "$unset": {f"pending.{ref}": "" for ref in markers},
                    "$inc": {"pending_count": -len(markers)},
                },
            )
            if not removed.modified_count:  # one was settled by someone else: one by one
                for reference, value in markers.items():
                    await self._remove(oid, reference, value)
            if oid not in self._to_settle:  # else younger markers of ours are still there
                await self._forget_empty(oid)

    async def _settle_all(self, oid: ObjectId, reference: str) -> None:
        # The whole map: nx-27017 answers a projection of a nested field with nothing.
        doc = await self.products.find_one({"_id": oid}, {"pending": True})
        value = ((doc or {}).get("pending") or {}).get(reference)
        if value is not None:
            await self._settle_found(oid, reference, value)

    async def _settle_found(self, oid: ObjectId, reference: str, value: str) -> None:
        """Settle one marker by its record: the claimed token stays, any other is
        reversed; one whose claim is missing is claimed on its owner's behalf."""
        marker = Marker.parse(value)
        if marker is None:
            log.warning("product %s: unreadable stock marker %r for %s", oid, value, reference)
            return
        async for _ in _rounds():
            record = await self.moves.find_one({"_id": _record_id(oid, reference)})
            if marker.kind == TAKE:
                if record is None:
                    # Applied, its claim not written yet (in flight, or its owner died):
                    # claim it for its owner, who finds the record naming its token.
                    claim = {
                        "_id": _record_id(oid, reference),
                        "units": marker.units,
                        "state": TAKEN,
                        "take": marker.token,
                        "undo": "",
                        "at": time.time(),
                    }
                    with contextlib.suppress(DuplicateKeyError):
                        await self.moves.insert_one(claim)
                    continue
                keep = record["take"] == marker.token and (
                    record["state"] == TAKEN or record["undo"] != NEVER
                )
            else:
                if record is not None and record["state"] == TAKEN:
                    # The undo applied, its claim not written yet: claim it likewise.
                    await self.moves.update_one(
                        {"_id": record["_id"], "state": TAKEN, "take": record["take"]},
                        {"$set": {"state": UNDONE, "undo": marker.token}},
                    )
                    continue
                keep = record is not None and record["undo"] == marker.token
            if keep:
                await self._remove(oid, reference, value)
            else:
                await self._reverse(oid, reference, marker, value)
            await self._forget_empty(oid)
            return
        raise StockBusy()

    async def _remove(self, oid: ObjectId, reference: str, value: str) -> None:
        await self.products.update_one(
            {"_id": oid, f"pending.{reference}": value},
            {"$unset": {f"pending.{reference}": ""}, "$inc": {"pending_count": -1}},
        )

    async def _reverse(self, oid: ObjectId, reference: str, marker: Marker, value: str) -> None:
        """Take back what a losing application changed, with its marker, in one update."""
        reversed_ = await self.products.update_one(
            {"_id": oid, f"pending.{reference}": value, "stock": _guard(-marker.units)},
            {
                "$inc": {"stock": -marker.units, "pending_count": -1},
                "$unset": {f"pending.{reference}": ""},
                "$currentDate": {"updatedAt": True},
            },
        )
        if reversed_.modified_count:
            self.applied += 1
            return
        still = await self.products.find_one({"_id": oid, f"pending.{reference}": value})
        if still is not None:  # the units are gone meanwhile: the sweep tries again
            log.warning(
                "product %s: cannot yet reverse %s of %s (the stock moved on)",
                oid,
                marker.units,
                reference,
            )

    async def _forget_empty(self, oid: ObjectId) -> None:
        # pending_count, not an empty-map filter: nx-27017 matches {"pending": {}} to any map.
        await self.products.update_one(
            {"_id": oid, "pending_count": {"$lte": 0}},
            {"$unset": {"pending": "", "pending_count": ""}},
        )

    async def _current(self, oid: ObjectId, product_id: str) -> dict[str, Any]:
        doc = await self.products.find_one({"_id": oid}, {"stock": True, "pending": True})
        if doc is None:
            raise ProductNotFound(product_id)
        return doc

    async def _public(self, oid: ObjectId, product_id: str) -> dict[str, Any]:
        doc = await self.products.find_one({"_id": oid}, PUBLIC)
        if doc is None:
            raise ProductNotFound(product_id)
        return doc

    # -- housekeeping ---------------------------------------------------------------------

    async def sweep(self, older_than: float) -> int:
        """Settle the markers a crash left (those stamped before ``older_than``); how many."""
        async with self._announced():
            return await self._sweep(older_than)

    async def _sweep(self, older_than: float) -> int:
        settled = 0
        wanted = {"pending": True, "pending_count": True}
        async for doc in self.products.find({"pending_count": {"$exists": True}}, wanted):
            pending = doc.get("pending") or {}
            for reference, value in pending.items():
                marker = Marker.parse(value)
                if marker is None or marker.at < older_than:
                    await self._settle_found(doc["_id"], reference, value)
                    settled += 1
            if not pending:
                await self._forget_empty(doc["_id"])
        return settled

    async def prune(self, older_than: float) -> int:
        """Forget the records of moves made before ``older_than`` (epoch seconds). Only
        the checkout saga uses references, and a checkout either ends or is undone within
        its lease (seconds), so nothing repeats or undoes a move a day old."""
        result = await self.moves.delete_many({"at": {"$lt": older_than}})
        return result.deleted_count

    async def adopt_old_moves(self) -> int:
        """Move the records an older version kept inside product documents (stock_moves,
        stock_moved_at) into the collection; how many. Idempotent and safe to run on two
        replicas at once: each key is removed only with the value that was copied."""
        moved = 0
        wanted = {"stock_moves": True, "stock_moved_at": True}
        async for doc in self.products.find({"stock_moves": {"$exists": True}}, wanted):
            moves = doc.get("stock_moves") or {}
            stamps = doc.get("stock_moved_at") or {}
            records = [
                {
                    "_id": _record_id(doc["_id"], reference),
                    "units": units if isinstance(units, int) else 0,
                    "state": TAKEN if isinstance(units, int) else UNDONE,
                    "take": "earlier",
                    "undo": "" if isinstance(units, int) else NEVER,
                    "at": float(stamps.get(reference) or time.time()),
                }
                for reference, units in moves.items()
            ]
            if records:
                with contextlib.suppress(BulkWriteError):  # copied before: duplicates
                    await self.moves.insert_many(records, ordered=False)
            guard = {f"stock_moves.{ref}": units for ref, units in moves.items()}
            await self.products.update_one(
                {"_id": doc["_id"], **guard},
                {"$unset": {"stock_moves": "", "stock_moved_at": ""}},
            )
            moved += len(records)
        return moved


def _record_id(oid: ObjectId, reference: str) -> str:
    return f"{oid}:{reference}"


async def housekeeping(ledger: StockLedger, keep_seconds: float) -> None:
    """Finish what crashes left half-done (markers older than ORPHAN_AFTER_SECONDS) and forget
    records older than ``keep_seconds``, said in the log; run every
    STOCK_MOVES_PRUNE_INTERVAL."""
    swept = await ledger.sweep(time.time() - ORPHAN_AFTER_SECONDS)
    forgotten = await ledger.prune(time.time() - keep_seconds)
    if swept:
        log.warning("settled %d stock changes a crash had left half-done", swept)
    if forgotten:
        log.info("forgot %d stock records older than a keeping period", forgotten)
