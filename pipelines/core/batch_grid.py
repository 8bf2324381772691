"""A1111's batch grid: the images of one job side by side in one picture, each labelled
with its seed, about as many columns as rows. No torch: PIL only."""
from __future__ import annotations

import math

from PIL import Image, ImageDraw

from .grid import BACKGROUND, PAD, TEXT, compose_grid, drawable, label_font


def grid_columns(count: int) -> int:
    """A1111's automatic layout: rows = round(√n), then enough columns for every image."""
    rows = max(1, round(math.sqrt(count)))
    return math.ceil(count / rows)


def labelled(image: Image.Image, label: str) -> Image.Image:
    """The image with its label in a strip below."""
    font = label_font(image.width)
    strip = sum(font.getmetrics()) + 2 * PAD
    out = Image.new("RGB", (image.width, image.height + strip), BACKGROUND)
    out.paste(image.convert("RGB"), (0, 0))
    ImageDraw.Draw(out).text((image.width / 2, image.height + PAD), drawable(label), fill=TEXT, font=font, anchor="ma")
    return out


def batch_grid(images: list[Image.Image], labels: list[str] | None = None) -> Image.Image:
    if not images:
        raise ValueError("batch_grid needs at least one image")
    cells = [labelled(image, label) for image, label in zip(images, labels)] if labels else images
    return compose_grid(cells, grid_columns(len(cells)), legend=False)
