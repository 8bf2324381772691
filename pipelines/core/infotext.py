"""A request (+ the seed of one image) → its A1111-style infotext."""
from __future__ import annotations

from pathlib import Path

from .fields import fields_of
from .metadata import build_infotext
from .requests import Sampling
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


def variation_params(request, seed: int) -> dict:
    """A1111's variation-seed keys (None: left out); the subseed of image k follows its seed (+k)."""
    acts = request.subseed_strength > 0
    resize = request.seed_resize
    return {
        "Variation seed": (seed - request.sampling.seed + request.subseed) % 2**32 if acts else None,
        "Variation seed strength": request.subseed_strength if acts else None,
        "Seed resize from": "{}x{}".format(*resize) if resize else None,
    }


def hires_params(request) -> dict:
    """A1111's hires fix keys (None: left out; Size stays the first pass's, as A1111 writes it)."""
    on = getattr(request, "enable_hr", False)
    resized = on and (request.hr_resize_x or request.hr_resize_y)
    return {
        "Hires upscale": request.hr_scale if on and not resized else None,
        "Hires resize": f"{request.hr_resize_x}x{request.hr_resize_y}" if resized else None,
        "Hires steps": (request.hr_second_pass_steps or None) if on else None,
        "Hires upscaler": request.hr_upscaler if on else None,
    }


def request_infotext(request, seed: int, model_name: str | None, extra: dict | None = None) -> str:
    """The sampling head in A1111's order, then what the engine reports (extra: a key set to
    None is deliberately left out), then every other declared field that has an infotext key
    and differs from its default (pipelines/core/requests.py: a new field needs no line here)."""
    s = request.sampling
    params = {
        "Steps": s.steps,
        "Sampler": s.scheduler,
        "CFG scale": s.cfg_scale,
        "CFG": None if s.cfg else "off",
        "Seed": seed,
        "Size": f"{request.width}x{request.height}",
        "Model": model_name,
        **variation_params(request, seed),
        "Batch size": s.batch_size if s.batch_size > 1 else None,  # A1111 writes it from 2 on
        "Denoising strength": (request.strength if hasattr(request, "strength") else
                               request.denoising_strength if getattr(request, "enable_hr", False) else None),
        "Resize mode": getattr(request, "resize_mode", None),
        "Eta": s.eta if s.scheduler in ETA_SCHEDULERS else None,
        **hires_params(request),
        **(extra or {}),
    }
    sampling = fields_of(Sampling)
    for name, declared in fields_of(type(request)).items():
        key = declared.infotext
        if key and key not in params and key not in WRITTEN_APART:
            value = getattr(s if name in sampling else request, name)
            if value != declared.default:
                params[key] = ("on" if value else "off") if isinstance(value, bool) else value
    params.update(control_params(request))
    params["Version"] = VERSION
    return build_infotext(request.prompt, request.negative_prompt, params)


WRITTEN_APART = {"Prompt", "Negative prompt", "Size-1", "Size-2",  # the prompt lines and the "WxH" pairs
                 "Hires resize-1", "Hires resize-2", "Seed resize from-1", "Seed resize from-2"}  # the prompt lines and "Size: WxH"
