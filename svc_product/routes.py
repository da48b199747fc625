"""The product service's routes: thin handlers over the store."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy

from shopkit.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Refusal,
    Refusals,
    UnsupportedMediaType,
    ValidationFailed,
)
from shopkit.keys import IDENTITY
from shopkit.money import money_to_cents
from shopkit.openapi import endpoint
from shopkit.responses import answer_encoded, etag_matches, ok, ok_page
from shopkit.uploads import (
    PICTURE_CACHE_CONTROL,
    PICTURE_MAX_BYTES,
    PICTURE_MEDIA_TYPE,
    UPLOAD_BODY_LIMIT,
    picture_etag,
    read_form_data,
)
from shopkit.validation import size_in_words
from svc_product.keys import ANSWERS, PICTURE_TURNS, PICTURES, STOCK, STORE
from svc_product.picture_store import PictureNotFound
from svc_product.pictures import (
    ACCEPTED_MEDIA_TYPES,
    FULL_SIZE,
    MAX_PIXELS,
    THUMBNAIL_SIZE,
    NotAPicture,
    PictureRefused,
    PictureTooLarge,
    TooManyPixels,
    UnreadablePicture,
    prepare_picture,
)
from svc_product.schemas import (
    CategoryOut,
    Deleted,
    PictureName,
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
    NotAPicture: Refusal(
        UnsupportedMediaType,
        "not_a_picture",
        "The file is not a JPEG, PNG, WebP or GIF picture (judged by its contents, not its name).",
    ),
    UnreadablePicture: Refusal(
        BadRequest,
        "unreadable_picture",
        "The file starts as a {format} picture but cannot be decoded: it may be cut off or "
        "damaged.",
    ),
    PictureTooLarge: Refusal(
        PayloadTooLarge,
        "picture_too_large",
        f"The picture is larger than {size_in_words(PICTURE_MAX_BYTES)}; send a smaller one.",
    ),
    TooManyPixels: Refusal(
        PayloadTooLarge,
        "too_many_pixels",
        f"The picture has more than {MAX_PIXELS / 1e6:g} million pixels; scale it down first.",
    ),
    PictureNotFound: Refusal(NotFound, "picture_not_found", "There is no such picture."),
    # What a new kind of refused picture is answered with until it has words of its own.
    PictureRefused: Refusal(BadRequest, "invalid_picture", "The picture was refused."),
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


_PICTURE_FIELD = "image"
PICTURE_FORM = {
    "type": "object",
    "required": [_PICTURE_FIELD],
    "additionalProperties": False,
    "properties": {
        _PICTURE_FIELD: {
            "type": "string",
            "format": "binary",
            "description": "The picture: a JPEG, PNG, WebP or GIF file of at most "
            f"{size_in_words(PICTURE_MAX_BYTES)}",
        }
    },
}


def _the_picture(form: MultiDictProxy[Any]) -> web.FileField:
    """The form's one file, under ``image``; anything else in the form is refused."""
    details = [
        {"field": name, "message": "is not a known field"}
        for name in dict.fromkeys(form)
        if name != _PICTURE_FIELD
    ]
    files = form.getall(_PICTURE_FIELD, [])
    if len(files) > 1:
        details.append({"field": _PICTURE_FIELD, "message": "is given more than once"})
    elif not files or not isinstance(files[0], web.FileField):
        details.append({"field": _PICTURE_FIELD, "message": "must be a file"})
    if details:
        first = details[0]
        raise ValidationFailed(
            f"The form is invalid: {first['field']}: {first['message']}.", details=details
        )
    return files[0]


@routes.post("/api/products/{id}/image")
@endpoint(
    "Upload the product's picture",
    path=ProductPath,
    response=ProductOut,
    roles=ADMIN,
    errors=(404,),
    form=PICTURE_FORM,
    form_encoding={_PICTURE_FIELD: {"contentType": ", ".join(ACCEPTED_MEDIA_TYPES)}},
    description="A multipart/form-data body with one file, `image` (curl -F image=@photo.jpg). "
    "The file is judged by decoding it, whatever its name or Content-Type says: 415 "
    "not_a_picture for anything but a JPEG, PNG, WebP or GIF, 400 unreadable_picture for one "
    f"that cannot be decoded, 413 picture_too_large past {size_in_words(PICTURE_MAX_BYTES)} "
    f"(413 payload_too_large for a whole body past {size_in_words(UPLOAD_BODY_LIMIT)}: "
    "this route's limit, not the 1 MiB of the others) and 413 too_many_pixels past "
    f"{MAX_PIXELS / 1e6:g} million pixels, refused from the file's header before any pixel is "
    "decoded. The picture kept is re-encoded as WebP, turned upright as its EXIF says, in "
    f"sRGB, at most {FULL_SIZE} pixels on its longest side (an animation's first frame), "
    "with none of the file's metadata (EXIF, GPS position, XMP, comments); the answer is the "
    "product, whose imageUrl is now /images/products/<digest>.webp (served by the gateway, "
    "cached for a year: the name changes with the bytes), and the same name with -"
    f"{THUMBNAIL_SIZE} before .webp is its thumbnail ({THUMBNAIL_SIZE} pixels).",
)
async def upload_picture(request: web.Request) -> web.Response:
    product_id = request.match_info["id"]
    await request.app[STORE].get(product_id)  # 404 before a body is read for nothing
    upload = _the_picture(await read_form_data(request))  # its file closed once answered
    async with request.app[PICTURE_TURNS]:
        # Pillow's decoding and encoding are CPU work: in a thread, never on the loop.
        picture = await asyncio.to_thread(prepare_picture, upload.file)
    url = await request.app[PICTURES].keep(picture)
    doc = await request.app[STORE].update(product_id, {"imageUrl": url})
    return ok(product_out(doc))


@routes.get("/api/products/images/{name}")
@endpoint(
    "A product picture's bytes, by the name in its imageUrl",
    path=PictureName,
    raw=True,
    response={"type": "string", "format": "binary"},
    content_type=PICTURE_MEDIA_TYPE,
    errors=(404,),
    description="What the gateway serves at /images/products/{name} (the address a product's "
    "imageUrl holds). A name always means the same bytes: cached for a year (immutable), "
    "with an ETag (If-None-Match: 304).",
)
async def picture_bytes(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await request.app[PICTURES].bytes_of(name)  # 404 for a name that is not one
    headers = {"Cache-Control": PICTURE_CACHE_CONTROL, "ETag": picture_etag(name)}
    if etag_matches(request.headers.get("If-None-Match"), headers["ETag"]):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=PICTURE_MEDIA_TYPE, headers=headers)
