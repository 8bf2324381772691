"""Base64 images in and out of the REST API, decoded with caps an attacker cannot get around:
the text length first, then the image header's size, and only then the pixels."""
from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image, UnidentifiedImageError

from pipelines.core.metadata import png_bytes

from .errors import ApiError

MAX_IMAGE_BYTES = 32 * 1024 * 1024  # one encoded image
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF")


def decode_image(text, what: str, max_pixels: int) -> Image.Image:
    """A1111 clients send raw base64 or a data URL; a URL to fetch is refused (no network)."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(422, f"{what} must be a base64-encoded image.")
    if text.startswith(("http://", "https://")):
        raise ApiError(422, f"{what}: this server does not fetch URLs; send the image as base64.")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ApiError(413, f"{what} is larger than {MAX_IMAGE_BYTES // (1024 * 1024)} MiB.")
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError):
        raise ApiError(422, f"{what} is not valid base64.") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            if image.format not in FORMATS:
                raise ApiError(422, f"{what} must be a PNG, JPEG, WebP, BMP or GIF image.")
            if image.width * image.height > max_pixels:
                raise ApiError(422, f"{what} is {image.width}×{image.height}: over this host's limit of "
                                    f"{max_pixels / 1e6:.1f} megapixels.")
            image.load()
    except ApiError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ApiError(422, f"{what} is over this host's limit of {max_pixels / 1e6:.1f} megapixels.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(422, f"{what} is not an image this server can read: send a PNG, JPEG or WebP as base64.") from None
    return image


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Raw base64 PNG (no data: prefix, as A1111), carrying its parameters when given."""
    if infotext is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        data = png_bytes(image, infotext)
    return base64.b64encode(data).decode("ascii")
