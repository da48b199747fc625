"""Schemathesis hooks for tests/test_fuzz_openapi.py (loaded by its CLI, not by pytest).

They keep "valid data was refused" (positive_data_acceptance) a finding about the documents
by teaching the generator the few rules JSON Schema cannot state and the documents say in
words. Only the cases meant to be valid are touched; negative cases are sent as generated.

The contract's integers are strict: ``2.0`` is not an integer, as ``"2"`` is not a number
(CONTRACT.md, "types are strict"). JSON Schema cannot say so (to it, 2.0 is an integer), and
schemathesis deliberately sends whole floats where a schema says integer. In the cases it
means to be valid, this writes them as integers again, so that "valid data was refused"
stays a finding about the document and not about that choice; the negative cases still
send them.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import schemathesis
from schemathesis.generation import GenerationMode

from svc_order.delivery import DEFAULT_DELIVERY_COUNTRIES
from svc_user.schemas import EMAIL_PATTERN


def _plain_integers(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _plain_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_integers(item) for item in value]
    return value


_EMAIL = re.compile(EMAIL_PATTERN)


def _positive(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode == GenerationMode.POSITIVE


def _too_long_password(body: Any) -> bool:
    # Passwords are 8 to 72 bytes in UTF-8 (bcrypt reads no further): JSON Schema counts
    # characters only.
    if not isinstance(body, dict):
        return False
    return any(
        isinstance(body.get(name), str) and len(body[name].encode()) > 72 for name in ("password",)
    )


def _price_range_upside_down(query: Any) -> bool:
    # GET /api/products: minPrice must not be above maxPrice (a 400, as its document says).
    try:
        return float(query["minPrice"]) > float(query["maxPrice"])
    except (KeyError, TypeError, ValueError):
        return False


def _cart_checkout(case: Any) -> bool:
    # POST /api/orders without items checks out the caller's cart, and an empty cart is a
    # 400 empty_cart (tests/test_order_cart.py): whether it is empty is not in the request.
    return (
        case.operation.label == "POST /api/orders"
        and isinstance(case.body, dict)
        and not case.body.get("items")
    )


def _undelivered_country(case: Any) -> bool:
    # A checkout's address must be in a country the shop delivers to (a setting, so not in
    # the document's enum of countries): elsewhere it is a 400 country_not_delivered. A
    # saved address (address_id) is wherever the fuzzer saved it before: not in the request.
    if case.operation.label != "POST /api/orders" or not isinstance(case.body, dict):
        return False
    address = case.body.get("address")
    if isinstance(address, dict):
        return address.get("country") not in DEFAULT_DELIVERY_COUNTRIES.split(",")
    return "address_id" in case.body


def _email_folds_badly(body: Any) -> bool:
    # Emails are NFKC-normalised before they are judged (the document says so in words):
    # "\u00b4" folds to a space and a combining accent, "\ufe6b" to "@".
    email = body.get("email") if isinstance(body, dict) else None
    if not isinstance(email, str):
        return False
    folded = unicodedata.normalize("NFKC", email).strip().lower()
    return len(folded) > 254 or not _EMAIL.fullmatch(folded)


def _control_text_in(value: Any) -> bool:
    # RegisterBody.role may be any JSON (it is ignored), but no body may hold text with
    # control characters, keys included; its schema says so for a string only.
    if isinstance(value, str):
        return any(
            (ord(char) < 32 and char not in "\t\n\r") or 127 <= ord(char) < 160 for char in value
        )
    if isinstance(value, dict):
        return any(_control_text_in(key) or _control_text_in(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_control_text_in(item) for item in value)
    return False


@schemathesis.hook
def filter_case(context: Any, case: Any) -> bool:
    if not _positive(case):
        return True
    if _too_long_password(case.body) or _cart_checkout(case) or _undelivered_country(case):
        return False
    if isinstance(case.body, dict) and _control_text_in(case.body.get("role")):
        return False
    if case.operation.label == "POST /api/users/register" and _email_folds_badly(case.body):
        return False
    return not (isinstance(case.query, dict) and _price_range_upside_down(case.query))


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 40, 40)).save(out, "PNG")
    return out.getvalue()


# A picture's upload is judged by decoding the file (415 for bytes that are not a picture):
# the schema can say "a binary string", not "a PNG". The cases meant to be valid send a real
# one; the negative ones still send whatever was generated.
_PICTURE_UPLOAD = "POST /api/products/{id}/image"
_PICTURE = _tiny_png()


def _accepted_payment(body: Any) -> Any:
    # Whether a card is declined (its number, its expiry) is the provider's answer, 402, not
    # the document's: a checkout the fuzzer means to succeed pays with what the test
    # provider accepts, and the rest of the body is fuzzed as generated.
    payment = body.get("payment") if isinstance(body, dict) else None
    if not isinstance(payment, dict):
        return body
    if isinstance(payment.get("card"), dict):
        card = {"number": "4242424242424242", "exp_month": 12, "exp_year": 2090, "cvc": "123"}
        payment = {**payment, "card": card}
    elif "token" in payment:
        payment = {**payment, "token": "tok_visa"}
    return {**body, "payment": payment}


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    if _positive(case):
        case.body = _plain_integers(case.body)
        if case.operation.label == "POST /api/orders":
            case.body = _accepted_payment(case.body)
        if case.operation.label == _PICTURE_UPLOAD and isinstance(case.body, dict):
            # A new dict: the generated one may be shared with a negative case made from it.
            case.body = {**case.body, "image": _PICTURE}
    return case
