"""Hires fix (A1111's txt2img option): a first pass at the base size, where the model
composes well, then the result upscaled and refined by an img2img pass at the final size.

    pass 1:  z = txt2img(prompt, w×h)                       (steps, the request's sampler)
    upscale: latent  → z' = interpolate(z, W/8×H/8)          ("Latent …": cheap, soft)
             pixel   → x' = resize(decode(z), W×H)           ("Lanczos", "Nearest")
    pass 2:  img2img(z' or x', strength = denoising_strength, hr_second_pass_steps or steps)

Both passes are one sampler to the generation loop (generation.py): progress runs over the
steps of both, an interrupt in either stops the image there, and the seeds (and variation
seeds) of pass 2's noise are the request's own, as in A1111. A resize target of another
aspect ratio is covered, then centre-cropped (A1111 crops the same way).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .generation import Sampler, decode, diffusers_sampler
from .core.requests import LATENT_UPSCALERS

# A1111's latent upscale modes: (torch interpolation mode, antialias)
LATENT_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
PIXEL_FILTERS = {"Lanczos": Image.LANCZOS, "Nearest": Image.NEAREST}
assert set(LATENT_MODES) == set(LATENT_UPSCALERS)


def _cover(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """The smallest size of size's aspect ratio that covers target."""
    scale = max(target[0] / size[0], target[1] / size[1])
    return max(target[0], math.ceil(size[0] * scale)), max(target[1], math.ceil(size[1] * scale))


def upscale_latents(latents: torch.Tensor, width: int, height: int, upscaler: str) -> torch.Tensor:
    """(B, C, h, w) latents → (B, C, height/8, width/8), covered then centre-cropped."""
    mode, antialias = LATENT_MODES[upscaler]
    target = (width // 8, height // 8)
    cw, ch = _cover((latents.shape[-1], latents.shape[-2]), target)
    kwargs = {"antialias": antialias} if mode in ("bilinear", "bicubic") else {}
    big = F.interpolate(latents.float(), size=(ch, cw), mode=mode, **kwargs).to(latents.dtype)
    top, left = (ch - target[1]) // 2, (cw - target[0]) // 2
    return big[..., top : top + target[1], left : left + target[0]]


def upscale_image(image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
    return ImageOps.fit(image, (width, height), PIXEL_FILTERS[upscaler])


def second_pass_steps(request) -> int:
    """Denoising steps pass 2 runs: img2img runs int(steps × strength) of its steps."""
    steps = request.hr_second_pass_steps or request.sampling.steps
    return min(int(steps * request.denoising_strength), steps)


def hires_sampler(request, first_pipe, first_call: dict, second_pipe, second_call: dict,
                  scheduler_config: dict, model_upscale: Callable | None = None) -> Sampler:
    """Both passes as one sampler. first_call / second_call: the pipelines' extra arguments
    (ControlNet maps at the base size / at the final size). model_upscale(image, W, H): the
    model upscaler the request names, when it names one (upscalers.py)."""
    width, height = request.hires_size
    s = request.sampling
    second_request = replace(request, width=width, height=height, enable_hr=False,
                             sampling=replace(s, steps=request.hr_second_pass_steps or s.steps))
    first = diffusers_sampler(first_pipe, request, first_call, scheduler_config)
    latent = request.hr_upscaler in LATENT_MODES
    planned_second = second_pass_steps(request)

    def sample(seeds: list[int], report: Callable) -> torch.Tensor:
        state = {"first_total": 0, "stopped": False}

        def report_first(index, total, latents, x0):
            state["first_total"] = total
            state["stopped"] = report(index, total + planned_second, latents, x0)
            return state["stopped"]

        latents = first(seeds, report_first)
        if state["stopped"]:
            return latents  # interrupted in pass 1: the loop keeps what it has, at the base size
        if latent:
            init = upscale_latents(latents, width, height, request.hr_upscaler)
        else:
            upscale = model_upscale or (lambda image, w, h: upscale_image(image, w, h, request.hr_upscaler))
            init = [upscale(image, width, height) for image in decode(first_pipe, latents)]
        if planned_second == 0:  # strength × steps rounds to 0: the upscale is the result
            return init if latent else _encode(second_pipe, init)
        offset = state["first_total"]

        def report_second(index, total, latents, x0):
            return report(offset + index, offset + total, latents, x0)

        call = {**second_call, "image": init, "strength": request.denoising_strength}
        return diffusers_sampler(second_pipe, second_request, call, scheduler_config)(seeds, report_second)

    return sample


@torch.no_grad()
def _encode(pipe, images: list[Image.Image]) -> torch.Tensor:
    vae = pipe.vae
    pixels = pipe.image_processor.preprocess(images).to(vae.device, vae.dtype)
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor

