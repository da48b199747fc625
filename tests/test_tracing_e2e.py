"""Tracing end to end: a shop started by `shopctl up` (real processes, embedded servers),
a checkout through its gateway read back from the spans the services recorded in the data
directory, its log lines, `shopctl trace` drawing it and `shopctl logs` following it, as QA
would run them."""

from __future__ import annotations

import json
import re
import secrets
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import (
    eventually_sync,
    following_logs,
    http,
    log_lines,
    running_shop,
    shop_admin_token,
    shopctl,
)

from shopctl.stack import logs_dir, traces_dir
from shopctl.traces import Span, Trace, find_traces

pytestmark = pytest.mark.slow

SPANS_WITHIN = 30.0  # seconds: spans are written half a second after they end


@dataclass(frozen=True)
class Shop:
    url: str
    data_dir: Path
    env: dict[str, str]
    admin: str  # the admin's token

    @property
    def traces(self) -> Path:
        return traces_dir(self.data_dir)

    def customer(self) -> tuple[int, str, str]:
        """A new customer: id, email, token."""
        email = f"tracer-{secrets.token_hex(4)}@shop.test"
        body = {"email": email, "password": "correct horse battery"}
        code, reply = http("POST", f"{self.url}/api/users/register", body)
        assert code == 201, reply
        return reply["data"]["user"]["id"], email, reply["data"]["token"]

    def product(self, stock: int) -> str:
        name = f"Traced Mug {secrets.token_hex(3)}"
        body = {"name": name, "description": "Leaves a trace", "price": 9.5, "category": "kitchen"}
        code, reply = http("POST", f"{self.url}/api/products", {**body, "stock": stock}, self.admin)
        assert code == 201, reply
        return reply["data"]["id"]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    """One shop from `shopctl up --detach` for this module, recording its spans."""
    data_dir = tmp_path_factory.mktemp("tracing") / "shop"
    with running_shop(data_dir) as (url, env):
        yield Shop(url, data_dir, env, shop_admin_token(url, data_dir))


def below(span: Span) -> Iterator[Span]:
    """Every span under ``span``, depth first."""
    for child in span.children:
        yield child
        yield from below(child)


def served_by(span: Span, service: str) -> list[Span]:
    """The server spans of ``service`` that answered calls made under ``span``."""
    return [s for s in below(span) if s.service == service and s.kind == "server"]


def whole_trace(shop: Shop, request_id: str, complete: Any) -> Trace:
    """The one trace of the request, once ``complete(trace)`` holds (each service writes its
    spans on its own, a moment after they end)."""
    found: list[Trace] = []

    def ready() -> bool:
        found[:] = find_traces(shop.traces, request_id)
        return len(found) == 1 and complete(found[0])

    eventually_sync(ready, "the whole trace recorded", SPANS_WITHIN, seen=found.copy, interval=0.2)
    return found[0]


def test_a_checkout_through_the_gateway_is_one_trace_of_every_service_and_datastore(
    shop: Shop,
) -> None:
    user_id, email, token = shop.customer()
    product_id = shop.product(stock=5)
    item = {"product_id": product_id, "quantity": 2}
    code, reply = http("POST", f"{shop.url}/api/cart/{user_id}/items", item, token)
    assert code in (200, 201), reply
    request_id = f"trace-checkout-{secrets.token_hex(6)}"
    code, reply = http("POST", f"{shop.url}/api/orders", None, token, {"X-Request-ID": request_id})
    assert code == 201, reply

    def complete(found: Trace) -> bool:
        # Each process writes its spans on its own clock: until the last file is written,
        # a span whose parent is in it looks like a root.
        if len(found.roots) != 1:
            return False
        services = {span.service for span, _ in found.walk()}
        datastores = {span.database for span, _ in found.walk()}
        return {"gateway", "order", "product", "cart"} <= services and {
            "postgresql",
            "mongodb",
            "redis",
        } <= datastores

    found = whole_trace(shop, request_id, complete)
    # The gateway's server span is the root; its call to the order service continues it.
    [root] = found.roots
    assert (root.service, root.kind, root.http_method, root.path, root.http_status) == (
        "gateway",
        "server",
        "POST",
        "/api/orders",
        201,
    )
    assert root.request_id == request_id
    [forward] = root.children
    assert (forward.service, forward.kind) == ("gateway", "client")
    [order] = forward.children
    assert (order.service, order.kind, order.path, order.http_status) == (
        "order",
        "server",
        "/api/orders",
        201,
    )
    # The order service's own queries, and its calls to the cart and product services,
    # each answered by a server span there that holds that service's datastore spans.
    own_queries = [s for s in order.children if s.database == "postgresql"]
    assert any(s.statement.startswith("INSERT INTO orders") for s in own_queries), own_queries
    calls = [s for s in order.children if s.kind == "client" and s.http_method]
    for callee, datastore in (("cart", "redis"), ("product", "mongodb")):
        answering = [
            server
            for call in calls
            for server in call.children
            if server.service == callee and server.kind == "server"
        ]
        assert answering, f"no call from the order service to {callee}"
        assert any(
            query.database == datastore for server in answering for query in server.children
        ), f"no {datastore} span under {callee}"
    stock_taken = [
        s for s in served_by(order, "product") if s.path == "/api/products/stock/changes"
    ]
    assert stock_taken and any(
        q.statement.startswith("findAndModify") for q in stock_taken[0].children
    )

    # Statements without their values: no product id, email or password in any of them,
    # and the customer's email nowhere in the spans at all (it was only ever a parameter).
    statements = [span.statement for span, _ in found.walk() if span.statement]
    assert statements and not any(product_id in s or email in s for s in statements)
    recorded = "".join(path.read_text() for path in shop.traces.iterdir())
    assert email not in recorded and "correct horse battery" not in recorded

    # Every log line about the request, in every service it reached, names its trace.
    def logged() -> dict[str, list[dict[str, Any]]]:
        lines = {}
        for service in ("gateway", "order", "cart", "product"):
            path = logs_dir(shop.data_dir) / f"{service}.log"
            lines[service] = [
                line for line in log_lines(path) if line.get("request_id") == request_id
            ]
        return lines

    eventually_sync(
        lambda: all(logged().values()),
        "a log line about the request from every service",
        SPANS_WITHIN,
        seen=logged,
        interval=0.2,
    )
    for service, lines in logged().items():
        assert {line.get("trace_id") for line in lines} == {found.trace_id}, (service, lines)
        assert all(len(line["span_id"]) == 16 for line in lines)


def test_shopctl_trace_shows_where_a_failed_checkout_failed(shop: Shop) -> None:
    _, _, token = shop.customer()
    product_id = shop.product(stock=1)
    request_id = f"qa-failed-{secrets.token_hex(6)}"
    items = {"items": [{"product_id": product_id, "quantity": 3}]}
    code, reply = http("POST", f"{shop.url}/api/orders", items, token, {"X-Request-ID": request_id})
    assert code == 409 and reply["code"] == "insufficient_stock", reply

    whole_trace(
        shop, request_id, lambda found: {"gateway", "order", "product"} <= set(found.services)
    )
    drawn = shopctl(
        "trace", request_id, "--data-dir", shop.data_dir, env={**shop.env, "FORCE_COLOR": "1"}
    )
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    plain = shopctl("trace", request_id, "--data-dir", shop.data_dir, env=shop.env)
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("Trace ") and f"request {request_id}" in lines[0]
    assert "failed" in lines[0]
    order_row = next(line for line in lines if "order POST /api/orders" in line)
    assert "409" in order_row and "insufficient_stock" in order_row
    assert any("order GET → product /api/products" in line for line in lines), plain.stdout
    assert any("product mongodb find" in line for line in lines), plain.stdout
    # The call the gateway saw refused is red; so nothing else is, in a healthy shop.
    coloured = drawn.stdout.splitlines()
    red = "\x1b[1;31m"
    forward = next(n for n, line in enumerate(lines) if "gateway POST → order" in line)
    assert red in coloured[forward]
    assert not any(red in line for n, line in enumerate(coloured[2:], 2) if n != forward)


def test_shopctl_trace_finds_a_trace_by_the_id_in_the_log_lines_and_the_latest_slow_one(
    shop: Shop,
) -> None:
    request_id = f"trace-by-id-{secrets.token_hex(6)}"
    code, reply = http(
        "GET", f"{shop.url}/api/products?limit=5", None, None, {"X-Request-ID": request_id}
    )
    assert code == 200, reply
    found = whole_trace(shop, request_id, lambda found: "product" in found.services)

    by_trace_id = shopctl("trace", found.trace_id, "--data-dir", shop.data_dir, env=shop.env)
    assert by_trace_id.returncode == 0, by_trace_id.stdout + by_trace_id.stderr
    assert by_trace_id.stdout.startswith(f"Trace {found.trace_id}  request {request_id}")

    latest = shopctl(
        "trace", "--last", "--slower-than", "0", "--data-dir", shop.data_dir, env=shop.env
    )
    assert latest.returncode == 0, latest.stdout + latest.stderr
    assert latest.stdout.startswith("Trace ")

    unknown = shopctl("trace", "qa-no-such-request", "--data-dir", shop.data_dir, env=shop.env)
    assert unknown.returncode == 1
    assert "no trace of 'qa-no-such-request'" in unknown.stderr


def test_shopctl_logs_follows_one_request_across_the_shop(shop: Shop) -> None:
    _, _, token = shop.customer()
    product_id = shop.product(stock=1)
    request_id = f"qa-logs-{secrets.token_hex(6)}"
    items = {"items": [{"product_id": product_id, "quantity": 3}]}
    code, reply = http("POST", f"{shop.url}/api/orders", items, token, {"X-Request-ID": request_id})
    assert code == 409, reply

    def logged() -> list[dict[str, Any]]:
        shown = shopctl(
            "logs", "--request-id", request_id, "--json", "--data-dir", shop.data_dir, env=shop.env
        )
        assert shown.returncode == 0, shown.stderr
        return [json.loads(line) for line in shown.stdout.splitlines()]

    # The request's lines from the gateway, the order service and the product service it
    # asked about stock, in time order, each naming the one trace.
    eventually_sync(
        lambda: {"gateway", "order", "product"} <= {line["service"] for line in logged()},
        "the request's lines from every service it reached",
        SPANS_WITHIN,
        seen=logged,
        interval=0.2,
    )
    lines = logged()
    assert [line["ts"] for line in lines] == sorted(line["ts"] for line in lines)
    assert {line["request_id"] for line in lines} == {request_id}
    [trace_id] = {line["trace_id"] for line in lines}
    gateway_line = next(line for line in lines if line["service"] == "gateway")
    assert gateway_line["msg"] == "POST /api/orders 409"

    by_trace = shopctl("logs", "--trace-id", trace_id, "--json", "--data-dir", shop.data_dir)
    assert [json.loads(line) for line in by_trace.stdout.splitlines()] == lines

    # On the terminal: one line each, the request id left out as every line has it.
    shown = shopctl("logs", "--request-id", request_id, "--data-dir", shop.data_dir, env=shop.env)
    rows = shown.stdout.splitlines()[1:]
    assert len(rows) == len(lines) and request_id not in shown.stdout
    assert any(row.split()[1:5] == ["gateway", "INFO", "POST", "/api/orders"] for row in rows)


def test_shopctl_logs_follow_shows_requests_as_they_are_served(shop: Shop) -> None:
    request_id = f"qa-follow-{secrets.token_hex(6)}"
    with following_logs(shop.data_dir, "--service", "product", env=shop.env) as followed:

        def served() -> bool:
            # Asked again until seen: following starts with the last lines, and a request
            # served before it began reading would be among them, or not.
            http(
                "GET", f"{shop.url}/api/products?limit=1", None, None, {"X-Request-ID": request_id}
            )
            return any(line.get("request_id") == request_id for line in followed())

        eventually_sync(served, "the request's line, followed", SPANS_WITHIN, seen=followed)
        assert {line["service"] for line in followed()} == {"product"}


def test_what_a_stranger_put_in_a_path_is_drawn_not_obeyed(shop: Shop) -> None:
    request_id = f"qa-escape-{secrets.token_hex(6)}"
    # ESC [2J (clear the screen), BEL and a newline, percent-encoded in the path.
    path = "/api/products/%1b%5b2J%07%0a10:00:00.000%20forged"
    code, _ = http("GET", f"{shop.url}{path}", None, None, {"X-Request-ID": request_id})
    assert code == 404
    # The gateway refuses it (no product id looks like that) and logs the path decoded.
    whole_trace(shop, request_id, lambda found: "gateway" in found.services)
    eventually_sync(
        lambda: (
            "gateway"
            in shopctl("logs", "--request-id", request_id, "--data-dir", shop.data_dir).stdout
        ),
        "the request's line",
        SPANS_WITHIN,
    )
    for command in ("trace", "logs"):
        shown = shopctl(
            command,
            *(["--request-id"] if command == "logs" else []),
            request_id,
            "--data-dir",
            shop.data_dir,
            env={**shop.env, "FORCE_COLOR": "1"},
        )
        assert shown.returncode == 0, shown.stderr
        text = re.sub("\x1b\\[[0-9;]*m", "", shown.stdout)  # the colours shopctl sets
        controls = [c for c in text if unicodedata.category(c) == "Cc" and c != "\n"]
        assert not controls, (command, shown.stdout)
