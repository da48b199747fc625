"""`shopctl status --url` against a real gateway: it reads each backend's state from the
gateway's /ready (which stays 200 while a backend is down) and never shows their URLs."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp.test_utils import TestServer
from typer.testing import CliRunner, Result

from shopctl import processes
from shopctl.main import app
from svc_gateway.app import GatewaySettings
from svc_gateway.app import create_app as create_gateway_app


async def status(url: str) -> Result:
    # In a thread: the gateway answering it runs on this test's event loop.
    return await asyncio.to_thread(
        CliRunner().invoke, app, ["status", "--url", url], env={"COLUMNS": "250"}
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
