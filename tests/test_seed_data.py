"""The demo data `shopctl seed` loads: every product and customer is one the shop's own body
models accept, and every picture a product names is one the gateway serves."""

from __future__ import annotations

import json
import re
from collections import Counter
from decimal import Decimal
from importlib import resources
from typing import Any

import pytest

from shopkit.validation import validate_body
from svc_gateway.assets import CATALOGUE_FOLDER, CATALOGUE_PREFIX, read_assets
from svc_product.schemas import ProductCreate
from svc_user.schemas import RegisterBody

SEED_DATA = resources.files("shopctl") / "seed_data"
TWO_PLACES = re.compile(r"^[0-9]+\.[0-9]{2}$")


def load(name: str) -> Any:
    return json.loads((SEED_DATA / name).read_text(encoding="utf-8"))


CATALOGUE = load("catalogue.json")
PRODUCTS: list[dict[str, Any]] = CATALOGUE["products"]
CUSTOMERS: list[dict[str, Any]] = load("customers.json")["customers"]
PICTURES = {
    entry.name
    for entry in resources.files("svc_gateway").joinpath(*CATALOGUE_FOLDER.split("/")).iterdir()
}


def test_the_catalogue_is_big_enough_to_browse() -> None:
    assert len(PRODUCTS) >= 200
    categories = [category["name"] for category in CATALOGUE["categories"]]
    assert len(categories) >= 8
    assert len(set(categories)) == len(categories)
    # Every category listed has products, and every product is in a category listed.
    assert Counter(product["category"] for product in PRODUCTS).keys() == set(categories)
    assert all(category["image"] in PICTURES for category in CATALOGUE["categories"])


def test_product_names_are_unique_whatever_their_case() -> None:
    names = Counter(product["name"].casefold() for product in PRODUCTS)
    assert [name for name, count in names.items() if count > 1] == []


def test_the_catalogue_is_in_a_stable_order() -> None:
    order = [(product["category"], product["name"].casefold()) for product in PRODUCTS]
    assert order == sorted(order)


@pytest.mark.parametrize("product", PRODUCTS, ids=lambda product: product["name"])
def test_each_product_is_one_the_product_service_accepts(product: dict[str, Any]) -> None:
    # Money is written as a string so no JSON reader turns it into a binary float; the seed
    # sends it as an exact JSON number, which the service reads as a Decimal.
    assert isinstance(product["price"], str) and TWO_PLACES.match(product["price"])
    body = validate_body(ProductCreate, {**product, "price": Decimal(product["price"])})
    assert body.model_dump(exclude_unset=True) == {**product, "price": Decimal(product["price"])}
    assert len(product["name"]) <= 120 and 0 < len(product["description"]) <= 1000
    assert product["imageUrl"].startswith(CATALOGUE_PREFIX)
    assert product["imageUrl"].removeprefix(CATALOGUE_PREFIX) in PICTURES


def test_stock_levels_include_sold_out_and_nearly_sold_out_products() -> None:
    stock = [product["stock"] for product in PRODUCTS]
    assert 1 <= stock.count(0) <= 6
    assert 1 <= sum(1 <= level <= 5 for level in stock) <= 8


def test_every_picture_is_a_small_self_contained_svg_the_gateway_serves() -> None:
    served = read_assets(folder=CATALOGUE_FOLDER)
    for name in PICTURES:
        assert name.endswith(".svg"), name
        picture = served.named(name)
        assert picture is not None and picture.content_type == "image/svg+xml"
        text = picture.body.decode("utf-8")
        assert len(picture.body) < 3 * 1024, name
        assert text.startswith('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 240 240"')
        assert "<title>" in text, name
        # Nothing that runs or fetches: no scripts, links, external references or handlers.
        assert not re.search(r"<script|<foreignObject|href|url\(|\son\w+\s*=", text, re.I), name
    used = {product["imageUrl"].removeprefix(CATALOGUE_PREFIX) for product in PRODUCTS}
    assert used == PICTURES  # no picture is left unused


def test_customers_are_ones_the_user_service_registers() -> None:
    assert len(CUSTOMERS) >= 10
    emails = [customer["email"] for customer in CUSTOMERS]
    assert len(set(emails)) == len(emails)
    for customer in CUSTOMERS:
        assert set(customer) == {"email", "first_name", "last_name"}  # never a password
        assert customer["email"].endswith("@example.com")
        body = validate_body(RegisterBody, {**customer, "password": "demo-password"})
        assert body.email == customer["email"]  # already trimmed and lower-case
        assert (body.first_name, body.last_name) == (customer["first_name"], customer["last_name"])
