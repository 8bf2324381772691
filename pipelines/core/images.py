"""Image plumbing shared by the tasks: fitting an input image to the generation size."""
from __future__ import annotations

from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (as A1111) and drop palettes/alpha/CMYK."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Resize an input to (width, height):
    - 'just resize': stretch, aspect ratio not kept;
    - 'crop and resize': cover the target, crop the overflow centred;
    - 'resize and fill': fit inside the target, fill the bars by stretching the edge pixels.
    """
    image = to_rgb(image)
    if image.size == (width, height):
        return image
    if mode == "just resize":
        return image.resize((width, height), Image.LANCZOS)
    if mode == "crop and resize":
        return ImageOps.fit(image, (width, height), Image.LANCZOS)
    if mode == "resize and fill":
        scale = min(width / image.width, height / image.height)
        inner = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)
        canvas = inner.resize((width, height), Image.LANCZOS)  # stretched copy fills the bars
        canvas.paste(inner, ((width - inner.width) // 2, (height - inner.height) // 2))
        return canvas
    raise ValueError(f"Unknown resize mode {mode!r}")
