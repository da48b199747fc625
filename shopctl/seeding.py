"""Loading the demo catalogue and customers into a shop through its public API.

The data ships in the package (`shopctl/seed_data/`). A product is known by its name: one
the shop lacks is created, one that differs from the demo data is put back as shipped
(price, description, stock, ...), the rest are left alone, so a second run changes nothing.
Customers are registered; an existing one is left as it is (only its owner could change it).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from importlib import resources
from typing import Any

from shopctl.shop_client import Reply, ShopClient, call_with_retries


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    FAILED = "failed"


class Kind(StrEnum):
    PRODUCTS = "products"
    CUSTOMERS = "customers"


@dataclass(frozen=True)
class DemoProduct:
    name: str
    description: str
    price: Decimal
    category: str
    stock: int
    image_url: str | None

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "price": self.price,
            "category": self.category,
            "stock": self.stock,
            "imageUrl": self.image_url,
        }

    def changes_from(self, shop_product: dict[str, Any]) -> dict[str, Any]:
        """The fields of the shop's copy that differ from the demo data, with the demo's
        values (empty when they agree)."""
        wanted = self.body()
        return {
            key: value
            for key, value in wanted.items()
            if _comparable(shop_product.get(key)) != _comparable(value)
        }


def _comparable(value: Any) -> Any:
    if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        return Decimal(str(value))
    return value


@dataclass(frozen=True)
class DemoCustomer:
    email: str
    first_name: str
    last_name: str


@dataclass(frozen=True)
class DemoData:
    products: list[DemoProduct]
    customers: list[DemoCustomer]

    @property
    def categories(self) -> set[str]:
        return {product.category for product in self.products}


def load_demo_data() -> DemoData:
    """The catalogue and customers shipped in `shopctl/seed_data/`."""
    folder = resources.files("shopctl") / "seed_data"
    catalogue = json.loads((folder / "catalogue.json").read_text(encoding="utf-8"))
    customers = json.loads((folder / "customers.json").read_text(encoding="utf-8"))
    products = [
        DemoProduct(
            name=item["name"],
            description=item.get("description", ""),
            price=Decimal(item["price"]),
            category=item["category"],
            stock=int(item.get("stock", 0)),
            image_url=item.get("imageUrl"),
        )
        for item in catalogue["products"]
    ]
    people = [
        DemoCustomer(item["email"], item.get("first_name", ""), item.get("last_name", ""))
        for item in customers["customers"]
    ]
    return DemoData(products, people)


class SeedFailure(Exception):
    """One item could not be loaded; the message names the call and its request id."""

    def __init__(self, label: str, reply: Reply) -> None:
        super().__init__(f"{label}: {reply.describe()} [request {reply.request_id}]")


@dataclass(frozen=True)
class Task:
    """One item to bring in line; `run` does it (or, in a dry run, only tells)."""

    kind: Kind
    label: str
    run: Callable[[bool], Awaitable[Outcome]]
    # What it does, for "not done" counts: "delete" (--reset) or "load".
    action: str = "load"

    @property
    def pending(self) -> str:
        """How an undone task is counted: e.g. "products to delete"."""
        return f"{self.kind.value} to {self.action}"


@dataclass
class SeedReport:
    counts: dict[Kind, Counter[Outcome]] = field(
        default_factory=lambda: {kind: Counter() for kind in Kind}
    )
    failures: list[str] = field(default_factory=list)
    # Tasks not done because the run was interrupted (never started, or cut short), by
    # Task.pending ("products to delete", "customers to load").
    not_done: Counter[str] = field(default_factory=Counter)
    # "deleting" (--reset) or "loading": the phase under way or last run.
    phase: str = ""
    # The signal that interrupted the run (SIGINT, SIGTERM), or 0.
    interrupted: int = 0

    def add(self, kind: Kind, outcome: Outcome) -> None:
        self.counts[kind][outcome] += 1

    @property
    def changed(self) -> bool:
        return any(counts[outcome] for counts in self.counts.values() for outcome in _CHANGES)

    @property
    def failed(self) -> bool:
        return bool(self.failures)


_CHANGES = (Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED)


def deletion_tasks(client: ShopClient, token: str, products: Iterable[dict]) -> list[Task]:
    def delete(product: dict[str, Any]) -> Task:
        async def run(dry_run: bool) -> Outcome:
            if not dry_run:
                path = f"/api/products/{product['id']}"
                reply = await call_with_retries(
                    client, "DELETE", path, token=token, retry_on_silence=True
                )
                if not reply.ok and reply.status != 404:
                    raise SeedFailure(f"delete {product.get('name')!r}", reply)
            return Outcome.DELETED

        return Task(Kind.PRODUCTS, f"delete {product.get('name')}", run, action="delete")

    return [delete(product) for product in products]


def product_tasks(
    client: ShopClient, token: str, demo: Iterable[DemoProduct], existing: Iterable[dict]
) -> list[Task]:
    """What to do for each demo product, given the shop's products (by name)."""
    by_name: dict[str, dict[str, Any]] = {}
    for product in existing:
        by_name.setdefault(str(product.get("name", "")).casefold(), product)

    def task(product: DemoProduct) -> Task:
        found = by_name.get(product.name.casefold())

        async def create(dry_run: bool) -> Outcome:
            if not dry_run:
                # No retry without an answer: it may have been created (then the next run
                # finds it by name and leaves it).
                reply = await call_with_retries(
                    client,
                    "POST",
                    "/api/products",
                    token=token,
                    json_body=product.body(),
                    retry_on_silence=False,
                )
                if reply.status != 201:
                    raise SeedFailure(f"create {product.name!r}", reply)
            return Outcome.CREATED

        async def update(dry_run: bool) -> Outcome:
            assert found is not None
            changes = product.changes_from(found)
            if not changes:
                return Outcome.UNCHANGED
            if not dry_run:
                reply = await call_with_retries(
                    client,
                    "PUT",
                    f"/api/products/{found['id']}",
                    token=token,
                    json_body=changes,
                    retry_on_silence=True,
                )
                if not reply.ok:
                    raise SeedFailure(f"update {product.name!r}", reply)
            return Outcome.UPDATED

        return Task(Kind.PRODUCTS, product.name, create if found is None else update)

    return [task(product) for product in demo]


def customer_tasks(
    client: ShopClient, customers: Iterable[DemoCustomer], password: str
) -> list[Task]:
    def task(customer: DemoCustomer) -> Task:
        async def run(dry_run: bool) -> Outcome:
            if dry_run:
                # Without changing anything, the only way to know an account exists is to
                # log in to it (a wrong password only means "exists, with another password";
                # we cannot tell that from "missing", so say it would be created).
                login = {"email": customer.email, "password": password}
                reply = await client.call("POST", "/api/users/login", json_body=login)
                return Outcome.UNCHANGED if reply.ok else Outcome.CREATED
            body = {
                "email": customer.email,
                "password": password,
                "first_name": customer.first_name,
                "last_name": customer.last_name,
            }
            reply = await call_with_retries(
                client, "POST", "/api/users/register", json_body=body, retry_on_silence=False
            )
            if reply.status == 201:
                return Outcome.CREATED
            if reply.status == 409:
                return Outcome.UNCHANGED
            raise SeedFailure(f"register {customer.email}", reply)

        return Task(Kind.CUSTOMERS, customer.email, run)

    return [task(customer) for customer in customers]


async def run_tasks(
    tasks: list[Task],
    *,
    dry_run: bool,
    concurrency: int,
    report: SeedReport,
    advance: Callable[[Task], None],
    stop: asyncio.Event | None = None,
) -> list[asyncio.Task[None]]:
    """Run `tasks` with at most `concurrency` calls in flight, tallying each outcome. Once
    `stop` is set no task starts (those in flight finish, unless cancelled); each one not
    done is counted in `report.not_done`. The asyncio tasks, so a caller can cancel them."""
    limit = asyncio.Semaphore(concurrency)

    async def one(task: Task) -> None:
        async with limit:
            if stop is not None and stop.is_set():
                report.not_done[task.pending] += 1
                return
            try:
                outcome = await task.run(dry_run)
            except SeedFailure as failure:
                report.failures.append(str(failure))
                outcome = Outcome.FAILED
            except asyncio.CancelledError:
                report.not_done[task.pending] += 1
                raise
        report.add(task.kind, outcome)
        advance(task)

    running = [asyncio.create_task(one(task)) for task in tasks]
    await asyncio.gather(*running, return_exceptions=True)
    return running
