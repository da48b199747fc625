"""What every scenario shares: the shop started by the code `shopctl up` runs, its customers
and catalogue, a line measured with the CPU each process spent on it, and the tables."""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import random
import secrets
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import drivers
import psutil
from drivers import BenchmarkError, LoadResult
from pymongo import AsyncMongoClient
from rich.console import Console
from rich.table import Table

from shopctl import processes, stack
from shopctl.environments import DEFAULT_ADMIN_EMAIL
from shopctl.errors import ShopctlError
from shopctl.stack import UpConfig
from shopctl.state import RunningService, ShopState
from svc_product.catalogue import CatalogueVersion
from svc_product.store import ProductStore, _stored_fields

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
START_TIMEOUT = 60.0
ADMIN_PASSWORD = "benchmark-admin-" + secrets.token_hex(8)
DISTURBED_CORES = 0.25  # other work busier than this during a line: not figures to quote
# The Node.js design's figures on this machine, from issue #13: its seed services run as they
# ship (`npm install`, `node`) against the same datastore servers, wrk -t2 -c32 -d8s, medians
# of three interleaved rounds. Its code is not in this repository: no scenario runs it.
NODE_JS = {
    "product by id": 1_071.0,
    "gateway by id": 774.0,
    "product category": 500.0,
    "gateway category": 398.0,
    "product category, If-None-Match": 538.0,  # a 304 that still ran the query
    "cart read": 7_924.0,
    "login, 10 rounds": 9.5,  # 4 connections; bcryptjs on its event loop
    "checkout": 103.0,  # orders/s at concurrency 8, losing 4.5 % of its stock updates
}


@dataclass
class Customer:
    user_id: int
    email: str
    password: str
    token: str


def call(method: str, url: str, body: Any = None, token: str = "", expect: int = 200) -> Any:
    """One request; its answer's JSON (an error's bytes), or BenchmarkError when the status
    is not `expect`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    try:
        request = urllib.request.Request(url, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            status, answer = response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    if status != expect:
        raise BenchmarkError(f"{method} {url} answered {status}, not {expect}: {answer!r:.300}")
    return answer


@dataclass
class Shop:
    """The running shop: its state as `shopctl up` keeps it, and how lines are driven."""

    state: ShopState
    load: drivers.Load
    admin_token: str = ""

    def service(self, name: str) -> RunningService:
        return next(service for service in self.state.services if service.name == name)

    def url(self, name: str) -> str:
        return self.service(name).url

    def env(self, name: str, variable: str) -> str:
        return self.service(name).env[variable]

    def pids(self) -> dict[str, int]:
        running = {service.name: service.process.pid for service in self.state.services}
        return running | {server.name: server.pid for server in self.state.embedded}

    def whole_trees(self) -> set[str]:
        """Processes counted with their children: PostgreSQL's backends, a service's workers."""
        return {"postgres"} | {s.name for s in self.state.services if workers(s) > 1}

    def register(self, count: int, service: str = "user") -> list[Customer]:
        """`count` new customers, through `service`'s registration (bcrypt at its rounds)."""
        tag = secrets.token_hex(4)

        def one(number: int) -> Customer:
            email, password = f"shopper{number}.{tag}@bench.example", secrets.token_hex(8)
            body = {"email": email, "password": password}
            answer = call("POST", f"{self.url(service)}/api/users/register", body, expect=201)
            user_id = int(answer["data"]["user"]["id"])
            return Customer(user_id, email, password, answer["data"]["token"])

        with ThreadPoolExecutor(2 * (os.cpu_count() or 2)) as pool:
            return list(pool.map(one, range(count)))


def workers(service: RunningService) -> int:
    return int(service.env.get("WORKERS", "1"))


def wait_for_workers(service: RunningService) -> None:
    """Until every worker of `service` serves: its /ready answers once the first one does."""
    log, serving = service.process.log_path, f"all {workers(service)} workers serving"
    if workers(service) > 1 and log is not None:
        processes.wait_until(lambda: serving in log.read_text(), START_TIMEOUT)


@contextlib.contextmanager
def running_shop(
    options: argparse.Namespace,
    variants: Mapping[str, tuple[str, Mapping[str, str]]] | None = None,
    bare_app: bool = False,
) -> Iterator[Shop]:
    """The whole shop, started by `shopctl up`'s code (embedded backing servers in a temporary
    data directory, unless MONGODB_URI, DATABASE_URL or REDIS_URL say otherwise); then the
    bare aiohttp app and `variants` (name: the service it copies, other settings) on the
    ports after the five services'. Everything is stopped when the block ends."""
    data_dir = Path(tempfile.mkdtemp(prefix="shop-bench-", dir=options.load.work_dir))
    environ = {**os.environ, "JWT_SECRET": secrets.token_urlsafe(48)}
    environ |= {"ADMIN_PASSWORD": ADMIN_PASSWORD, "PYTHONDONTWRITEBYTECODE": "1"}
    environ |= {"BCRYPT_ROUNDS": "4"}  # quick registrations; logins measures its own rounds
    environ.pop("ADMIN_EMAIL", None)
    # The lines measure the shop without tracing's cost (`shopctl up` records every span):
    # no spans file and no OTLP from the shell; the tracing scenario adds them to variants.
    for variable in [name for name in environ if name.startswith("OTEL_")] + ["TRACES_DIR"]:
        environ.pop(variable, None)
    log_level = os.environ.get("LOG_LEVEL", "INFO")
    config = UpConfig(data_dir, options.base_port, log_level, environ, traces=False)

    def report(line: str) -> None:
        err.print(line, markup=False)

    try:
        state = stack.start_shop(config, report)
    except ShopctlError as exc:
        raise BenchmarkError(str(exc)) from None
    try:
        bare_port = options.base_port + 5
        if bare_app:
            command = [sys.executable, str(Path(__file__).with_name("bare_app.py"))]
            env = {**environ, "PORT": str(bare_port)}
            process = processes.spawn(command, log_path=data_dir / "logs/bare.log", env=env)
            url = f"http://127.0.0.1:{bare_port}"
            state.services.append(RunningService("bare aiohttp", url, bare_port, process, env))
        for port, (name, (of, settings)) in enumerate((variants or {}).items(), bare_port + 1):
            stack.start_variant(state, of, name, port, settings, report)
        stack.wait_until_ready(state, START_TIMEOUT)
        for service in state.services:
            wait_for_workers(service)
        shop = Shop(state, options.load)
        login = {"email": DEFAULT_ADMIN_EMAIL, "password": ADMIN_PASSWORD}
        answer = call("POST", f"{shop.url('user')}/api/users/login", login)
        shop.admin_token = answer["data"]["token"]
        yield shop
    except ShopctlError as exc:
        raise BenchmarkError(str(exc)) from None
    finally:
        stack.stop_shop(state)


# -- the catalogue --------------------------------------------------------------------------

# Names and descriptions are made of these words; the scale scenario searches for them.
_NOUNS = """lamp mug chair table kettle shirt hose trowel beans desk rug sofa pan knife spoon fork
plate bowl cup glass teapot candle blanket pillow basket bucket ladder hammer wrench drill saw
brush broom towel apron jacket scarf glove boot sock hat bag wallet watch clock mirror frame vase
jar bottle"""
_ADJECTIVES = "red blue green small large oak steel cotton wool ceramic"
NOUNS, ADJECTIVES = _NOUNS.split(), _ADJECTIVES.split()


def category(number: int, categories: int) -> str:
    return f"category-{number % categories:02d}"


@contextlib.asynccontextmanager
async def product_store(shop: Shop) -> AsyncIterator[ProductStore]:
    """The product service's own store, on a bare PyMongo client in this process."""
    uri = shop.env("product", "MONGODB_URI")
    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True, appname="shop-benchmark")
    database = client.get_default_database()
    store = ProductStore(database["products"], CatalogueVersion(database["meta"]))
    try:
        yield store
    finally:
        await store.version.close()
        await client.close()


def seed_products(shop: Shop, up_to: int, categories: int) -> list[str]:
    """Top the catalogue up to `up_to` products, stored as the product service stores them
    (`_stored_fields`: cents, sort name, search keywords), then its catalogue version bumped
    as its own writes do; the ids of all, newest (product 0) first."""

    def product(number: int, created: datetime) -> dict[str, Any]:
        rng = random.Random(number)
        fields = {
            "name": f"{rng.choice(ADJECTIVES).title()} {rng.choice(NOUNS)} {number}",
            "description": " ".join(rng.choices(NOUNS + ADJECTIVES, k=14)),
            "price": Decimal(199 + (number * 737) % 99_800) / 100,
            "category": category(number, categories),
            "stock": number % 50,
        }
        return {**_stored_fields(fields), "createdAt": created, "updatedAt": created}

    async def seed() -> list[str]:
        async with product_store(shop) as store:
            now = datetime.now(UTC).replace(microsecond=0)
            for start in range(await store.collection.count_documents({}), up_to, 5000):
                numbers = range(start, min(up_to, start + 5000))
                batch = [product(n, now - timedelta(seconds=n)) for n in numbers]
                await store.collection.insert_many(batch, ordered=False)
            await store.changed()
            cursor = store.collection.find({}, {"_id": True}).sort("createdAt", -1)
            return [str(doc["_id"]) for doc in await cursor.to_list()]

    started = time.perf_counter()
    ids = drivers.run_async(seed())
    err.print(f"seeded up to {up_to:,} products in {time.perf_counter() - started:.1f} s")
    return ids


async def datastore_load(shop: Shop, read: Callable[..., Any], load: drivers.Load) -> LoadResult:
    """A closed loop of `read(store, rng)` on the product service's store, from this process:
    the datastore's own rate for the service's queries."""
    async with product_store(shop) as store:
        return await drivers.closed_loop(lambda rng: read(store, rng), load)


# -- measuring ------------------------------------------------------------------------------


def _cpu_seconds(process: psutil.Process, children: str) -> float:
    """`children`: "" (the process alone), "reaped" (and the children it waited for: the
    driver's wrk), "all" (and the live ones too: PostgreSQL's backends, a service's workers)."""
    try:
        total = sum(process.cpu_times()[: 4 if children else 2])
        for child in process.children(recursive=True) if children == "all" else ():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
    except psutil.NoSuchProcess:
        return 0.0
    return total


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuMeter:
    """Cores each process kept busy from now until `read()`; also "driver" (this process and
    the load generators it ran) and "other" (the rest of the machine)."""

    def __init__(self, pids: Mapping[str, int], whole_trees: set[str]) -> None:
        self._watched = {
            name: (psutil.Process(pid), "all" if name in whole_trees else "")
            for name, pid in pids.items()
        }
        self._watched["driver"] = (psutil.Process(), "reaped")
        self._before = {name: _cpu_seconds(*watched) for name, watched in self._watched.items()}
        self._busy, self._started = _busy_seconds(), time.perf_counter()

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self._started
        cores = {
            name: (_cpu_seconds(*watched) - self._before[name]) / wall
            for name, watched in self._watched.items()
        }
        cores["other"] = max(0.0, (_busy_seconds() - self._busy) / wall - sum(cores.values()))
        return {name: round(value, 3) for name, value in cores.items()}


@dataclass
class Measurement(LoadResult):
    name: str = ""
    cpu_us: float | None = None  # CPU time per request of the process the line is about
    cores: dict[str, float] = field(default_factory=dict)


def measure(
    shop: Shop, name: str, cost_of: str | None, run: Callable[..., Any], *args: Any
) -> Measurement:
    """`run(*args)` (a coroutine on an event loop of its own), with the CPU each
    process spends meanwhile; CPU per request is `cost_of`'s. A line run beside another load
    gives both results, its own first: its CPU then counts per request of that load."""
    err.print(f"measuring {name}")
    meter = CpuMeter(shop.pids(), shop.whole_trees())
    outcome = run(*args)
    if inspect.iscoroutine(outcome):
        outcome = drivers.run_async(outcome)
    cores = meter.read()
    result, counted = outcome if isinstance(outcome, tuple) else (outcome, outcome)
    cpu = cores[cost_of] / counted.rate * 1e6 if cost_of in cores and counted.rate else None
    return Measurement(**vars(result), name=name, cpu_us=cpu, cores=cores)


def number(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """A table on stdout: the first column to the left, the figures to the right."""
    shown = Table(title=title, title_justify="left")
    for index, column in enumerate(columns):
        shown.add_column(column, justify="right" if index else "left", no_wrap=not index)
    for row in rows:
        shown.add_row(*row)
    out.print(shown)


def print_lines(title: str, rows: Sequence[Measurement]) -> None:
    """The lines; the cores each process kept busy (those that did anything, "other" yellow
    when the line was disturbed); Node.js's rate where it ran the same line."""
    busy = [name for name in rows[0].cores if any(row.cores.get(name, 0) >= 0.05 for row in rows)]
    node = any(row.name in NODE_JS for row in rows)
    cells = []
    for row in rows:
        errors = f"[red]{row.errors}[/] {row.first_error[:60]}" if row.errors else "0"
        cpu = "-" if row.cpu_us is None else f"{row.cpu_us:,.0f}"
        cores = {name: f"{row.cores.get(name, 0):.2f}" for name in busy}
        if row.cores["other"] > DISTURBED_CORES:
            cores["other"] = f"[yellow]{cores['other']}"
        versus = (
            [number(NODE_JS[row.name]), f"{row.rate / NODE_JS[row.name]:.2f}"]
            if row.name in NODE_JS
            else ["", ""]
        )
        figures = (number(value) for value in (row.rate, row.p50_ms, row.p99_ms))
        cells.append([row.name, *figures, errors, cpu, *cores.values(), *(versus if node else [])])
    columns = ["line", "req/s", "p50 ms", "p99 ms", "errors", "CPU µs/req", *busy]
    table(title, columns + (["Node.js", "/ Node.js"] if node else []), cells)


def print_ratios(
    rows: Sequence[Measurement], ratios: Sequence[tuple[str, str]]
) -> dict[str, float]:
    """req/s of one line over another's, in this run."""
    rates = {row.name: row.rate for row in rows}
    values = {
        f"{numerator} / {denominator}": rates[numerator] / rates[denominator]
        for numerator, denominator in ratios
        if rates.get(numerator) and rates.get(denominator)
    }
    table(
        "ratios of req/s, this run",
        ["ratio", "value"],
        [[k, f"{v:.2f}"] for k, v in values.items()],
    )
    return values
