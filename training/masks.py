"""Random inpainting masks on the device (1 = repaint), as SD-inpainting was trained:
boxes, brush strokes, and the full mask (then the model must draw the whole caption)."""
from __future__ import annotations

import torch

from training import render

FULL_MASK_PROB = 0.25
BOX_PROB = 0.35  # the rest are brush strokes


def random_masks(n: int, size: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 1, size, size) float masks of 0/1."""
    def rand(*shape):
        return torch.rand(*shape, device=device, generator=generator)

    px, py = render.pixel_grid(size, device)
    kind = rand(n)
    # Boxes: sides 20–80 % of the image, anywhere inside it.
    wh = (0.2 + 0.6 * rand(n, 2)) * size
    lo = rand(n, 2) * (size - wh)
    box = ((px >= lo[:, 0, None, None]) & (px < (lo[:, 0] + wh[:, 0])[:, None, None])
           & (py >= lo[:, 1, None, None]) & (py < (lo[:, 1] + wh[:, 1])[:, None, None]))
    # Brush: a polyline of 4 random points, 6–20 px wide (unused segments collapse to a point).
    points = rand(n, 4, 2) * size
    width = 3 + 7 * rand(n)
    dist = torch.stack([render.segment_distance(px, py, points[:, i], points[:, i + 1]) for i in range(3)]).amin(0)
    brush = dist < width[:, None, None]
    mask = torch.where((kind < BOX_PROB)[:, None, None], box, brush)
    mask = mask | (kind > 1 - FULL_MASK_PROB)[:, None, None]
    return mask[:, None].float()
