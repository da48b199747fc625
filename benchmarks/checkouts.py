"""Checkouts under load: shoppers fill their carts, then check out some at a time; orders/s,
latencies, the CPU each process spends per order, and `shopctl checkout`'s own conservation
check (units sold + stock left = stock at start, for every product)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import drivers
import harness
from harness import NODE_JS, Customer, Shop

from shopctl.qa_flows import CHECKOUT_DETAILS, Ledger, stock_checks
from shopctl.qa_report import Recorder, conservation_line, conservation_table
from shopctl.shop_client import Reply, ShopClient, new_run_id

PRODUCTS, ITEMS = 20, 2  # products in the catalogue; different ones in each cart
WARMUP_SHOPPERS = 50  # unmeasured: the services open their pools' connections
REPLAYS = 20  # placed checkouts sent again with their Idempotency-Key


@dataclass
class Shopper:
    customer: Customer
    plan: list[tuple[str, int]]  # (product id, units) to put in the cart
    in_cart: dict[str, int] = field(default_factory=dict)
    order_id: int | None = None

    def key(self) -> dict[str, str]:
        return {"Idempotency-Key": f"bench-{self.customer.user_id}"}


def units(reply: Reply) -> dict[str, int]:
    return {line["product_id"]: line["quantity"] for line in reply.data["items"]}


class Checkouts:
    """Shoppers' requests, each timed into `recorder` by step; every sale into `ledger`."""

    def __init__(self, clients: dict[str, ShopClient], ledger: Ledger) -> None:
        self.clients, self.ledger, self.recorder = clients, ledger, Recorder()
        self.seconds: dict[str, float] = {}  # each phase's

    async def call(
        self, step: str, shopper: Shopper, method: str, path: str, expect: Any = (200,), **kw: Any
    ) -> Reply | None:
        """As `shopper`, timed under `step` ("step (409)" for the second status expected);
        None, and a failure recorded, for any other answer."""
        client = self.clients[path.split("/")[2]]  # /api/cart/..., /api/orders...
        reply = await client.call(method, path, token=shopper.customer.token, **kw)
        if reply.status not in expect:
            return self.fail(step, shopper, reply, reply.describe())
        timed = step if reply.status == expect[0] else f"{step} ({reply.status})"
        self.recorder.timed(timed, reply.seconds)
        return reply

    def fail(self, step: str, shopper: Shopper, reply: Reply, message: str) -> None:
        self.recorder.failed(step, f"user {shopper.customer.user_id}", message, reply.request_id)

    async def fill(self, shopper: Shopper) -> None:
        path = f"/api/cart/{shopper.customer.user_id}/items"
        for product_id, quantity in shopper.plan:
            body = {"product_id": product_id, "quantity": quantity}
            if await self.call("add to cart", shopper, "POST", path, json_body=body):
                shopper.in_cart[product_id] = shopper.in_cart.get(product_id, 0) + quantity

    async def check_out(self, shopper: Shopper) -> None:
        """The cart (no body), with an Idempotency-Key; 409 when the stock is short."""
        expect = (201, 409)
        reply = await self.call(
            "checkout",
            shopper,
            "POST",
            "/api/orders",
            expect,
            headers=shopper.key(),
            json_body=CHECKOUT_DETAILS,
        )
        if reply is None or reply.status == 409:
            self.ledger.sold_out += reply is not None
        elif units(reply) != shopper.in_cart:
            self.fail("checkout", shopper, reply, f"the order holds {units(reply)}, not the cart")
        else:
            shopper.order_id = reply.data["id"]
            self.ledger.placed += 1
            self.ledger.sold.update(units(reply))

    async def fill_and_check_out(self, shopper: Shopper) -> None:
        await self.fill(shopper)
        await self.check_out(shopper)

    async def replay(self, shopper: Shopper) -> None:
        """The same checkout again: the first order, marked replayed, nothing bought twice."""
        step = "checkout again"
        reply = await self.call(
            step,
            shopper,
            "POST",
            "/api/orders",
            (201,),
            headers=shopper.key(),
            json_body=CHECKOUT_DETAILS,
        )
        replayed = reply and reply.headers.get("Idempotent-Replayed") == "true"
        if reply and (reply.data["id"] != shopper.order_id or not replayed):
            self.fail(step, shopper, reply, f"answered order {reply.data['id']}, not a replay")

    async def read_back(self, shopper: Shopper) -> None:
        reply = await self.call("read order", shopper, "GET", f"/api/orders/{shopper.order_id}")
        if reply and units(reply) != shopper.in_cart:
            self.fail("read order", shopper, reply, f"holds {units(reply)}, not the cart")

    async def each(
        self,
        phase: str,
        shoppers: list[Shopper],
        concurrency: int,
        action: Callable[[Shopper], Awaitable[None]],
    ) -> None:
        """`action` for every shopper, `concurrency` at a time, timed as `phase`."""
        pending = iter(shoppers)

        async def worker() -> None:
            for shopper in pending:  # one shared iterator: each shopper goes to one worker
                await action(shopper)

        started = asyncio.get_running_loop().time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        self.seconds[phase] = asyncio.get_running_loop().time() - started


async def drive(
    shop: Shop, options: argparse.Namespace, shoppers: list[Shopper], products: list[dict[str, Any]]
) -> tuple[Checkouts, Checkouts, dict[str, float], list[Any]]:
    """Warm-up, the carts filled, the checkouts (the CPU measured), replays, read-backs, then
    every product's stock against what was sold."""
    async with contextlib.AsyncExitStack() as opened:
        clients = {}
        for name, service in (("cart", "cart"), ("orders", "order"), ("products", "product")):
            url = shop.url("gateway" if options.via_gateway else service)
            clients[name] = await opened.enter_async_context(ShopClient(url, new_run_id("bench")))
        ledger, concurrency = Ledger(), options.concurrency
        warmup, run = Checkouts(clients, ledger), Checkouts(clients, ledger)
        harness.err.print(f"warming up: {WARMUP_SHOPPERS} shoppers fill their carts and check out")
        await warmup.each(
            "warm-up", shoppers[:WARMUP_SHOPPERS], concurrency, warmup.fill_and_check_out
        )
        measured = shoppers[WARMUP_SHOPPERS:]
        harness.err.print(f"{len(measured)} shoppers fill their carts, then check out")
        await run.each("add to cart", measured, concurrency, run.fill)
        meter = harness.CpuMeter(shop.pids(), shop.whole_trees())
        await run.each("checkout", measured, concurrency, run.check_out)
        cores = meter.read()
        placed = [shopper for shopper in shoppers if shopper.order_id is not None]
        await run.each("checkout again", placed[-REPLAYS:], concurrency, run.replay)
        await run.each("read order", placed, concurrency, run.read_back)
        at_start = {product["id"]: product["stock"] for product in products}
        checks = await stock_checks(
            clients["products"], products, at_start, ledger.sold, run.recorder
        )
    return run, warmup, cores, checks


def run(options: argparse.Namespace) -> dict[str, Any]:
    wanted = (options.shoppers + WARMUP_SHOPPERS) * ITEMS / PRODUCTS  # lines per product
    stock = max(1, math.ceil(wanted / 2)) if options.scarce else math.ceil(4 * wanted) + 10
    with harness.running_shop(options) as shop:
        url, products = f"{shop.url('product')}/api/products", []
        for number in range(PRODUCTS):
            price = round(4.99 + number, 2)
            body = {"name": f"Product {number}", "price": price, "category": "c", "stock": stock}
            products.append(harness.call("POST", url, body, shop.admin_token, 201)["data"])
        rng, ids = random.Random(1), [product["id"] for product in products]
        shoppers = [
            Shopper(customer, [(pid, rng.randint(1, 2)) for pid in rng.sample(ids, ITEMS)])
            for customer in shop.register(options.shoppers + WARMUP_SHOPPERS)
        ]
        checkouts, warmup, cores, checks = drivers.run_async(
            drive(shop, options, shoppers, products)
        )
    steps, seconds = checkouts.recorder.steps, checkouts.seconds
    harness.table(
        f"checkout ({'via the gateway' if options.via_gateway else 'direct'}, {options.concurrency}"
        f" at a time): {PRODUCTS} products x {stock:,} units, {ITEMS} in each cart",
        ["step", "count", "failed", "per s", "p50 ms", "p95 ms", "p99 ms"],
        [
            [step.name, f"{step.count:,}", str(step.failures)]
            + [
                f"{step.count / seconds[step.name.removesuffix(' (409)')]:,.1f}"
                if step.count
                else "-"
            ]
            + [f"{step.percentile_ms(fraction) or 0:,.1f}" for fraction in (0.50, 0.95, 0.99)]
            for step in steps.values()
        ],
    )
    orders = steps["checkout"].count / seconds["checkout"] if "checkout" in steps else 0.0
    harness.out.print(
        f"[bold]orders/s: {orders:,.1f}[/], {orders / NODE_JS['checkout']:.2f} x Node.js's "
        f"{NODE_JS['checkout']:g}/s (at 8 at a time, losing stock updates)"
    )
    busy = sorted((item for item in cores.items() if item[1] >= 0.01), key=lambda item: -item[1])
    rows = [
        [name, f"{used:.2f}", f"{used / orders * 1000:.2f}" if orders else "-"]
        for name, used in busy
    ]
    harness.table("CPU during the checkouts", ["process", "cores", "CPU ms per order"], rows)
    harness.out.print(conservation_line(checks))
    if bad := [check for check in checks if not check.ok]:
        harness.out.print(conservation_table(bad))
    failures = checkouts.recorder.failures + warmup.recorder.failures
    for failure in failures[:10]:
        harness.out.print(f"✗ {failure.line()}", markup=False)
    passed = not failures and not bad
    harness.out.print("[green]checks passed" if passed else "[red bold]checks FAILED")
    return {
        "passed": passed,
        "orders_per_second": orders,
        "cores": cores,
        "failures": len(failures),
    }
