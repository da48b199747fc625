"""The user service: profile reads, logins at each BCRYPT_ROUNDS, what the login limits add, how
long a refusal takes, and whether /health waits while bcrypt runs."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import random
import secrets
import statistics
import time
from dataclasses import asdict
from typing import Any

import asyncpg
import drivers
import harness
from drivers import HttpRequest
from harness import Customer, Measurement, Shop, measure

from svc_user.store import UserStore

LOGIN_CONNECTIONS = 8
HEALTH_RATE, HEALTH_CONNECTIONS = 100.0, 2  # /health probes per second, paced
PROBES = 30  # logins of each kind timed one at a time
# Were bcrypt on the event loop, a health check arriving mid-hash would wait out the rest of
# it: its p99 would reach a whole login. Below a quarter of one it is not waiting for bcrypt.
BLOCKED_SHARE = 0.25


def login_requests(customers: list[Customer]) -> list[HttpRequest]:
    return [
        drivers.json_post("/api/users/login", {"email": c.email, "password": c.password})
        for c in customers
    ]


def reservations(shop: Shop, customers: list[Customer], load: drivers.Load) -> drivers.LoadResult:
    """The login limits' two calls around a password check (the user store's own
    take_login_attempt and finish_login_attempt), on its database, from 200 addresses."""
    addresses = [f"10.{n // 250}.{n % 250}.1" for n in range(200)]

    async def run() -> drivers.LoadResult:
        size = load.connections
        pool = await asyncpg.create_pool(
            shop.env("user", "DATABASE_URL"), min_size=size, max_size=size
        )
        store = UserStore(pool)  # type: ignore[arg-type]  # asyncpg's pool does what it asks

        async def reserve(rng: random.Random) -> None:
            email, address = rng.choice(customers).email, rng.choice(addresses)
            await store.take_login_attempt(email, address)
            await store.finish_login_attempt(email, address, "succeeded")

        try:
            return await drivers.closed_loop(reserve, load)
        finally:
            await pool.close()

    return drivers.run_async(run())


def refusal_times(url: str, customers: list[Customer]) -> dict[str, Any]:
    """Medians (ms) of an unknown email, a wrong password and the right one, one at a time,
    interleaved, a different account each time; and whether the two refusals read the same."""
    times: dict[str, list[float]] = {"unknown email": [], "wrong password": [], "right": []}
    bodies = {}
    for number, customer in enumerate(customers[:PROBES]):
        attempts = {
            "unknown email": (f"nobody.{secrets.token_hex(6)}@bench.example", customer.password),
            "wrong password": (customer.email, customer.password + "x"),
            "right": (customer.email, customer.password),
        }
        kinds = list(attempts)
        for kind in kinds[number % 3 :] + kinds[: number % 3]:  # none always first
            email, password = attempts[kind]
            started = time.perf_counter()
            body = {"email": email, "password": password}
            bodies[kind] = harness.call("POST", url, body, expect=200 if kind == "right" else 401)
            times[kind].append((time.perf_counter() - started) * 1000)
    medians = {kind: statistics.median(ms) for kind, ms in times.items()}
    return medians | {"same 401 body": bodies["unknown email"] == bodies["wrong password"]}


async def health(url: str, load: drivers.Load) -> drivers.LoadResult:
    return await drivers.paced_probe(f"{url}/health", HEALTH_RATE, HEALTH_CONNECTIONS, load)


async def health_under_logins(
    url: str, requests: list[HttpRequest], probe: drivers.Load, logins: drivers.Load
) -> tuple[drivers.LoadResult, drivers.LoadResult]:
    """The /health probe and a login load in the same window, on one event loop."""
    answers = await asyncio.gather(health(url, probe), drivers.python_http(url, requests, logins))
    return answers[0], answers[1]


def run(options: argparse.Namespace) -> dict[str, Any]:
    # Every request comes from this machine's address: no limit on failures from one address.
    settings = {"LOGIN_ADDRESS_FREE_FAILURES": "100000"}
    variants = {
        f"user-{rounds}-rounds": ("user", {**settings, "BCRYPT_ROUNDS": str(rounds)})
        for rounds in options.bcrypt_rounds
    }
    rows, refusals = [], {}
    with harness.running_shop(options, variants) as shop:
        # Python's loop, not wrk, for logins: its warm-up runs on the same connections as the
        # window, where wrk's separate warm-up would leave hashes running into the window.
        logins = dataclasses.replace(shop.load, connections=LOGIN_CONNECTIONS)
        for rounds in options.bcrypt_rounds:
            name = f"user-{rounds}-rounds"
            url = shop.url(name)
            harness.err.print(f"registering {options.accounts} customers at {rounds} rounds")
            customers = shop.register(options.accounts, service=name)
            requests = login_requests(customers)
            if not rows:  # once: the rounds do not change these
                token = [{"Authorization": f"Bearer {c.token}"} for c in customers]
                reads = [HttpRequest("/api/users/profile", headers=t) for t in token]
                rows.append(
                    measure(
                        shop, "profile reads", name, drivers.http, url, reads, shop.load, "profile"
                    )
                )
                rows.append(measure(shop, "health alone", None, health, url, shop.load))
                rows.append(
                    measure(
                        shop, "login reservation", "postgres", reservations, shop, customers, logins
                    )
                )
            refusals[rounds] = refusal_times(f"{url}/api/users/login", customers)
            login = f"login, {rounds} rounds"
            rows.append(measure(shop, login, name, drivers.python_http, url, requests, logins))
            under = f"health under login, {rounds} rounds"
            rows.append(
                measure(shop, under, name, health_under_logins, url, requests, shop.load, logins)
            )
    harness.print_lines("the user service (health under login: CPU µs per login)", rows)
    for rounds, refused in refusals.items():
        print_verdict(rounds, refused, {row.name: row for row in rows})
    return {"lines": [asdict(row) for row in rows], "refusals": refusals}


def print_verdict(rounds: int, refused: dict[str, Any], lines: dict[str, Measurement]) -> None:
    """Logins/s, a refusal beside a login, and whether bcrypt blocks /health."""
    one, under = refused["right"], lines[f"health under login, {rounds} rounds"].p99_ms
    blocked = under >= BLOCKED_SHARE * one
    verdict = "[red]blocked[/]" if blocked else "[green]not blocked[/]"
    harness.out.print(
        f"{rounds} rounds: {lines[f'login, {rounds} rounds'].rate:.1f} logins/s; one at a "
        f"time: the right password {one:.1f} ms, an unknown email {refused['unknown email']:.1f} "
        f"ms, a wrong password {refused['wrong password']:.1f} ms, the same 401 body: "
        f"{refused['same 401 body']}; /health p99 {lines['health alone'].p99_ms:.1f} ms alone, "
        f"{under:.1f} ms under logins: {verdict if one >= 20 else 'a login too short to tell'}"
    )
