"""What every benchmark command shares: its error type, common options, consoles, the table
of lines and the JSON file, waiting for a service to answer, stopping on SIGTERM, and
accounting the CPU each process spends on a line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import drivers
import psutil
import pymongo
import redis
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.table import Table

from shopctl import embedded, processes
from shopkit.logs import mask_url

err = Console(stderr=True, highlight=False)


class BenchmarkError(Exception):
    """Something the benchmark needs did not work; the message says what."""


def argument_parser(doc: str) -> argparse.ArgumentParser:
    """A command's parser, its description the docstring's first paragraph, with the options
    every benchmark has first: --duration and --warmup."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--duration", type=float, default=10, help="seconds measured per line")
    parser.add_argument(
        "--warmup", type=float, default=2, help="unmeasured seconds before each line"
    )
    return parser


def add_driver_options(parser: argparse.ArgumentParser, driver_help: str) -> None:
    """The options every benchmark has last: --threads and --driver for wrk, --json."""
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument(
        "--driver",
        choices=("auto", "wrk", "python"),
        default="auto",
        help=driver_help + "; auto: wrk when it is on PATH, else the Python driver",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")


def http_driver(choice: str) -> bool | None:
    """Whether wrk drives the HTTP load for ``--driver`` `choice`; None (said on stderr)
    when wrk was asked for and is not on PATH."""
    use_wrk = drivers.use_wrk(choice)
    if use_wrk is None:
        err.print("wrk is not on PATH (Debian: apt-get install -y wrk)")
    return use_wrk


def report_console() -> Console:
    """The console the results table goes to."""
    console = Console()
    if not console.is_terminal:  # a file or a pipe: do not squeeze the table into 80 columns
        console = Console(width=160)
    return console


def write_json(path: Path, settings: Mapping[str, Any], **sections: Any) -> None:
    """The results as JSON: when, on what machine, with which settings, then `sections`."""
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        "settings": dict(settings),
        **sections,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    err.print(f"results written to {path}")


@contextlib.contextmanager
def ended_plainly() -> Iterator[None]:
    """Around a benchmark's work: a failure (BenchmarkError) is one red line and exit status
    1, Ctrl-C or SIGTERM one line and 130, never a traceback (what the work started is
    stopped by its own context managers on the way out)."""
    try:
        yield
    except BenchmarkError as exc:
        err.print(f"[red]benchmark failed:[/] {exc}")
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        err.print("interrupted; everything this run started is stopped")
        raise SystemExit(130) from None


def interrupt(signum: int, frame: object) -> None:
    """A SIGTERM handler: unwind like Ctrl-C, so every `finally` stops what it started."""
    raise KeyboardInterrupt


def _answers_health(name: str, process: processes.ManagedProcess, url: str) -> bool:
    if not process.alive():
        tail = processes.log_tail(process.log_path)
        raise BenchmarkError(f"{name} exited while starting; its log ends:\n{tail}")
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_for_health(name: str, process: processes.ManagedProcess, url: str, timeout: float) -> None:
    """Poll `url`/health until it answers 200; BenchmarkError (with the log's tail) when the
    process dies or `timeout` seconds pass first."""
    err.print(f"waiting for {name} (pid {process.pid}) on {url}")
    if not processes.wait_until(
        lambda: _answers_health(name, process, url), timeout, interval=0.05
    ):
        tail = processes.log_tail(process.log_path)
        raise BenchmarkError(
            f"{name} did not answer /health within {timeout:g} s; log ends:\n{tail}"
        )


# -- what a line measured ---------------------------------------------------------------


@dataclass
class Measurement:
    """What every benchmark reports of a line; each adds its own fields."""

    name: str
    what: str
    driver: str
    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    first_error: str
    # Process name -> cores it kept busy during the line (warm-up included); "driver" is the
    # load generator (this process, and wrk), "other" whatever else ran on the machine.
    cpu: dict[str, float]


def figures(result: drivers.LoadResult, cpu: Mapping[str, float]) -> dict[str, Any]:
    """Measurement's fields from a load's result and a CpuMeter reading."""
    return {
        "rate": result.rate,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "requests": result.requests,
        "errors": result.errors,
        "first_error": result.first_error,
        "cpu": {key: round(value, 2) for key, value in cpu.items()},
    }


def lines_table(title: str, caption: str, per_request: str, cpu_columns: Sequence[str]) -> Table:
    """The table of lines every benchmark prints; fill it with `line_cells`."""
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column in ("line", "what"):
        table.add_column(column)
    for column in ("req/s", "p50 ms", "p99 ms", "errors", per_request, *cpu_columns):
        table.add_column(column, justify="right")
    return table


def line_cells(
    m: Measurement, figures: Sequence[str], per_request: str, cpu_columns: Sequence[str]
) -> list[str]:
    """A row of `lines_table`: `figures` are req/s, p50 and p99 as the benchmark shows them."""
    errors = str(m.errors) if not m.errors else f"[red]{m.errors}[/] {m.first_error}"
    cores = (f"{m.cpu[key]:.2f}" if key in m.cpu else "-" for key in cpu_columns)
    return [m.name, m.what, *figures, errors, per_request, *cores]


# -- backing servers ---------------------------------------------------------------------

_POSTGRES_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def postgres_answers(uri: str) -> bool:
    """Whether a PostgreSQL server answers at `uri` (within two seconds)."""

    async def probe() -> None:
        connection = await asyncpg.connect(uri, timeout=2)
        await connection.close()

    try:
        asyncio.run(probe())
    except _POSTGRES_ERRORS:
        return False
    return True


async def _drop_database(server_uri: str, name: str) -> None:
    connection = await asyncpg.connect(server_uri, timeout=10)
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await connection.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    finally:
        await connection.close()


@contextlib.contextmanager
def throwaway_database(server_uri: str, name: str) -> Iterator[str]:
    """A new PostgreSQL database `name` on the server at `server_uri` (its URL), dropped when
    the block ends, connections and all."""
    try:
        embedded.ensure_databases(server_uri, [name])
    except embedded.EmbeddedServerError as exc:
        raise BenchmarkError(str(exc)) from None
    try:
        yield embedded.database_url(server_uri, name)
    finally:
        try:
            asyncio.run(_drop_database(server_uri, name))
        except _POSTGRES_ERRORS as exc:
            err.print(f"[yellow]could not drop the database {name}: {exc}")


def listening_pid(url: str, default_port: int) -> int | None:
    """The PID of the local process listening on the URL's TCP port, when we may see it (and
    read its CPU time): a server on this machine, for the CPU columns."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or default_port
    try:
        for connection in psutil.net_connections(kind="tcp"):
            if (
                connection.status == psutil.CONN_LISTEN
                and connection.laddr
                and connection.laddr.port == port
                and connection.pid
            ):
                psutil.Process(connection.pid).cpu_times()  # readable by us?
                return connection.pid
    except (psutil.AccessDenied, psutil.NoSuchProcess):
        return None
    return None


# -- CPU accounting -------------------------------------------------------------------------


def _cpu_seconds(process: psutil.Process, whole_tree: bool) -> float:
    try:
        times = process.cpu_times()
        total = times.user + times.system
        if whole_tree:
            # Children it has reaped (a server's finished backends) plus the live ones.
            total += times.children_user + times.children_system
            for child in process.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):  # ended while we looked
                    child_times = child.cpu_times()
                    total += child_times.user + child_times.system
    except psutil.NoSuchProcess:
        return 0.0
    return total


def _driver_cpu_seconds() -> float:
    # This process (the Python drivers) plus its reaped children (wrk).
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _busy_seconds(times: Any) -> float:
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuMeter:
    """Cores each watched process kept busy from now until `read()`; also "driver" (this
    process and the children it reaped: the load generators) and "other" (the rest of the
    machine). Processes named in `whole_trees` count with all their children (a PostgreSQL
    server and its backends)."""

    def __init__(self, pids: Mapping[str, int], whole_trees: Collection[str] = ()) -> None:
        self._watched = {
            name: (psutil.Process(pid), name in whole_trees) for name, pid in pids.items()
        }
        self._before = {
            name: _cpu_seconds(process, tree) for name, (process, tree) in self._watched.items()
        }
        self._driver_before = _driver_cpu_seconds()
        self._machine_before = _busy_seconds(psutil.cpu_times())
        self._started = time.perf_counter()

    def read(self) -> dict[str, float]:
        wall = time.perf_counter() - self._started
        busy = (_busy_seconds(psutil.cpu_times()) - self._machine_before) / wall
        cpu = {
            name: (_cpu_seconds(process, tree) - self._before[name]) / wall
            for name, (process, tree) in self._watched.items()
        }
        cpu["driver"] = (_driver_cpu_seconds() - self._driver_before) / wall
        cpu["other"] = max(0.0, busy - sum(cpu.values()))
        return cpu


@contextlib.contextmanager
def mongo_database(
    work_dir: Path, prefix: str, embedded_name: str
) -> Iterator[tuple[str, str, processes.ManagedProcess | None]]:
    """(URI of a fresh database, a description, the server process if we started it):
    MONGODB_URI's server with a database made up for the run (dropped afterwards), else
    nx-27017 in memory."""
    given = os.environ.get("MONGODB_URI")
    if given:
        name = f"{prefix}_{secrets.token_hex(4)}"
        uri = embedded.database_url(given, name)
        try:
            yield uri, f"MONGODB_URI {mask_url(uri)}", None
        finally:
            # If the server went away there is nothing to drop (and nothing to add to the error).
            with (
                contextlib.suppress(PyMongoError),
                pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client,
            ):
                client.drop_database(name)
        return
    err.print("starting the embedded MongoDB-protocol server (nx-27017, in memory)")
    try:
        server = embedded.start_mongo(None, log_dir=work_dir / "mongodb")
    except embedded.EmbeddedServerError as exc:
        raise BenchmarkError(str(exc)) from None
    try:
        yield (
            embedded.database_url(server.uri, embedded_name),
            "nx-27017, in memory",
            server.process,
        )
    finally:
        server.stop()


MACHINE_REDIS = "redis://127.0.0.1:6379/0"


def redis_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def delete_keys(url: str, keys: Sequence[str]) -> None:
    """Remove the keys a run wrote (its carts); say so if that cannot be done."""
    try:
        with redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5) as client:
            for start in range(0, len(keys), 500):
                client.delete(*keys[start : start + 500])
    except (redis.RedisError, OSError) as exc:
        err.print(f"[yellow]could not delete this run's {len(keys)} keys (cart:*): {exc}")


@contextlib.contextmanager
def redis_server(work_dir: Path, written: Sequence[str]) -> Iterator[tuple[str, str, int | None]]:
    """(URL, a description, the server's PID when it runs here): REDIS_URL's server, else
    this machine's, else an embedded one. The keys in `written` (filled in by the caller as
    it goes) are deleted when the block ends."""
    given = os.environ.get("REDIS_URL")
    server = None
    if given:
        url, described = given, f"REDIS_URL {mask_url(given)}"
    elif redis_answers(MACHINE_REDIS):
        url, described = MACHINE_REDIS, "this machine's, on 127.0.0.1:6379"
    else:
        err.print("no Redis on 127.0.0.1:6379: starting an embedded one")
        try:
            server = embedded.start_redis(None, log_dir=work_dir / "redis")
        except embedded.EmbeddedServerError as exc:
            raise BenchmarkError(str(exc)) from None
        url, described = server.uri, "embedded redis-server"
    try:
        yield url, described, listening_pid(url, 6379)
    finally:
        if written:
            delete_keys(url, written)
        if server is not None:
            server.stop()


# -- the user service: whom every token names -------------------------------------------------
# Each service that checks customers' tokens asks the user service whether they were revoked
# (shopkit.revocation), so a benchmark's customers must be accounts there. They are made
# directly in its database, thousands in one statement, instead of through bcrypt.


@contextlib.contextmanager
def user_service(
    work_dir: Path, postgres_uri: str, secret: str, port: int, start_timeout: float
) -> Iterator[tuple[str, str, processes.ManagedProcess]]:
    """The user service on `port` over a throwaway database on the PostgreSQL server at
    `postgres_uri`: (its URL, its database URL, its process); all gone when the block ends."""
    name = f"shop_bench_users_{secrets.token_hex(4)}"
    with throwaway_database(postgres_uri, name) as database_url:
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "JWT_SECRET": secret,
            "DATABASE_URL": database_url,
            "BCRYPT_ROUNDS": "4",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for variable in ("ADMIN_EMAIL", "ADMIN_PASSWORD"):
            env.pop(variable, None)
        process = processes.spawn(
            [sys.executable, "-m", "svc_user"],
            log_path=work_dir / "user.log",
            env=env,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for_health("user", process, url, start_timeout)
            yield url, database_url, process
        finally:
            processes.stop(process)


async def insert_accounts(database_url: str, ids: Collection[int], role: str = "customer") -> None:
    """Accounts with these ids (email bench<id>@bench.example, a password nobody knows) in
    the user service's database."""
    import bcrypt

    password_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(4)).decode()
    connection = await asyncpg.connect(database_url, timeout=10)
    try:
        await connection.execute(
            """INSERT INTO users (id, email, password_hash, role) OVERRIDING SYSTEM VALUE
               SELECT id, 'bench' || id || '@bench.example', $2, $3
               FROM unnest($1::bigint[]) AS id ON CONFLICT DO NOTHING""",
            list(ids),
            password_hash,
            role,
        )
    finally:
        await connection.close()


def add_accounts(database_url: str, ids: Collection[int], role: str = "customer") -> None:
    """insert_accounts, from outside an event loop."""
    asyncio.run(insert_accounts(database_url, ids, role))
