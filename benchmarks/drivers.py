"""Load drivers for the benchmarks: wrk, a Python HTTP driver where wrk is absent, the
bare PyMongo driver that measures the datastore itself, and a paced prober.

All but the prober are closed loops: ``connections`` clients each send a request, wait for
the answer and send the next, for ``duration`` seconds after an unmeasured warm-up. Each
request is one of a given list, picked at random every time (a seeded product by id, a
user's token). The prober is an open loop: it sends at a fixed rate whatever the answers
do, and a request held up behind a slow answer is timed from when it was due, so a stalled
server shows in full.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from bson import ObjectId
from pymongo import DESCENDING, AsyncMongoClient
from redis.asyncio import Redis

from svc_product.store import PUBLIC

# What svc_product.store does for the same reads (ProductStore.get and .find_page with the
# default sort): same filter, same projection, same sort, same concurrent count.
PROJECTION = PUBLIC
NEWEST_FIRST = [("createdAt", DESCENDING), ("_id", DESCENDING)]
PAGE_SIZE = 20


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    first_error: str = ""

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


T = TypeVar("T")
Operation = Callable[[random.Random], Awaitable[None]]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop, as our services run on; plain asyncio where it is missing."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(coroutine)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0.0 when it is empty)."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values)) - 1))
    return sorted_values[rank]


async def closed_loop(
    operation: Operation, *, connections: int, duration: float, warmup: float
) -> LoadResult:
    """Run `operation` from `connections` concurrent clients; only answers that complete in
    the measured window count (so does wrk)."""
    latencies: list[float] = []
    errors = 0
    first_error = ""
    start = time.perf_counter()
    window_start = start + warmup
    window_end = window_start + duration

    async def client(number: int) -> None:
        nonlocal errors, first_error
        rng = random.Random(number)
        while True:
            sent = time.perf_counter()
            if sent >= window_end:
                return
            try:
                await operation(rng)
            except Exception as exc:  # a benchmark counts failures, it does not stop
                answered = time.perf_counter()
                if window_start <= answered < window_end:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            answered = time.perf_counter()
            if window_start <= answered < window_end:
                latencies.append(answered - sent)

    await asyncio.gather(*(client(number) for number in range(connections)))
    return _summary(latencies, errors, duration, first_error)


def _summary(latencies: list[float], errors: int, seconds: float, first_error: str) -> LoadResult:
    latencies.sort()
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=seconds,
        p50_ms=percentile(latencies, 0.50) * 1000,
        p99_ms=percentile(latencies, 0.99) * 1000,
        first_error=first_error,
    )


# -- the datastore, through a bare PyMongo client ------------------------------------------


async def _mongo_load(
    uri: str,
    read: str,
    ids: Sequence[ObjectId],
    connections: int,
    duration: float,
    warmup: float,
    categories: Sequence[str],
) -> LoadResult:
    # The same client options as svc_product.store.mongo_ctx (tz_aware changes decoding).
    client: AsyncMongoClient = AsyncMongoClient(uri, tz_aware=True, appname="shop-benchmark")
    collection = client.get_default_database()["products"]

    async def by_id(rng: random.Random) -> None:
        doc = await collection.find_one({"_id": rng.choice(ids)}, PROJECTION)
        if doc is None:
            raise LookupError("a seeded product was not found")

    async def page(rng: random.Random, selector: dict[str, Any] | None = None) -> None:
        selector = selector or {}
        cursor = collection.find(selector, PROJECTION).sort(NEWEST_FIRST).limit(PAGE_SIZE)
        docs, _total = await asyncio.gather(
            cursor.to_list(length=PAGE_SIZE),
            collection.database.command("count", collection.name, query=selector),
        )
        if len(docs) != PAGE_SIZE:
            raise LookupError(f"a page had {len(docs)} products, not {PAGE_SIZE}")

    async def category_page(rng: random.Random) -> None:
        await page(rng, {"category": rng.choice(categories)})

    reads = {"id": by_id, "list": page, "category": category_page}
    try:
        return await closed_loop(
            reads[read],
            connections=connections,
            duration=duration,
            warmup=warmup,
        )
    finally:
        await client.close()


def mongo_load(
    uri: str,
    read: str,
    ids: Sequence[ObjectId],
    *,
    connections: int,
    duration: float,
    warmup: float,
    categories: Sequence[str] = (),
) -> LoadResult:
    """`read` is "id" (find_one by a random seeded _id), "list" (the first page plus the
    count) or "category" (the first page of one of `categories`, newest first, plus its
    count), each the way the product service does it."""
    return run_async(_mongo_load(uri, read, ids, connections, duration, warmup, categories))


# -- the carts' datastore, through a bare redis.asyncio client -------------------------------


async def _redis_load(
    url: str, keys: Sequence[str], connections: int, duration: float, warmup: float
) -> LoadResult:
    # What svc_cart.store does to read a cart: one GET of its key.
    client = Redis.from_url(url, client_name="shop-benchmark")

    async def get(rng: random.Random) -> None:
        if await client.get(rng.choice(keys)) is None:
            raise LookupError("a seeded cart was not found")

    try:
        return await closed_loop(get, connections=connections, duration=duration, warmup=warmup)
    finally:
        await client.aclose()


def redis_load(
    url: str, keys: Sequence[str], *, connections: int, duration: float, warmup: float
) -> LoadResult:
    """GET of a random one of `keys`, as the cart service reads a cart."""
    return run_async(_redis_load(url, keys, connections, duration, warmup))


# -- HTTP: wrk, or a Python driver with the same semantics ---------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """One request an HTTP driver may send."""

    path: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None  # sent as it is: give the Content-Type header with it


def json_post(path: str, body: Any) -> HttpRequest:
    return HttpRequest(
        path, "POST", {"Content-Type": "application/json"}, json.dumps(body, separators=(",", ":"))
    )


def wrk_available() -> bool:
    return shutil.which("wrk") is not None


def use_wrk(choice: str) -> bool | None:
    """Whether to drive HTTP load with wrk for ``--driver`` auto|wrk|python; None when wrk
    was asked for and is missing."""
    if choice == "wrk" and not wrk_available():
        return None
    return choice == "wrk" or (choice == "auto" and wrk_available())


_WRK_SCRIPT = """\
-- Generated by benchmarks/drivers.py: each request is one of these, picked at random.
-- {method, path, headers, body}; formatted once per thread, in init().
local specs = {
%(requests)s
}
local requests = {}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("seed", threads)
end

function init(args)
  math.randomseed(seed)
  for i, spec in ipairs(specs) do
    requests[i] = wrk.format(spec[1], spec[2], spec[3], spec[4])
  end
end

function request()
  return requests[math.random(#requests)]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK_JSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%.0f, " ..
    "\\"p99_us\\": %%.0f, \\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, " ..
    "\\"status\\": %%d, \\"timeout\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _lua_request(request: HttpRequest) -> str:
    headers = ", ".join(
        f"[{_lua_string(name)}] = {_lua_string(value)}" for name, value in request.headers.items()
    )
    body = "nil" if request.body is None else _lua_string(request.body)
    return (
        f"  {{{_lua_string(request.method)}, {_lua_string(request.path)}, {{{headers}}}, {body}}},"
    )


def _run_wrk(
    base_url: str, script: Path, *, connections: int, threads: int, seconds: float
) -> dict[str, Any]:
    command = [
        "wrk",
        f"-t{max(1, min(threads, connections))}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        base_url,
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in finished.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line.removeprefix("WRK_JSON "))
    raise RuntimeError(f"wrk gave no result (exit {finished.returncode}): {finished.stderr}")


def wrk_load(
    base_url: str,
    requests: Sequence[HttpRequest],
    *,
    connections: int,
    threads: int,
    duration: float,
    warmup: float,
    work_dir: Path,
    name: str = "random_requests",
) -> LoadResult:
    """wrk against `base_url`, every request a random one of `requests`. The script goes to
    `work_dir`/`name`.lua."""
    script = work_dir / f"{name}.lua"
    script.write_text(_WRK_SCRIPT % {"requests": "\n".join(map(_lua_request, requests))})
    if warmup > 0:
        _run_wrk(base_url, script, connections=connections, threads=threads, seconds=warmup)
    result = _run_wrk(base_url, script, connections=connections, threads=threads, seconds=duration)
    errors = sum(result[key] for key in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        # wrk counts a non-2xx/3xx answer as a request too, and as a status error.
        requests=result["requests"] - result["status"],
        errors=errors,
        seconds=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        first_error=", ".join(
            f"{key} {result[key]}"
            for key in ("connect", "read", "write", "status", "timeout")
            if result[key]
        ),
    )


async def http_closed_loop(
    base_url: str,
    requests: Sequence[HttpRequest],
    *,
    connections: int,
    duration: float,
    warmup: float,
) -> LoadResult:
    """The closed loop of python_http_load, for a caller already in an event loop."""
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(base_url, connector=connector, timeout=timeout) as session:

        async def send(rng: random.Random) -> None:
            request = rng.choice(requests)
            async with session.request(
                request.method, request.path, headers=request.headers, data=request.body
            ) as response:
                await response.read()
                if response.status >= 400:
                    raise RuntimeError(f"answered {response.status}")

        return await closed_loop(send, connections=connections, duration=duration, warmup=warmup)


def python_http_load(
    base_url: str,
    requests: Sequence[HttpRequest],
    *,
    connections: int,
    duration: float,
    warmup: float,
) -> LoadResult:
    """The same closed loop as wrk, from aiohttp's client on uvloop in this process. It costs
    far more CPU than wrk, which this machine's two cores take from the servers measured."""
    return run_async(
        http_closed_loop(
            base_url, requests, connections=connections, duration=duration, warmup=warmup
        )
    )


# -- a paced prober ---------------------------------------------------------------------------


def http_load(
    use_wrk: bool,
    base_url: str,
    requests: Sequence[HttpRequest],
    *,
    threads: int,
    work_dir: Path,
    connections: int,
    duration: float,
    warmup: float,
    name: str = "random_requests",
) -> LoadResult:
    """One HTTP line: wrk when it is there (`use_wrk`), else the Python driver."""
    load = {"connections": connections, "duration": duration, "warmup": warmup}
    if use_wrk:
        return wrk_load(base_url, requests, threads=threads, work_dir=work_dir, name=name, **load)
    return python_http_load(base_url, requests, **load)


async def paced_probe(
    url: str, *, rate: float, connections: int, duration: float, warmup: float
) -> LoadResult:
    """GET `url` at a fixed total `rate` per second from `connections` probers, each on its
    own kept-alive connection, for `duration` seconds after `warmup`: the latency of every
    request due in that window. Light enough to watch a server while something else loads
    it."""
    # One connection per prober, kept alive, as a load balancer's health checks would be.
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    interval = connections / rate  # each prober's period
    latencies: list[float] = []
    errors = 0
    first_error = ""
    start = time.perf_counter()
    window_start = start + warmup
    window_end = window_start + duration

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def prober(number: int) -> None:
            nonlocal errors, first_error
            # Staggered, so the probers' requests interleave evenly.
            due = start + number * interval / connections
            answered = start
            while due < window_end:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                # Timed from when it was due if the previous answer held it up (so a stalled
                # server counts in full: no coordinated omission), else from when it went out
                # (so the timer's own lateness does not count).
                origin = due if answered > due else time.perf_counter()
                try:
                    async with session.get(url) as response:
                        await response.read()
                        if response.status >= 400:
                            raise RuntimeError(f"answered {response.status}")
                except Exception as exc:  # counted, like the closed loops do
                    answered = time.perf_counter()
                    if due >= window_start:
                        errors += 1
                        first_error = first_error or f"{type(exc).__name__}: {exc}"
                else:
                    answered = time.perf_counter()
                    if due >= window_start:
                        latencies.append(answered - origin)
                due += interval

        await asyncio.gather(*(prober(number) for number in range(connections)))
    return _summary(latencies, errors, duration, first_error)
