"""What the data layers refuse reaches a client as its service's table says: every refusal a
service can raise has an answer there, and one that has none is a logged 500, never a guess."""

from __future__ import annotations

import importlib
import pkgutil
import string
from typing import Any

import pytest
from aiohttp import web

from shopkit.app import create_service_app
from shopkit.domain import DomainError, ProductNotFound
from shopkit.errors import SHARED_REFUSALS, Conflict, Refusal, refusal_error
from svc_product.app import ProductSettings

SERVICES = ("svc_product", "svc_user", "svc_order", "svc_cart")


def _refusals_defined_in(package: str) -> list[type[DomainError]]:
    for module in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if module.name != "__main__":  # it runs the service
            importlib.import_module(f"{package}.{module.name}")
    found, waiting = [], list(DomainError.__subclasses__())
    while waiting:
        kind = waiting.pop()
        waiting.extend(kind.__subclasses__())
        if kind.__module__.startswith(f"{package}."):
            found.append(kind)
    return found


def _with_every_fact(refusal: Refusal) -> dict[str, Any]:
    names = {field for _, field, _, _ in string.Formatter().parse(refusal.message) if field}
    return {name: 7 for name in names | set(refusal.keys)}


@pytest.mark.parametrize("package", SERVICES)
def test_every_refusal_a_service_raises_has_its_answer(package: str) -> None:
    table = {**SHARED_REFUSALS, **importlib.import_module(f"{package}.routes").REFUSALS}
    kinds = _refusals_defined_in(package)
    assert kinds, f"{package} defines no refusals: the scan is broken"
    for kind in [*kinds, ProductNotFound]:
        refusal = next((table[k] for k in kind.__mro__ if k in table), None)
        assert refusal is not None, f"{kind.__name__} has no answer in {package}.routes.REFUSALS"
        refused = DomainError.__new__(kind)
        DomainError.__init__(refused, **_with_every_fact(refusal))
        answer = refusal_error(refused, table)
        assert answer is not None and 400 <= answer.status < 600, kind
        assert "{" not in answer.message and answer.message.endswith("."), (kind, answer.message)


class _Unmapped(DomainError):
    """A refusal no table answers."""


class _Mapped(DomainError):
    """A refusal the test app's table answers."""


async def test_the_middleware_answers_a_refusal_by_the_table_and_an_unmapped_one_is_a_500(
    aiohttp_client: Any, product_settings: ProductSettings
) -> None:
    async def ready(app: web.Application) -> dict[str, Any]:
        return {}

    async def mapped(request: web.Request) -> web.Response:
        raise _Mapped(left=2, asked=5)

    async def unmapped(request: web.Request) -> web.Response:
        raise _Unmapped(secret="s3cret")

    async def shared(request: web.Request) -> web.Response:
        raise ProductNotFound("abc")

    table = {_Mapped: Refusal(Conflict, "too_few", "Only {left} left, {asked} asked.", ("left",))}
    app = create_service_app(product_settings, ready_check=ready, refusals=table)
    app.router.add_get("/mapped", mapped)
    app.router.add_get("/unmapped", unmapped)
    app.router.add_get("/shared", shared)
    client = await aiohttp_client(app)

    response = await client.get("/mapped")
    assert response.status == 409
    assert await response.json() == {
        "success": False,
        "error": "Only 2 left, 5 asked.",
        "code": "too_few",
        "left": 2,
    }
    response = await client.get("/shared")
    assert response.status == 404
    assert await response.json() == {
        "success": False,
        "error": "There is no product with id 'abc'.",
        "code": "product_not_found",
    }
    response = await client.get("/unmapped", headers={"X-Request-ID": "refusal-1"})
    body = await response.json()
    assert response.status == 500
    assert body["code"] == "internal_error" and "refusal-1" in body["error"]
    assert "s3cret" not in body["error"]
