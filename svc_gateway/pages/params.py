"""What page handlers read from the URL: product and order ids in the path (one that cannot
name anything is the 404 page, as the backend would answer), and which page of a listing to
show, with the page links it offers."""

from __future__ import annotations

from aiohttp import web
from multidict import MultiMapping

from shopkit.errors import NotFound
from shopkit.parsing import parse_id, parse_int, parse_product_id
from shopkit.validation import MAX_PAGE

PRODUCT_NOT_FOUND = "We could not find that product; it may have been removed."
ORDER_NOT_FOUND = "We could not find that order."
ADDRESS_NOT_FOUND = "We could not find that address; it may have been removed."


def is_product_id(value: str) -> bool:
    return parse_product_id(value) == value


def product_id_of(request: web.Request, name: str = "id") -> str:
    """The product id in the path; one that cannot name a product is simply not found."""
    value = request.match_info[name]
    if not is_product_id(value):
        raise NotFound(PRODUCT_NOT_FOUND)
    return value


def order_id_of(request: web.Request) -> str:
    return id_of(request, ORDER_NOT_FOUND)


def id_of(request: web.Request, not_found: str) -> str:
    """A database id in the path (an order's, an address's); anything else is the 404 page
    saying ``not_found``."""
    value = request.match_info["id"]
    if parse_id(value) is None:
        raise NotFound(not_found)
    return value


def page_of(query: MultiMapping[str]) -> int:
    """The page asked for in the query string; anything odd is the first page."""
    try:
        return parse_int(query.get("page", "1"), low=1, high=MAX_PAGE)
    except ValueError:
        return 1


def page_numbers(current: int, last: int, around: int = 2) -> list[int | None]:
    """The page links to offer: the first, the last and those near the current one, with
    None where a gap goes (shown as an ellipsis)."""
    shown = {1, last, *range(max(1, current - around), min(last, current + around) + 1)}
    numbers: list[int | None] = []
    previous = 0
    for number in sorted(shown):
        if number - previous > 1:
            numbers.append(None)
        numbers.append(number)
        previous = number
    return numbers
