"""Validated request objects: the single contract between the UI (or API, tests, a remote
worker) and the pipeline manager. One dataclass per task. Every field is declared once,
here, with ``declare(default, label, range/choices, infotext key, A1111 key, …)``: widgets,
API names, grid axes and PNG info follow from it (pipelines/core/fields.py: how to add one).

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
from dataclasses import dataclass, replace
from typing import ClassVar

from PIL import Image

from .errors import RequestError
from .fields import check_fields, declare, fields_of, nested, registry, require_number, require_text
from .prompt_syntax import LoraTag, extract_loras, parse_prompt

_require_number, _require_text = require_number, require_text  # the lab's requests use them
from .schedulers import SCHEDULER_NAMES

MAX_SEED = 2**32 - 1
MAX_CLIP_SKIP = 12  # A1111's slider range (CLIP ViT-L has 12 layers)
# Choice lists, each once. Orders are A1111's where A1111 sends an index over its REST API
# (resize_mode 0–2, inpaint_full_res 0–1); MASKED_CONTENT's A1111 index is fill 0, original 1.
RESIZE_MODES = ("just resize", "crop and resize", "resize and fill")
INPAINT_MODES = ("RePaint", "inpainting model")
INPAINT_AREAS = ("whole picture", "only masked")
MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")
# Hires fix upscalers, named as A1111 names them: latent ones resize the first pass's latents
# (interpolation mode in pipelines/hires.py); pixel ones decode, resize the image, re-encode.
LATENT_UPSCALERS = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                    "Latent (nearest)", "Latent (nearest-exact)")
PIXEL_UPSCALERS = ("Lanczos", "Nearest")
HIRES_UPSCALERS = LATENT_UPSCALERS + PIXEL_UPSCALERS  # + model upscalers on disk (catalog.upscaler_models), by name
# Lossy speed-ups (pipelines/turbo.py): "DeepCache N" runs the whole UNet once every N steps
# and only its shallow skip branch in between, on the deep features kept from the full step.
TURBO_MODES = ("Off", "DeepCache 2", "DeepCache 3")
# Token merging (pipelines/token_merging.py): A1111's slider range, 0 = off.
MAX_TOKEN_MERGING = 0.9


def _is_model_name(text: str) -> bool:
    """A catalogue name (a file stem), never a path: the manager looks it up on its own disk."""
    return 0 < len(text.strip()) <= 200 and not any(c in text for c in "/\\\0") and text.strip() not in (".", "..")


def _require_image(value, missing: str, what: str) -> None:
    if value is None:
        raise RequestError(missing)
    if not isinstance(value, Image.Image):
        raise RequestError(f"{what} must be an image, got {type(value).__name__}.")


def _require_prompt(name: str, value: str) -> None:
    """Text whose A1111 syntax parses (a LoRA weight must be a number). Its length is the
    host's to cap (--max-prompt-chars, ui/limits.py and the REST API): each 75 tokens is one
    more text-encoder pass."""
    try:
        parse_prompt(value)
    except ValueError as error:
        raise RequestError(f"{name}: {error}") from None


@dataclass(frozen=True)
class Sampling:
    """How to sample: shared by every task."""

    scheduler: str = declare("Euler a", "Scheduler", choices=SCHEDULER_NAMES, infotext="Sampler", a1111="sampler_name",
                             axis=True)
    steps: int = declare(20, "Steps", minimum=1, maximum=1000, step=1, limit="max_steps", infotext="Steps", a1111="steps",
                         axis=True)
    # classifier-free guidance on/off: off = one UNet pass per step
    cfg: bool = declare(True, "CFG", title="CFG on/off", info="classifier-free guidance; off = one UNet pass per step",
                        infotext="CFG")
    # ε = ε_uncond + s·(ε_cond − ε_uncond)
    cfg_scale: float = declare(7.0, "CFG scale", minimum=1.0, maximum=30.0, step=0.5, infotext="CFG scale",
                               a1111="cfg_scale", axis=True)
    # DDIM η: σ = η·σ_DDPM (0 deterministic, 1 DDPM-like)
    eta: float = declare(0.0, "DDIM η", minimum=0.0, maximum=1.0, step=0.05, info="0 deterministic, 1 DDPM-like",
                         infotext="Eta", a1111="eta", axis=True)
    # −1 = random, resolved by Limits.normalize
    seed: int = declare(-1, "Seed", minimum=-1, maximum=MAX_SEED, step=1, info="−1 = random", infotext="Seed",
                        a1111="seed", axis=True)
    batch_size: int = declare(1, "Batch size", minimum=1, maximum=64, step=1, limit="max_batch_size",
                              infotext="Batch size", a1111="batch_size")
    batch_count: int = declare(1, "Batch count", minimum=1, maximum=1000, step=1, limit="max_batch_count", a1111="n_iter")

    def __post_init__(self):
        check_fields(self)

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


MAX_CONTROL_UNITS = 3


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet: which model, which control image and preprocessor, how strongly and
    over which part of the schedule it steers (A1111's weight / guidance start / end).
    a1111 keys: the ControlNet extension's unit JSON (alwayson_scripts.controlnet.args)."""

    # diffusers folder, single file or Hub id of a ControlNet
    model: str = declare("", "ControlNet model", info="a ControlNet folder, .safetensors file or Hub id", a1111="model")
    image: Image.Image | None = declare(None, "Control image", kind=object, a1111="image")  # the preprocessor makes the map
    # "none": the image already is the control map
    preprocessor: str = declare("none", "Preprocessor", a1111="module")
    params: tuple[tuple[str, float], ...] = ()  # preprocessor settings, e.g. (("low", 100), ("high", 200))
    # controlnet_conditioning_scale: residuals are multiplied by it
    weight: float = declare(1.0, "Control weight", minimum=0.0, maximum=2.0, step=0.05, a1111="weight", axis=True)
    # fractions of the steps before the ControlNet starts to act, and after which it stops
    start: float = declare(0.0, "Guidance start", minimum=0.0, maximum=1.0, step=0.01, a1111="guidance_start")
    end: float = declare(1.0, "Guidance end", minimum=0.0, maximum=1.0, step=0.01, a1111="guidance_end")
    # how the control image is fitted to the generation size
    resize_mode: str = declare("crop and resize", "Resize mode", title="Control resize mode", choices=RESIZE_MODES,
                               a1111="resize_mode")

    def __post_init__(self):
        if self.model is None or (isinstance(self.model, str) and not self.model.strip()):
            raise RequestError("Choose a ControlNet model for each enabled unit.")
        _require_image(self.image, "A ControlNet unit needs a control image: upload one (or disable the unit).",
                       "The control image")
        check_fields(self)
        if self.start >= self.end:
            raise RequestError(f"Guidance start ({self.start:g}) must come before guidance end ({self.end:g}): "
                               "otherwise the ControlNet never acts.")
        for key, value in self.params:
            require_number(f"Preprocessor setting {key}", value, -MAX_SEED, MAX_SEED)  # its own range: control_map checks it


@dataclass(frozen=True)
class Control:
    """ControlNet units attached to any generation request (txt2img, img2img, inpaint)."""

    units: tuple[ControlUnit, ...] = ()
    # no prompt for the ControlNet: it must recognise the content from the map
    guess_mode: bool = declare(False, "Guess mode", info="the ControlNet gets no prompt and must recognise the content from the map",
                               infotext="Guess mode")

    def __post_init__(self):
        if not 1 <= len(self.units) <= MAX_CONTROL_UNITS:
            raise RequestError(f"Use 1 to {MAX_CONTROL_UNITS} ControlNet units, got {len(self.units)}.")
        if not all(isinstance(u, ControlUnit) for u in self.units):
            raise RequestError("Control units must be ControlUnit objects.")
        check_fields(self)


SDXL_SIZE_FIELDS = ("original_width", "original_height", "target_width", "target_height", "crop_left", "crop_top")
SDXL_FIELDS = (*SDXL_SIZE_FIELDS, "refiner", "refiner_switch")  # the fields only SDXL models act on


@dataclass(frozen=True)
class Txt2ImgRequest:
    prompt: str = declare("", "Prompt", infotext="Prompt", a1111="prompt")
    negative_prompt: str = declare("", "Negative prompt", infotext="Negative prompt", a1111="negative_prompt")
    sampling: Sampling = nested(Sampling)
    width: int = declare(512, "Width", minimum=1, maximum=16384, step=8, slider=(64, 16384), limit="max_width",
                         infotext="Size-1", a1111="width")
    height: int = declare(512, "Height", minimum=1, maximum=16384, step=8, slider=(64, 16384), limit="max_height",
                          infotext="Size-2", a1111="height")
    # A1111's Clip skip: 1 = the text encoder's last layer, 2 = the one before (through its final norm), …
    clip_skip: int = declare(1, "Clip skip", minimum=1, maximum=MAX_CLIP_SKIP, step=1, infotext="Clip skip", axis=True)
    control: Control | None = None  # ControlNet units, if any
    notes: tuple[str, ...] = ()  # corrections made on the way, shown to the user
    # Hires fix (txt2img only; A1111's REST names): first pass at width×height, upscale,
    # then an img2img pass at the final size (pipelines/hires.py). Infotext: infotext.hires_params.
    enable_hr: bool = declare(False, "Hires fix", a1111="enable_hr",
                              info="first pass at the size above, then upscale and refine at the final size")
    hr_upscaler: str = declare("Latent", "Upscaler", title="Hires upscaler", infotext="Hires upscaler", a1111="hr_upscaler")
    hr_scale: float = declare(2.0, "Upscale by", title="Hires upscale by", minimum=1.0, maximum=8.0, step=0.05,
                              slider=(1.0, 4.0), infotext="Hires upscale", a1111="hr_scale")
    hr_second_pass_steps: int = declare(0, "Hires steps", minimum=0, maximum=1000, step=1, limit="max_steps",
                                        info="0 = same as the first pass", infotext="Hires steps",
                                        a1111="hr_second_pass_steps", axis=True)
    denoising_strength: float = declare(0.7, "Denoising strength", title="Hires denoising strength", minimum=0.0,
                                        maximum=1.0, step=0.01, infotext="Denoising strength", axis=True)  # REST: api/fields.py
    hr_resize_x: int = declare(0, "Resize width to", title="Hires resize width", minimum=0, maximum=16384, step=8,
                               limit="max_width", info="0 = by the factor", infotext="Hires resize-1", a1111="hr_resize_x")
    hr_resize_y: int = declare(0, "Resize height to", title="Hires resize height", minimum=0, maximum=16384, step=8,
                               limit="max_height", infotext="Hires resize-2", a1111="hr_resize_y")
    # Variation seed (A1111's "Extra" seed options): the initial noise is slerp'd from the
    # seed's towards the subseed's by subseed_strength (0 = the seed's own image); resize
    # seed from w/h draws the seed's noise at that size, centred (pipelines/noise.py).
    # Declared after width/height so the API's positional order stays as it was.
    subseed: int = declare(-1, "Variation seed", minimum=-1, maximum=MAX_SEED, step=1, info="−1 = random",
                           infotext="Variation seed", a1111="subseed", axis=True)
    subseed_strength: float = declare(0.0, "Variation strength", minimum=0.0, maximum=1.0, step=0.01,
                                      info="0: the seed's image; 1: the variation seed's noise",
                                      infotext="Variation seed strength", a1111="subseed_strength", axis=True)
    seed_resize_from_w: int = declare(0, "Resize seed from width", minimum=0, maximum=16384, step=8, info="0 = off",
                                      limit="max_width", infotext="Seed resize from-1")
    seed_resize_from_h: int = declare(0, "Resize seed from height", minimum=0, maximum=16384, step=8,
                                      limit="max_height", infotext="Seed resize from-2")
    # the model's own VAE, or a name from the catalogue's VAE/ list (pipelines/adapters.py)
    vae: str = declare("Automatic", "VAE", info="Automatic = the model's own; others from the models folder's VAE/",
                       infotext="VAE")
    # SDXL size/crop conditioning (other families ignore them); 0 = the generation size, as A1111.
    original_width: int = declare(0, "Original width", minimum=0, maximum=16384, step=8, slider=(0, 4096),
                                  info="SDXL: 0 = the generation width", infotext="Original width")
    original_height: int = declare(0, "Original height", minimum=0, maximum=16384, step=8, slider=(0, 4096),
                                   info="SDXL: 0 = the generation height", infotext="Original height")
    target_width: int = declare(0, "Target width", minimum=0, maximum=16384, step=8, slider=(0, 4096),
                                info="SDXL: 0 = the generation width", infotext="Target width")
    target_height: int = declare(0, "Target height", minimum=0, maximum=16384, step=8, slider=(0, 4096),
                                 info="SDXL: 0 = the generation height", infotext="Target height")
    crop_left: int = declare(0, "Crop left", minimum=0, maximum=16384, step=8, slider=(0, 2048),
                             info="SDXL: as if cropped this far from the left", infotext="Crop left")
    crop_top: int = declare(0, "Crop top", minimum=0, maximum=16384, step=8, slider=(0, 2048),
                            info="SDXL: as if cropped this far from the top", infotext="Crop top")
    # SDXL refiner hand-off: the base denoises up to refiner_switch of the schedule, the refiner the rest.
    refiner: str = declare("", "Refiner", info="an SDXL refiner (diffusers folder or Hub id); empty = none",
                           infotext="Refiner", a1111="refiner_checkpoint")
    refiner_switch: float = declare(0.8, "Refiner switch at", minimum=0.01, maximum=1.0, step=0.01,
                                    infotext="Refiner switch at", a1111="refiner_switch_at", axis=True)
    # Lossy speed-up (pipelines/turbo.py). Declared last so the API's positional order stays as it was.
    turbo: str = declare("Off", "Turbo", choices=TURBO_MODES, infotext="Turbo", axis=True,
                         info="lossy speed-up: DeepCache N runs the whole UNet every N-th step and only its "
                              "outer layers in between (the image changes slightly)")
    # Lossy speed-up (pipelines/token_merging.py, ToMe for SD): A1111's "Token merging ratio".
    # Declared after turbo, last, so the API's positional order stays as it was.
    token_merging: float = declare(0.0, "Token merging ratio", minimum=0.0, maximum=MAX_TOKEN_MERGING, step=0.05,
                                   infotext="Token merging ratio", axis=True,
                                   info="lossy speed-up (ToMe): merges this fraction of alike tokens before "
                                        "self-attention; 0 = off")

    task: ClassVar[str] = "txt2img"

    def __post_init__(self):
        check_fields(self)
        for name in ("prompt", "negative_prompt"):
            _require_prompt(fields_of(Txt2ImgRequest)[name].label, getattr(self, name))
        if len(self.vae) > 256:
            raise RequestError("The VAE name is too long.")
        if not isinstance(self.sampling, Sampling):
            raise RequestError("sampling must be a Sampling object.")
        if self.control is not None and not isinstance(self.control, Control):
            raise RequestError("control must be a Control object.")
        if self.enable_hr and self.task != "txt2img":
            raise RequestError("Hires fix is a txt2img option: for an init image, raise the size and use img2img.")
        if self.hr_upscaler not in HIRES_UPSCALERS and not _is_model_name(self.hr_upscaler):
            raise RequestError(f"Unknown hires upscaler {self.hr_upscaler[:80]!r}. Choose one of: {', '.join(HIRES_UPSCALERS)}, "
                               "or a model upscaler of this host by its name.")

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
    def seed_resize(self) -> tuple[int, int] | None:
        """(width, height) the seed's noise is drawn at, or None when off (either one 0)."""
        if self.seed_resize_from_w <= 0 or self.seed_resize_from_h <= 0:
            return None
        return self.seed_resize_from_w, self.seed_resize_from_h

    @property
    def loras(self) -> tuple[LoraTag, ...]:
        """<lora:name:weight> tags of the prompt and the negative prompt (A1111 applies both to
        the whole network; one name in both adds up its weights)."""
        weights: dict[str, float] = {}
        for text in (self.prompt, self.negative_prompt):
            for tag in extract_loras(text)[1]:
                weights[tag.name] = weights.get(tag.name, 0.0) + tag.weight
        return tuple(LoraTag(name, weight) for name, weight in weights.items())

    @property
    def encoder_prompts(self) -> tuple[str, str]:
        """(prompt, negative prompt) as the text encoder reads them: without the LoRA tags."""
        return extract_loras(self.prompt)[0], extract_loras(self.negative_prompt)[0]

    @property
    def is_normalized(self) -> bool:
        """Sizes are multiples of 8 (the VAE downsamples by 8) and the seeds are drawn."""
        return (self.width % 8 == 0 and self.height % 8 == 0 and self.sampling.seed >= 0
                and (self.subseed >= 0 or self.subseed_strength == 0))


@dataclass(frozen=True)
class Img2ImgRequest(Txt2ImgRequest):
    init_image: Image.Image | None = declare(None, "Init image", kind=object, a1111="init_images")
    # fraction of the noise schedule re-run: 0 = input back, 1 = ignore input
    strength: float = declare(0.75, "Denoising strength", minimum=0.0, maximum=1.0, step=0.01,
                              info="fraction of the noise schedule re-run: 0 returns the input, 1 ignores it",
                              infotext="Denoising strength", a1111="denoising_strength", axis=True)
    resize_mode: str = declare("crop and resize", "Resize mode", choices=RESIZE_MODES, infotext="Resize mode",
                               a1111="resize_mode")

    task: ClassVar[str] = "img2img"

    def __post_init__(self):
        _require_image(self.init_image, "img2img needs an init image: upload one first.", "The init image")
        super().__post_init__()


@dataclass(frozen=True)
class InpaintRequest(Img2ImgRequest):
    """Regenerate the masked part of init_image (mask: white = inpaint).

    RePaint works with any model: the known region is re-noised to every step's level and
    blended in; r resamplings over jumps of j steps heal the seam (the UNet runs r× longer).
    'inpainting model' uses a 9-channel UNet reading [z_t, mask, masked-image latent]."""

    mask: Image.Image | None = declare(None, "Mask", kind=object, a1111="mask")
    mode: str = declare("RePaint", "Mode", choices=INPAINT_MODES, infotext="Inpaint mode",
                        info="RePaint: any model, known region re-noised every step. "
                             "Inpainting model: a 9-channel UNet trained for it.")
    # 9-channel UNet source for mode 'inpainting model'
    inpaint_model: str = declare("", "Inpainting model (9-channel UNet)", title="Inpainting model",
                                 infotext="Inpainting model")
    # px of feathering, kept inside the mask
    mask_blur: int = declare(4, "Mask blur (px, inside the mask)", title="Mask blur", minimum=0, maximum=256, step=1,
                             slider=(0, 64), infotext="Mask blur", a1111="mask_blur")
    invert_mask: bool = declare(False, "Invert mask", infotext="Invert mask", a1111="inpainting_mask_invert")
    # what the masked area starts from
    masked_content: str = declare("original", "Masked content", choices=MASKED_CONTENT, infotext="Masked content",
                                  a1111="inpainting_fill")
    # or 'only masked': crop to the mask (+ padding), work at full size
    inpaint_area: str = declare("whole picture", "Inpaint area", choices=INPAINT_AREAS, infotext="Inpaint area",
                                a1111="inpaint_full_res")
    padding: int = declare(32, "Only-masked padding (px)", title="Only-masked padding", minimum=0, maximum=4096, step=4,
                           slider=(0, 256), infotext="Only masked padding", a1111="inpaint_full_res_padding")
    repaint_r: int = declare(1, "RePaint resamplings r", title="RePaint r", minimum=1, maximum=50, step=1, slider=(1, 10),
                             info="r > 1 heals seams and costs r× the time", infotext="RePaint r", axis=True)  # resamplings per step
    repaint_j: int = declare(1, "Jump length j", title="RePaint j", minimum=1, maximum=1000, step=1, slider=(1, 20),
                             infotext="RePaint j")  # jump length
    strength: float = declare(1.0, "Denoising strength", minimum=0.0, maximum=1.0, step=0.01,
                              infotext="Denoising strength", a1111="denoising_strength", axis=True)

    task: ClassVar[str] = "inpaint"

    def __post_init__(self):
        super().__post_init__()
        _require_image(self.mask, "Inpainting needs a mask: paint over the area to change, or upload a mask image.",
                       "The mask")
        if self.mode == "inpainting model" and not self.inpaint_model.strip():
            raise RequestError("Mode 'inpainting model' needs a 9-channel inpainting model: choose one, or use RePaint.")


# Every declared field by name (InpaintRequest's own strength default is read from its
# class): what the UI, the API, grids and PNG info read.
FIELDS = registry(Img2ImgRequest, InpaintRequest, ControlUnit, Control)


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
        for name in ("steps", "batch_size", "batch_count"):
            limit, label = getattr(self, FIELDS[name].limit), FIELDS[name].name_in_text
            if getattr(s, name) > limit:
                notes.append(f"{label} {getattr(s, name)} is over this host's limit: clamped to {limit}.")
                changes[name] = limit
        if s.seed < 0:
            changes["seed"] = random.randint(0, MAX_SEED)
        sampling = replace(s, **changes) if changes else s
        own = self._fit_hires(replace(request, **size), notes) if request.enable_hr else {}
        if request.subseed < 0 and request.subseed_strength > 0:  # drawn only when it acts (no random field otherwise)
            own["subseed"] = random.randint(0, MAX_SEED)
        return replace(request, sampling=sampling, notes=tuple(notes), **size, **own)

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
