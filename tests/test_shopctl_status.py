"""`shopctl status --url` against a real gateway: it reads each backend's state from the
gateway's /ready (which stays 200 while a backend is down) and never shows their URLs."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import yaml
from aiohttp.test_utils import TestServer
from typer.testing import CliRunner, Result

from shopctl import processes
from shopctl.main import app
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app


async def status(url: str, *options: str) -> Result:
    # In a thread: the gateway answering it runs on this test's event loop.
    return await asyncio.to_thread(
        CliRunner().invoke, app, ["status", "--url", url, *options], env={"COLUMNS": "250"}
    )


async def test_status_names_a_backend_that_is_down_and_exits_1(
    aiohttp_server: Any, product_server: TestServer
) -> None:
    dead_port = processes.free_port()
    settings = GatewaySettings.from_env(
        {
            "HOST": "127.0.0.1",
            "PRODUCT_SERVICE_URL": str(product_server.make_url("")),
            "CART_SERVICE_URL": f"http://127.0.0.1:{dead_port}",
        }
    )
    gateway = await aiohttp_server(create_gateway_app(settings))
    url = str(gateway.make_url("")).rstrip("/")
    result = await status(url)
    assert result.exit_code == 1, result.output
    words = " ".join(result.output.split())  # the title wraps to the table's width
    assert f"Gateway {url}: ready, but cart not ready" in words
    rows = {line.split()[1]: line for line in result.output.splitlines() if line.startswith("│")}
    assert "not ready" in rows["cart"] and "no answer" in rows["cart"]
    assert " ready " in rows["product"] and "not" not in rows["product"]
    assert "not configured" in rows["user"] and "not configured" in rows["order"]
    assert str(dead_port) not in result.output
    assert str(product_server.port) not in result.output


async def test_status_is_0_when_every_configured_backend_is_ready(
    aiohttp_server: Any, product_server: TestServer
) -> None:
    settings = GatewaySettings.from_env(
        {"HOST": "127.0.0.1", "PRODUCT_SERVICE_URL": str(product_server.make_url(""))}
    )
    gateway = await aiohttp_server(create_gateway_app(settings))
    url = str(gateway.make_url("")).rstrip("/")
    result = await status(url)
    assert result.exit_code == 0, result.output
    assert f"Gateway {url}: ready" in result.output

    # The same for programs: -o json and -o yaml, the table's rows as records.
    documents = []
    for output_format, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        answer = await status(url, "-o", output_format)
        assert answer.exit_code == 0, answer.output
        documents.append(load(answer.stdout))
    assert documents[0] == documents[1]
    document = documents[0]
    assert document["gateway"] == url and document["status"] == "ready"
    assert document["backends_not_ready"] == []
    rows = [line.split("│")[1:3] for line in result.output.splitlines() if line.startswith("│")]
    table = {name.strip(): state.strip() for name, state in rows}
    assert {backend["backend"]: backend["state"] for backend in document["backends"]} == table
    assert table["product"] == "ready" and table["cart"] == "not configured"
