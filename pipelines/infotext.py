"""A request (+ the seed of one image) → its A1111-style infotext."""
from __future__ import annotations

from pathlib import Path

from .metadata import build_infotext
from .schedulers import ETA_SCHEDULERS

VERSION = "sd-studio 0.1"


def model_name(source: str) -> str:
    """A local model is named as A1111 names it (folder name, file stem), not by the path it
    has on this machine; a Hub id stays as it is."""
    path = Path(source)
    return path.name if path.is_dir() else path.stem if path.is_file() else source


def control_params(request) -> dict:
    """A1111's ControlNet extension writes one quoted group per unit."""
    if request.control is None:
        return {}
    params = {}
    for index, unit in enumerate(request.control.units):
        settings = "".join(f", {key}: {value:g}" for key, value in unit.params)
        params[f"ControlNet {index}"] = (
            f"Module: {unit.preprocessor}, Model: {model_name(unit.model)}, Weight: {unit.weight:g}, "
            f"Guidance Start: {unit.start:g}, Guidance End: {unit.end:g}{settings}"
        )
    if request.control.guess_mode:
        params["Guess mode"] = "on"
    return params


def variation_params(sampling, seed: int) -> dict:
    """A1111's variation-seed keys; the subseed of image k follows its seed (+k)."""
    params = {}
    if sampling.subseed_strength > 0:
        params["Variation seed"] = (seed - sampling.seed + sampling.subseed) % 2**32
        params["Variation seed strength"] = sampling.subseed_strength
    if sampling.seed_resize is not None:
        params["Seed resize from"] = "{}x{}".format(*sampling.seed_resize)
    return params


def hires_params(request) -> dict:
    """A1111's hires fix keys (Size stays the first pass's, as A1111 writes it)."""
    if not getattr(request, "enable_hr", False):
        return {}
    resized = request.hr_resize_x or request.hr_resize_y
    return {
        "Denoising strength": request.denoising_strength,
        "Hires upscale": None if resized else request.hr_scale,
        "Hires resize": f"{request.hr_resize_x}x{request.hr_resize_y}" if resized else None,
        "Hires steps": request.hr_second_pass_steps or None,
        "Hires upscaler": request.hr_upscaler,
    }


def request_infotext(request, seed: int, model_name: str | None, extra: dict | None = None) -> str:
    s = request.sampling
    params = {
        "Steps": s.steps,
        "Sampler": s.scheduler,
        "CFG scale": s.cfg_scale,
        "CFG": None if s.cfg else "off",
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model_name,
        **variation_params(s, seed),
        "Denoising strength": getattr(request, "strength", None),
        "Resize mode": getattr(request, "resize_mode", None),
        "Eta": s.eta if s.scheduler in ETA_SCHEDULERS else None,
        **hires_params(request),
        **(extra or {}),
        **control_params(request),
        "Version": VERSION,
    }
    return build_infotext(request.prompt, request.negative_prompt, params)
