"""Validated request objects: the single contract between the UI (or API, tests, a remote
worker) and the pipeline manager. One dataclass per task.

Two layers:
- the dataclasses' ``__post_init__`` enforce invariants and reject what cannot be meant
  (NaN, negative steps, unknown scheduler) with a clear ``RequestError``;
- ``Limits.normalize`` makes the friendly corrections a user expects (round sizes to
  multiples of 8, clamp to the host's maxima, draw a random seed for −1) and records each
  one as a note that travels with the request to the result.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace
from typing import ClassVar

from PIL import Image

from .errors import RequestError
from .schedulers import SCHEDULER_NAMES

MAX_SEED = 2**32 - 1
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
# Hires fix upscalers, named as A1111 names them: latent ones resize the first pass's latents
# (interpolation mode in pipelines/hires.py); pixel ones decode, resize the image, re-encode.
LATENT_UPSCALERS = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                    "Latent (nearest)", "Latent (nearest-exact)")
PIXEL_UPSCALERS = ("Lanczos", "Nearest")
HIRES_UPSCALERS = LATENT_UPSCALERS + PIXEL_UPSCALERS  # + model upscalers on disk (catalog.upscaler_models), by name


def _require_number(name: str, value, low: float, high: float, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise RequestError(f"{name} must be a finite number, got {value}.")
    if integer and value != int(value):
        raise RequestError(f"{name} must be a whole number, got {value}.")
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {_plain(low)} and {_plain(high)}, got {_plain(value)}.")


def _plain(value) -> str:
    """A number as a person writes it: 4294967295, not 4.29497e+09; 0.5 stays 0.5."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e16 else f"{value:g}"


def _is_model_name(text: str) -> bool:
    """A catalogue name (a file stem), never a path: the manager looks it up on its own disk."""
    return 0 < len(text.strip()) <= 200 and not any(c in text for c in "/\\\0") and text.strip() not in (".", "..")


def _require_text(name: str, value) -> None:
    if not isinstance(value, str):
        raise RequestError(f"{name} must be text, got {type(value).__name__}.")


@dataclass(frozen=True)
class Sampling:
    """How to sample: shared by every task."""

    scheduler: str = "Euler a"
    steps: int = 20
    cfg: bool = True  # classifier-free guidance on/off: off = one UNet pass per step
    cfg_scale: float = 7.0  # ε = ε_uncond + s·(ε_cond − ε_uncond)
    eta: float = 0.0  # DDIM η: σ = η·σ_DDPM (0 deterministic, 1 DDPM-like)
    seed: int = -1  # −1 = random, resolved by Limits.normalize
    batch_size: int = 1
    batch_count: int = 1
    # Variation seed (A1111's "Extra" seed options): the initial noise is slerp'd from the
    # seed's towards the subseed's by subseed_strength (0 = the seed's own image, 1 = the
    # subseed's noise); seed_resize_from_w/h draw the seed's noise at that size, centred.
    subseed: int = -1  # −1 = random, drawn by Limits.normalize when subseed_strength > 0
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0  # 0 = off
    seed_resize_from_h: int = 0

    def __post_init__(self):
        if self.scheduler not in SCHEDULER_NAMES:
            raise RequestError(f"Unknown scheduler {self.scheduler!r}. Choose one of: {', '.join(SCHEDULER_NAMES)}.")
        _require_number("Steps", self.steps, 1, 1000, integer=True)
        if not isinstance(self.cfg, bool):
            raise RequestError(f"CFG on/off must be true or false, got {self.cfg!r}.")
        _require_number("CFG scale", self.cfg_scale, 1.0, 30.0)
        _require_number("DDIM eta", self.eta, 0.0, 1.0)
        _require_number("Seed", self.seed, -1, MAX_SEED, integer=True)
        _require_number("Batch size", self.batch_size, 1, 64, integer=True)
        _require_number("Batch count", self.batch_count, 1, 1000, integer=True)
        _require_number("Variation seed", self.subseed, -1, MAX_SEED, integer=True)
        _require_number("Variation strength", self.subseed_strength, 0.0, 1.0)
        _require_number("Resize seed from width", self.seed_resize_from_w, 0, 16384, integer=True)
        _require_number("Resize seed from height", self.seed_resize_from_h, 0, 16384, integer=True)
        # Coerce integral floats coming from JSON (e.g. 20.0) to int.
        for name in ("steps", "seed", "batch_size", "batch_count", "subseed", "seed_resize_from_w", "seed_resize_from_h"):
            object.__setattr__(self, name, int(getattr(self, name)))
        for name in ("cfg_scale", "eta", "subseed_strength"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def guidance_scale(self) -> float:
        """What diffusers receives: ≤ 1 makes it skip the unconditional pass."""
        return self.cfg_scale if self.cfg else 1.0

    def image_seeds(self) -> list[list[int]]:
        """Seed of every image, batch by batch: image k of the job gets seed + k (as A1111)."""
        if self.seed < 0:
            raise RequestError("Seed −1 must be resolved before generation (Limits.normalize does it).")
        return [
            [(self.seed + b * self.batch_size + i) % (MAX_SEED + 1) for i in range(self.batch_size)]
            for b in range(self.batch_count)
        ]

    @property
    def seed_resize(self) -> tuple[int, int] | None:
        """(width, height) the seed's noise is drawn at, or None when off (either one 0)."""
        if self.seed_resize_from_w <= 0 or self.seed_resize_from_h <= 0:
            return None
        return self.seed_resize_from_w, self.seed_resize_from_h



MAX_CONTROL_UNITS = 3


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet: which model, which control image and preprocessor, how strongly and
    over which part of the schedule it steers (A1111's weight / guidance start / end)."""

    model: str = ""  # diffusers folder, single file or Hub id of a ControlNet
    image: Image.Image | None = None  # as uploaded; the preprocessor turns it into the map
    preprocessor: str = "none"  # "none": the image already is the control map
    params: tuple[tuple[str, float], ...] = ()  # preprocessor settings, e.g. (("low", 100), ("high", 200))
    weight: float = 1.0  # controlnet_conditioning_scale: residuals are multiplied by it
    start: float = 0.0  # fraction of the steps before the ControlNet starts to act
    end: float = 1.0  # fraction of the steps after which it stops
    resize_mode: str = "crop and resize"  # how the control image is fitted to the generation size

    def __post_init__(self):
        _require_text("ControlNet model", self.model)
        if not self.model.strip():
            raise RequestError("Choose a ControlNet model for each enabled unit.")
        if self.image is None:
            raise RequestError("A ControlNet unit needs a control image: upload one (or disable the unit).")
        if not isinstance(self.image, Image.Image):
            raise RequestError(f"The control image must be an image, got {type(self.image).__name__}.")
        _require_text("Preprocessor", self.preprocessor)
        _require_number("Control weight", self.weight, 0.0, 2.0)
        _require_number("Guidance start", self.start, 0.0, 1.0)
        _require_number("Guidance end", self.end, 0.0, 1.0)
        if self.start >= self.end:
            raise RequestError(f"Guidance start ({self.start:g}) must come before guidance end ({self.end:g}): "
                               "otherwise the ControlNet never acts.")
        if self.resize_mode not in RESIZE_MODES:
            raise RequestError(f"Unknown control resize mode {self.resize_mode!r}. Choose one of: {', '.join(RESIZE_MODES)}.")
        for key, value in self.params:
            _require_number(f"Preprocessor setting {key}", value, -1e6, 1e6)
        object.__setattr__(self, "weight", float(self.weight))
        object.__setattr__(self, "start", float(self.start))
        object.__setattr__(self, "end", float(self.end))


@dataclass(frozen=True)
class Control:
    """ControlNet units attached to any generation request (txt2img, img2img, inpaint)."""

    units: tuple[ControlUnit, ...] = ()
    guess_mode: bool = False  # no prompt for the ControlNet: it must recognise the content from the map

    def __post_init__(self):
        if not 1 <= len(self.units) <= MAX_CONTROL_UNITS:
            raise RequestError(f"Use 1 to {MAX_CONTROL_UNITS} ControlNet units, got {len(self.units)}.")
        if not all(isinstance(u, ControlUnit) for u in self.units):
            raise RequestError("Control units must be ControlUnit objects.")
        if not isinstance(self.guess_mode, bool):
            raise RequestError("Guess mode must be true or false.")


@dataclass(frozen=True)
class Txt2ImgRequest:
    prompt: str = ""
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    sampling: Sampling = field(default_factory=Sampling)
    control: Control | None = None  # ControlNet units, if any
    notes: tuple[str, ...] = ()  # corrections made on the way, shown to the user
    # Hires fix (txt2img only; A1111's REST names): first pass at width×height, upscale,
    # then an img2img pass at the final size (pipelines/hires.py).
    enable_hr: bool = False
    hr_scale: float = 2.0  # final size = base size × hr_scale, unless hr_resize_x/y are set
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0  # 0 = as many as the first pass
    hr_resize_x: int = 0  # resize to this width/height instead (0 = from the other / the scale)
    hr_resize_y: int = 0
    denoising_strength: float = 0.7  # of the second pass

    task: ClassVar[str] = "txt2img"

    def __post_init__(self):
        _require_text("Prompt", self.prompt)
        _require_text("Negative prompt", self.negative_prompt)
        for name in ("width", "height"):
            value = getattr(self, name)
            _require_number(name.capitalize(), value, 1, 16384, integer=True)
            object.__setattr__(self, name, int(value))
        if not isinstance(self.sampling, Sampling):
            raise RequestError("sampling must be a Sampling object.")
        if self.control is not None and not isinstance(self.control, Control):
            raise RequestError("control must be a Control object.")
        self._check_hires()

    def _check_hires(self) -> None:
        if not isinstance(self.enable_hr, bool):
            raise RequestError(f"Hires fix on/off must be true or false, got {self.enable_hr!r}.")
        if self.enable_hr and self.task != "txt2img":
            raise RequestError("Hires fix is a txt2img option: for an init image, raise the size and use img2img.")
        _require_number("Hires upscale by", self.hr_scale, 1.0, 8.0)
        _require_text("Hires upscaler", self.hr_upscaler)
        if self.hr_upscaler not in HIRES_UPSCALERS and not _is_model_name(self.hr_upscaler):
            raise RequestError(f"Unknown hires upscaler {self.hr_upscaler[:80]!r}. Choose one of: {', '.join(HIRES_UPSCALERS)}, "
                               "or a model upscaler of this host by its name.")
        _require_number("Hires steps", self.hr_second_pass_steps, 0, 1000, integer=True)
        _require_number("Hires resize width", self.hr_resize_x, 0, 16384, integer=True)
        _require_number("Hires resize height", self.hr_resize_y, 0, 16384, integer=True)
        _require_number("Hires denoising strength", self.denoising_strength, 0.0, 1.0)
        for name in ("hr_second_pass_steps", "hr_resize_x", "hr_resize_y"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "hr_scale", float(self.hr_scale))
        object.__setattr__(self, "denoising_strength", float(self.denoising_strength))

    @property
    def hires_size(self) -> tuple[int, int]:
        """The hires fix's final (width, height), multiples of 8: base × hr_scale, or the
        resize target (one side 0: kept in proportion), as A1111."""
        x, y = self.hr_resize_x, self.hr_resize_y
        if x == 0 and y == 0:
            w, h = self.width * self.hr_scale, self.height * self.hr_scale
        elif y == 0:
            w, h = x, x * self.height / self.width
        elif x == 0:
            w, h = y * self.width / self.height, y
        else:
            w, h = x, y
        return max(8, int(w + 1e-6) // 8 * 8), max(8, int(h + 1e-6) // 8 * 8)  # ε: 96 × (256/96) is 256

    @property
    def is_normalized(self) -> bool:
        """Sizes are multiples of 8 (the VAE downsamples by 8) and the seeds are drawn."""
        s = self.sampling
        return self.width % 8 == 0 and self.height % 8 == 0 and s.seed >= 0 and (s.subseed >= 0 or s.subseed_strength == 0)


@dataclass(frozen=True)
class Img2ImgRequest(Txt2ImgRequest):
    init_image: Image.Image | None = None
    strength: float = 0.75  # fraction of the noise schedule re-run: 0 = input back, 1 = ignore input
    resize_mode: str = "crop and resize"

    task: ClassVar[str] = "img2img"

    def __post_init__(self):
        super().__post_init__()
        if self.init_image is None:
            raise RequestError("img2img needs an init image: upload one first.")
        if not isinstance(self.init_image, Image.Image):
            raise RequestError(f"The init image must be an image, got {type(self.init_image).__name__}.")
        _require_number("Denoising strength", self.strength, 0.0, 1.0)
        object.__setattr__(self, "strength", float(self.strength))
        if self.resize_mode not in RESIZE_MODES:
            raise RequestError(f"Unknown resize mode {self.resize_mode!r}. Choose one of: {', '.join(RESIZE_MODES)}.")


INPAINT_MODES = ("RePaint", "inpainting model")
INPAINT_AREAS = ("whole picture", "only masked")
MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")


@dataclass(frozen=True)
class InpaintRequest(Img2ImgRequest):
    """Regenerate the masked part of init_image (mask: white = inpaint).

    RePaint works with any model: the known region is re-noised to every step's level and
    blended in; r resamplings over jumps of j steps heal the seam (the UNet runs r× longer).
    'inpainting model' uses a 9-channel UNet reading [z_t, mask, masked-image latent]."""

    mask: Image.Image | None = None
    mode: str = "RePaint"
    inpaint_model: str = ""  # 9-channel UNet source for mode 'inpainting model'
    mask_blur: int = 4  # px of feathering, kept inside the mask
    invert_mask: bool = False
    masked_content: str = "original"  # what the masked area starts from
    inpaint_area: str = "whole picture"  # or 'only masked': crop to the mask (+ padding), work at full size
    padding: int = 32
    repaint_r: int = 1  # resamplings per step
    repaint_j: int = 1  # jump length
    strength: float = 1.0

    task: ClassVar[str] = "inpaint"

    def __post_init__(self):
        super().__post_init__()
        if self.mask is None:
            raise RequestError("Inpainting needs a mask: paint over the area to change, or upload a mask image.")
        if not isinstance(self.mask, Image.Image):
            raise RequestError(f"The mask must be an image, got {type(self.mask).__name__}.")
        for name, value, choices in (("mode", self.mode, INPAINT_MODES), ("inpaint area", self.inpaint_area, INPAINT_AREAS),
                                     ("masked content", self.masked_content, MASKED_CONTENT)):
            if value not in choices:
                raise RequestError(f"Unknown {name} {value!r}. Choose one of: {', '.join(choices)}.")
        _require_text("Inpainting model", self.inpaint_model)
        if self.mode == "inpainting model" and not self.inpaint_model.strip():
            raise RequestError("Mode 'inpainting model' needs a 9-channel inpainting model: choose one, or use RePaint.")
        _require_number("Mask blur", self.mask_blur, 0, 256, integer=True)
        _require_number("Only-masked padding", self.padding, 0, 4096, integer=True)
        _require_number("RePaint r", self.repaint_r, 1, 50, integer=True)
        _require_number("RePaint j", self.repaint_j, 1, 1000, integer=True)
        if not isinstance(self.invert_mask, bool):
            raise RequestError("Invert mask must be true or false.")
        for name in ("mask_blur", "padding", "repaint_r", "repaint_j"):
            object.__setattr__(self, name, int(getattr(self, name)))


@dataclass(frozen=True)
class Limits:
    """What this host allows (from settings): a laptop and a public Space differ here."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 16
    max_grid_cells: int = 100  # X/Y grids run every cell as one job

    def normalize(self, request: Txt2ImgRequest) -> Txt2ImgRequest:
        """Friendly corrections, each recorded as a note; returns a new, ready request."""
        notes = list(request.notes)
        size = {}
        for name, limit in (("width", self.max_width), ("height", self.max_height)):
            value = getattr(request, name)
            rounded = max(8, math.floor(value / 8 + 0.5) * 8)
            if rounded != value:
                notes.append(f"{name.capitalize()} {value} rounded to {rounded} (a multiple of 8).")
            if rounded > limit:
                notes.append(f"{name.capitalize()} {rounded} is over this host's limit: clamped to {limit}.")
                rounded = limit
            size[name] = rounded
        s = request.sampling
        changes = {}
        for name, limit, label in (
            ("steps", self.max_steps, "Steps"),
            ("batch_size", self.max_batch_size, "Batch size"),
            ("batch_count", self.max_batch_count, "Batch count"),
        ):
            if getattr(s, name) > limit:
                notes.append(f"{label} {getattr(s, name)} is over this host's limit: clamped to {limit}.")
                changes[name] = limit
        if s.seed < 0:
            changes["seed"] = random.randint(0, MAX_SEED)
        if s.subseed < 0 and s.subseed_strength > 0:  # drawn only when it acts (no random field otherwise)
            changes["subseed"] = random.randint(0, MAX_SEED)
        sampling = replace(s, **changes) if changes else s
        hires = self._fit_hires(replace(request, **size), notes) if request.enable_hr else {}
        return replace(request, sampling=sampling, notes=tuple(notes), **size, **hires)

    def _fit_hires(self, request: Txt2ImgRequest, notes: list[str]) -> dict:
        """The host's limits apply to the hires fix's final size: shrink the factor (or the
        resize target) in proportion, and say so."""
        w, h = request.hires_size
        if w <= self.max_width and h <= self.max_height:
            return {}
        shrink = min(self.max_width / w, self.max_height / h)
        if request.hr_resize_x == 0 and request.hr_resize_y == 0:
            scale = min(self.max_width / request.width, self.max_height / request.height)
            notes.append(f"Hires fix to {w}x{h} is over this host's limit of {self.max_width}x{self.max_height}: "
                         f"upscale by {scale:.3g} instead of {request.hr_scale:g}.")
            return {"hr_scale": max(1.0, scale)}
        x, y = int(request.hr_resize_x * shrink) // 8 * 8, int(request.hr_resize_y * shrink) // 8 * 8
        notes.append(f"Hires fix to {w}x{h} is over this host's limit of {self.max_width}x{self.max_height}: "
                     f"resized to {x or 'auto'}x{y or 'auto'} instead.")
        return {"hr_resize_x": x, "hr_resize_y": y}
