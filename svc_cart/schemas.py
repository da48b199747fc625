"""What the cart service accepts and answers; these models also feed /openapi.json."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field
from typing_extensions import TypedDict

from shopkit.domain import MAX_CART_QUANTITY, PRODUCT_ID_PATTERN
from shopkit.money import LenientMoney
from shopkit.openapi import Timestamp, answer_shape
from shopkit.parsing import ID_PATTERN, MAX_ID, QueryInt
from shopkit.validation import Body, Query

# Versions are counted in Redis' Lua, whose numbers are doubles: exact up to 2**53.
MAX_VERSION = 2**53
CartVersion = QueryInt(0, MAX_VERSION)

ProductId = Annotated[
    str,
    Field(
        description="The product's id (24 hex characters); one that names no product, "
        "or is malformed, answers 404 product_not_found"
    ),
]


class AddItem(Body):
    product_id: ProductId
    quantity: Annotated[int, Field(ge=1, le=MAX_CART_QUANTITY)] = Field(
        description=f"Units to add to what the cart holds (1 to {MAX_CART_QUANTITY}); the cart "
        f"may then hold no more than the product's stock, nor more than {MAX_CART_QUANTITY}"
    )


class SetQuantity(Body):
    quantity: Annotated[int, Field(ge=0, le=MAX_CART_QUANTITY)] = Field(
        description="The units the cart is to hold (0 takes the product out); at most the "
        "product's stock"
    )


class ClearQuery(Query):
    version: CartVersion | None = Field(
        None,
        description="Clear only if the cart is still at this version (as GET answered it); "
        "otherwise 409 cart_changed and nothing is cleared",
    )


class CartPath(BaseModel):
    """The path of a cart's routes (for the document: a malformed id is a 404)."""

    userId: str = Field(
        pattern=ID_PATTERN,
        description="The cart owner's user id, written plainly (no sign, no leading zero); "
        "anything else names no cart (404)",
    )


class CartItemPath(CartPath):
    productId: str = Field(
        pattern=PRODUCT_ID_PATTERN,
        description="A product id (24 hex characters); any other id names no product (404)",
    )


# A guest cart's id: 128 random bits, as 32 lower-case hex digits (the gateway makes it).
GUEST_ID_PATTERN = r"^[0-9a-f]{32}$"


class GuestCartPath(BaseModel):
    """The path of a guest cart's routes (for the document: a malformed id is a 404)."""

    guestId: str = Field(
        pattern=GUEST_ID_PATTERN,
        description="The guest cart's id: 32 lower-case hex digits (128 random bits, made "
        "by the gateway and kept in the guest's signed cookie); anything else names no "
        "cart (404)",
    )


class GuestCartItemPath(GuestCartPath):
    productId: str = Field(
        pattern=PRODUCT_ID_PATTERN,
        description="A product id (24 hex characters); any other id names no product (404)",
    )


class MergeInto(Body):
    user_id: int = Field(
        ge=1,
        le=MAX_ID,
        description="The account whose cart takes the guest cart's lines (the one that just "
        "logged in or registered)",
    )


@answer_shape
class CartItemOut(TypedDict):
    product_id: str
    name: str
    price: LenientMoney
    quantity: int
    imageUrl: str | None
    subtotal: Annotated[LenientMoney, Field(description="price x quantity, exactly")]


@answer_shape
class CartOut(TypedDict):
    user_id: int
    items: Annotated[
        list[CartItemOut],
        Field(
            description="In the order they were first added; products the catalogue no "
            "longer has are left out"
        ),
    ]
    total: Annotated[LenientMoney, Field(description="The sum of the subtotals, exactly")]
    item_count: Annotated[int, Field(description="The sum of the quantities")]
    expires_at: Annotated[
        Timestamp | None,
        Field(
            description="When the cart is dropped unless it changes first (every change "
            "renews it for 7 days); null for an empty cart"
        ),
    ]
    version: Annotated[
        int,
        Field(description="Goes up with every change; DELETE ?version= clears only this version"),
    ]


@answer_shape
class GuestCartOut(TypedDict):
    guest_id: str
    merged_into: Annotated[
        int | None,
        Field(
            description="null, unless this guest cart had been merged into an account's cart "
            "(a login a moment ago): the change was then made in that account's cart, and "
            "the rest of this answer is that cart"
        ),
    ]
    items: list[CartItemOut]
    total: LenientMoney
    item_count: int
    expires_at: Timestamp | None
    version: int


@answer_shape
class MergeCut(TypedDict):
    product_id: str
    name: Annotated[
        str | None, Field(description="The product's name; null when the catalogue has none")
    ]
    requested: Annotated[int, Field(description="Units the guest cart held")]
    added: Annotated[int, Field(description="Units of them added to the account's cart")]
    reason: Annotated[
        Literal["stock", "quantity_limit", "cart_full", "unavailable"],
        Field(
            description="stock: the cart may hold no more than the stock; quantity_limit: "
            f"no more than {MAX_CART_QUANTITY} units of one product; cart_full: no more "
            "different products; unavailable: the catalogue no longer has the product"
        ),
    ]


@answer_shape
class MergeOut(TypedDict):
    cart: CartOut
    units_added: Annotated[
        int, Field(description="Units from the guest cart now in the account's cart")
    ]
    cut: Annotated[
        list[MergeCut],
        Field(description="The guest cart's lines that could not be added whole"),
    ]
