"""The records that make referenced stock changes apply once (svc_product.stock): kept in
their own collection, not in the product documents the catalogue reads; what a crash
leaves half-done is finished; old records are forgotten."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import bson
from aiohttp.test_utils import TestClient
from bson import ObjectId
from support import change_stock, create_product, eventually, stock_of, take, take_answer, undo

from svc_product.app import ProductSettings
from svc_product.app import create_app as create_product_app
from svc_product.keys import STOCK, STORE
from svc_product.stock import TAKE, UNDO, Marker, StockLedger

UNDONE_ANSWER = (409, "stock_change_undone")


def ledger_of(product: TestClient) -> StockLedger:
    return product.app[STOCK]


async def stored(product: TestClient, product_id: str) -> dict[str, Any]:
    return await product.app[STORE].collection.find_one({"_id": ObjectId(product_id)})


async def records(product: TestClient, product_id: str) -> dict[str, dict[str, Any]]:
    """The stock records of one product, by reference."""
    found = ledger_of(product).moves.find({"_id": {"$regex": f"^{product_id}:"}})
    return {doc["_id"].split(":", 1)[1]: doc async for doc in found}


async def settled(product: TestClient) -> None:
    """What the background settling would do within half a second, now."""
    await ledger_of(product).settle_won()


async def test_product_documents_do_not_grow_with_orders(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=1_000))["id"]
    before = await stored(product, product_id)

    results = await asyncio.gather(
        *(take(product, service_headers, product_id, -1, f"order-{n}") for n in range(200))
    )
    assert set(results) == {200}
    await settled(product)

    after = await stored(product, product_id)
    assert after["stock"] == 800
    assert set(after) == set(before)  # no map of moves, no markers left behind
    assert len(bson.encode(after)) == len(bson.encode(before))
    assert len(await records(product, product_id)) == 200


async def test_a_repeat_while_the_first_is_unsettled_changes_nothing(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=5))["id"]
    assert await take(product, service_headers, product_id, -2, "order-1") == 200
    # Its marker is still there (settled in the next batch): a repeat waits on it.
    assert "order-1" in (await stored(product, product_id)).get("pending", {})
    assert await take(product, service_headers, product_id, -2, "order-1") == 200
    await settled(product)
    assert await take(product, service_headers, product_id, -2, "order-1") == 200
    assert await stock_of(product, product_id) == 3


async def test_racing_repeats_and_undos_of_one_reference_end_undone_and_exact(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=100))["id"]
    references = [f"order-{n}" for n in range(12)]
    takes = [take_answer(product, service_headers, product_id, -3, ref) for ref in references * 3]
    undos = [undo(product, service_headers, product_id, ref) for ref in references * 2]
    answers = await asyncio.gather(*takes, *undos)

    assert {answer for answer in answers[: len(takes)]} <= {(200, None), UNDONE_ANSWER}
    assert set(answers[len(takes) :]) == {200}, answers[len(takes) :]
    await settled(product)
    await ledger_of(product).sweep(time.time() + 1)
    assert await stock_of(product, product_id) == 100  # every take undone, none twice
    assert {record["state"] for record in (await records(product, product_id)).values()} == {
        "undone"
    }
    assert "pending" not in await stored(product, product_id)


async def crash_after_applying(
    product: TestClient, product_id: str, reference: str, kind: str, units: int
) -> Marker:
    """The first step of a change, as a process that died right after it left it."""
    marker = Marker(kind, "crashed", units, time.time() - 3_600)
    await product.app[STORE].collection.update_one(
        {"_id": ObjectId(product_id)},
        {
            "$inc": {"stock": units, "pending_count": 1},
            "$set": {f"pending.{reference}": str(marker)},
        },
    )
    return marker


async def test_a_take_whose_process_died_before_its_record_is_kept_and_recorded(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    await crash_after_applying(product, product_id, "order-1", TAKE, -4)

    assert await ledger_of(product).sweep(time.time() - 60) == 1

    assert await stock_of(product, product_id) == 6
    assert (await records(product, product_id))["order-1"]["take"] == "crashed"
    assert "pending" not in await stored(product, product_id)
    # The checkout's own repeat (recovery) now knows it applied; its undo puts it back.
    assert await take(product, service_headers, product_id, -4, "order-1") == 200
    assert await stock_of(product, product_id) == 6
    assert await undo(product, service_headers, product_id, "order-1") == 200
    assert await stock_of(product, product_id) == 10


async def test_an_undo_finds_a_take_whose_process_died_and_reverses_it_once(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    await crash_after_applying(product, product_id, "order-2", TAKE, -4)

    statuses = await asyncio.gather(
        *(undo(product, service_headers, product_id, "order-2") for _ in range(5))
    )

    assert set(statuses) == {200}
    assert await stock_of(product, product_id) == 10
    assert await take_answer(product, service_headers, product_id, -4, "order-2") == UNDONE_ANSWER
    assert await stock_of(product, product_id) == 10


async def test_a_duplicate_application_left_by_a_crash_is_reversed(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    """A straggler applied a take that was already recorded under another token, and died
    before it could see so: the sweep takes its units back."""
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    assert await take(product, service_headers, product_id, -3, "order-3") == 200
    await settled(product)
    await crash_after_applying(product, product_id, "order-3", TAKE, -3)
    assert await stock_of(product, product_id) == 4

    assert await ledger_of(product).sweep(time.time() - 60) == 1

    assert await stock_of(product, product_id) == 7
    assert "pending" not in await stored(product, product_id)


async def test_an_undo_whose_process_died_before_its_record_is_finished(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    assert await take(product, service_headers, product_id, -3, "order-4") == 200
    await settled(product)
    await crash_after_applying(product, product_id, "order-4", UNDO, 3)  # units back, no record

    assert await undo(product, service_headers, product_id, "order-4") == 200

    assert await stock_of(product, product_id) == 10  # put back once, not twice
    assert (await records(product, product_id))["order-4"]["undo"] == "crashed"
    assert await take_answer(product, service_headers, product_id, -3, "order-4") == UNDONE_ANSWER


async def test_a_take_undone_before_it_arrived_is_reversed_if_it_slipped_in(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    """The undo recorded 'never applied' while the take's first step was already done by a
    process that then died: the take's units go back."""
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    ledger = ledger_of(product)
    await ledger.moves.insert_one(
        {
            "_id": f"{product_id}:order-5",
            "units": 0,
            "state": "undone",
            "take": "",
            "undo": "never",
            "at": time.time(),
        }
    )
    await crash_after_applying(product, product_id, "order-5", TAKE, -2)

    assert await undo(product, service_headers, product_id, "order-5") == 200

    assert await stock_of(product, product_id) == 10
    assert "pending" not in await stored(product, product_id)


# -- forgetting old records, and those an older version kept in the product -----------------


async def test_old_stock_records_are_forgotten_and_recent_ones_kept(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    ledger = ledger_of(product)
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    await take(product, service_headers, product_id, -2, "order-1")
    await take(product, service_headers, product_id, -1, "order-2")
    assert await undo(product, service_headers, product_id, "order-3") == 200
    two_days_ago = time.time() - 2 * 86_400
    await ledger.moves.update_many(
        {"_id": {"$in": [f"{product_id}:order-1", f"{product_id}:order-3"]}},
        {"$set": {"at": two_days_ago}},
    )

    assert await ledger.prune(older_than=time.time() - 86_400) == 2

    assert set(await records(product, product_id)) == {"order-2"}
    assert await stock_of(product, product_id) == 7  # forgetting changes no stock
    assert await take(product, service_headers, product_id, -1, "order-2") == 200
    assert await stock_of(product, product_id) == 7  # a recent move still applies once
    assert await ledger.prune(older_than=time.time() - 86_400) == 0


async def test_moves_an_older_version_kept_in_the_product_are_moved_out(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    ledger = ledger_of(product)
    product_id = (await create_product(product, admin_headers, stock=10))["id"]
    # As a product looked when each move was kept in it.
    await product.app[STORE].collection.update_one(
        {"_id": ObjectId(product_id)},
        {
            "$set": {
                "stock_moves.order-8": -2,
                "stock_moves.order-9": "undone",
                "stock_moved_at.order-8": int(time.time()),
            }
        },
    )

    assert await ledger.adopt_old_moves() == 2
    assert await ledger.adopt_old_moves() == 0  # idempotent

    doc = await stored(product, product_id)
    assert "stock_moves" not in doc and "stock_moved_at" not in doc
    assert set(await records(product, product_id)) == {"order-8", "order-9"}
    assert await take(product, service_headers, product_id, -2, "order-8") == 200  # done before
    assert await take_answer(product, service_headers, product_id, -1, "order-9") == UNDONE_ANSWER
    assert await stock_of(product, product_id) == 10
    assert await undo(product, service_headers, product_id, "order-8") == 200
    assert await stock_of(product, product_id) == 12  # its two units, back once


async def test_the_service_forgets_old_records_by_itself(
    aiohttp_client: Any,
    product_settings: ProductSettings,
    admin_headers: dict[str, str],
) -> None:
    settings = product_settings.model_copy(update={"stock_moves_prune_interval": 0.05})
    product = await aiohttp_client(create_product_app(settings))
    product_id = (await create_product(product, admin_headers, stock=1))["id"]
    await ledger_of(product).moves.insert_one(
        {"_id": f"{product_id}:order-1", "units": -1, "state": "taken", "take": "x", "at": 0.0}
    )

    async def forgotten() -> bool:
        return await records(product, product_id) == {}

    await eventually(forgotten, "the old record being forgotten")


# -- several products under one reference (an order's lines in one call) -----------------


async def take_lines(
    product: TestClient, headers: dict[str, str], reference: str, changes: list[tuple[str, int]]
) -> tuple[int, dict[str, Any]]:
    body = {
        "reference": reference,
        "changes": [{"product_id": pid, "quantity": units} for pid, units in changes],
    }
    response = await product.post("/api/products/stock/changes", json=body, headers=headers)
    return response.status, await response.json()


async def test_an_orders_lines_are_taken_in_one_call_once(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    lamp = (await create_product(product, admin_headers, stock=5))["id"]
    vase = (await create_product(product, admin_headers, stock=5))["id"]
    lines = [(lamp, -2), (vase, -1)]

    status, body = await take_lines(product, service_headers, "order-1", lines)
    assert status == 200
    assert [(item["id"], item["stock"]) for item in body["data"]] == [(lamp, 3), (vase, 4)]
    assert (await take_lines(product, service_headers, "order-1", lines))[0] == 200  # a repeat
    assert (await stock_of(product, lamp), await stock_of(product, vase)) == (3, 4)


async def test_the_first_refused_line_stops_the_rest_and_is_named(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    lamp = (await create_product(product, admin_headers, stock=5))["id"]
    vase = (await create_product(product, admin_headers, stock=1))["id"]
    mug = (await create_product(product, admin_headers, stock=5))["id"]

    status, body = await take_lines(
        product, service_headers, "order-2", [(lamp, -1), (vase, -2), (mug, -1)]
    )

    assert status == 409
    assert (body["code"], body["product_id"], body["available"]) == (
        "insufficient_stock",
        vase,
        1,
    )
    assert [await stock_of(product, pid) for pid in (lamp, vase, mug)] == [4, 1, 5]
    assert await undo(product, service_headers, lamp, "order-2") == 200  # the caller undoes
    assert await stock_of(product, lamp) == 5
    missing = "0123456789abcdef01234567"
    status, body = await take_lines(product, service_headers, "order-3", [(missing, -1)])
    assert (status, body["code"], body["product_id"]) == (404, "product_not_found", missing)


async def test_racing_orders_of_the_same_products_conserve_stock(
    product: TestClient, admin_headers: dict[str, str], service_headers: dict[str, str]
) -> None:
    lamp = (await create_product(product, admin_headers, stock=5))["id"]
    vase = (await create_product(product, admin_headers, stock=5))["id"]
    in_order = sorted([lamp, vase])  # as the order service lists an order's lines

    async def checkout(number: int, products: list[str]) -> bool:
        lines = [(pid, -1) for pid in products]
        status, _ = await take_lines(product, service_headers, f"order-{number}", lines)
        if status != 200:  # as the saga does: undo every line under the reference
            for pid in products:
                assert await undo(product, service_headers, pid, f"order-{number}") == 200
        return status == 200

    placed = await asyncio.gather(*(checkout(number, in_order) for number in range(16)))
    assert sum(placed) == 5  # lines in one order: the five that got the first get the second
    assert (await stock_of(product, lamp), await stock_of(product, vase)) == (0, 0)

    # In opposite orders they may all fail (each holds what the other needs, then gives it
    # back), but no unit is ever lost or sold twice.
    await change_stock(product, admin_headers, lamp, 5)
    await change_stock(product, admin_headers, vase, 5)
    mixed = await asyncio.gather(
        *(checkout(100 + n, in_order if n % 2 else in_order[::-1]) for n in range(16))
    )
    assert (await stock_of(product, lamp), await stock_of(product, vase)) == (
        5 - sum(mixed),
        5 - sum(mixed),
    )


async def test_only_services_change_stock_in_one_call_and_bodies_are_checked(
    product: TestClient,
    admin_headers: dict[str, str],
    customer_headers: dict[str, str],
    service_headers: dict[str, str],
) -> None:
    lamp = (await create_product(product, admin_headers, stock=5))["id"]
    for headers in (admin_headers, customer_headers):
        assert (await take_lines(product, headers, "order-1", [(lamp, -1)]))[0] == 403
    assert (await take_lines(product, {}, "order-1", [(lamp, -1)]))[0] == 401
    for changes in ([], [(lamp, -1), (lamp, -1)], [(lamp, 0)], [(lamp, -1)] * 101):
        assert (await take_lines(product, service_headers, "order-1", changes))[0] == 400
    assert await stock_of(product, lamp) == 5
