"""Money: exact decimals with two places, stored as integer cents."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

CENT = Decimal("0.01")
# Far above any price or total, well inside what a Decimal quantises and an int64 holds.
LIMIT = Decimal(10) ** 15


def cents_to_money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def money_to_cents(amount: Decimal) -> int:
    return int(amount.scaleb(2))


def _exact(amount: Decimal) -> Decimal:
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    if abs(amount) >= LIMIT:
        raise ValueError("is too large")
    if amount != amount.quantize(CENT, rounding="ROUND_DOWN"):
        raise ValueError("must have at most two decimal places")
    return amount.quantize(CENT)


def _money_from_json(value: Any) -> Decimal:
    # JSON bodies are parsed with parse_float=Decimal, so a price arrives as int or Decimal;
    # a string, a bool or anything else is refused, as the contract's strict types demand.
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("must be a number")
    return _exact(Decimal(value))


def _money_from_text(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueError("must be a number such as 19.99")
    if isinstance(value, int | Decimal):
        return _exact(Decimal(value))
    try:
        return _exact(Decimal(str(value).strip()))
    except InvalidOperation:
        raise ValueError("must be a number such as 19.99") from None


_SCHEMA = {"type": "number", "multipleOf": 0.01}


def money_schema(**bounds: float) -> WithJsonSchema:
    """The JSON schema of an amount with bounds (``exclusiveMinimum=0``, ``maximum=...``):
    pydantic cannot derive it through the custom validator, so we state it."""
    return WithJsonSchema({**_SCHEMA, **bounds})


# In a JSON body.
Money = Annotated[Decimal, BeforeValidator(_money_from_json), WithJsonSchema(_SCHEMA)]
# In a query string, where everything is text, or in an answer read back (a JSON number that
# a client's parser made a float: its shortest repr is the two-place decimal we wrote).
LenientMoney = Annotated[Decimal, BeforeValidator(_money_from_text), WithJsonSchema(_SCHEMA)]
