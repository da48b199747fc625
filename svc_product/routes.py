"""The product service's routes: thin handlers over the store."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from shopkit.errors import Conflict, Forbidden, Refusal, Refusals
from shopkit.keys import IDENTITY
from shopkit.money import money_to_cents
from shopkit.openapi import endpoint
from shopkit.responses import answer_encoded, ok, ok_page
from svc_product.keys import ANSWERS, STOCK, STORE
from svc_product.schemas import (
    CategoryOut,
    Deleted,
    ProductCreate,
    ProductOut,
    ProductPath,
    ProductQuery,
    ProductUpdate,
    StockChange,
    StockChanges,
    StockUndo,
)
from svc_product.stock import (
    STOCK_CONFLICTS,
    NotEnoughStock,
    ReferenceReused,
    StockBusy,
    StockChangeUndone,
    StockLimit,
)
from svc_product.store import ProductBusy, catalogue_filter, product_out

routes = web.RouteTableDef()
ADMIN = ("admin",)

# How a client hears what the store refuses (a batch's refusal also names its product_id).
REFUSALS: Refusals = {
    ProductBusy: Refusal(
        Conflict, "product_busy", "This product kept changing; try the update again."
    ),
    StockBusy: Refusal(
        Conflict,
        "stock_busy",
        "The stock of this product kept changing; try again.",
        ("product_id",),
    ),
    NotEnoughStock: Refusal(
        Conflict,
        "insufficient_stock",
        "Not enough stock: {available} left, {wanted} asked for.",
        ("available", "product_id"),
    ),
    StockLimit: Refusal(
        Conflict,
        "stock_limit",
        "Stock cannot exceed {limit} units ({available} now, {added} to add).",
        ("product_id",),
    ),
    StockChangeUndone: Refusal(
        Conflict,
        "stock_change_undone",
        "The stock change {reference!r} was undone; it changes nothing.",
        ("product_id",),
    ),
    ReferenceReused: Refusal(
        Conflict,
        "reference_reused",
        "The reference {reference!r} was used for another stock change of this product.",
        ("product_id",),
    ),
}

# The codes a refused stock change is answered with (shown as 0 before the first).
STOCK_CONFLICT_CODES = tuple(REFUSALS[kind].code for kind in STOCK_CONFLICTS)


@routes.get("/api/products")
@endpoint(
    "List products: search, filter, sort, page",
    query=ProductQuery,
    response=list[ProductOut],
    paged=True,
    description="Answers carry an ETag; send it back as If-None-Match to get a 304.",
)
async def list_products(request: web.Request, query: ProductQuery) -> web.Response:
    async def page() -> dict[str, Any]:
        selector = catalogue_filter(
            ids=query.ids,
            q=query.q,
            category=query.category,
            min_cents=None if query.minPrice is None else money_to_cents(query.minPrice),
            max_cents=None if query.maxPrice is None else money_to_cents(query.maxPrice),
            in_stock=query.inStock,
        )
        docs, total = await request.app[STORE].find_page(
            selector, sort=query.sort, page=query.page, limit=query.limit
        )
        items = [product_out(doc) for doc in docs]
        return ok_page(items, total=total, page=query.page, limit=query.limit)

    key = ("list", request.rel_url.query_string)  # validated above: any spelling of a query
    return answer_encoded(request, await request.app[ANSWERS].get(key, page))


# Registered before /{id} so that "categories" is never taken for an id.
@routes.get("/api/products/categories")
@endpoint("Categories with the number of products in each", response=list[CategoryOut])
async def list_categories(request: web.Request) -> web.Response:
    async def categories() -> dict[str, Any]:
        return {"success": True, "data": await request.app[STORE].categories()}

    return answer_encoded(request, await request.app[ANSWERS].get("categories", categories))


@routes.get("/api/products/{id}")
@endpoint("One product", response=ProductOut, errors=(404,), path=ProductPath)
async def get_product(request: web.Request) -> web.Response:
    product_id = request.match_info["id"]

    async def product() -> dict[str, Any]:
        return {"success": True, "data": product_out(await request.app[STORE].get(product_id))}

    return answer_encoded(request, await request.app[ANSWERS].get(("product", product_id), product))


@routes.post("/api/products")
@endpoint("Create a product", body=ProductCreate, response=ProductOut, status=201, roles=ADMIN)
async def create_product(request: web.Request, body: ProductCreate) -> web.Response:
    doc = await request.app[STORE].create(body.model_dump())
    product = product_out(doc)
    return ok(product, status=201, headers={"Location": f"/api/products/{product['id']}"})


@routes.put("/api/products/{id}")
@endpoint(
    "Change the fields given",
    path=ProductPath,
    body=ProductUpdate,
    response=ProductOut,
    roles=ADMIN,
    errors=(404,),
)
async def update_product(request: web.Request, body: ProductUpdate) -> web.Response:
    fields = body.model_dump(include=body.model_fields_set)
    doc = await request.app[STORE].update(request.match_info["id"], fields)
    return ok(product_out(doc))


@routes.delete("/api/products/{id}")
@endpoint("Delete a product", response=Deleted, roles=ADMIN, errors=(404,), path=ProductPath)
async def delete_product(request: web.Request) -> web.Response:
    product_id = request.match_info["id"]
    await request.app[STORE].delete(product_id)
    return ok({"id": product_id, "deleted": True})


@routes.patch("/api/products/{id}/stock")
@endpoint(
    "Add or take stock atomically",
    path=ProductPath,
    body=StockChange,
    response=ProductOut,
    roles=("admin", "service"),
    errors=(404, 409),
    description="A change that would take stock below zero changes nothing and answers 409. "
    "A reference is for the shop's services only (403 reference_for_services for an admin, "
    "who changes stock by plain quantities): it is how the checkout saga takes stock at most "
    "once; a change whose reference was undone changes nothing and answers 409 "
    "stock_change_undone.",
)
async def change_stock(request: web.Request, body: StockChange) -> web.Response:
    if body.reference is not None and request[IDENTITY].role != "service":
        # A reference names a checkout's step: an admin who could pick one could answer for
        # an order's take (or its undo) before the order service does.
        raise Forbidden(
            "Only the shop's services change stock with a reference; send the quantity alone.",
            code="reference_for_services",
        )
    doc = await request.app[STOCK].change(request.match_info["id"], body.quantity, body.reference)
    return ok(product_out(doc))


@routes.post("/api/products/stock/changes")
@endpoint(
    "Change the stock of several products under one reference, in order (services)",
    body=StockChanges,
    response=list[ProductOut],
    roles=("service",),
    errors=(404, 409),
    description="For the shop's services only (the checkout saga takes an order's lines in "
    "one call; 403 for anyone else, admins included). Each change is exactly the one "
    "PATCH /api/products/{id}/stock would make with the reference, one product after "
    "another; the first refused stops the rest and is the answer, naming its product_id "
    "(the changes before it stay made: the caller undoes them by their reference). The "
    "answer lists the products as they are after their changes, in order.",
)
async def change_stocks(request: web.Request, body: StockChanges) -> web.Response:
    changes = [(line.product_id, line.quantity) for line in body.changes]
    docs = await request.app[STOCK].change_many(body.reference, changes)
    return ok([product_out(doc) for doc in docs])


@routes.post("/api/products/{id}/stock/undo")
@endpoint(
    "Reverse a stock change made with a reference, exactly once",
    path=ProductPath,
    body=StockUndo,
    response=ProductOut,
    roles=("service",),
    errors=(404, 409),
    description="For the shop's services only (the order service, for a checkout that failed "
    "or crashed half-way; 403 for anyone else, admins included). Undoing a reference that "
    "was never applied marks it, so that change is refused (409 stock_change_undone) "
    "should it still arrive. Reachable at the gateway like every /api/products route: the "
    "service-only token check is its protection.",
)
async def undo_stock_change(request: web.Request, body: StockUndo) -> web.Response:
    doc = await request.app[STOCK].undo(request.match_info["id"], body.reference)
    return ok(product_out(doc))
