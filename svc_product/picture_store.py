"""Where product pictures are kept: the ``product_images`` collection, one document per
picture, its two sizes as BSON binary (a few hundred KiB at most, far below MongoDB's 16 MB
document limit; GridFS is not needed, and nx-27017 does not offer it).

A picture is named by a digest of its full-size bytes and never changes under its name,
so it can be cached for good. Products point at it by URL (``imageUrl``); a picture that no
product has pointed at for a while is forgotten by ``forget_unused``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bson import Binary
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from shopkit.domain import DomainError
from shopkit.uploads import PICTURE_MEDIA_TYPE, PICTURE_NAME, picture_url
from svc_product.pictures import Picture

# A picture no product points at is kept this long (a page or a cache may still show it,
# an admin may put it back), then forgotten.
KEEP_UNUSED = timedelta(days=7)


class PictureNotFound(DomainError):
    """No picture has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name)


class PictureStore:
    def __init__(self, collection: AsyncCollection, products: AsyncCollection) -> None:
        self.collection = collection
        self.products = products

    async def keep(self, picture: Picture) -> str:
        """Store ``picture`` (once: the same bytes are the same name) and return its URL."""
        doc = {
            "_id": picture.digest,
            "full": Binary(picture.full.data),
            "thumbnail": Binary(picture.thumbnail.data),
            "width": picture.full.width,
            "height": picture.full.height,
            "mediaType": PICTURE_MEDIA_TYPE,
            "sourceFormat": picture.source_format,
            "storedAt": datetime.now(UTC),
        }
        try:
            await self.collection.insert_one(doc)
        except DuplicateKeyError:
            # Uploaded before, for this product or another: the same bytes. Made young
            # again, so that forget_unused does not take it before its product points at it.
            await self.collection.update_one(
                {"_id": picture.digest}, {"$currentDate": {"storedAt": True}}
            )
        return picture_url(picture.digest)

    async def bytes_of(self, name: str) -> bytes:
        """The bytes served under ``name`` (``<digest>.webp`` or ``<digest>-400.webp``)."""
        match = PICTURE_NAME.fullmatch(name)
        if match is None:
            raise PictureNotFound(name)
        size = "thumbnail" if match["thumbnail"] else "full"
        doc = await self.collection.find_one({"_id": match["digest"]}, {size: True})
        if doc is None:
            raise PictureNotFound(name)
        return bytes(doc[size])

    async def forget_unused(self, keep: timedelta = KEEP_UNUSED) -> int:
        """Delete the pictures older than ``keep`` that no product points at; how many.
        A picture uploaded just now is younger than ``keep``, so an upload racing this sweep
        (stored, its product not yet pointing at it) is never taken from under it."""
        before = datetime.now(UTC) - keep
        # Every picture's age read and judged here (pictures are few, one per product at
        # most): nx-27017 answers {"storedAt": {"$lt": <date>}} with nothing once the
        # documents hold binary data.
        ages = self.collection.find({}, {"storedAt": True})
        old = [doc async for doc in ages if doc["storedAt"] < before]
        if not old:
            return 0
        urls = [picture_url(doc["_id"]) for doc in old]
        # A find, not distinct: nx-27017's distinct leaves its filter out.
        pointing = self.products.find({"imageUrl": {"$in": urls}}, {"imageUrl": True})
        used = {doc["imageUrl"] async for doc in pointing}
        unused = [doc["_id"] for doc in old if picture_url(doc["_id"]) not in used]
        if not unused:
            return 0
        result = await self.collection.delete_many({"_id": {"$in": unused}})
        return result.deleted_count
