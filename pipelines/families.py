"""Model families: SD 1.x/2.x and SDXL under the same manager and request objects.

A family is a property of the loaded model, never of a tab. It decides:
- the diffusers pipeline class of every task (all derived from one base with ``from_pipe``,
  so the weights exist once whatever the family);
- the text encoders (SD: one CLIP; SDXL: CLIP ViT-L + OpenCLIP bigG, penultimate hidden
  states concatenated, pooled output of the second);
- the extra conditioning the UNet reads (SDXL: ``added_cond_kwargs`` text_embeds + time_ids
  from original_size, crops_coords_top_left, target_size);
- the native size and the config folder a single-file checkpoint is built from.

How a model is recognised: a diffusers folder by its model_index.json ``_class_name``; a
single file by its keys (SDXL's LDM checkpoints hold ``conditioner.embedders.1.*``, the
second text encoder; SD 1.x holds ``cond_stage_model.*``); a loaded pipeline by its UNet
(``addition_embed_type == "text_time"``).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetInpaintPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetInpaintPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)

CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "configs"

# The key that only an SDXL LDM checkpoint holds: its second text encoder (OpenCLIP bigG).
SDXL_SINGLE_FILE_KEY = "conditioner.embedders.1."
SDXL_REFINER_KEY = "conditioner.embedders.0.model."  # the refiner has only bigG, as embedder 0


@dataclass(frozen=True)
class Family:
    name: str  # "SD" | "SDXL": shown in the Models tab and the infotext
    pipelines: dict[str, type[DiffusionPipeline]]  # task → class derived from the base
    config_dir: Path  # diffusers configs for single-file checkpoints of this family
    native_size: int  # the training resolution when the UNet config does not say better
    load_kwargs: dict  # extra arguments to the base pipeline's from_pretrained / from_single_file

    @property
    def base_class(self) -> type[DiffusionPipeline]:
        return self.pipelines["txt2img"]

    @property
    def is_xl(self) -> bool:
        return self.name == "SDXL"


SD = Family(
    name="SD",
    pipelines={
        "txt2img": StableDiffusionPipeline,
        "img2img": StableDiffusionImg2ImgPipeline,
        "controlnet": StableDiffusionControlNetPipeline,
        "controlnet-img2img": StableDiffusionControlNetImg2ImgPipeline,
        "inpaint": StableDiffusionInpaintPipeline,  # with the 9-channel UNet
        "controlnet-inpaint": StableDiffusionControlNetInpaintPipeline,
    },
    config_dir=CONFIGS / "sd15",
    native_size=512,
    load_kwargs=dict(safety_checker=None, requires_safety_checker=False),
)

SDXL = Family(
    name="SDXL",
    pipelines={
        "txt2img": StableDiffusionXLPipeline,
        "img2img": StableDiffusionXLImg2ImgPipeline,
        "controlnet": StableDiffusionXLControlNetPipeline,
        "controlnet-img2img": StableDiffusionXLControlNetImg2ImgPipeline,
        "inpaint": StableDiffusionXLInpaintPipeline,  # with the 9-channel UNet
        "controlnet-inpaint": StableDiffusionXLControlNetInpaintPipeline,
    },
    config_dir=CONFIGS / "sdxl",
    native_size=1024,
    # No invisible watermark: it is an optional package and alters every output pixel.
    load_kwargs=dict(add_watermarker=False),
)

FAMILIES = {f.name: f for f in (SD, SDXL)}


def family_of_pipeline(pipe) -> Family:
    unet = getattr(pipe, "unet", pipe)
    return SDXL if getattr(unet.config, "addition_embed_type", None) == "text_time" else SD


def family_of_folder(folder: str | Path) -> Family:
    """From model_index.json: StableDiffusionXL*Pipeline → SDXL, anything else → SD."""
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return SD
    class_name = str(index.get("_class_name", "")) if isinstance(index, dict) else ""
    return SDXL if "XL" in class_name or "text_encoder_2" in index else SD


def single_file_keys(path: str | Path) -> list[str]:
    """The tensor names of a checkpoint without reading its tensors (safetensors header);
    for pickled .ckpt files nothing is loaded here: [] (treated as SD)."""
    if not str(path).lower().endswith(".safetensors"):
        return []
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception:  # an unreadable header: the loader reports the file itself
        return []


def family_of_single_file(path: str | Path) -> Family:
    keys = single_file_keys(path)
    return SDXL if any(k.startswith((SDXL_SINGLE_FILE_KEY, SDXL_REFINER_KEY)) for k in keys) else SD


def is_refiner_file(path: str | Path) -> bool:
    keys = single_file_keys(path)
    return any(k.startswith(SDXL_REFINER_KEY) for k in keys) and not any(k.startswith(SDXL_SINGLE_FILE_KEY) for k in keys)


def single_file_config(family: Family, configured: str | None) -> str:
    """The config folder for a single file of this family: the configured one when it is of
    the same family (a user's --single-file-config, a tiny test model), else the shipped one."""
    if configured and family_of_folder(configured) is family:
        return configured
    return str(family.config_dir)


# ------------------------------------------------------------------------ SDXL conditioning
def size_conditioning(request) -> dict:
    """SDXL's micro-conditioning from the request (A1111 defaults: all from the generation
    size, crop at 0,0). The UNet was trained knowing each image's original size and crop, so
    original_size < target_size looks upscaled-blurry and a crop offset looks cropped."""
    width, height = request.width, request.height
    return {
        "original_size": (request.original_height or height, request.original_width or width),
        "target_size": (request.target_height or height, request.target_width or width),
        "crops_coords_top_left": (request.crop_top, request.crop_left),
    }


def call_kwargs(family: Family, request) -> dict:
    """What the family's pipelines take beyond the common arguments."""
    return size_conditioning(request) if family.is_xl else {}


@torch.no_grad()
def unet_conditioning(pipe, request, device, cfg: bool):
    """Prompt embeddings and the UNet's extra conditioning, for samplers that call the UNet
    themselves (RePaint): (cond, uncond, added_cond, added_uncond); the added ones are None
    for SD. SDXL: added = {text_embeds: pooled bigG output, time_ids: original_size +
    crops_coords_top_left + target_size}."""
    return text_conditioning(pipe, request.prompt, request.negative_prompt, request.width, request.height, device,
                             cfg, size_conditioning(request), request.clip_skip)


@torch.no_grad()
def text_conditioning(pipe, prompt: str, negative: str, width: int, height: int, device, cfg: bool,
                      sizes: dict | None = None, clip_skip: int = 1):
    """As unet_conditioning, from plain values (the Diffusion lab); sizes default to width × height.
    The prompt goes through the A1111 prompt encoding (prompt_encoding.py: both encoders for SDXL)."""
    from .prompt_encoding import encode_prompts

    e = encode_prompts(pipe, prompt, negative, clip_skip, cfg, device)
    if e.pooled is None:
        return e.cond, e.uncond, None, None
    c = sizes or {"original_size": (height, width), "crops_coords_top_left": (0, 0), "target_size": (height, width)}
    time_ids = torch.tensor([list(c["original_size"]) + list(c["crops_coords_top_left"]) + list(c["target_size"])],
                            device=device, dtype=e.cond.dtype)
    added = {"text_embeds": e.pooled, "time_ids": time_ids}
    added_uncond = {"text_embeds": e.uncond_pooled, "time_ids": time_ids} if cfg else None
    return e.cond, e.uncond, added, added_uncond


@contextmanager
def vae_precision(pipe):
    """SDXL's VAE overflows in fp16 (its config says force_upcast): run it in fp32 for the
    call, as diffusers' SDXL pipelines do. SD 1.x and fp16-fixed SDXL VAEs stay as they are."""
    vae = pipe.vae
    upcast = (vae.dtype == torch.float16 and family_of_pipeline(pipe).is_xl
              and bool(getattr(vae.config, "force_upcast", False)))
    if not upcast:
        yield vae
        return
    vae.to(torch.float32)
    try:
        yield vae
    finally:
        vae.to(torch.float16)
