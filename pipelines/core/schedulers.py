"""Scheduler name → a fresh scheduler built from the loaded model's own scheduler config.

A scheduler holds per-run state (timesteps, multistep history, step index), so one is built
for every request and never shared. The model's config carries its training schedule
(SD: 1000 steps, scaled-linear betas β_t = (linspace(√β_1, √β_T))², which keeps more signal
at high t than linear betas — what a latent space of ~unit variance needs); we keep it and
change only the sampling algorithm.

DDIM's η is passed at call time: σ_t(η) = η·√((1−ᾱ_{t−1})/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_{t−1}),
so η = 0 is deterministic given x_T and η = 1 is the DDPM posterior σ. DDPM with fewer
steps than training runs on a respaced (strided) timestep subset.
"""
from __future__ import annotations

import importlib

# A1111 names → (diffusers class name, overrides of the model's config).
_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "Euler": ("EulerDiscreteScheduler", {}),
    "Euler a": ("EulerAncestralDiscreteScheduler", {}),
    "DPM++ 2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "DPM++ 2M Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DPM++ 2M SDE Karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "UniPC": ("UniPCMultistepScheduler", {}),
    "Heun": ("HeunDiscreteScheduler", {}),
    "LMS": ("LMSDiscreteScheduler", {}),
    "LMS Karras": ("LMSDiscreteScheduler", {"use_karras_sigmas": True}),
    "DPM2": ("KDPM2DiscreteScheduler", {}),
    "DPM2 a": ("KDPM2AncestralDiscreteScheduler", {}),
    "DEIS": ("DEISMultistepScheduler", {}),
    "PNDM": ("PNDMScheduler", {"skip_prk_steps": True}),  # PLMS; PRK warm-up steps break step counts
}

SCHEDULER_NAMES: tuple[str, ...] = tuple(_SCHEDULERS)
# Schedulers whose step() takes η (DDIM's stochasticity knob).
ETA_SCHEDULERS: frozenset[str] = frozenset({"DDIM"})


def build_scheduler(name: str, model_config):
    """A new scheduler of the named algorithm on the model's training schedule."""
    try:
        class_name, overrides = _SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULER_NAMES)}.") from None
    # Imported here so that the name table (used by requests and the UI) costs no torch import.
    cls = getattr(importlib.import_module("diffusers"), class_name)
    config = dict(model_config)
    # DDIM/DDPM default to clipping x̂_0 to [-1, 1]: right for pixels, wrong for SD latents
    # (unit variance: a third of them lie outside). Only a model's own config may turn it on.
    config.setdefault("clip_sample", False)
    return cls.from_config(config, **overrides)
