"""What the order service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from shopkit.money import LenientMoney
from shopkit.validation import Body, Query

Status = Literal["pending", "processing", "shipped", "delivered", "cancelled"]
ProductId = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{24}$")]
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
    page: int = Field(1, ge=1, le=10_000)
    limit: int = Field(20, ge=1, le=100)


class OrderLineOut(BaseModel):
    product_id: str
    product_name: str
    quantity: int
    price: LenientMoney


class HistoryOut(BaseModel):
    status: Status
    at: datetime


class OrderOut(BaseModel):
    id: int
    user_id: int
    status: Status
    total_amount: LenientMoney
    items: list[OrderLineOut]
    history: list[HistoryOut]
    created_at: datetime
    updated_at: datetime
