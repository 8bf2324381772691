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
        "Denoising strength": getattr(request, "strength", None),
        "Resize mode": getattr(request, "resize_mode", None),
        "Eta": s.eta if s.scheduler in ETA_SCHEDULERS else None,
        "Clip skip": request.clip_skip if getattr(request, "clip_skip", 1) != 1 else None,  # A1111 omits the default
        **(extra or {}),
        **control_params(request),
        "Version": VERSION,
    }
    return build_infotext(request.prompt, request.negative_prompt, params)
