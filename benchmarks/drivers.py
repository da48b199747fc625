"""Load drivers: closed loops (wrk, or aiohttp's client where wrk is missing, or any coroutine
such as a bare PyMongo or redis-py read) and a paced prober.

A closed loop runs `connections` clients that each send a request, wait for the answer and
send the next, for `duration` seconds after an unmeasured `warmup`; only answers inside the
window count (as in wrk). Each HTTP request is a random one of a list. The prober is an open
loop: it sends at a fixed rate whatever the answers do, and times a request held up by a slow
answer from when it was due, so a stall counts in full.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

T = TypeVar("T")


class BenchmarkError(Exception):
    """Something a benchmark needs did not work; the message says what."""


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


@dataclass(frozen=True)
class Load:
    """How a line is driven."""

    connections: int
    duration: float
    warmup: float
    use_wrk: bool
    threads: int
    work_dir: Path  # where wrk's scripts go


@dataclass(frozen=True)
class HttpRequest:
    path: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | None = None  # sent as it is, with a Content-Type header for it


def json_post(path: str, body: Any) -> HttpRequest:
    return HttpRequest(path, "POST", {"Content-Type": "application/json"}, json.dumps(body))


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """On uvloop, as the services run, where it is installed."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coroutine)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank of an already sorted sequence (0.0 when it is empty)."""
    if not ordered:
        return 0.0
    return ordered[max(0, min(len(ordered) - 1, round(fraction * len(ordered)) - 1))]


class Window:
    """The measured window after the warm-up: what is answered, or fails, inside it counts."""

    def __init__(self, load: Load) -> None:
        self.opened = time.perf_counter()
        self.start, self.end = self.opened + load.warmup, self.opened + load.warmup + load.duration
        self.latencies: list[float] = []
        self.errors, self.first_error = 0, ""

    def answered(self, since: float, counted_at: float | None = None) -> None:
        now = time.perf_counter()
        if self.start <= (now if counted_at is None else counted_at) < self.end:
            self.latencies.append(now - since)

    def failed(self, exc: Exception, counted_at: float | None = None) -> None:
        if self.start <= (time.perf_counter() if counted_at is None else counted_at) < self.end:
            self.errors += 1
            self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"

    def result(self) -> LoadResult:
        ordered = sorted(self.latencies)
        p50, p99 = (percentile(ordered, fraction) * 1000 for fraction in (0.50, 0.99))
        seconds = self.end - self.start
        return LoadResult(len(ordered), self.errors, seconds, p50, p99, self.first_error)


async def closed_loop(
    operation: Callable[[random.Random], Awaitable[object]], load: Load
) -> LoadResult:
    window = Window(load)

    async def client(number: int) -> None:
        rng = random.Random(number)
        while (sent := time.perf_counter()) < window.end:
            try:
                await operation(rng)
            except Exception as exc:  # counted, never stops the line
                window.failed(exc)
            else:
                window.answered(sent)

    await asyncio.gather(*(client(number) for number in range(load.connections)))
    return window.result()


async def _fetch(session: aiohttp.ClientSession, request: HttpRequest) -> None:
    method, path, headers, body = request.method, request.path, request.headers, request.body
    async with session.request(method, path, headers=headers, data=body) as response:
        await response.read()
        if response.status >= 400:
            raise RuntimeError(f"answered {response.status}")


def _session(base_url: str | None, connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections)
    return aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(10))


async def python_http(base_url: str, requests: Sequence[HttpRequest], load: Load) -> LoadResult:
    """The closed loop from aiohttp's client; it takes several times wrk's CPU."""
    async with _session(base_url, load.connections) as session:
        return await closed_loop(lambda rng: _fetch(session, rng.choice(requests)), load)


_WRK_SCRIPT = """\
local specs = {
%s
}
local requests = {}
local threads = 0
function setup(thread) threads = threads + 1; thread:set("seed", threads) end
function init(args)
  math.randomseed(seed)
  for i, s in ipairs(specs) do requests[i] = wrk.format(s[1], s[2], s[3], s[4]) end
end
function request() return requests[math.random(#requests)] end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_JSON [%%d, %%d, %%.0f, %%.0f, %%d, %%d, %%d, %%d, %%d]\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""
_WRK_ERRORS = ("connect", "read", "write", "status", "timeout")


def _lua(text: str | None) -> str:
    # An ASCII JSON string is a Lua string (our paths, tokens and bodies are ASCII).
    return "nil" if text is None else json.dumps(text)


def _wrk(base_url: str, script: Path, load: Load, seconds: float) -> list[float]:
    command = ["wrk", f"-t{max(1, min(load.threads, load.connections))}"]
    command += [f"-c{load.connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s"]
    finished = subprocess.run(
        [*command, "-s", str(script), base_url], capture_output=True, text=True, check=False
    )
    for line in finished.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line.removeprefix("WRK_JSON "))
    raise BenchmarkError(f"wrk gave no result (exit {finished.returncode}): {finished.stderr}")


def http(base_url: str, requests: Sequence[HttpRequest], load: Load, name: str) -> LoadResult:
    """One HTTP line: wrk (its Lua script written to work_dir/`name`.lua) when the run uses
    it, else the Python driver."""
    if not load.use_wrk:
        return run_async(python_http(base_url, requests, load))
    specs = (
        f"  {{{_lua(r.method)}, {_lua(r.path)}, {{"
        + ", ".join(f"[{_lua(k)}] = {_lua(v)}" for k, v in r.headers.items())
        + f"}}, {_lua(r.body)}}},"
        for r in requests
    )
    script = load.work_dir / f"{name.replace(' ', '_').replace(',', '')}.lua"
    script.write_text(_WRK_SCRIPT % "\n".join(specs))
    if load.warmup > 0:
        _wrk(base_url, script, load, load.warmup)
    total, micros, p50, p99, *errors = _wrk(base_url, script, load, load.duration)
    problems = ", ".join(f"{kind} {n}" for kind, n in zip(_WRK_ERRORS, errors, strict=True) if n)
    # wrk counts a 4xx/5xx answer as a request and as a status error.
    return LoadResult(
        int(total - errors[3]), int(sum(errors)), micros / 1e6, p50 / 1e3, p99 / 1e3, problems
    )


async def paced_probe(url: str, rate: float, connections: int, load: Load) -> LoadResult:
    """GET `url` at `rate` per second in all from `connections` probers, each on its own
    kept-alive connection: the latency of every request due in the window, timed from when
    it was due if the previous answer held it up (so a stall counts in full)."""
    window, interval = Window(load), connections / rate
    async with _session(None, connections) as session:

        async def prober(number: int) -> None:
            due = answered = window.opened + number * interval / connections
            while due < window.end:
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                since = due if answered > due else time.perf_counter()
                try:
                    await _fetch(session, HttpRequest(url))
                except Exception as exc:  # counted, like the closed loops do
                    window.failed(exc, counted_at=due)
                else:
                    window.answered(since, counted_at=due)
                answered, due = time.perf_counter(), due + interval

        await asyncio.gather(*(prober(number) for number in range(connections)))
    return window.result()
