"""What the product service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator

from shopkit.money import LenientMoney, Money, money_schema
from shopkit.validation import Body, PartialBody, Query

MAX_PRICE = Decimal("1000000.00")
MAX_STOCK = 1_000_000_000


def _image_url(value: str) -> str:
    if not value.startswith(("https://", "http://", "/")):
        raise ValueError("must be an http(s) URL or a path starting with /")
    return value


Name = Annotated[str, Field(min_length=1, max_length=200)]
Description = Annotated[str, Field(max_length=5000)]
Category = Annotated[str, Field(min_length=1, max_length=60)]
Price = Annotated[
    Money, Field(gt=0, le=MAX_PRICE), money_schema(exclusiveMinimum=0, maximum=float(MAX_PRICE))
]
Stock = Annotated[int, Field(ge=0, le=MAX_STOCK)]
# A key in the product's record of stock changes: no dots or dollars (MongoDB field names).
Reference = Annotated[str, Field(pattern=r"^[A-Za-z0-9_:-]{1,80}$")]
ImageUrl = Annotated[
    str, Field(min_length=1, max_length=2048, pattern=r"^(https?://|/)"), AfterValidator(_image_url)
]


class ProductCreate(Body):
    name: Name
    description: Description = ""
    price: Price
    category: Category
    stock: Stock = 0
    imageUrl: ImageUrl | None = None


class ProductUpdate(PartialBody):
    """Only the fields given change; ``imageUrl: null`` removes the image."""

    name: Name = None  # type: ignore[assignment]
    description: Description = None  # type: ignore[assignment]
    price: Price = None  # type: ignore[assignment]
    category: Category = None  # type: ignore[assignment]
    stock: Stock = None  # type: ignore[assignment]
    imageUrl: ImageUrl | None = None


class StockChange(Body):
    quantity: Annotated[int, Field(ge=-MAX_STOCK, le=MAX_STOCK)] = Field(
        description="Units to add (positive) or take (negative); never below zero",
        json_schema_extra={"not": {"const": 0}},
    )

    reference: Reference | None = Field(
        None,
        description="Makes the change idempotent: a change with a reference already used on "
        "this product (or undone) changes nothing and answers the product as it is",
    )

    @model_validator(mode="after")
    def _not_zero(self) -> StockChange:
        if self.quantity == 0:
            raise ValueError("quantity must not be zero")
        return self


def _id_list(value: str | None) -> list[str] | None:
    if value is None:
        return None
    ids = [part.strip() for part in value.split(",") if part.strip()]
    if len(ids) > 100:
        raise ValueError("at most 100 ids")
    return ids


class StockUndo(Body):
    reference: Reference = Field(
        description="The reference of the change to reverse; if it was never applied, it "
        "never will be"
    )


class ProductQuery(Query):
    ids: Annotated[str | None, AfterValidator(_id_list)] = Field(
        None,
        description="Comma-separated product ids (at most 100): only these products; "
        "ids that name nothing are left out. For services that need many products at once.",
    )
    q: str | None = Field(None, max_length=100, description="Words to find in name or description")
    category: str | None = Field(None, max_length=60)
    minPrice: Annotated[LenientMoney, money_schema(minimum=0)] | None = Field(None, ge=0)
    maxPrice: Annotated[LenientMoney, money_schema(minimum=0)] | None = Field(None, ge=0)
    inStock: bool = Field(False, description="true: only products with stock > 0")
    sort: Literal["price", "-price", "name", "-createdAt"] = "-createdAt"
    page: int = Field(1, ge=1, le=10_000)
    limit: int = Field(20, ge=1, le=100)

    @model_validator(mode="after")
    def _price_range(self) -> ProductQuery:
        low, high = self.minPrice, self.maxPrice
        if low is not None and high is not None and low > high:
            raise ValueError("minPrice must not be above maxPrice")
        return self


class ProductOut(BaseModel):
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{24}$")]
    name: str
    description: str
    price: LenientMoney
    category: str
    stock: int
    imageUrl: str | None
    createdAt: datetime
    updatedAt: datetime


class CategoryOut(BaseModel):
    name: str
    count: int


class Deleted(BaseModel):
    id: str
    deleted: Literal[True]
