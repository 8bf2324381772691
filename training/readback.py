"""Reading a generated image back against its caption: background colour, the object's colour,
position and shape, all from pixels, with no learned model (the shape "classifier" matches the
object's silhouette against shapes rendered by the same SDFs the data uses)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from pipelines.preprocess import OPENPOSE_LIMBS
from training import data, render

PALETTE_U8 = (data.PALETTE.numpy() * 255).astype(np.float32)
MIN_OBJECT_PIXELS = 30
BODY_LIMBS = OPENPOSE_LIMBS[:12]  # arms, torso sides and legs (not the face)


def palette_labels(image: np.ndarray) -> np.ndarray:
    """Nearest named colour (index into data.COLOUR_NAMES) of every pixel of an H×W×3 uint8 image."""
    d = ((image[:, :, None, :].astype(np.float32) - PALETTE_U8[None, None]) ** 2).sum(-1)
    return d.argmin(-1)


def background_label(labels: np.ndarray) -> int:
    return int(np.bincount(labels.ravel(), minlength=len(PALETTE_U8)).argmax())


def foreground_mask(image: np.ndarray, labels: np.ndarray, bg: int) -> np.ndarray:
    """Pixels of another named colour and clearly away from the background colour."""
    far = np.sqrt(((image.astype(np.float32) - PALETTE_U8[bg]) ** 2).sum(-1)) > 60
    return (labels != bg) & far


@dataclass
class ObjectReading:
    background: int
    colour: int
    shape: int
    position: int
    found: bool


def position_of(x: float, y: float) -> int:
    """Nearest cell of the 3×3 grid of named positions."""
    col = int(np.argmin([abs(x - g) for g in data.GRID_PX]))
    row = int(np.argmin([abs(y - g) for g in data.GRID_PX]))
    return [i for i, (_, c, r) in enumerate(data.POSITIONS) if (c, r) == (col, row)][0]


def _largest_component(mask: np.ndarray) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros_like(mask)
    return labels == 1 + int(stats[1:, cv2.CC_STAT_AREA].argmax())


def _unit_areas(shapes: dict) -> np.ndarray:
    """Area of each shape at radius 1 (measured by rendering at radius 40)."""
    px, py = render.pixel_grid(data.IMAGE_SIZE, "cpu")
    r = torch.tensor([[[40.0]]])
    return np.array([(sdf(px - 64, py - 64, r) < 0).sum().item() / 1600.0 for sdf in shapes.values()])


_UNIT_AREAS = _unit_areas(render.SHAPE_SDFS)
_AREAS_BY_SET: dict[tuple, np.ndarray] = {}


def classify_shape(mask: np.ndarray, shapes: dict | None = None) -> int:
    """Shape whose rendered silhouette overlaps the mask best (IoU), each sized to the mask's
    area and tried at a few offsets and scales around the mask's bounding-box centre.
    shapes: name → SDF to choose among (default the world's seven; the demo LoRA adds a heart)."""
    shapes = shapes or render.SHAPE_SDFS
    if shapes is render.SHAPE_SDFS:
        areas = _UNIT_AREAS
    else:
        areas = _AREAS_BY_SET.setdefault(tuple(shapes), _unit_areas(shapes))
    ys, xs = np.nonzero(mask)
    cx, cy = (xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2
    target = torch.from_numpy(mask)
    px, py = render.pixel_grid(data.IMAGE_SIZE, "cpu")
    offsets = torch.tensor([(dx, dy) for dx in (-2.0, 0.0, 2.0) for dy in (-2.0, 0.0, 2.0)])
    best, best_iou = 0, -1.0
    for s, (name, sdf) in enumerate(shapes.items()):
        r0 = float(np.sqrt(mask.sum() / areas[s]))
        radii = torch.tensor([0.9, 1.0, 1.1]) * r0
        ox = (cx + offsets[:, 0]).repeat_interleave(3)[:, None, None]
        oy = (cy + offsets[:, 1]).repeat_interleave(3)[:, None, None]
        rr = radii.repeat(len(offsets))[:, None, None]
        inside = sdf(px - ox, py - oy, rr) < 0
        iou = ((inside & target).flatten(1).sum(1) / (inside | target).flatten(1).sum(1)).max().item()
        if iou > best_iou:
            best, best_iou = s, iou
    return best


def read_single_object(image: np.ndarray, shapes: dict | None = None) -> ObjectReading:
    labels = palette_labels(image)
    bg = background_label(labels)
    obj = _largest_component(foreground_mask(image, labels, bg))
    if obj.sum() < MIN_OBJECT_PIXELS:
        return ObjectReading(bg, -1, -1, -1, False)
    colour = int(np.bincount(labels[obj], minlength=len(PALETTE_U8)).argmax())
    ys, xs = np.nonzero(obj)
    return ObjectReading(bg, colour, classify_shape(obj, shapes), position_of(xs.mean(), ys.mean()), True)


def limb_coverage(image: np.ndarray, keypoints: np.ndarray, samples_per_limb: int = 9) -> float:
    """Fraction of points along the skeleton's body limbs that land on non-background pixels."""
    labels = palette_labels(image)
    fg = foreground_mask(image, labels, background_label(labels))
    hits = []
    for a, b in BODY_LIMBS:
        for t in np.linspace(0, 1, samples_per_limb):
            x, y = keypoints[a] + t * (keypoints[b] - keypoints[a])
            xi, yi = int(np.clip(x, 0, image.shape[1] - 1)), int(np.clip(y, 0, image.shape[0] - 1))
            hits.append(fg[yi, xi])
    return float(np.mean(hits))


def edge_f1(reference: np.ndarray, edges: np.ndarray, tolerance: int = 2) -> float:
    """F1 of two binary edge maps, a pixel counting as matched within `tolerance` px."""
    ref, out = reference > 0, edges > 0
    if ref.sum() == 0 or out.sum() == 0:
        return 0.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    ref_near = cv2.dilate(ref.astype(np.uint8), kernel) > 0
    out_near = cv2.dilate(out.astype(np.uint8), kernel) > 0
    precision = (out & ref_near).sum() / out.sum()
    recall = (ref & out_near).sum() / ref.sum()
    return float(0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = d[where].mean() if where is not None else d.mean()
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-10)))
