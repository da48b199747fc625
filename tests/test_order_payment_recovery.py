"""A real order service killed between authorising a card and placing the order: recovery
voids the hold and puts the stock back; and no card number is ever in its logs, traces or
database."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from support import (
    JWT_SECRET,
    REPO,
    OrderProcess,
    create_product,
    customer,
    eventually,
    paid,
    postgres,
    stock_of,
)

from shopctl import processes

ANN = customer(131)
# The test cards this module sends; none may be found anywhere afterwards.
CARDS = ("4242424242424242", "4000000000000002", "4000000000000309")


def order_env(postgres_uri: str, product_url: str, user_url: str, traces: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HOST": "127.0.0.1",
        "PORT": str(processes.free_port()),
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": postgres_uri,
        "PRODUCT_SERVICE_URL": product_url,
        "CART_SERVICE_URL": "http://127.0.0.1:9",
        "USER_SERVICE_URL": user_url,
        "RECOVERY_INTERVAL_SECONDS": "0.3",
        "LOG_LEVEL": "DEBUG",  # every line there is, so that the search below misses none
        "TRACES_DIR": str(traces),
    }


def written(log: Path, traces_dir: Path) -> tuple[str, str]:
    """The service's log and every span it wrote."""
    spans = "".join(path.read_text() for path in sorted(traces_dir.rglob("*.jsonl")))
    return log.read_text(), spans


async def card_numbers_kept(postgres_uri: str) -> list[str]:
    """Every table of the order service's database, both schemas, searched for the cards."""
    found = []
    async with postgres(postgres_uri) as connection:
        tables = await connection.fetch(
            """SELECT table_schema, table_name FROM information_schema.tables
               WHERE table_schema IN ('public', 'test_card_provider')"""
        )
        for table in tables:
            name = f'"{table["table_schema"]}"."{table["table_name"]}"'
            rows = await connection.fetch(f"SELECT row_to_json(t)::text AS row FROM {name} t")
            found += [
                f"{name}: {row['row']}" for row in rows if any(c in row["row"] for c in CARDS)
            ]
    return found


@pytest.mark.slow
# aiohttp's client may leave a socket to the killed server for the garbage collector to
# close; that is the client's side of the crash we cause, not a leak of ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
async def test_a_kill_between_authorising_and_placing_is_voided_by_recovery(
    products: TestClient,
    product_server: TestServer,
    admin_headers: dict[str, str],
    postgres_uri: str,
    user_service_url: str,
    tmp_path: Path,
) -> None:
    lamp = await create_product(products, admin_headers, name="Lamp", stock=5)
    env = order_env(postgres_uri, str(product_server.make_url("")), user_service_url, tmp_path)
    log = tmp_path / "order.log"
    service = OrderProcess(env, log)
    service.start()
    try:
        await service.ready()
        body: dict[str, Any] = {"items": [{"product_id": lamp["id"], "quantity": 2}]}
        async with aiohttp.ClientSession() as session:
            # A decline and a lost answer first: their paths log too.
            for card, status in ((CARDS[1], 402), (CARDS[2], 503)):
                async with session.post(
                    f"{service.url}/api/orders", json={**body, **paid(card)}, headers=ANN
                ) as response:
                    assert response.status == status, await response.text()
            async with postgres(postgres_uri) as blocker, postgres(postgres_uri) as watcher:
                # The chosen point: placing the order writes its history, which waits here;
                # the stock is taken and the card authorised by then.
                transaction = blocker.transaction()
                await transaction.start()
                await blocker.execute("LOCK TABLE order_history IN EXCLUSIVE MODE")
                request = asyncio.ensure_future(
                    session.post(
                        f"{service.url}/api/orders", json={**body, **paid(CARDS[0])}, headers=ANN
                    )
                )

                async def authorised() -> bool:
                    return (
                        await watcher.fetchval(
                            "SELECT count(*) FROM order_payments WHERE status = 'authorised'"
                        )
                        == 1
                        and await watcher.fetchval(
                            """SELECT count(*) FROM pg_stat_activity
                           WHERE wait_event_type = 'Lock' AND query LIKE '%order_history%'"""
                        )
                        == 1
                    )

                await eventually(authorised, "a checkout authorised and waiting to be placed")
                assert await stock_of(products, lamp["id"]) == 3
                service.kill()
                with pytest.raises(aiohttp.ClientError):
                    await request
                await transaction.rollback()  # the dead process's transaction ends with it

        service.start()  # its recovery takes over what the dead process left
        await service.ready()
        async with postgres(postgres_uri) as connection:

            async def undone() -> bool:
                return await connection.fetchval("SELECT count(*) FROM orders") == 0

            await eventually(undone, "recovery of the killed checkout")
            holds = await connection.fetch(
                "SELECT status, amount_cents FROM test_card_provider.authorisations"
            )
        # The lost answer's hold (voided at once) and the killed checkout's (by recovery).
        assert sorted(hold["status"] for hold in holds) == ["voided", "voided"]
        assert await stock_of(products, lamp["id"]) == 5
        # One more card through the new process, whose spans reach the file when it stops
        # (the killed one's were still waiting to be written, half a second after they end).
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{service.url}/api/orders", json={**body, **paid(CARDS[1])}, headers=ANN
            ) as response,
        ):
            assert response.status == 402, await response.text()
    finally:
        service.stop()
    output, traces = written(log, tmp_path)
    assert '"POST"' in traces and "/api/orders" in traces  # the spans are there to search
    assert "undoing an abandoned checkout" in output
    assert "voided" in output
    for card in CARDS:
        assert card not in output
        assert card not in traces
    assert await card_numbers_kept(postgres_uri) == []
