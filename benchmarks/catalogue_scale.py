"""How the catalogue's reads grow with its size: the first page, a category's page and a
search, at 1k, 10k and 100k products, at the datastore and through the product service.

    .venv/bin/python benchmarks/catalogue_scale.py [--scales 1000,10000,100000] [--json FILE]

Starts a MongoDB-protocol datastore (or uses MONGODB_URI, in a fresh database) and the
product service, then for each scale in turn tops the catalogue up to that many products
(insert_many in batches, stored as the service stores them, search keywords included) and
measures each read twice: through a bare PyMongo client running the product service's own
queries (ProductStore.find_page over catalogue_filter: the sorted page and the count), and
over HTTP. Requests vary (category, page, page size, words), so that no answer cache can
hide the queries' cost. Everything it started is stopped on the way out, also on Ctrl-C or
an error. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

# Nothing of ours may land in the repo, not even the bytecode of what is imported below.
sys.dont_write_bytecode = True

import drivers  # noqa: E402 - sibling modules (this is a script), imported after the flag
import harness  # noqa: E402
import pymongo  # noqa: E402
from harness import BenchmarkError, err  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from pymongo.errors import PyMongoError  # noqa: E402

from shopctl import processes  # noqa: E402
from shopkit.logs import mask_url  # noqa: E402
from svc_product.store import ProductStore, _stored_fields, catalogue_filter  # noqa: E402

START_TIMEOUT = 30.0
CATEGORIES = [f"category-{number:02d}" for number in range(50)]
# Names and descriptions are drawn from these, so that a search word matches a few per cent
# of the catalogue (a noun) or a sixth of it (an adjective), whatever its size.
NOUNS = [
    "lamp",
    "mug",
    "chair",
    "table",
    "kettle",
    "shirt",
    "hose",
    "trowel",
    "beans",
    "desk",
    "rug",
    "sofa",
    "pan",
    "knife",
    "spoon",
    "fork",
    "plate",
    "bowl",
    "cup",
    "glass",
    "teapot",
    "candle",
    "blanket",
    "pillow",
    "basket",
    "bucket",
    "ladder",
    "hammer",
    "wrench",
    "drill",
    "saw",
    "brush",
    "broom",
    "towel",
    "apron",
    "jacket",
    "scarf",
    "glove",
    "boot",
    "sock",
    "hat",
    "bag",
    "wallet",
    "watch",
    "clock",
    "mirror",
    "frame",
    "vase",
    "jar",
    "bottle",
]
ADJECTIVES = ["red", "blue", "green", "small", "large", "oak", "steel", "cotton", "wool", "ceramic"]


@dataclass
class Measurement(harness.Measurement):
    products: int
    level: str  # "datastore" or "http"
    # CPU time per answered request, in microseconds, of the datastore and the service.
    datastore_us: float | None
    product_us: float | None


@dataclass
class Stack:
    work_dir: Path
    mongo_uri: str
    datastore: str
    product_url: str = ""
    # Name -> process whose CPU counts: the datastore (when we started it), the service.
    running: dict[str, processes.ManagedProcess] = field(default_factory=dict)
    seeded: int = 0


def product_fields(number: int, rng: random.Random) -> dict[str, Any]:
    """The API's fields of the seeded product `number`."""
    noun = rng.choice(NOUNS)
    return {
        "name": f"{rng.choice(ADJECTIVES).title()} {noun} {number}",
        "description": " ".join(rng.choice(NOUNS + ADJECTIVES) for _ in range(14)),
        "price": Decimal(199 + (number * 737) % 99_800) / 100,
        "category": CATEGORIES[number % len(CATEGORIES)],
        "stock": number % 50,
    }


def seed_up_to(stack: Stack, count: int, batch: int) -> float:
    """Top the catalogue up to `count` products, stored as svc_product stores them
    (_stored_fields: cents, sort_name, keywords); the seconds it took."""
    started = time.perf_counter()
    now = datetime.now(UTC).replace(microsecond=0)
    rng = random.Random(stack.seeded)
    try:
        with pymongo.MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=5000) as client:
            collection = client.get_default_database()["products"]
            while stack.seeded < count:
                docs = []
                for number in range(stack.seeded, min(count, stack.seeded + batch)):
                    created = now - timedelta(seconds=number)
                    doc = _stored_fields(product_fields(number, rng))
                    docs.append({**doc, "createdAt": created, "updatedAt": created})
                collection.insert_many(docs, ordered=False)
                stack.seeded += len(docs)
    except PyMongoError as exc:
        raise BenchmarkError(
            f"cannot seed products at {mask_url(stack.mongo_uri)}: {exc}"
        ) from None
    return time.perf_counter() - started


@contextlib.contextmanager
def start_stack() -> Iterator[Stack]:
    with contextlib.ExitStack() as cleanup:
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="shop-scale-")))
        mongo_uri, described, mongo_process = cleanup.enter_context(
            harness.mongo_database(work_dir, "shop_scale", "scale")
        )
        stack = Stack(work_dir, mongo_uri, described)
        if mongo_process is not None:
            stack.running["datastore"] = mongo_process
        port = processes.free_port()
        stack.product_url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "MONGODB_URI": mongo_uri,
            # Only the admin routes ask the user service about tokens; we read only.
            "USER_SERVICE_URL": "http://127.0.0.1:9",
            "JWT_SECRET": "catalogue-scale-benchmark-secret-0123456789abcdef",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        process = processes.spawn(
            [sys.executable, "-m", "svc_product"], log_path=work_dir / "product.log", env=env
        )
        cleanup.callback(processes.stop, process)
        stack.running["product"] = process
        harness.wait_for_health("product", process, stack.product_url, START_TIMEOUT)
        yield stack


# -- what each line asks ----------------------------------------------------------------------


def queries(line: str, rng: random.Random, products: int) -> dict[str, Any]:
    """The query parameters of one request of `line`, newest first. Pages 1-5 of 10 to 50
    products: hundreds of different URLs per line (thousands for categories and searches),
    so that an answer cache cannot hide the cost of the query behind them."""
    params: dict[str, Any] = {"limit": rng.randint(10, 50)}
    if line == "search":
        words = [rng.choice(NOUNS)]
        if rng.random() < 0.5:
            words.append(rng.choice(ADJECTIVES))
        params["q"] = " ".join(words)
        return params
    pages = products // params["limit"]
    if line == "category":
        params["category"] = rng.choice(CATEGORIES)
        pages //= len(CATEGORIES)
    params["page"] = rng.randint(1, max(1, min(5, pages)))
    return params


def store_call(store: ProductStore, params: dict[str, Any]) -> Any:
    """What the list route does with these parameters, on the store (svc_product.routes)."""
    selector = catalogue_filter(q=params.get("q"), category=params.get("category"))
    page, limit = params.get("page", 1), params["limit"]
    return store.find_page(selector, sort="-createdAt", page=page, limit=limit)


def datastore_load(
    stack: Stack, line: str, products: int, load: dict[str, Any]
) -> drivers.LoadResult:
    async def run() -> drivers.LoadResult:
        # The same client options as svc_product.store.mongo_ctx.
        client: AsyncMongoClient = AsyncMongoClient(
            stack.mongo_uri, tz_aware=True, appname="shop-benchmark"
        )
        store = ProductStore(client.get_default_database()["products"])

        async def page(rng: random.Random) -> None:
            params = queries(line, rng, products)
            docs, _total = await store_call(store, params)
            if line != "search" and len(docs) != params["limit"]:
                raise LookupError(f"a page had {len(docs)} products, not {params['limit']}")

        try:
            return await drivers.closed_loop(page, **load)
        finally:
            await client.close()

    return drivers.run_async(run())


def http_requests(line: str, products: int, count: int = 2000) -> list[drivers.HttpRequest]:
    rng = random.Random(f"{line}:{products}")
    return [
        drivers.HttpRequest(f"/api/products?{urlencode(queries(line, rng, products))}")
        for _ in range(count)
    ]


# -- measuring ----------------------------------------------------------------------------------

LINES = {
    "list": "a page 1-5, newest first",
    "category": "a category's page 1-5, newest first",
    "search": "q: one or two words, first page, newest first",
}


def measure(
    stack: Stack, products: int, line: str, level: str, run: Callable[[], drivers.LoadResult]
) -> Measurement:
    meter = harness.CpuMeter({name: process.pid for name, process in stack.running.items()})
    result = run()
    cpu = meter.read()

    def per_request(name: str) -> float | None:
        if name not in cpu or not result.rate:
            return None
        return cpu[name] / result.rate * 1e6

    return Measurement(
        name=line,
        what=LINES[line],
        driver=level,
        products=products,
        level=level,
        **harness.figures(result, cpu),
        datastore_us=per_request("datastore"),
        product_us=per_request("product") if level == "http" else None,
    )


def check_answers(stack: Stack, products: int) -> None:
    """Each line's first request answers what we mean to measure, before we measure it."""
    import json
    import urllib.request

    for line in LINES:
        (request,) = http_requests(line, products, count=1)
        with urllib.request.urlopen(stack.product_url + request.path, timeout=120) as response:
            body = json.load(response)
        expected_total = {"list": products, "category": products // len(CATEGORIES)}
        if line in expected_total and body.get("total") != expected_total[line]:
            raise BenchmarkError(f"{line} answered an unexpected page: {str(body)[:300]}")
        if line == "search" and not body.get("total"):
            raise BenchmarkError(f"a search found nothing: {request.path}")


def run_scale(
    stack: Stack, products: int, args: argparse.Namespace, use_wrk: bool
) -> list[Measurement]:
    load = {"connections": args.connections, "duration": args.duration, "warmup": args.warmup}
    results = []
    for line in LINES:
        err.print(f"measuring {line} at {products:,} products: datastore, then HTTP")
        results.append(
            measure(
                stack,
                products,
                line,
                "datastore",
                lambda line=line: datastore_load(stack, line, products, load),
            )
        )
        requests = http_requests(line, products)

        def http(
            requests: list[drivers.HttpRequest] = requests, name: str = f"scale_{line}"
        ) -> drivers.LoadResult:
            return drivers.http_load(
                use_wrk,
                stack.product_url,
                requests,
                threads=args.threads,
                work_dir=stack.work_dir,
                name=name,
                **load,
            )

        results.append(measure(stack, products, line, "http", http))
    return results


# -- reporting ----------------------------------------------------------------------------------

CPU_COLUMNS = ("datastore", "product", "driver", "other")


def print_report(results: list[Measurement], header: str) -> None:
    console = harness.report_console()
    table = harness.lines_table(
        header,
        "CPU µs/req: datastore's / product service's CPU time per request; the last four "
        "columns: cores each process kept busy (driver: the load generator)",
        "CPU µs/req",
        CPU_COLUMNS,
    )
    table.columns[0].header = "products, line"
    for m in results:
        figures = (f"{m.rate:,.1f}", f"{m.p50_ms:.1f}", f"{m.p99_ms:.1f}")
        costs = [m.datastore_us, m.product_us]
        per_request = " / ".join("-" if cost is None else f"{cost:,.0f}" for cost in costs)
        cells = harness.line_cells(m, figures, per_request, CPU_COLUMNS)
        cells[0] = f"{m.products:,} {m.name} ({m.level})"
        table.add_row(*cells)
    console.print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.argument_parser(__doc__)
    parser.set_defaults(duration=5)
    parser.add_argument(
        "--scales",
        default="1000,10000,100000",
        help="catalogue sizes, comma-separated, smallest first (each at least 1000)",
    )
    parser.add_argument("--connections", type=int, default=8, help="concurrent clients")
    parser.add_argument("--batch", type=int, default=5000, help="products per insert_many")
    harness.add_driver_options(parser, "HTTP load driver")
    args = parser.parse_args(argv)
    try:
        args.scale_list = [int(part) for part in args.scales.split(",")]
    except ValueError:
        parser.error("--scales must be whole numbers separated by commas")
    if args.scale_list != sorted(args.scale_list) or min(args.scale_list) < len(CATEGORIES) * 20:
        parser.error(f"--scales must be ascending and at least {len(CATEGORIES) * 20}")
    if args.connections < 1 or args.duration < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("--connections, --duration and --batch must be at least 1, --warmup 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, harness.interrupt)
    use_wrk = harness.http_driver(args.driver)
    if use_wrk is None:
        return 1
    results: list[Measurement] = []
    seeding: dict[int, float] = {}
    with harness.ended_plainly(), start_stack() as stack:
        for products in args.scale_list:
            err.print(f"seeding up to {products:,} products")
            seeding[products] = round(seed_up_to(stack, products, args.batch), 1)
            err.print(f"seeded in {seeding[products]:g} s")
            check_answers(stack, products)
            results.extend(run_scale(stack, products, args, use_wrk))
        described = stack.datastore
    header = (
        f"{os.cpu_count()} cores, {args.connections} connections, {args.duration:g} s per line; "
        f"HTTP load: {'wrk' if use_wrk else 'Python driver'}; datastore: {described}; "
        "seconds to seed up to each scale: "
        + ", ".join(f"{products:,}: {seconds:g}" for products, seconds in seeding.items())
    )
    print_report(results, header)
    if args.json:
        settings = {
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "scales": args.scale_list,
            "http_driver": "wrk" if use_wrk else "python",
            "datastore": described,
            "seed_seconds": seeding,
        }
        harness.write_json(args.json, settings, results=[asdict(m) for m in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
