"""Cart reads beside Redis' own GET and a plain request, with two workers, and what the token
check costs: remembered, asked of the user service every time, and its steps in process."""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import drivers
import harness
from drivers import HttpRequest
from harness import BenchmarkError, Shop, measure
from redis.asyncio import Redis

from shopkit.auth import Identity, _verified, identity_of, issue_token, service_token, verify_token
from shopkit.revocation import TokenStatus

CARTS, CART_LINES = 100, 3
RATIOS = [
    ("cart read", "datastore cart"),
    ("cart read", "cart health"),
    ("cart read, no token cache", "cart read"),
    ("cart read, 2 workers", "cart read"),
]


def fill_carts(shop: Shop, ids: list[str]) -> list[harness.Customer]:
    """CARTS customers with CART_LINES products (in stock) each, through the cart service."""
    in_stock = [product_id for number, product_id in enumerate(ids) if number % 50 >= 5]
    customers = shop.register(CARTS)
    for number, customer in enumerate(customers):
        url = f"{shop.url('cart')}/api/cart/{customer.user_id}/items"
        for line in range(CART_LINES):
            product_id = in_stock[(number * CART_LINES + line) % len(in_stock)]
            harness.call("POST", url, {"product_id": product_id, "quantity": 1}, customer.token)
    last = customers[-1]
    cart = harness.call("GET", f"{shop.url('cart')}/api/cart/{last.user_id}", token=last.token)
    if len(cart["data"]["items"]) != CART_LINES:
        raise BenchmarkError(f"the cart service answered an unexpected cart: {str(cart)[:300]}")
    return customers


async def redis_gets(shop: Shop, keys: list[str]) -> drivers.LoadResult:
    """What the cart service does to read a cart, from a bare redis-py client: one GET."""
    client = Redis.from_url(shop.env("cart", "REDIS_URL"), client_name="shop-benchmark")

    async def get(rng: random.Random) -> None:
        if await client.get(rng.choice(keys)) is None:
            raise LookupError("a filled cart was not found")

    try:
        return await drivers.closed_loop(get, shop.load)
    finally:
        await client.aclose()


def token_check_steps(repeat: int = 20_000) -> dict[str, float]:
    """Microseconds per call of each step of a token check, in this process."""
    secret = secrets.token_urlsafe(48)
    token = issue_token(secret, sub="42", email="bench42@bench.example", role="customer")
    claims = {"sub": "42", "email": "a@b.c", "role": "customer", "iat": 1, "exp": 2}
    identity = Identity(user_id="42", email="a@b.c", role="customer", issued_at=1)
    status = TokenStatus(lambda user_id: asyncio.sleep(0, 0), ttl=60)

    def per_call(step: Callable[[], object]) -> float:
        started = time.perf_counter()
        for _ in range(repeat):
            step()
        return round((time.perf_counter() - started) / repeat * 1e6, 2)

    def new_token() -> None:
        _verified.cache_clear()  # HMAC, JSON and the claims model, as for a token never seen
        verify_token(secret, token)

    async def remembered() -> float:
        await status.ensure_current(identity)  # the one miss; remembered from then on
        started = time.perf_counter()
        for _ in range(repeat):
            await status.ensure_current(identity)
        return round((time.perf_counter() - started) / repeat * 1e6, 2)

    return {
        "verify a token seen before (remembered)": per_call(lambda: verify_token(secret, token)),
        "verify a new token (signature and claims)": per_call(new_token),
        "the claims model alone": per_call(lambda: identity_of(claims)),
        "revocation state remembered": asyncio.run(remembered()),
    }


def run(options: argparse.Namespace) -> dict[str, Any]:
    variants = {
        "cart-2-workers": ("cart", {"WORKERS": "2"}),
        # Every read asks the user service whether its token was revoked: a check that misses.
        "cart-no-token-cache": ("cart", {"TOKEN_STATUS_CACHE_SECONDS": "0"}),
    }
    with harness.running_shop(options, variants) as shop:
        customers = fill_carts(shop, harness.seed_products(shop, options.products, categories=8))
        reads = [
            HttpRequest(f"/api/cart/{c.user_id}", headers={"Authorization": f"Bearer {c.token}"})
            for c in customers
        ]
        service = {
            "Authorization": f"Bearer {service_token(shop.env('user', 'JWT_SECRET'), 'bench')}"
        }
        statuses = [
            HttpRequest(f"/internal/users/{c.user_id}/token-status", headers=service)
            for c in customers
        ]

        def http(name: str, requests: list[HttpRequest]) -> Callable[[], drivers.LoadResult]:
            return lambda: drivers.http(shop.url(name), requests, shop.load, name)

        keys = [f"cart:{customer.user_id}" for customer in customers]
        plan = {
            "datastore cart": ("driver", lambda: redis_gets(shop, keys)),
            "cart read": ("cart", http("cart", reads)),
            "cart read, 2 workers": ("cart-2-workers", http("cart-2-workers", reads)),
            "cart health": ("cart", http("cart", [HttpRequest("/health")])),
            "cart read, no token cache": (
                "cart-no-token-cache",
                http("cart-no-token-cache", reads),
            ),
            "token status": ("user", http("user", statuses)),
        }
        rows = [measure(shop, name, cost, load) for name, (cost, load) in plan.items()]
    harness.print_lines(f"cart reads: {CARTS} carts of {CART_LINES} products", rows)
    ratios = harness.print_ratios(rows, RATIOS)
    steps = token_check_steps()
    harness.out.print(
        "a token check's steps, in process (µs per call): "
        + "; ".join(f"{step} {micros:.2f}" for step, micros in steps.items())
    )
    return {"lines": [asdict(row) for row in rows], "ratios": ratios, "token_check_us": steps}
