"""Product pictures: an upload judged by decoding it (never by its name or Content-Type),
then re-encoded as WebP at two bounded sizes, which leaves every byte of the upload's
metadata (EXIF with its GPS position, XMP, comments) behind.

All of it is CPU work for Pillow: ``prepare_picture`` is called in a thread
(``asyncio.to_thread``), never on the event loop, one at a time per process (the routes
hold a semaphore), so that a decode's memory (at most MAX_PIXELS) is never paid twice.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import IO

from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from shopkit.domain import DomainError
from shopkit.uploads import PICTURE_MAX_BYTES

# What an upload may be, by what Pillow finds when it decodes it. Only these decoders are
# ever tried on an upload: fewer parsers exposed to whatever is sent.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
ACCEPTED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif")
# Width x height, read from the header before any pixel is decoded: a few kilobytes of PNG
# can claim 100 000 x 100 000 pixels (40 GB decoded). 25 MP is a 24-megapixel camera's
# full picture, and (RGBA) 100 MB decoded: within the product pod's 256 MiB.
MAX_PIXELS = 25_000_000
# The two sizes kept, as the longest side in pixels: the product page's picture, and the
# thumbnail of the lists (a catalogue card at twice its CSS width, the admin's list).
FULL_SIZE = 1600
THUMBNAIL_SIZE = 400  # as named by shopkit.uploads.PICTURE_NAME's "-400"
WEBP_QUALITY = 82


class PictureRefused(DomainError):
    """An upload that is not a picture this shop keeps."""


class NotAPicture(PictureRefused):
    """Pillow recognises none of ACCEPTED_FORMATS in it (another format, or not an image)."""


class UnreadablePicture(PictureRefused):
    """It starts as a picture of an accepted format but cannot be decoded (cut off, broken)."""

    def __init__(self, format: str) -> None:
        super().__init__(format=format)


class PictureTooLarge(PictureRefused):
    """The file is over PICTURE_MAX_BYTES."""

    def __init__(self, size: int) -> None:
        super().__init__(size=size, limit=PICTURE_MAX_BYTES)


class TooManyPixels(PictureRefused):
    """Its header claims more than MAX_PIXELS pixels (refused before decoding them)."""

    def __init__(self) -> None:
        super().__init__(limit=MAX_PIXELS)


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class Picture:
    """An upload re-encoded: its name (a digest of the full-size bytes, so a name always
    means the same bytes), the full-size picture and the thumbnail, and what it was."""

    digest: str
    full: Encoded
    thumbnail: Encoded
    source_format: str


def prepare_picture(upload: IO[bytes]) -> Picture:
    """Decode and re-encode an uploaded file (blocking: call it in a thread). Raises a
    ``PictureRefused`` for what is not a picture the shop keeps."""
    upload.seek(0, io.SEEK_END)
    size = upload.tell()
    if size > PICTURE_MAX_BYTES:
        raise PictureTooLarge(size)
    upload.seek(0)
    try:
        image = Image.open(upload, formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow's own check, past its bound (far above ours; a warning only where warnings
        # are errors, as in the tests).
        raise TooManyPixels() from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise NotAPicture() from None
    with image:
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise TooManyPixels()
        source_format = image.format or "?"
        try:
            full = _normalised(image)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
            raise UnreadablePicture(source_format) from None
    thumbnail = full.copy()
    thumbnail.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)
    full_bytes = _webp(full)
    digest = hashlib.sha256(full_bytes).hexdigest()[:32]
    return Picture(
        digest,
        Encoded(full_bytes, *full.size),
        Encoded(_webp(thumbnail), *thumbnail.size),
        source_format,
    )


def _normalised(image: Image.Image) -> Image.Image:
    """The first frame, turned upright as its EXIF says, in sRGB, as RGB or RGBA, scaled down
    to FULL_SIZE: a new image that carries nothing of the file's metadata. A JPEG is decoded
    at a reduced scale where that is still large enough (draft), which bounds the memory a
    large photo takes."""
    image.seek(0)  # an animation: its first frame
    if image.format == "JPEG":
        scale = min(1.0, FULL_SIZE / max(image.size))
        image.draft(None, (round(image.width * scale), round(image.height * scale)))
    image.load()
    profile = image.info.get("icc_profile")
    upright = ImageOps.exif_transpose(image)
    mode = "RGBA" if _has_alpha(upright) else "RGB"
    converted = _in_srgb(upright.convert(mode), profile)
    converted.thumbnail((FULL_SIZE, FULL_SIZE), Image.Resampling.LANCZOS)
    # A new image of the pixels alone: no info dict (EXIF, XMP, ICC, comments) comes along.
    clean = Image.new(mode, converted.size)
    clean.paste(converted)
    return clean


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info


def _in_srgb(image: Image.Image, profile: bytes | None) -> Image.Image:
    """The picture in sRGB: a colour profile the file carried (a phone's Display P3) is
    applied, since the WebP written carries none and browsers then assume sRGB. A profile
    that cannot be applied (broken, or for other colours) leaves the pixels as they are."""
    if not profile:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        converted = ImageCms.profileToProfile(image, source, srgb, outputMode=image.mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    return converted if converted is not None else image


def _webp(image: Image.Image) -> bytes:
    out = io.BytesIO()
    # exif/icc_profile/xmp left empty: Pillow writes no metadata chunk.
    image.save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()
