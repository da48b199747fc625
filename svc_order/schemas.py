"""What the order service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator
from typing_extensions import TypedDict

from shopkit.address import AddressBody, AddressFieldsOut
from shopkit.domain import ORDER_STATUSES, PRODUCT_ID_PATTERN
from shopkit.money import LenientMoney
from shopkit.openapi import Timestamp, answer_shape
from shopkit.parsing import ID_PATTERN, Line
from shopkit.validation import Body, PageNumber, PageSize, Query

Status = Literal[*ORDER_STATUSES]  # type: ignore[valid-type]
ProductId = Annotated[str, Field(pattern=PRODUCT_ID_PATTERN)]
MAX_LINES = 50
MAX_UNITS = 1000


class CheckoutLine(Body):
    product_id: ProductId
    quantity: Annotated[int, Field(ge=1, le=MAX_UNITS)]


DELIVERY_OPTIONS = ("standard", "express")
DeliveryOption = Literal[*DELIVERY_OPTIONS]  # type: ignore[valid-type]
PAYMENT_STATUSES = ("authorised", "captured", "voided", "refunded", "failed")


class CardBody(Body):
    """A card, for the built-in test provider (see the README's test cards). Never stored,
    logged or answered: the order keeps the brand and the last four digits."""

    number: Annotated[
        str,
        Field(
            pattern=r"^[0-9]{12,19}$",
            repr=False,
            description="12 to 19 digits, no spaces; a number that fails the Luhn check is "
            "declined (incorrect_number)",
        ),
    ]
    exp_month: Annotated[int, Field(ge=1, le=12, repr=False)]
    exp_year: Annotated[
        int, Field(ge=2000, le=2099, repr=False, description="Four digits; expired: declined")
    ]
    cvc: Annotated[str, Field(pattern=r"^[0-9]{3,4}$", repr=False)]


def _no_null_defaults(schema: dict[str, Any]) -> None:
    # Fields declared ``name: T = None``: left out, they are None; an explicit null is
    # refused (the default is never validated), so the document offers no null either.
    for prop in schema["properties"].values():
        if prop.get("default", "") is None and "anyOf" not in prop:
            del prop["default"]


def _one_payment_method_schema(schema: dict[str, Any]) -> None:
    _no_null_defaults(schema)
    schema["oneOf"] = [{"required": ["card"]}, {"required": ["token"]}]


class PaymentBody(Body):
    """How the order is paid: a card (the test provider) or a provider's token, not both."""

    model_config = Body.model_config | {"json_schema_extra": _one_payment_method_schema}

    card: CardBody = None  # type: ignore[assignment]
    token: Annotated[
        str,
        Field(
            pattern=r"^[A-Za-z0-9_]{1,100}$",
            description="A payment method the provider made from the card in the "
            "customer's browser (Stripe: pm_...); the test provider knows tok_visa, "
            "tok_mastercard, tok_card_declined, tok_insufficient_funds, "
            "tok_processing_error and tok_timeout",
        ),
    ] = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _card_or_token(self) -> PaymentBody:
        if (self.card is None) == (self.token is None):
            raise ValueError("give either card or token")
        return self


def _checkout_schema(schema: dict[str, Any]) -> None:
    _no_null_defaults(schema)
    # _details_together, for the document.
    schema["not"] = {"required": ["address", "address_id"]}
    schema["dependentRequired"] = {
        "delivery": ["payment"],
        "payment": ["delivery"],
    }
    schema["dependentSchemas"] = {
        "delivery": {"anyOf": [{"required": ["address"]}, {"required": ["address_id"]}]},
        "address": {"required": ["delivery"]},
        "address_id": {"required": ["delivery"]},
    }


class CheckoutBody(Body):
    """Explicit items, or none to check out the caller's cart; with where it goes (an
    address), how (delivery) and how it is paid (payment): these three come together or
    not at all (a checkout without them is today's: no delivery, no payment)."""

    model_config = Body.model_config | {"json_schema_extra": _checkout_schema}

    items: Annotated[list[CheckoutLine], Field(max_length=MAX_LINES)] | None = Field(
        None, description="Leave out (or empty) to check out the caller's cart"
    )
    address_id: Annotated[
        int,
        Field(
            ge=1,
            le=2**63 - 1,
            description="One of the caller's saved addresses (404 "
            "address_not_found if it is not theirs)",
        ),
    ] = None  # type: ignore[assignment]
    address: Annotated[AddressBody, Field(description="A new address, for this order only")] = None  # type: ignore[assignment]
    delivery: Annotated[
        DeliveryOption,
        Field(description="Its price is the server's (GET /api/orders/delivery-options)"),
    ] = None  # type: ignore[assignment]
    payment: PaymentBody = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _details_together(self) -> CheckoutBody:
        if self.address is not None and self.address_id is not None:
            raise ValueError("give address or address_id, not both")
        given = [
            self.address is not None or self.address_id is not None,
            self.delivery is not None,
            self.payment is not None,
        ]
        if any(given) and not all(given):
            raise ValueError(
                "an address (address or address_id), delivery and payment come together"
            )
        return self

    @property
    def has_details(self) -> bool:
        return self.payment is not None


class StatusChange(Body):
    status: Status


class OrderQuery(Query):
    status: Status | None = None
    customer: (
        Annotated[
            Line,
            Field(
                min_length=1,
                max_length=254,
                description="Orders whose customer's e-mail or name holds this text (any "
                "case), or whose user id it is",
            ),
        ]
        | None
    ) = None
    page: PageNumber = 1
    limit: PageSize = 20


class OrderPath(BaseModel):
    """The path of one order's routes (for the document: a malformed id is a 404)."""

    id: str = Field(
        pattern=ID_PATTERN,
        description="The order's id, written plainly; any other id names no order (404)",
    )


class UserOrdersPath(BaseModel):
    """The path of one user's orders (for the document)."""

    userId: str = Field(
        pattern=ID_PATTERN,
        description="The user's id, written plainly; any other id is another user's (403 "
        "for a customer) and names no one (404 for an admin)",
    )


@answer_shape
class OrderLineOut(TypedDict):
    product_id: str
    product_name: str
    quantity: int
    price: LenientMoney


@answer_shape
class HistoryOut(TypedDict):
    status: Status
    at: Timestamp


@answer_shape
class DeliveryOut(TypedDict):
    option: DeliveryOption
    label: str
    price: Annotated[LenientMoney, Field(description="What delivery cost in this order")]


@answer_shape
class OrderAddressOut(AddressFieldsOut):
    """The address as it was at checkout (changing or removing it since changes nothing)."""


@answer_shape
class CustomerOut(TypedDict):
    email: str
    first_name: str
    last_name: str


@answer_shape
class PaymentOut(TypedDict):
    status: Annotated[
        Literal[*PAYMENT_STATUSES],  # type: ignore[valid-type]
        Field(
            description="authorised at checkout, captured when shipped, voided when "
            "cancelled before capture, refunded when cancelled after it"
        ),
    ]
    provider: str
    reference: Annotated[str | None, Field(description="The provider's id of the payment")]
    brand: Annotated[str | None, Field(description="visa, mastercard, amex or unknown")]
    last4: Annotated[str | None, Field(description="The card number's last four digits")]
    amount: LenientMoney


@answer_shape
class OrderOut(TypedDict):
    id: int
    user_id: int
    status: Status
    subtotal_amount: Annotated[LenientMoney, Field(description="The goods")]
    total_amount: Annotated[LenientMoney, Field(description="subtotal_amount + delivery price")]
    items: list[OrderLineOut]
    delivery: Annotated[
        DeliveryOut | None, Field(description="null for an order placed without delivery")
    ]
    address: Annotated[OrderAddressOut | None, Field(description="As it was at checkout")]
    customer: Annotated[
        CustomerOut | None,
        Field(description="Who placed it, as named at checkout (null: before this was kept)"),
    ]
    payment: Annotated[PaymentOut | None, Field(description="null: placed without payment")]
    history: list[HistoryOut]
    created_at: Timestamp
    updated_at: Timestamp


@answer_shape
class DeliveryOptionOut(TypedDict):
    option: DeliveryOption
    label: str
    price: Annotated[LenientMoney, Field(description="Below the free-delivery threshold")]
    free_from: Annotated[
        LenientMoney | None,
        Field(description="Free when the goods come to at least this (null: never free)"),
    ]


@answer_shape
class DeliveryOptionsOut(TypedDict):
    options: list[DeliveryOptionOut]
    countries: Annotated[
        list[str], Field(description="ISO 3166-1 alpha-2 codes of the countries delivered to")
    ]
