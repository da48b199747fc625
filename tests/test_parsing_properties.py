"""Properties of the parsers every service shares (shopkit.parsing, shopkit.validation,
the email rules): whatever comes in, a value or a 4xx, never another exception. Hypothesis
writes the inputs, so the cases are the ones a stranger would send, not the ones we
thought of; the figures it prints on a failure replay it."""

from __future__ import annotations

import asyncio
import gzip
import importlib
import zlib
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import MultiDict
from pydantic import BaseModel
from support import postgres

from shopkit.errors import ShopError
from shopkit.parsing import (
    MAX_ID,
    check_text,
    exact_amount,
    parse_amount,
    parse_id,
    parse_int,
    parse_product_id,
)
from shopkit.validation import (
    MAX_BODY,
    Body,
    Query,
    decode_body,
    parse_json,
    validate_body,
    validate_query,
)
from svc_user.schemas import canonical_email, normalise_email

for service in ("cart", "order", "product", "user"):  # every model, also ones added later
    importlib.import_module(f"svc_{service}.schemas")


def subclasses(base: type[BaseModel]) -> list[type[BaseModel]]:
    found = []
    for cls in base.__subclasses__():
        found += [cls, *subclasses(cls)]
    return [cls for cls in found if cls.__module__.startswith("svc_")]


BODIES = subclasses(Body)
QUERIES = subclasses(Query)

# Text as clients send it: any Unicode (digits of every script, controls, surrogates), and
# the ASCII that parsers are most likely to half-accept.
ANY_TEXT = st.one_of(
    st.text(),
    st.text(alphabet="0123456789-+.eE_ x", max_size=30),
    st.from_regex(r"-?[0-9]{1,40}(\.[0-9]{0,40})?([eE][-+]?[0-9]{1,12})?", fullmatch=True),
)
DECIMALS = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.builds(
        lambda digits, exponent: Decimal(f"{digits}E{exponent}"),
        st.integers(-(10**40), 10**40),
        st.integers(-999_999_999, 999_999_999),
    ),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), DECIMALS, st.text()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(ANY_TEXT)
def test_an_id_is_canonical_ascii_digits_or_nothing(text: str) -> None:
    number = parse_id(text)
    if number is not None:
        assert 1 <= number <= MAX_ID
        assert str(number) == text  # one spelling per id: no "066", "٦٦", "+66" or "66\n"


@given(st.one_of(ANY_TEXT, st.integers(), st.booleans()), st.integers(-100, 100))
def test_an_integer_is_ascii_digits_within_bounds(value: Any, low: int) -> None:
    high = low + 1000
    try:
        number = parse_int(value, low=low, high=high)
    except ValueError as exc:
        assert str(exc)  # a message for a person
        return
    assert low <= number <= high
    if isinstance(value, str):
        assert value.lstrip("-").isascii() and value.lstrip("-").isdecimal()


@given(st.one_of(ANY_TEXT, DECIMALS, st.integers(), st.booleans(), st.floats()))
def test_an_amount_is_exact_cents_or_refused_unexpanded(value: Any) -> None:
    try:
        amount = parse_amount(value)
    except ValueError as exc:
        assert str(exc)
        return
    assert amount.as_tuple().exponent == -2
    assert abs(amount) < Decimal(10) ** 15
    assert exact_amount(amount) == amount


@given(ANY_TEXT)
def test_a_product_id_is_24_hex_digits_in_lower_case(text: str) -> None:
    product_id = parse_product_id(text)
    if product_id is not None:
        assert len(product_id) == 24 and product_id == text.lower()
        int(product_id, 16)


@given(st.text(), st.booleans())
def test_accepted_text_has_no_control_characters(text: str, multiline: bool) -> None:
    try:
        checked = check_text(text, multiline=multiline)
    except ValueError:
        return
    allowed = "\t\n\r" if multiline else ""
    assert all(
        char in allowed or (ord(char) >= 32 and not 0x7F <= ord(char) < 0xA0) for char in checked
    )
    checked.encode("utf-8")  # no lone surrogates: PostgreSQL and JSON can both hold it


@given(st.binary(max_size=200), st.sampled_from(["gzip", "deflate", "x-gzip", "identity", "br"]))
def test_any_body_bytes_decode_or_give_a_4xx(raw: bytes, encoding: str) -> None:
    try:
        decode_body(raw, encoding)
    except ShopError as exc:
        assert 400 <= exc.status < 500


@given(st.binary(max_size=2000))
def test_compressed_bodies_round_trip(body: bytes) -> None:
    assert decode_body(gzip.compress(body), "gzip") == body
    assert decode_body(zlib.compress(body), "deflate") == body


def test_a_compressed_body_is_bounded_after_decoding() -> None:
    with pytest.raises(ShopError) as refused:
        decode_body(gzip.compress(b" " * (MAX_BODY + 1)), "gzip")
    assert refused.value.status == 413


# Numbers as JSON text, with exponents past anything a Decimal context holds.
JSON_NUMBERS = st.from_regex(
    r"-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,25})?", fullmatch=True
).map(lambda number: f'{{"price": {number}, "items": [{number}]}}'.encode())


@given(st.one_of(st.binary(max_size=200), JSON_NUMBERS, JSON.map(lambda v: repr(v).encode())))
def test_any_bytes_parse_as_json_or_give_a_400(raw: bytes) -> None:
    try:
        parse_json(raw)
    except ShopError as exc:
        assert exc.status == 400


@pytest.mark.parametrize("model", BODIES, ids=lambda model: f"{model.__module__}.{model.__name__}")
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_body_model_takes_any_json_object_or_gives_a_400(
    model: type[BaseModel], data: st.DataObject
) -> None:
    names = list(model.model_fields)
    keys = st.one_of(st.sampled_from(names), st.text(max_size=10)) if names else st.text()
    value = data.draw(st.dictionaries(keys, JSON, max_size=len(names) + 1))
    try:
        validate_body(model, value)
    except ShopError as exc:
        assert exc.status == 400 and exc.details, exc.message


@pytest.mark.parametrize("model", QUERIES, ids=lambda model: f"{model.__module__}.{model.__name__}")
@settings(max_examples=150)
@given(data=st.data())
def test_every_query_model_takes_any_query_string_or_gives_a_400(
    model: type[BaseModel], data: st.DataObject
) -> None:
    names = list(model.model_fields)
    pairs = data.draw(
        st.lists(
            st.tuples(st.one_of(st.sampled_from(names), st.text(max_size=8)), ANY_TEXT),
            max_size=len(names) + 1,
        )
    )
    try:
        validate_query(model, MultiDict(pairs))
    except ShopError as exc:
        assert exc.status == 400 and exc.details, exc.message


EMAILISH = st.one_of(
    st.emails(),
    st.text(max_size=40),
    st.builds(lambda a, b: f"{a}@{b}.test", st.text(min_size=1, max_size=12), st.text(max_size=8)),
)


@given(EMAILISH)
def test_an_email_has_one_canonical_spelling(text: str) -> None:
    once = canonical_email(text)
    assert canonical_email(once) == once
    try:
        email = normalise_email(text)
    except ValueError:
        return
    assert email == once and normalise_email(email) == email


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EMAILISH)
def test_a_canonical_email_meets_the_users_table_check(postgres_server_uri: str, text: str) -> None:
    """The users table insists on ``email = lower(btrim(email))`` in PostgreSQL's own
    terms; an email we accept must meet it, or registering would be a 500."""
    try:
        email = normalise_email(text)
    except ValueError:
        return

    async def meets_the_check() -> bool:
        async with postgres(postgres_server_uri) as connection:
            return await connection.fetchval("SELECT $1::text = lower(btrim($1::text))", email)

    assert asyncio.run(meets_the_check()), email
