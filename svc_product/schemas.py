"""What the product service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, model_validator
from typing_extensions import TypedDict

from shopkit.domain import (
    CANONICAL_PRODUCT_ID_PATTERN,
    MAX_IDS_PER_CALL,
    MAX_STOCK,
    PRODUCT_ID_PATTERN,
)
from shopkit.money import LenientMoney, Money, money_schema
from shopkit.openapi import Timestamp, answer_shape
from shopkit.parsing import REFUSED_IN_LINE, Line, MultiLine
from shopkit.uploads import PICTURE_NAME_PATTERN
from shopkit.validation import Body, PageNumber, PageSize, PartialBody, Query

MAX_PRICE = Decimal("1000000.00")


def _image_url(value: str) -> str:
    if not value.startswith(("https://", "http://", "/")):
        raise ValueError("must be an http(s) URL or a path starting with /")
    return value


# Bodies strip surrounding whitespace before the lengths are checked: a name of spaces
# only is empty. The documents say so (one visible character at least), for the fuzzer.
_NOT_BLANK = {"pattern": f"^[^{REFUSED_IN_LINE}]*[^\\s{REFUSED_IN_LINE}][^{REFUSED_IN_LINE}]*$"}
Name = Annotated[Line, Field(min_length=1, max_length=200, json_schema_extra=_NOT_BLANK)]
Description = Annotated[MultiLine, Field(max_length=5000)]
Category = Annotated[Line, Field(min_length=1, max_length=60, json_schema_extra=_NOT_BLANK)]
Price = Annotated[
    Money, Field(gt=0, le=MAX_PRICE), money_schema(exclusiveMinimum=0, maximum=float(MAX_PRICE))
]
Stock = Annotated[int, Field(ge=0, le=MAX_STOCK)]
# A key in the product's record of stock changes: no dots or dollars (MongoDB field names).
Reference = Annotated[str, Field(pattern=r"^[A-Za-z0-9_:-]{1,80}$")]
ImageUrl = Annotated[
    Line,
    Field(min_length=1, max_length=2048, pattern=r"^(https?://|/)"),
    AfterValidator(_image_url),
    # The document's pattern: the prefix and Line's rule in one (pydantic leaves the
    # pattern above out of the schema, as it follows Line's validator).
    Field(json_schema_extra={"pattern": f"^(https?://|/)[^{REFUSED_IN_LINE}]*$"}),
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
        description="For the shop's services only (403 reference_for_services otherwise). "
        "Makes the change idempotent: a repeat of a change already made with this reference "
        "changes nothing and answers the product as it is; a change whose reference was undone "
        "changes nothing and answers 409 stock_change_undone; another change under a used "
        "reference is 409 reference_reused",
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
    if len(ids) > MAX_IDS_PER_CALL:
        raise ValueError(f"at most {MAX_IDS_PER_CALL} ids")
    return ids


class StockLine(Body):
    product_id: str = Field(
        max_length=64,
        description="The product's id (24 hex characters); one that names no product, or "
        "is malformed, answers 404 product_not_found",
    )
    quantity: Annotated[int, Field(ge=-MAX_STOCK, le=MAX_STOCK)] = Field(
        description="Units to add (positive) or take (negative); never below zero",
        json_schema_extra={"not": {"const": 0}},
    )

    @model_validator(mode="after")
    def _not_zero(self) -> StockLine:
        if self.quantity == 0:
            raise ValueError("quantity must not be zero")
        return self


class StockChanges(Body):
    reference: Reference = Field(description="The reference every change is made under")
    changes: list[StockLine] = Field(
        min_length=1,
        max_length=MAX_IDS_PER_CALL,
        description=f"At most {MAX_IDS_PER_CALL}, each product once",
    )

    @model_validator(mode="after")
    def _each_product_once(self) -> StockChanges:
        if len({line.product_id for line in self.changes}) != len(self.changes):
            raise ValueError("each product may appear once")
        return self


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
    # Amounts in a query are read as text below 10**15 (shopkit.parsing.parse_amount).
    minPrice: Annotated[LenientMoney, money_schema(minimum=0, exclusiveMaximum=1e15)] | None = (
        Field(None, ge=0)
    )
    maxPrice: Annotated[LenientMoney, money_schema(minimum=0, exclusiveMaximum=1e15)] | None = (
        Field(None, ge=0)
    )
    inStock: bool = Field(False, description="true: only products with stock > 0")
    sort: Literal["price", "-price", "name", "-createdAt"] = "-createdAt"
    page: PageNumber = 1
    limit: PageSize = 20

    @model_validator(mode="after")
    def _price_range(self) -> ProductQuery:
        low, high = self.minPrice, self.maxPrice
        if low is not None and high is not None and low > high:
            raise ValueError("minPrice must not be above maxPrice")
        return self


class ProductPath(BaseModel):
    """The path of one product's routes (for the document: a malformed id is a 404)."""

    id: str = Field(
        pattern=PRODUCT_ID_PATTERN,
        description="The product's id: 24 hex characters; any other id names no product (404)",
    )


class PictureName(BaseModel):
    """The path of a picture's route (for the document: any other name is a 404)."""

    name: str = Field(
        pattern=PICTURE_NAME_PATTERN,
        description="<digest>.webp (the picture) or <digest>-400.webp (its thumbnail), as in "
        "a product's imageUrl",
    )


@answer_shape
class ProductOut(TypedDict):
    id: Annotated[str, Field(pattern=CANONICAL_PRODUCT_ID_PATTERN)]
    name: str
    description: str
    price: LenientMoney
    category: str
    stock: int
    imageUrl: str | None
    createdAt: Timestamp
    updatedAt: Timestamp


@answer_shape
class CategoryOut(TypedDict):
    name: str
    count: int


@answer_shape
class Deleted(TypedDict):
    id: str
    deleted: Literal[True]
