"""What the order service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from shopkit.domain import ORDER_STATUSES, PRODUCT_ID_PATTERN
from shopkit.money import LenientMoney
from shopkit.openapi import Timestamp, answer_shape
from shopkit.parsing import ID_PATTERN
from shopkit.validation import Body, PageNumber, PageSize, Query

Status = Literal[*ORDER_STATUSES]  # type: ignore[valid-type]
ProductId = Annotated[str, Field(pattern=PRODUCT_ID_PATTERN)]
MAX_LINES = 50
MAX_UNITS = 1000


class CheckoutLine(Body):
    product_id: ProductId
    quantity: Annotated[int, Field(ge=1, le=MAX_UNITS)]


class CheckoutBody(Body):
    """Explicit items, or none to check out the caller's cart."""

    items: Annotated[list[CheckoutLine], Field(max_length=MAX_LINES)] | None = Field(
        None, description="Leave out (or empty) to check out the caller's cart"
    )


class StatusChange(Body):
    status: Status


class OrderQuery(Query):
    status: Status | None = None
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
class OrderOut(TypedDict):
    id: int
    user_id: int
    status: Status
    total_amount: LenientMoney
    items: list[OrderLineOut]
    history: list[HistoryOut]
    created_at: Timestamp
    updated_at: Timestamp
