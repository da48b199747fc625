"""What the services agree on, defined once: ids, limits, the order lifecycle, how a moment is
written, and the errors a data layer raises (in the domain's words, with no HTTP in them).

Services deploy apart (a new product service may meet an older order service), so the values
marked *public contract* below are part of the API every client relies on
(``../shared/CONTRACT.md``): change them only as a new API version would. The others are
one service's rules that another service or the gateway's pages mirror; a change to one of
them ships with both.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from functools import cache
from typing import Any

# -- public contract ---------------------------------------------------------------------------

# Product ids are MongoDB ObjectIds: 24 hex digits, answered in lower case.
PRODUCT_ID = re.compile(r"[0-9a-fA-F]{24}")
PRODUCT_ID_PATTERN = f"^{PRODUCT_ID.pattern}$"
CANONICAL_PRODUCT_ID_PATTERN = r"^[0-9a-f]{24}$"

# The order lifecycle: where each status may go next, in the order a person is offered them.
ORDER_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "pending": ("processing", "cancelled"),
    "processing": ("shipped", "cancelled"),
    "shipped": ("delivered",),
    "delivered": (),
    "cancelled": (),
}
ORDER_STATUSES = tuple(ORDER_TRANSITIONS)

# Units of one product a cart holds at most, and different products in one cart.
MAX_CART_QUANTITY = 1000
MAX_CART_LINES = 100

# A product's stock is 0 .. MAX_STOCK; one stock change adds or takes at most MAX_STOCK.
MAX_STOCK = 1_000_000_000

# Products one call names at most: ids in GET /api/products?ids=, changes in one stock batch.
MAX_IDS_PER_CALL = 100


@cache
def country_names() -> dict[str, str]:
    """The countries an address may be in: ISO 3166-1 alpha-2 code -> English name, by name
    (the user service checks addresses by it, the pages offer it as a list). From pycountry,
    which follows the standard's changes; loaded on first use, as only the user service and
    the gateway need it (it costs a process some 6 MB)."""
    import pycountry

    names = (
        (country.alpha_2, getattr(country, "common_name", None) or country.name)
        for country in pycountry.countries
    )
    return dict(sorted(names, key=lambda item: item[1]))


def timestamp(moment: datetime) -> str:
    """A moment as every answer writes it: UTC, milliseconds, ``Z`` (2026-12-06T07:02:03.120Z)."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- what a data layer raises ------------------------------------------------------------------


class DomainError(Exception):
    """A data layer's refusal, in the domain's words: the facts as keyword arguments, no
    status and no sentence for a client. Each service's HTTP layer maps every kind it can
    meet to an answer (``shopkit.errors.Refusals``); one that is not mapped is a bug (500)."""

    def __init__(self, **facts: Any) -> None:
        super().__init__(", ".join(f"{name}={value!r}" for name, value in facts.items()))
        self.facts = facts


class ProductNotFound(DomainError):
    """No product has the id ``id`` (a malformed id names none either)."""

    def __init__(self, product_id: str) -> None:
        super().__init__(id=product_id)
