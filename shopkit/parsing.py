"""The one strict reading of what clients type: integers, ids, amounts and text.

Every path segment, query parameter, form field and token claim that holds a number goes
through here, so that one rule holds everywhere: integers and ids are ASCII digits within a
bounded range (``str.isdigit`` also says yes to "²" and "٦", which ``int`` then refuses or,
worse, reads as another number), amounts are bounded *before* anything expands them
(``Decimal("1e999999999")`` is cheap, ``abs`` of it overflows), and text holds no control
characters (PostgreSQL refuses NUL; a lone surrogate cannot be encoded at all).

Each parser returns a value or raises ``ValueError`` with a message that completes "<field>
..." for a person; pydantic turns that into a 400 with details, and the path helpers turn
it into a 404 (a malformed id is simply not found).
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from shopkit.domain import PRODUCT_ID

# Database ids (PostgreSQL bigint identities): 1 .. 2**63 - 1, written canonically.
MAX_ID = 2**63 - 1
_ID = re.compile(r"[1-9][0-9]{0,18}")
# An integer as text: ASCII digits, an optional minus, no more than a bigint holds.
_INTEGER = re.compile(r"-?[0-9]{1,19}")
# An amount as text: ASCII digits, at most 15 before the point (far above any price or
# total, well inside what a Decimal quantises and an int64 of cents holds) and 15 after it
# (exact_amount then says if more than two are not zeros); bounded by its length, so
# nothing is expanded before it is judged.
_AMOUNT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{0,15})?|-?\.[0-9]{1,15}")
CENT = Decimal("0.01")

# U+202A-U+202E (embeddings, overrides) and U+2066-U+2069 (isolates); the plain marks
# U+200E / U+200F that right-to-left names may need stay allowed.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters allowed in multi-line text (a product's description); none elsewhere.
_LINE_BREAKS = frozenset("\t\n\r")


def parse_id(value: object) -> int | None:
    """A database id from a path or claim: canonical ASCII digits within 1 .. 2**63-1, else
    None (the caller answers 404: a malformed id names nothing)."""
    if isinstance(value, str) and _ID.fullmatch(value):
        number = int(value)
        if number <= MAX_ID:
            return number
    return None


def parse_product_id(value: object) -> str | None:
    """A product id from a path or body, in lower case, or None (a malformed id names no
    product: the caller answers 404)."""
    if isinstance(value, str) and PRODUCT_ID.fullmatch(value):
        return value.lower()
    return None


def parse_int(value: object, *, low: int, high: int) -> int:
    """An integer from text (or an int): ASCII digits with an optional minus, within
    [low, high]."""
    if isinstance(value, bool):
        raise ValueError("must be a whole number")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _INTEGER.fullmatch(value):
        number = int(value)
    else:
        raise ValueError("must be a whole number written with the digits 0-9")
    if not low <= number <= high:
        raise ValueError(f"must be between {low} and {high}")
    return number


def parse_amount(value: object) -> Decimal:
    """An exact amount with at most two decimal places, as text ("19.99") or as a JSON
    number (int or Decimal, never a bool or a binary float), below 10**15 in size."""
    if isinstance(value, bool):
        raise ValueError("must be a number such as 19.99")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str) and _AMOUNT.fullmatch(value):
        amount = Decimal(value)
    else:
        raise ValueError("must be a number such as 19.99")
    return exact_amount(amount)


def exact_amount(amount: Decimal) -> Decimal:
    """``amount`` quantised to cents, if it is finite, small enough and has no more than
    two decimal places. Judged from its exponent first: arithmetic on 1e999999999 would
    overflow the decimal context."""
    if not amount.is_finite():
        raise ValueError("must be a finite number")
    if amount.is_zero():
        return Decimal("0.00")
    if amount.adjusted() >= 15:
        raise ValueError("is too large")
    try:
        cents = amount.quantize(CENT)
    except InvalidOperation:  # more digits than the context holds
        raise ValueError("must have at most two decimal places") from None
    if cents != amount:
        raise ValueError("must have at most two decimal places")
    return cents


def check_text(value: str, *, multiline: bool = False) -> str:
    """``value`` if it holds no control characters (tab and line breaks are allowed in
    multi-line text), no bidirectional embedding, override or isolate characters (they make
    text read differently from what it is: a name shown reversed in the admin's lists) and
    no lone surrogates."""
    for char in value:
        category = unicodedata.category(char)
        if category == "Cs":
            raise ValueError("must be valid Unicode text (it holds a lone surrogate)")
        if category == "Cc" and not (multiline and char in _LINE_BREAKS):
            raise ValueError(f"must not contain control characters (it holds {char!r})")
        if char in _BIDI_CONTROLS:
            raise ValueError(
                f"must not contain bidirectional override characters (it holds {char!r})"
            )
    return value


def _query_int(low: int, high: int) -> BeforeValidator:
    def parse(value: Any) -> int:
        return parse_int(value, low=low, high=high)

    return BeforeValidator(parse)


def QueryInt(low: int, high: int) -> Any:
    """An integer query parameter: ASCII digits only (no "1_000", "+5", "5.0" or "²")."""
    # The bounds come first so that the OpenAPI document states them (after a validator,
    # pydantic would write them as unknown keywords).
    return Annotated[int, Field(ge=low, le=high), _query_int(low, high)]


def _single_line(value: Any) -> Any:
    return check_text(value) if isinstance(value, str) else value


def _multi_line(value: Any) -> Any:
    return check_text(value, multiline=True) if isinstance(value, str) else value


# The id above as a JSON Schema pattern, for the OpenAPI documents' path parameters.
ID_PATTERN = f"^{_ID.pattern}$"

# check_text's rules as JSON Schema patterns, for the OpenAPI documents (so that a fuzzer
# generates text the services accept): no C0/C1 control characters, but for tab and line
# breaks in multi-line text.
# What check_text refuses, as the body of a regular expression's character class (for
# documents that state the rule: build patterns from these, never copy them).
REFUSED_IN_LINE = r"\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
REFUSED_IN_TEXT = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
LINE_PATTERN = f"^[^{REFUSED_IN_LINE}]*$"
TEXT_PATTERN = f"^[^{REFUSED_IN_TEXT}]*$"

# Text on one line (names, emails, categories) and text that may hold line breaks. (The
# pattern goes in as an extra: pydantic leaves out a pattern that follows a validator.)
Line = Annotated[
    str, BeforeValidator(_single_line), Field(json_schema_extra={"pattern": LINE_PATTERN})
]
MultiLine = Annotated[
    str, BeforeValidator(_multi_line), Field(json_schema_extra={"pattern": TEXT_PATTERN})
]
