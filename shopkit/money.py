"""Money: exact decimals with two places, stored as integer cents."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from shopkit.parsing import CENT, exact_amount, parse_amount

__all__ = ["CENT", "LenientMoney", "Money", "cents_to_money", "money_schema", "money_to_cents"]


def cents_to_money(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


def money_to_cents(amount: Decimal) -> int:
    return int(amount.scaleb(2))


def _money_from_json(value: Any) -> Decimal:
    # JSON bodies are parsed with parse_float=Decimal, so a price arrives as int or Decimal;
    # a string, a bool or anything else is refused, as the contract's strict types demand.
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError("must be a number")
    return exact_amount(Decimal(value))


def _money_from_text(value: Any) -> Decimal:
    # A float is an answer read back by a client's JSON parser: its shortest repr is the
    # two-place decimal we wrote.
    return parse_amount(repr(value) if isinstance(value, float) else value)


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
