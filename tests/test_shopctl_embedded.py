"""The embedded backing servers: each starts, answers a real client, keeps its data, stops."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pymongo
import pytest
import redis
from support import eventually_sync, postgres

from shopctl import embedded, processes


@contextmanager
def running(server: embedded.EmbeddedServer) -> Iterator[embedded.EmbeddedServer]:
    """Stop `server` however the test ends."""
    try:
        yield server
    finally:
        server.stop()


def restored(server: embedded.EmbeddedServer) -> embedded.EmbeddedServer:
    """The server as another process sees it: through the JSON state file."""
    return embedded.EmbeddedServer.from_state(json.loads(json.dumps(server.to_state())))


def assert_stopped(server: embedded.EmbeddedServer) -> None:
    assert not server.alive()
    assert not processes.ManagedProcess.from_state(server.process.to_state()).alive()


def test_mongo_in_memory_answers_and_stops() -> None:
    with running(embedded.start_mongo(None)) as server:
        port = urlsplit(server.uri).port
        assert server.uri == f"mongodb://127.0.0.1:{port}"
        with pymongo.MongoClient(server.uri + "/products", serverSelectionTimeoutMS=5000) as client:
            assert client.admin.command("ping")["ok"] == 1
            client.get_default_database().items.insert_one({"name": "mug"})
            assert client.products.items.find_one({"name": "mug"}) is not None
        scratch = server.scratch_dirs
        restored(server).stop()
        server.stop()
    assert_stopped(server)
    assert port is not None and not processes.accepts_connections(port)
    assert scratch and not any(path.exists() for path in scratch)


def test_mongo_data_dir_survives_a_restart(tmp_path: Path) -> None:
    data_dir, log_dir = tmp_path / "mongodb", tmp_path / "logs"
    with (
        running(embedded.start_mongo(data_dir, log_dir=log_dir)) as first,
        pymongo.MongoClient(first.uri, serverSelectionTimeoutMS=5000) as client,
    ):
        client.products.items.insert_one({"name": "teapot"})
    assert_stopped(first)
    assert (log_dir / "mongodb.log").exists()

    with (
        running(embedded.start_mongo(data_dir, log_dir=log_dir)) as second,
        pymongo.MongoClient(second.uri, serverSelectionTimeoutMS=5000) as client,
    ):
        assert client.products.items.find_one({"name": "teapot"}) is not None


def test_redis_answers_and_stops() -> None:
    with running(embedded.start_redis(None)) as server:
        port = urlsplit(server.uri).port
        assert server.uri == f"redis://127.0.0.1:{port}/0"
        with redis.Redis.from_url(server.uri) as client:
            client.set("cart:1", "{}")
            assert client.get("cart:1") == b"{}"
        restored(server).stop()
        server.stop()
    assert_stopped(server)
    assert port is not None and not processes.accepts_connections(port)


def test_redis_data_dir_survives_a_restart(tmp_path: Path) -> None:
    data_dir, log_dir = tmp_path / "redis", tmp_path / "logs"
    with (
        running(embedded.start_redis(data_dir, log_dir=log_dir)) as first,
        redis.Redis.from_url(first.uri) as client,
    ):
        client.set("cart:7", "kept")
    with (
        running(embedded.start_redis(data_dir, log_dir=log_dir)) as second,
        redis.Redis.from_url(second.uri) as client,
    ):
        assert client.get("cart:7") == b"kept"


async def _query(url: str, sql: str) -> object:
    async with postgres(url) as connection:
        return await connection.fetchval(sql)


def test_postgres_creates_databases_answers_and_restarts(tmp_path: Path) -> None:
    data_dir = tmp_path / "postgres"
    with running(embedded.start_postgres(data_dir)) as server:
        embedded.ensure_databases(server.uri, ["users", "orders"])
        embedded.ensure_databases(server.uri, ["users", "orders"])  # idempotent
        users = embedded.database_url(server.uri, "users")
        assert asyncio.run(_query(users, "SELECT current_database()")) == "users"
        orders = embedded.database_url(server.uri, "orders")
        assert asyncio.run(_query(orders, "SELECT 1")) == 1
        asyncio.run(_query(users, "CREATE TABLE kept (id int)"))
        restored(server).stop()
    assert_stopped(server)

    with running(embedded.start_postgres(data_dir)) as again:
        users = embedded.database_url(again.uri, "users")
        assert asyncio.run(_query(users, "SELECT count(*) FROM kept")) == 0


def test_a_postgres_left_running_by_a_failed_start_is_stopped(tmp_path: Path) -> None:
    data_dir = tmp_path / "postgres"
    server = embedded.start_postgres(data_dir)  # as `pg_ctl -w start` leaves it on a timeout
    try:
        assert embedded.stop_orphaned_postgres(data_dir)
        eventually_sync(lambda: not server.alive(), "the orphaned postgres stopped", 15)
    finally:
        server.stop()
    assert not embedded.stop_orphaned_postgres(data_dir)  # nothing left to stop


def test_a_stale_postmaster_pid_never_stops_another_process(tmp_path: Path) -> None:
    bystander = processes.spawn(
        [sys.executable, "-c", "import time; time.sleep(60)"], log_path=tmp_path / "sleep.log"
    )
    try:
        data_dir = tmp_path / "postgres"
        data_dir.mkdir()
        (data_dir / "postmaster.pid").write_text(f"{bystander.pid}\n{data_dir}\n")
        assert not embedded.stop_orphaned_postgres(data_dir)
        assert bystander.alive()
    finally:
        processes.stop(bystander)


def test_a_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(embedded.EmbeddedServerError) as failure:
            embedded.start_redis(None, port=port, log_dir=tmp_path)
    message = str(failure.value)
    assert "redis" in message and "exited while starting" in message
    assert "Address already in use" in message


@pytest.mark.parametrize(
    ("server_uri", "expected"),
    [
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg",
            "postgresql://postgres:@/users?host=/tmp/pg",
        ),
        ("postgresql://shop@127.0.0.1:5432/x", "postgresql://shop@127.0.0.1:5432/users"),
        ("postgresql://shop:pw@db.internal", "postgresql://shop:pw@db.internal/users"),
    ],
)
def test_database_url_swaps_only_the_database(server_uri: str, expected: str) -> None:
    assert embedded.database_url(server_uri, "users") == expected
