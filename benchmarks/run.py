"""Measure the read paths (catalogue and carts) against their ceilings, in one run, and
print the ratios.

    .venv/bin/python benchmarks/run.py [--duration 10] [--connections 32] [--json FILE]

Starts a MongoDB-protocol datastore (or uses MONGODB_URI, in a fresh database) and seeds it;
uses Redis (REDIS_URL, else this machine's, else an embedded one); starts a bare aiohttp
app, the product service, the gateway and the cart service on free ports, fills carts, then
measures one after another: bare aiohttp; the datastore through a bare PyMongo client doing
the product service's reads; the product service; the gateway in front of it; Redis through
a bare client doing the cart service's read; cart reads. Everything it started is stopped
and every cart it wrote deleted on the way out, also on Ctrl-C or an error. See
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# Nothing of ours may land in the repo, not even the bytecode of what is imported below.
sys.dont_write_bytecode = True

import drivers  # noqa: E402 - sibling modules (this is a script), imported after the flag
import harness  # noqa: E402
import pymongo  # noqa: E402
from accounts import postgres_server  # noqa: E402
from bson import ObjectId  # noqa: E402
from harness import BenchmarkError, err  # noqa: E402
from pymongo.errors import PyMongoError  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shopctl import processes  # noqa: E402
from shopkit.auth import issue_token, service_token  # noqa: E402
from shopkit.logs import mask_url  # noqa: E402
from svc_product.search import keywords  # noqa: E402

HERE = Path(__file__).resolve().parent
START_TIMEOUT = 30.0
CATEGORIES = ("books", "garden", "kitchen", "music", "outdoor", "sports", "tools", "toys")
LIST_PATH = f"/api/products?limit={drivers.PAGE_SIZE}"
CARTS = 100  # carts filled, each with CART_LINES products; a cart read picks one at random
CART_LINES = 3
# Their owners: accounts at the user service (every service refuses a token naming nobody).
CART_USERS = [str(900_000_000 + number) for number in range(CARTS)]
FRESH_CART = "cart, no token cache"
# The product and cart services again with WORKERS=2 (a supervisor and two workers sharing
# the port): their CPU column counts the whole process tree.
PRODUCT_2 = "product, 2 workers"
CART_2 = "cart, 2 workers"
WHOLE_TREES = (PRODUCT_2, CART_2)
# The Node.js seed's rates on this machine, measured side by side with ours in issue #13
# (its services as they ship, `npm install`, against the same datastore servers; wrk -t2
# -c32 -d8s, medians of three interleaved rounds). Its code is not in this repository.
NODE_SEED_RATES = {"product by id": 1_071.0, "gateway by id": 774.0, "cart read": 7_924.0}

# -- what runs ------------------------------------------------------------------------------


@dataclass
class Stack:
    """Everything the run started, and the data it seeded."""

    work_dir: Path
    mongo_uri: str
    product_ids: list[str]
    urls: dict[str, str] = field(default_factory=dict)
    # Name -> process, for the CPU column: the datastore (when we started it) and the apps.
    running: dict[str, processes.ManagedProcess] = field(default_factory=dict)
    # Other processes whose CPU counts (Redis, when it runs on this machine).
    pids: dict[str, int] = field(default_factory=dict)
    datastore: str = ""
    redis_url: str = ""
    redis: str = ""
    jwt_secret: str = ""
    service_token: str = ""  # for the user service's internal token-status route
    # (user id, token) of each filled cart, and the Redis keys to delete afterwards.
    carts: list[tuple[str, str]] = field(default_factory=list)
    cart_keys: list[str] = field(default_factory=list)


def seed_products(uri: str, count: int) -> list[str]:
    """Insert `count` products shaped as svc_product stores them; their ids, as text."""
    now = datetime.now(UTC).replace(microsecond=0)
    docs = []
    for number in range(count):
        name = f"Benchmark product {number:04d}"
        created = now - timedelta(minutes=number)
        description = (
            "A sturdy, well-made thing for the benchmark catalogue. It exists so that every "
            "answer carries a description about as long as a real product's would be."
        )
        doc: dict[str, Any] = {
            "name": name,
            "description": description,
            "price_cents": 199 + (number * 737) % 99_800,
            "category": CATEGORIES[number % len(CATEGORIES)],
            "stock": number % 50,
            "sort_name": name.casefold(),
            "keywords": keywords(name, description),
            "createdAt": created,
            "updatedAt": created,
        }
        if number % 2 == 0:
            doc["imageUrl"] = f"/static/img/products/{number}.webp"
        docs.append(doc)
    try:
        with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
            result = client.get_default_database()["products"].insert_many(docs)
    except PyMongoError as exc:
        raise BenchmarkError(f"cannot seed products at {mask_url(uri)}: {exc}") from None
    return [str(oid) for oid in result.inserted_ids]


@contextlib.contextmanager
def start_stack(products: int) -> Iterator[Stack]:
    """The datastore, seeded, and the three apps answering; all stopped when the block ends."""
    with contextlib.ExitStack() as cleanup:
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="shop-bench-")))
        mongo_uri, described, mongo_process = cleanup.enter_context(
            harness.mongo_database(work_dir, "shop_benchmark", "benchmark")
        )
        err.print(f"seeding {products} products")
        stack = Stack(work_dir, mongo_uri, seed_products(mongo_uri, products))
        stack.datastore = described
        if mongo_process is not None:
            stack.running["datastore"] = mongo_process
        redis_url, stack.redis, redis_pid = cleanup.enter_context(
            harness.redis_server(work_dir, stack.cart_keys)
        )
        stack.redis_url = redis_url
        if redis_pid is not None:
            stack.pids["redis"] = redis_pid

        ports: dict[str, int] = {}
        for name in ("bare", "product", "gateway", "cart", FRESH_CART, "user", PRODUCT_2, CART_2):
            ports[name] = processes.free_port(avoid=ports.values())
        stack.urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        stack.jwt_secret = secrets.token_urlsafe(48)
        # The services ask the user service whether a customer's token was revoked.
        postgres = cleanup.enter_context(postgres_server(work_dir))
        stack.urls["user"], users_database, user_process = cleanup.enter_context(
            harness.user_service(
                work_dir, postgres.uri, stack.jwt_secret, ports["user"], START_TIMEOUT
            )
        )
        stack.running["user"] = user_process
        harness.add_accounts(users_database, [int(user_id) for user_id in CART_USERS])
        stack.service_token = service_token(stack.jwt_secret, "benchmark")
        base_env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "JWT_SECRET": stack.jwt_secret,
            # INFO (one access-log line per request) unless the caller asks otherwise.
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for other in ("ORDER", "CART"):
            base_env.pop(f"{other}_SERVICE_URL", None)
        base_env.pop("REDIS_URL", None)
        base_env.pop("TOKEN_STATUS_CACHE_SECONDS", None)
        base_env["USER_SERVICE_URL"] = stack.urls["user"]
        cart_env = {"REDIS_URL": redis_url, "PRODUCT_SERVICE_URL": stack.urls["product"]}
        commands = {
            "bare": ([sys.executable, str(HERE / "bare_app.py")], {}),
            "product": ([sys.executable, "-m", "svc_product"], {"MONGODB_URI": mongo_uri}),
            "gateway": (
                [sys.executable, "-m", "svc_gateway"],
                {"PRODUCT_SERVICE_URL": stack.urls["product"]},
            ),
            "cart": ([sys.executable, "-m", "svc_cart"], cart_env),
            # The same cart service remembering no token state: every read asks the user
            # service, the price of a token check that misses its cache.
            FRESH_CART: (
                [sys.executable, "-m", "svc_cart"],
                {**cart_env, "TOKEN_STATUS_CACHE_SECONDS": "0"},
            ),
            PRODUCT_2: (
                [sys.executable, "-m", "svc_product"],
                {"MONGODB_URI": mongo_uri, "WORKERS": "2"},
            ),
            CART_2: ([sys.executable, "-m", "svc_cart"], {**cart_env, "WORKERS": "2"}),
        }
        started: list[processes.ManagedProcess] = []
        cleanup.callback(lambda: processes.stop_all(started))
        for name, (command, env) in commands.items():
            started.append(
                processes.spawn(
                    command,
                    # Services log one JSON line per request to stdout: keep it, off the terminal.
                    log_path=work_dir / f"{name}.log",
                    env={**base_env, **env, "PORT": str(ports[name])},
                )
            )
            stack.running[name] = started[-1]
        for name in commands:
            harness.wait_for_health(name, stack.running[name], stack.urls[name], START_TIMEOUT)
        for name in WHOLE_TREES:
            wait_for_workers(name, stack.running[name], 2)
        fill_carts(stack)
        check_answers(stack)
        yield stack


def wait_for_workers(name: str, supervisor: processes.ManagedProcess, count: int) -> None:
    """Until the supervisor's log says all ``count`` workers serve (its /health answers as
    soon as the first one does)."""
    assert supervisor.log_path is not None
    serving = f"all {count} workers serving"
    if not processes.wait_until(
        lambda: serving in supervisor.log_path.read_text(), START_TIMEOUT, interval=0.05
    ):
        tail = processes.log_tail(supervisor.log_path)
        raise BenchmarkError(f"{name}: not all workers serving; log ends:\n{tail}")


def fill_carts(stack: Stack) -> None:
    """CARTS customers' carts, CART_LINES products each, through the cart service itself (so
    they are stored as it stores them)."""
    in_stock = [pid for number, pid in enumerate(stack.product_ids) if number % 50 >= 5]
    for number, user_id in enumerate(CART_USERS):
        token = issue_token(
            stack.jwt_secret, sub=user_id, email=f"bench{number}@shop.test", role="customer"
        )
        stack.cart_keys.append(f"cart:{user_id}")
        for line in range(CART_LINES):
            product_id = in_stock[(number * CART_LINES + line) % len(in_stock)]
            body = json.dumps({"product_id": product_id, "quantity": 1}).encode()
            url = f"{stack.urls['cart']}/api/cart/{user_id}/items"
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            request = urllib.request.Request(url, body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=10):
                    pass
            except urllib.error.HTTPError as exc:
                raise BenchmarkError(f"filling a cart: {exc.code} {exc.read()[:300]!r}") from None
        stack.carts.append((user_id, token))


def _get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    # No If-None-Match: every measured request is a full 200 answer, never a cached 304.
    try:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise BenchmarkError(f"GET {url} answered {response.status}, not 200")
            return json.load(response)
    except urllib.error.HTTPError as exc:
        raise BenchmarkError(f"GET {url} answered {exc.code}: {exc.read()[:300]!r}") from None


def check_answers(stack: Stack) -> None:
    """Every measured URL gives the full answer we mean to measure, before we measure it."""
    product_id = stack.product_ids[0]
    for name in ("bare", "product", "gateway"):
        one = _get_json(f"{stack.urls[name]}/api/products/{product_id}")
        if one.get("data", {}).get("id") != product_id:
            raise BenchmarkError(f"{name} answered the wrong product: {one}")
    for name in ("product", "gateway"):
        page = _get_json(stack.urls[name] + LIST_PATH)
        if page.get("count") != drivers.PAGE_SIZE or page.get("total") != len(stack.product_ids):
            raise BenchmarkError(f"{name} answered an unexpected page: {str(page)[:300]}")
    user_id, token = stack.carts[0]
    cart = _get_json(
        f"{stack.urls['cart']}/api/cart/{user_id}", {"Authorization": f"Bearer {token}"}
    )
    if len(cart.get("data", {}).get("items", [])) != CART_LINES:
        raise BenchmarkError(f"the cart service answered an unexpected cart: {str(cart)[:300]}")


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Measurement(harness.Measurement):
    # CPU time the process under test spent per answered request, in microseconds.
    cpu_us_per_request: float
    rounds: int = 1


@dataclass
class Line:
    """One line of the plan: what to measure, with what, and which process it is about."""

    name: str
    what: str
    driver: str
    process: str  # whose CPU per request the line reports
    run: Callable[[], drivers.LoadResult]


def measure(stack: Stack, line: Line) -> Measurement:
    """Run one line, accounting the CPU each process spent on it."""
    meter = harness.CpuMeter(
        {**stack.pids, **{key: process.pid for key, process in stack.running.items()}},
        whole_trees=WHOLE_TREES,
    )
    result = line.run()
    cpu = meter.read()
    return Measurement(
        name=line.name,
        what=line.what,
        driver=line.driver,
        **harness.figures(result, cpu),
        # Cores over requests per second; the warm-up runs at the same rate, so it cancels.
        cpu_us_per_request=cpu[line.process] / result.rate * 1e6 if result.rate else 0.0,
    )


def plan(stack: Stack, args: argparse.Namespace, use_wrk: bool) -> list[Line]:
    http_driver = "wrk" if use_wrk else "python"
    id_paths = [f"/api/products/{product_id}" for product_id in stack.product_ids]
    object_ids = [ObjectId(product_id) for product_id in stack.product_ids]
    load = {"connections": args.connections, "duration": args.duration, "warmup": args.warmup}

    def http(
        base: str, paths: list[str], requests: list[drivers.HttpRequest] | None = None
    ) -> Callable[[], drivers.LoadResult]:
        requests = requests or [drivers.HttpRequest(path) for path in paths]
        return lambda: drivers.http_load(
            use_wrk,
            stack.urls[base],
            requests,
            threads=args.threads,
            work_dir=stack.work_dir,
            **load,
        )

    def mongo(read: str) -> Callable[[], drivers.LoadResult]:
        return lambda: drivers.mongo_load(stack.mongo_uri, read, object_ids, **load)

    cart_reads = [
        drivers.HttpRequest(f"/api/cart/{user_id}", headers={"Authorization": f"Bearer {token}"})
        for user_id, token in stack.carts
    ]

    def redis() -> drivers.LoadResult:
        return drivers.redis_load(stack.redis_url, stack.cart_keys, **load)

    status_reads = [
        drivers.HttpRequest(
            f"/internal/users/{user_id}/token-status",
            headers={"Authorization": f"Bearer {stack.service_token}"},
        )
        for user_id, _ in stack.carts
    ]

    by_id, page = "GET /api/products/:id", f"GET {LIST_PATH}"
    return [
        Line("bare aiohttp", by_id + " (fixed JSON)", http_driver, "bare", http("bare", id_paths)),
        Line("datastore by id", "find_one by _id", "pymongo", "driver", mongo("id")),
        Line("datastore list", "first 20 + count", "pymongo", "driver", mongo("list")),
        Line("product by id", by_id, http_driver, "product", http("product", id_paths)),
        Line("product list", page, http_driver, "product", http("product", [LIST_PATH])),
        Line(
            "product by id, 2 workers",
            by_id + ", WORKERS=2",
            http_driver,
            PRODUCT_2,
            http(PRODUCT_2, id_paths),
        ),
        Line("gateway by id", by_id, http_driver, "gateway", http("gateway", id_paths)),
        Line("gateway list", page, http_driver, "gateway", http("gateway", [LIST_PATH])),
        Line("datastore cart", "GET cart:{userId}", "redis-py", "driver", redis),
        Line(
            "cart read", "GET /api/cart/:userId", http_driver, "cart", http("cart", [], cart_reads)
        ),
        Line(
            "cart read, 2 workers",
            "GET /api/cart/:userId, WORKERS=2",
            http_driver,
            CART_2,
            http(CART_2, [], cart_reads),
        ),
        # What a token check costs: a plain request beside it, and a check that always misses.
        Line(
            "cart health", "GET /health (no token)", http_driver, "cart", http("cart", ["/health"])
        ),
        Line(
            "cart read, no token cache",
            "GET /api/cart/:userId, TOKEN_STATUS_CACHE_SECONDS=0",
            http_driver,
            FRESH_CART,
            http(FRESH_CART, [], cart_reads),
        ),
        Line(
            "token status",
            "GET /internal/users/:id/token-status",
            http_driver,
            "user",
            http("user", [], status_reads),
        ),
    ]


def chosen(lines: list[Line], only: list[str]) -> list[Line]:
    """The lines whose name contains one of ``only`` (every line when it is empty)."""
    return [line for line in lines if not only or any(word in line.name for word in only)]


def run_all(stack: Stack, args: argparse.Namespace, use_wrk: bool) -> list[Measurement]:
    """Every line (of ``--only``), `args.rounds` times over (interleaved, so a burst of load
    from elsewhere spoils one round of every line rather than every round of one); the best
    round of each."""
    lines = chosen(plan(stack, args, use_wrk), args.only)
    if not lines:
        raise BenchmarkError(f"no line's name contains any of {', '.join(args.only)}")
    best: dict[str, Measurement] = {}
    for round_number in range(1, args.rounds + 1):
        for line in lines:
            of_rounds = f", round {round_number} of {args.rounds}" if args.rounds > 1 else ""
            err.print(
                f"measuring {line.name} ({line.driver}, {args.connections} connections, "
                f"{args.warmup:g} s warm-up + {args.duration:g} s{of_rounds})"
            )
            measured = measure(stack, line)
            if line.name not in best or measured.rate > best[line.name].rate:
                best[line.name] = measured
            best[line.name].rounds = round_number
    return [best[line.name] for line in lines]


# -- reporting ------------------------------------------------------------------------------

# (label, numerator, denominator, aim, the Node.js seed's figure)
RATIOS = [
    ("product / datastore, by id", "product by id", "datastore by id", 0.80, 0.6),
    ("product / datastore, list", "product list", "datastore list", 0.80, None),
    ("gateway / direct, by id", "gateway by id", "product by id", 0.60, 0.7),
    ("gateway / direct, list", "gateway list", "product list", 0.60, None),
    ("product / bare aiohttp, by id", "product by id", "bare aiohttp", None, None),
    ("cart read / datastore", "cart read", "datastore cart", None, None),
    ("cart read / cart health", "cart read", "cart health", None, None),
    ("cart read: token cache off / on", "cart read, no token cache", "cart read", None, None),
    ("product by id: 2 workers / 1", "product by id, 2 workers", "product by id", None, None),
    ("cart read: 2 workers / 1", "cart read, 2 workers", "cart read", None, None),
]


def ratios(results: list[Measurement]) -> list[dict[str, Any]]:
    rates = {m.name: m.rate for m in results}
    rows = []
    for label, numerator, denominator, aim, node in RATIOS:
        if numerator not in rates or denominator not in rates:  # a line left out by --only
            continue
        value = rates[numerator] / rates[denominator] if rates[denominator] else 0.0
        rows.append({"ratio": label, "value": round(value, 3), "aim": aim, "node_seed": node})
    return rows


CPU_COLUMNS = (
    "datastore",
    "product",
    "gateway",
    "cart",
    FRESH_CART,
    PRODUCT_2,
    CART_2,
    "user",
    "redis",
    "bare",
    "driver",
    "other",
)


def print_report(console: Console, results: list[Measurement], header: str) -> None:
    table = harness.lines_table(
        header,
        "CPU µs/req: CPU time of the process under test per request (with WORKERS=2: the "
        "supervisor and its workers); the last ten "
        "columns: cores each process kept busy (driver: the load generator, other: anything "
        "else on this machine)",
        "CPU µs/req",
        CPU_COLUMNS,
    )
    for m in results:
        figures = (f"{m.rate:,.0f}", f"{m.p50_ms:.1f}", f"{m.p99_ms:.1f}")
        per_request = f"{m.cpu_us_per_request:,.0f}"
        table.add_row(*harness.line_cells(m, figures, per_request, CPU_COLUMNS))
    console.print(table)

    summary = Table(title="ratios of req/s", title_justify="left")
    for column in ("ratio", "value", "aim", "Node.js seed", ""):
        summary.add_column(column, justify="left" if column in ("ratio", "") else "right")
    for row in ratios(results):
        aim, node, value = row["aim"], row["node_seed"], row["value"]
        verdicts = []
        if aim is not None:
            verdicts.append("[green]meets the aim[/]" if value >= aim else "[red]below the aim[/]")
        if node is not None:
            verdicts.append("beats Node.js" if value > node else "[red]not above Node.js[/]")
        summary.add_row(
            row["ratio"],
            f"{value:.2f}",
            f">= {aim:.2f}" if aim is not None else "",
            f"{node:.1f}" if node is not None else "",
            ", ".join(verdicts),
        )
    console.print(summary)

    rates = {m.name: m.rate for m in results}
    node = Table(title="against the Node.js seed's own rates", title_justify="left")
    for column in ("line", "req/s", "Node.js seed", ""):
        node.add_column(column, justify="left" if column in ("line", "") else "right")
    for name, node_rate in NODE_SEED_RATES.items():
        if name not in rates:
            continue
        verdict = "beats Node.js" if rates[name] > node_rate else "[red]not above Node.js[/]"
        node.add_row(name, f"{rates[name]:,.0f}", f"~{node_rate:,.0f}", verdict)
    console.print(node)


# -- the token check, in process ------------------------------------------------------------


def token_check_costs(repeat: int = 20_000) -> dict[str, float]:
    """Microseconds per call of each step of a token check (shopkit.revocation.authorize),
    on this process's event loop: what the HTTP lines above spend on it."""
    import asyncio
    import time

    from shopkit.auth import Identity, _verified, identity_of, verify_token
    from shopkit.revocation import TokenStatus

    secret = secrets.token_urlsafe(48)
    token = issue_token(secret, sub="42", email="bench42@bench.example", role="customer")
    claims = {"sub": "42", "email": "a@b.c", "role": "customer", "iat": 1, "exp": 2}

    def per_call(step: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(repeat):
            step()
        return (time.perf_counter() - started) / repeat * 1e6

    def signature_and_claims() -> None:
        _verified.cache_clear()  # a token never seen: HMAC, JSON and the claims model
        verify_token(secret, token)

    async def dict_hit() -> float:
        status = TokenStatus(lambda user_id: asyncio.sleep(0, 0), ttl=60)
        identity = Identity(user_id="42", email="a@b.c", role="customer", issued_at=1)
        await status.ensure_current(identity)  # the one miss: remembered from now on
        started = time.perf_counter()
        for _ in range(repeat):
            await status.ensure_current(identity)
        return (time.perf_counter() - started) / repeat * 1e6

    verify_token(secret, token)
    return {
        "verify, token seen before (lru hit)": round(
            per_call(lambda: verify_token(secret, token)), 2
        ),
        "verify, new token (signature + claims model)": round(per_call(signature_and_claims), 2),
        "claims model alone": round(per_call(lambda: identity_of(claims)), 2),
        "revocation, state remembered (dict hit)": round(asyncio.run(dict_hit()), 2),
    }


def print_token_check_costs(console: Console, costs: dict[str, float]) -> None:
    table = Table(
        title="a token check's steps, in process (µs per call)",
        title_justify="left",
        caption="A miss of the revocation state is the 'token status' line's HTTP call to "
        "the user service (its latency, and the CPU shown there), once per user per "
        "TOKEN_STATUS_CACHE_SECONDS.",
        caption_justify="left",
    )
    table.add_column("step")
    table.add_column("µs", justify="right")
    for step, micros in costs.items():
        table.add_row(step, f"{micros:.2f}")
    console.print(table)


# -- the command ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.argument_parser(__doc__)
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients")
    parser.add_argument("--products", type=int, default=200, help="products to seed (>= 20)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure every line this often; report the best"
    )
    parser.add_argument(
        "--only",
        type=lambda text: [word.strip() for word in text.split(",") if word.strip()],
        default=[],
        metavar="WORDS",
        help="measure only the lines whose name contains one of these comma-separated words "
        "(e.g. 'cart' or 'bare,gateway')",
    )
    harness.add_driver_options(parser, "HTTP load driver")
    args = parser.parse_args(argv)
    if args.products < drivers.PAGE_SIZE:
        parser.error(f"--products must be at least {drivers.PAGE_SIZE} (one full page)")
    if args.connections < 1 or args.duration < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--connections, --duration and --rounds must be at least 1, --warmup 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, harness.interrupt)
    use_wrk = harness.http_driver(args.driver)
    if use_wrk is None:
        return 1
    http_driver = "wrk" if use_wrk else "the Python aiohttp driver (no wrk on PATH)"
    err.print(f"HTTP load from {http_driver}")
    if not use_wrk:
        err.print("[yellow]The Python driver takes far more CPU than wrk from the servers it")
        err.print("[yellow]measures: its HTTP rates (and ratios against the datastore) read low.")
    with harness.ended_plainly(), start_stack(args.products) as stack:
        results = run_all(stack, args, use_wrk)
        described, redis = stack.datastore, stack.redis
    rounds = f", best of {args.rounds} rounds" if args.rounds > 1 else ""
    header = (
        f"{os.cpu_count()} cores, {args.connections} connections, {args.duration:g} s per line"
        f"{rounds}, {args.products} products; HTTP load: {'wrk' if use_wrk else 'Python driver'};"
        f" datastore: {described}; Redis: {redis}"
    )
    console = harness.report_console()
    print_report(console, results, header)
    in_process = token_check_costs()
    print_token_check_costs(console, in_process)
    if args.json:
        settings = {
            "duration": args.duration,
            "warmup": args.warmup,
            "connections": args.connections,
            "products": args.products,
            "rounds": args.rounds,
            "http_driver": "wrk" if use_wrk else "python",
            "datastore": described,
            "redis": redis,
        }
        harness.write_json(
            args.json,
            settings,
            results=[asdict(m) for m in results],
            ratios=ratios(results),
            token_check_us=in_process,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
