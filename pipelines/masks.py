"""Masks and canvases for inpainting and outpainting: PIL/numpy only (no torch, no gradio).

Shared by both inpainting modes (RePaint and the 9-channel inpainting model):

- ``to_mask``: any mask image (white = inpaint; alpha, if any, multiplies it) → a boolean
  array at the image's size (resized with a note when it differs), optionally inverted;
- ``feather``: the mask-blur weight, kept *inside* the mask so pixels outside it never move;
- ``crop_box``: the "only masked" work area (mask box + padding, at the generation aspect);
- ``fill_masked``: the "fill" masked-content init (colours diffused in from around the hole);
- ``outpaint_canvas``: a larger canvas, its new area masked and pre-filled;
- ``paste_back``: final = original·(1−w) + generated·w;
- ``prepare_inpaint`` ties them together into an ``InpaintPlan`` the manager runs;
- ``seam_metric``: how visible the mask border is in a result (for the RePaint benchmark).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from .core.errors import RequestError
from .core.images import fit, to_rgb
from .core.requests import INPAINT_AREAS, MASKED_CONTENT  # pixel side: of the contents only "fill" acts here
OUTPAINT_FILLS = ("fill", "stretch")
THRESHOLD = 128  # a mask pixel ≥ this (after alpha) is inpainted
EMPTY_MASK = "The mask is empty: paint over the area to inpaint (white = inpaint), or upload a mask image."
EIGHT_CONNECTED = np.ones((3, 3), bool)


# ----------------------------------------------------------------- mask from an image
def mask_values(mask: Image.Image) -> np.ndarray:
    """0…255 float luminance of a mask image of any mode; transparent pixels count as 0."""
    if mask.mode == "P":
        mask = mask.convert("RGBA")
    if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(mask.convert("RGBA"), np.float32)
        grey = np.asarray(mask.convert("RGB").convert("L"), np.float32)
        return grey * rgba[..., 3] / 255.0
    return np.asarray(mask.convert("L"), np.float32)


def to_mask(mask: Image.Image, size: tuple[int, int], invert: bool = False) -> tuple[np.ndarray, list[str]]:
    """Boolean (H, W) mask for an image of `size` = (W, H); True = inpaint.

    A mask of another size is resized to the image (area coverage ≥ ½, or any coverage if
    that would lose the mask) and a note says so. An empty mask is a RequestError."""
    notes = []
    hard = mask_values(mask) >= THRESHOLD
    if mask.size != tuple(size):
        hard = _resize_mask(hard, size)
        stretched = abs(mask.width / mask.height - size[0] / size[1]) > 0.01
        notes.append(f"The mask ({mask.width}×{mask.height}) was resized to the image size ({size[0]}×{size[1]})"
                     + (", stretching it." if stretched else "."))
    if invert:
        hard = ~hard
    if not hard.any():
        raise RequestError(EMPTY_MASK if not invert else
                           "The inverted mask is empty (the mask covers the whole image): untick 'invert mask' or paint less.")
    return hard, notes


def _resize_mask(hard: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    coverage = np.asarray(Image.fromarray(hard.astype(np.uint8) * 255).resize(tuple(size), Image.BOX), np.uint8)
    resized = coverage >= THRESHOLD
    return resized if resized.any() or not hard.any() else coverage > 0


# ----------------------------------------------------------------- feathering (mask blur)
def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """Paste-back weight in [0, 1] (float32, same shape): 0 everywhere outside `mask`.

    Mask blur of radius R px: erode the mask by R (square), then Gaussian-blur it with
    σ = R/2.5 truncated at R — the blur cannot reach past what the erosion took away, so
    the feather band is the 2R px just inside the mask edge (weight ½ about R px in) and
    nothing outside moves. A part of the mask thinner than 4R gets a proportionally
    smaller R (a stroke up to 4 px wide stays hard) so that no painted part vanishes. The image
    border is not a mask edge: a mask touching it is not feathered there.

    Computed on the mask's box grown by R + 1 px (clamped to the image), not the whole image:
    the same numbers bit for bit (every value read lies in that window, or beyond the image
    border exactly as before; the window's inner edges are unmasked), in a fraction of the time
    for a mask smaller than the image (tests/test_masks.py compares it with the whole frame)."""
    hard = np.asarray(mask, bool)
    R = int(round(radius))
    if R <= 0 or hard.all() or not hard.any():
        return hard.astype(np.float32)
    H, W = hard.shape
    x0, y0, x1, y1 = mask_bbox(hard)
    window = (slice(max(y0 - R - 1, 0), min(y1 + R + 1, H)), slice(max(x0 - R - 1, 0), min(x1 + R + 1, W)))
    weight = np.zeros(hard.shape, np.float32)
    weight[window] = _feather_frame(hard[window], R)
    return weight


def _feather_frame(hard: np.ndarray, R: int) -> np.ndarray:
    """feather() over the whole of `hard` (R ≥ 1)."""
    depth = ndimage.distance_transform_cdt(hard, metric="chessboard")  # px to the nearest kept pixel
    labels, count = ndimage.label(hard, structure=EIGHT_CONNECTED)
    thickness = np.zeros(count + 1, depth.dtype)  # deepest pixel of each part (label 0: outside)
    np.maximum.at(thickness, labels[hard], depth[hard])
    per_part = np.minimum(R, (thickness[1:] - 1) // 2).astype(int)  # a core ≥ k+1 px deep survives
    weight = np.zeros(hard.shape, np.float32)
    for k in np.unique(per_part):
        part = np.isin(labels, 1 + np.flatnonzero(per_part == k))
        if k == 0:
            weight[part] = 1.0
            continue
        core = (part & (depth > k)).astype(np.float32)
        blurred = ndimage.gaussian_filter(core, sigma=k / 2.5, radius=int(k), mode="nearest")
        weight = np.maximum(weight, np.where(part, blurred, 0.0))
    weight[weight > 1 - 1e-6] = 1.0  # a full kernel sums to 1 up to rounding
    return weight * hard


# ----------------------------------------------------------------- only-masked crop
def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), right/bottom exclusive, of the True pixels."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise RequestError(EMPTY_MASK)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _grow(lo: int, hi: int, length: int, limit: int) -> tuple[int, int]:
    """[lo, hi) grown to `length` (≤ limit) around its centre, shifted to stay in [0, limit)."""
    length = min(max(length, hi - lo), limit)
    start = int(round((lo + hi - length) / 2))
    start = min(max(start, 0), limit - length)
    return start, start + length


def crop_box(mask: np.ndarray, padding: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The 'only masked' work area: the mask's box + `padding` px each side, clamped to the
    image, then grown (centred, shifted off the borders) to the width:height aspect of the
    generation so the crop is not distorted when scaled to it (as far as the image allows)."""
    if padding < 0:
        raise RequestError(f"Padding must be ≥ 0 px, got {padding}.")
    H, W = mask.shape
    x0, y0, x1, y1 = mask_bbox(mask)
    x0, y0, x1, y1 = max(x0 - padding, 0), max(y0 - padding, 0), min(x1 + padding, W), min(y1 + padding, H)
    bw, bh = x1 - x0, y1 - y0
    if bw * height < bh * width:  # too narrow for the target aspect: widen
        x0, x1 = _grow(x0, x1, int(round(bh * width / height)), W)
    else:
        y0, y1 = _grow(y0, y1, int(round(bw * height / width)), H)
    return x0, y0, x1, y1


# ----------------------------------------------------------------- fill, outpaint, paste-back
def fill_masked(image: Image.Image, mask: np.ndarray) -> Image.Image:
    """'fill' masked content: the hole takes the colours around it, diffused inwards by
    coarse-to-fine blurs of the known pixels (premultiplied alpha = normalised convolution)."""
    rgb = to_rgb(image)
    known = Image.fromarray(np.where(mask, 0, 255).astype(np.uint8))
    layer = Image.new("RGBA", rgb.size, (0, 0, 0, 0))
    layer.paste(rgb.convert("RGBA"), mask=known)
    premultiplied = layer.convert("RGBa")
    canvas = Image.new("RGBA", rgb.size, (0, 0, 0, 0))
    longest = max(rgb.size)
    for radius, repeats in ((longest / 2, 1), (longest / 8, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = premultiplied.filter(ImageFilter.GaussianBlur(radius)) if radius else premultiplied
        for _ in range(repeats):
            canvas.alpha_composite(blurred.convert("RGBA"))
    out = np.asarray(canvas.convert("RGB")).copy()
    out[~mask] = np.asarray(rgb)[~mask]  # known pixels exactly as they were
    return Image.fromarray(out)


def outpaint_canvas(image: Image.Image, left: int = 0, right: int = 0, up: int = 0, down: int = 0,
                    overlap: int = 8, fill: str = "fill") -> tuple[Image.Image, Image.Image, list[str]]:
    """Extend the canvas by the given pixels per side (rounded up to multiples of 8, with a
    note). Returns (canvas RGB, mask L, notes): the mask is white over the new area and
    `overlap` px into the old image along each extended side (so the mask-blur band lies
    on real pixels, not on the fill); the new area is pre-filled ('fill': colours diffused
    from the image; 'stretch': edge pixels repeated) so that strength < 1 starts sensibly."""
    notes = []
    sides = {"left": left, "right": right, "up": up, "down": down}
    for name, value in sides.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
            raise RequestError(f"Outpaint {name} must be a whole number of pixels ≥ 0, got {value!r}.")
        rounded = -(-int(value) // 8) * 8
        if rounded != value:
            notes.append(f"Outpaint {name} {int(value)} px rounded up to {rounded} (a multiple of 8).")
        sides[name] = rounded
    if not any(sides.values()):
        raise RequestError("Outpainting needs at least one side to extend by more than 0 px.")
    if fill not in OUTPAINT_FILLS:
        raise RequestError(f"Unknown outpaint fill {fill!r}. Choose one of: {', '.join(OUTPAINT_FILLS)}.")
    rgb = np.asarray(to_rgb(image))
    h, w = rgb.shape[:2]
    l, r, u, d = sides["left"], sides["right"], sides["up"], sides["down"]
    canvas = np.pad(rgb, ((u, d), (l, r), (0, 0)), mode="edge")
    mask = np.ones(canvas.shape[:2], bool)
    o = max(0, int(overlap))
    # keep the old image, less `overlap` px along the extended sides
    mask[u + (min(o, h - 1) if u else 0): u + h - (min(o, h - 1) if d else 0),
         l + (min(o, w - 1) if l else 0): l + w - (min(o, w - 1) if r else 0)] = False
    result = Image.fromarray(canvas)
    if fill == "fill":
        new_area = np.ones(canvas.shape[:2], bool)
        new_area[u:u + h, l:l + w] = False
        result = fill_masked(result, new_area)
    return result, Image.fromarray(mask.astype(np.uint8) * 255), notes


def paste_back(original: Image.Image, generated: Image.Image, weight: np.ndarray) -> Image.Image:
    """final = original where w = 0 (bit-exact), generated where w = 1, o + (g − o)·w between.

    Works on the box of w ≠ 0 only and blends in float32 only where 0 < w < 1 (the feather
    band): the same pixels as blending the whole image in float32, at a fraction of the cost
    (it runs after the decode has waited for the device, where nothing hides it)."""
    o = np.asarray(to_rgb(original))
    g = np.asarray(to_rgb(generated))
    if o.shape != g.shape:
        raise ValueError(f"paste_back: original {o.shape} and generated {g.shape} differ")
    w = np.asarray(weight, np.float32)
    out = o.copy()
    rows, cols = np.flatnonzero(w.any(axis=1)), np.flatnonzero(w.any(axis=0))
    if rows.size == 0:
        return Image.fromarray(out)
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    wb, ob, gb = w[box], o[box], g[box]
    part = np.where((wb >= 1)[..., None], gb, ob)
    band = (wb > 0) & (wb < 1)
    if band.any():
        ol, gl = ob[band].astype(np.float32), gb[band].astype(np.float32)
        part[band] = np.clip(np.rint(ol + (gl - ol) * wb[band][:, None]), 0, 255).astype(np.uint8)
    out[box] = part
    return Image.fromarray(out)


def latent_mask(mask: np.ndarray, factor: int = 8) -> np.ndarray:
    """(H/f, W/f) float32 mask for the latent: a latent cell is inpainted (1) if any of its
    f×f pixels is, so the whole painted area is regenerated; paste-back keeps the rest."""
    H, W = mask.shape
    if H % factor or W % factor:
        raise ValueError(f"mask size {W}×{H} is not a multiple of {factor}")
    return mask.reshape(H // factor, factor, W // factor, factor).max(axis=(1, 3)).astype(np.float32)


# ----------------------------------------------------------------- the whole plan
@dataclass
class InpaintPlan:
    """What a manager needs to inpaint one image, and how to put the result back.

    original: the paste-back target (RGB): the input at its own size for 'only masked',
        fitted to the generation size for 'whole picture';
    mask: boolean mask at original's size; mask_blur: its feather radius (px);
    weight: the feathered paste-back weight at original's size, computed at first use: only
        paste-back reads it, so the manager asks for it while the device runs the steps
        (``prepare_finish``), not before the first step where it would delay the request;
    box: the crop (left, top, right, bottom) in original for 'only masked', else None;
    init_image: what the VAE encodes, at the generation size (filled for 'fill');
    gen_mask: boolean mask at the generation size (what the sampler inpaints)."""

    original: Image.Image
    mask: np.ndarray
    mask_blur: float
    box: tuple[int, int, int, int] | None
    init_image: Image.Image
    gen_mask: np.ndarray
    masked_content: str
    notes: list[str] = field(default_factory=list)
    _weight: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def weight(self) -> np.ndarray:
        if self._weight is None:
            self._weight = feather(self.mask, self.mask_blur)
        return self._weight

    def prepare_finish(self) -> None:
        """Host work finish() needs that does not depend on the result (the feather)."""
        self.weight  # noqa: B018 — computed and kept

    @property
    def size(self) -> tuple[int, int]:
        return self.init_image.size

    def latent_mask(self, factor: int = 8) -> np.ndarray:
        return latent_mask(self.gen_mask, factor)

    def finish(self, generated: Image.Image) -> Image.Image:
        """The final image: generated content pasted into the original with the feather."""
        if generated.size != self.size:
            raise ValueError(f"expected a {self.size} result, got {generated.size}")
        if self.box is None:
            return paste_back(self.original, generated, self.weight)
        x0, y0, x1, y1 = self.box
        placed = self.original.copy()
        placed.paste(to_rgb(generated).resize((x1 - x0, y1 - y0), Image.LANCZOS), (x0, y0))
        return paste_back(self.original, placed, self.weight)


def prepare_inpaint(image: Image.Image, mask: Image.Image, width: int, height: int, *, invert: bool = False,
                    mask_blur: float = 4, inpaint_area: str = "whole picture", padding: int = 32,
                    masked_content: str = "original", resize_mode: str = "just resize") -> InpaintPlan:
    """Turn an image of any mode and a mask image into an InpaintPlan at width×height."""
    if inpaint_area not in INPAINT_AREAS:
        raise RequestError(f"Unknown inpaint area {inpaint_area!r}. Choose one of: {', '.join(INPAINT_AREAS)}.")
    if masked_content not in MASKED_CONTENT:
        raise RequestError(f"Unknown masked content {masked_content!r}. Choose one of: {', '.join(MASKED_CONTENT)}.")
    if mask_blur < 0:
        raise RequestError(f"Mask blur must be ≥ 0 px, got {mask_blur}.")
    rgb = to_rgb(image)
    hard, notes = to_mask(mask, rgb.size, invert)
    if inpaint_area == "whole picture" and rgb.size != (width, height):
        notes.append(f"The image ({rgb.width}×{rgb.height}) was resized to {width}×{height} ({resize_mode}).")
        rgb = fit(rgb, width, height, resize_mode)
        hard = np.asarray(fit(Image.fromarray(hard.astype(np.uint8) * 255), width, height, resize_mode).convert("L")) >= THRESHOLD
        if not hard.any():
            raise RequestError(EMPTY_MASK + " (After resizing to the generation size nothing of it is left.)")
    source = fill_masked(rgb, hard) if masked_content == "fill" else rgb
    if inpaint_area == "whole picture":
        return InpaintPlan(rgb, hard, mask_blur, None, source, hard, masked_content, notes)
    box = crop_box(hard, int(padding), width, height)
    init = source.crop(box).resize((width, height), Image.LANCZOS)
    gen_mask = _resize_mask(hard[box[1]:box[3], box[0]:box[2]], (width, height))
    return InpaintPlan(rgb, hard, mask_blur, box, init, gen_mask, masked_content, notes)


# ----------------------------------------------------------------- seam metric
def seam_metric(image: Image.Image, mask: np.ndarray, band: int = 2) -> dict:
    """How visible the mask border is: mean gradient magnitude (of luminance, 0…255) in the
    band of ±`band` px around the mask edge, minus the mean of the inside and outside means.
    ~0: the border looks like the rest of the image; > 0: a seam."""
    grey = np.asarray(to_rgb(image).convert("L"), np.float64)
    gy, gx = np.gradient(grey)
    magnitude = np.hypot(gx, gy)
    hard = np.asarray(mask, bool)
    square = np.ones((2 * band + 1, 2 * band + 1), bool)
    border = ndimage.binary_dilation(hard, square) & ~ndimage.binary_erosion(hard, square, border_value=1)
    inside, outside = hard & ~border, ~hard & ~border
    means = {name: float(magnitude[region].mean()) if region.any() else float("nan")
             for name, region in (("border", border), ("inside", inside), ("outside", outside))}
    rest = [v for k, v in means.items() if k != "border" and np.isfinite(v)]
    means["seam"] = means["border"] - (float(np.mean(rest)) if rest else 0.0)
    return means
