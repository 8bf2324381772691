"""A1111 JSON keys → this studio's request fields: the one table the REST API reads.

Every key an A1111 client may send is in exactly one place here:
- ``Field(target, convert)``: it sets one of our request fields (``"sampling.steps"``,
  ``"strength"``, …); convert turns A1111's value (an index, 0/1) into ours;
- ``Unsupported(what, neutral)``: A1111 has it, we do not (yet): a value in ``neutral``
  changes nothing and is accepted (clients send defaults), anything else is a 422 saying so;
- ``IGNORED``: keys that change nothing we make (response options, sampler fine-tuning,
  hires-only settings while hires fix is off); documented in docs/api.md.

When the backend gains a feature (CLIP skip, VAE choice, hires fix), its row turns from
Unsupported into a Field: a one-line change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pipelines.core.requests import MASKED_CONTENT, RESIZE_MODES
from pipelines.core.schedulers import SCHEDULER_NAMES

from .errors import ApiError


@dataclass(frozen=True)
class Field:
    target: str  # our field; "sampling.x" is a Sampling field, anything else the request's own
    convert: Callable = lambda value: value


@dataclass(frozen=True)
class Unsupported:
    what: str
    neutral: tuple = (None, False, 0, "", ())

    def check(self, key: str, value) -> None:
        if value in self.neutral or (isinstance(value, (list, dict)) and not value):
            return
        raise ApiError(422, f"{key}: {self.what} is not supported by this server: leave {key} out or at its "
                            "default (docs/api.md lists what is supported).")


def _choice(options: tuple, what: str, offset: int = 0) -> Callable:
    """A1111 sends an index (or our name): index i → options[i]."""
    def convert(value):
        if isinstance(value, str) and value.lower() in options:
            return value.lower()
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value - offset < len(options):
            listed = ", ".join(f"{i + offset} = {o}" for i, o in enumerate(options))
            raise ApiError(422, f"{what} must be one of {listed}; got {value!r}.")
        return options[value - offset]
    return convert


def _bool(what: str) -> Callable:
    def convert(value):
        if value in (0, 1) or isinstance(value, bool):
            return bool(value)
        raise ApiError(422, f"{what} must be true/false (or 0/1); got {value!r}.")
    return convert


# A1111 resize_mode: 0 just resize, 1 crop and resize, 2 resize and fill (3 = latent upscale: not here).
RESIZE = _choice(RESIZE_MODES, "resize_mode")
# A1111 inpainting_fill: 0 fill, 1 original, 2 latent noise, 3 latent nothing.
INPAINTING_FILL = ("fill", "original", "latent noise", "latent nothing")
assert set(INPAINTING_FILL) == set(MASKED_CONTENT)

COMMON: dict[str, Field | Unsupported] = {
    "prompt": Field("prompt"),
    "negative_prompt": Field("negative_prompt"),
    "width": Field("width"),
    "height": Field("height"),
    "steps": Field("sampling.steps"),
    "cfg_scale": Field("sampling.cfg_scale"),
    "seed": Field("sampling.seed"),
    "batch_size": Field("sampling.batch_size"),
    "n_iter": Field("sampling.batch_count"),
    "eta": Field("sampling.eta"),
    # SD Studio extras (A1111 clients never send them): CFG off = one UNet pass per step.
    "cfg": Field("sampling.cfg", _bool("cfg")),
    "turbo": Field("turbo"),  # "Off" / "DeepCache 2" / "DeepCache 3": lossy step-feature caching (pipelines/turbo.py)
    "token_merging": Field("token_merging"),  # A1111 sends it as override_settings.token_merging_ratio (OPTIONS)
    "restore_faces": Unsupported("face restoration"),
    "tiling": Unsupported("tiling"),
    "subseed": Field("subseed"),
    "subseed_strength": Field("subseed_strength"),
    "seed_resize_from_h": Field("seed_resize_from_h", lambda v: 0 if v == -1 else v),  # A1111: −1 = off
    "seed_resize_from_w": Field("seed_resize_from_w", lambda v: 0 if v == -1 else v),
    "styles": Unsupported("prompt styles"),  # applied before this table (routes.with_styles): empty here
    # SDXL refiner hand-off (a catalogue name; "None" = none, as A1111 sends it).
    "refiner_checkpoint": Field("refiner", lambda v: "" if v in (None, "None") else v),
    "refiner_switch_at": Field("refiner_switch"),
    "enable_hr": Field("enable_hr", _bool("enable_hr")),  # img2img: a 422 saying it is a txt2img option
}

TXT2IMG: dict[str, Field | Unsupported] = {
    **COMMON,
    "hr_scale": Field("hr_scale"),
    "hr_upscaler": Field("hr_upscaler"),
    "hr_second_pass_steps": Field("hr_second_pass_steps"),
    "hr_resize_x": Field("hr_resize_x"),
    "hr_resize_y": Field("hr_resize_y"),
    "denoising_strength": Field("denoising_strength"),  # of the hires pass
    "hr_checkpoint_name": Unsupported("a separate hires checkpoint", (None, "", "Use same checkpoint")),
    "hr_sampler_name": Unsupported("a separate hires sampler", (None, "", "Use same sampler")),
    "hr_scheduler": Unsupported("a separate hires schedule", (None, "", "Use same scheduler")),
    "hr_prompt": Unsupported("a separate hires prompt", (None, "")),
    "hr_negative_prompt": Unsupported("a separate hires negative prompt", (None, "")),
}

IMG2IMG: dict[str, Field | Unsupported] = {
    **COMMON,
    "denoising_strength": Field("strength"),
    "resize_mode": Field("resize_mode", RESIZE),
    "mask_blur": Field("mask_blur"),
    "inpainting_fill": Field("masked_content", _choice(INPAINTING_FILL, "inpainting_fill")),
    "inpaint_full_res": Field("inpaint_area", lambda v: "only masked" if _bool("inpaint_full_res")(v) else "whole picture"),
    "inpaint_full_res_padding": Field("padding"),
    "inpainting_mask_invert": Field("invert_mask", _bool("inpainting_mask_invert")),
    "initial_noise_multiplier": Unsupported("initial_noise_multiplier", (None, 1, 1.0)),
    "latent_mask": Unsupported("latent_mask"),
    # SD Studio extras: RePaint resampling and the 9-channel inpainting model.
    "repaint_r": Field("repaint_r"),
    "repaint_j": Field("repaint_j"),
    "inpaint_mode": Field("mode"),
    "inpaint_model": Field("inpaint_model"),
}

# Keys that change nothing we make: accepted and ignored (docs/api.md lists why).
IGNORED = frozenset({
    "sampler_name", "sampler_index", "scheduler", "override_settings", "override_settings_restore_afterwards",
    "script_name", "script_args", "alwayson_scripts", "send_images", "save_images", "init_images", "mask",
    "subseed", "s_churn", "s_tmax", "s_tmin", "s_noise", "s_min_uncond", "do_not_save_samples", "do_not_save_grid",
    "firstphase_width", "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
    "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
    "hr_additional_modules", "denoising_strength", "mask_blur_x", "mask_blur_y", "mask_round", "include_init_images",
    "image_cfg_scale", "disable_extra_networks", "comments", "force_task_id", "infotext",
})

# override_settings / POST /options keys.
MODEL_OPTION = "sd_model_checkpoint"
OPTIONS: dict[str, Field | Unsupported] = {
    "eta_ddim": Field("sampling.eta"),
    "CLIP_stop_at_last_layers": Field("clip_skip"),  # A1111's Clip skip (1 = last layer)
    "token_merging_ratio": Field("token_merging"),  # A1111's "Token merging ratio" (0 = off; pipelines/token_merging.py)
    # Issue: VAE choice → Field("vae").
    "sd_vae": Unsupported("choosing a VAE (the model's own VAE is used)", (None, "Automatic", "None", "")),
}

# SD Studio extras for clients that can only send A1111's script_name / script_args.
SCRIPTS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "repaint": ({"mode": "RePaint"}, ("repaint_r", "repaint_j")),
    "cfg off": ({"sampling.cfg": False}, ()),
}

# ----------------------------------------------------------------- samplers and schedules
# A1111 ≥ 1.9 names the sampler and its schedule apart: (sampler, schedule) → our scheduler.
SCHEDULES = {"automatic": "Automatic", "karras": "Karras"}
SAMPLERS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    # name: ({schedule: our scheduler}, A1111 aliases)
    "Euler a": ({"automatic": "Euler a"}, ("k_euler_a", "k_euler_ancestral")),
    "Euler": ({"automatic": "Euler"}, ("k_euler",)),
    "LMS": ({"automatic": "LMS", "karras": "LMS Karras"}, ("k_lms",)),
    "Heun": ({"automatic": "Heun"}, ("k_heun",)),
    "DPM2": ({"automatic": "DPM2"}, ("k_dpm_2",)),
    "DPM2 a": ({"automatic": "DPM2 a"}, ("k_dpm_2_a",)),
    "DPM++ 2M": ({"automatic": "DPM++ 2M", "karras": "DPM++ 2M Karras"}, ("k_dpmpp_2m",)),
    # Only the Karras schedule here: "automatic" means the sampler's default, which is it.
    "DPM++ 2M SDE": ({"automatic": "DPM++ 2M SDE Karras", "karras": "DPM++ 2M SDE Karras"}, ("k_dpmpp_2m_sde",)),
    "DDIM": ({"automatic": "DDIM"}, ("ddim",)),
    "DDPM": ({"automatic": "DDPM"}, ("ddpm",)),
    "PLMS": ({"automatic": "PNDM"}, ("plms", "pndm")),
    "UniPC": ({"automatic": "UniPC"}, ("unipc",)),
    "DEIS": ({"automatic": "DEIS"}, ("deis",)),
}
# Older A1111 (< 1.9) names carry the schedule: name → (sampler, schedule).
COMBINED = {"DPM++ 2M Karras": ("DPM++ 2M", "karras"), "LMS Karras": ("LMS", "karras"),
            "DPM++ 2M SDE Karras": ("DPM++ 2M SDE", "karras"), "PNDM": ("PLMS", "automatic")}
assert {s for table, _ in SAMPLERS.values() for s in table.values()} == set(SCHEDULER_NAMES)
DEFAULT_SAMPLER = "Euler a"


def _lookup_sampler(name: str) -> tuple[str, str | None]:
    folded = name.strip().lower()
    for sampler, (_, aliases) in SAMPLERS.items():
        if folded == sampler.lower() or folded in aliases:
            return sampler, None
    for combined, (sampler, schedule) in COMBINED.items():
        if folded == combined.lower():
            return sampler, schedule
    names = ", ".join([*SAMPLERS, *COMBINED])
    raise ApiError(422, f"Unknown sampler {name!r}. Choose one of: {names} (GET /sdapi/v1/samplers).")


def _lookup_schedule(name) -> str:
    if name in (None, ""):
        return "automatic"
    folded = str(name).strip().lower()
    if folded in SCHEDULES:
        return folded
    raise ApiError(422, f"Unknown scheduler {name!r}. Choose one of: {', '.join(SCHEDULES)} (GET /sdapi/v1/schedulers).")


def resolve_sampler(sampler_name, scheduler, sampler_index=None) -> str:
    """A1111's sampler_name (+ scheduler) → our scheduler name; never a silent fallback."""
    name = sampler_name or sampler_index or DEFAULT_SAMPLER
    if not isinstance(name, str):
        raise ApiError(422, f"sampler_name must be text, got {type(name).__name__}.")
    sampler, implied = _lookup_sampler(name)
    schedule = _lookup_schedule(scheduler)
    if implied and schedule not in ("automatic", implied):
        raise ApiError(422, f"Sampler {name!r} already names its schedule; scheduler {scheduler!r} contradicts it.")
    schedule = implied or schedule
    table = SAMPLERS[sampler][0]
    if schedule not in table:
        offered = ", ".join(SCHEDULES[s] for s in table)
        raise ApiError(422, f"Sampler {sampler!r} with the {SCHEDULES[schedule]} schedule is not offered here; "
                            f"with {sampler!r} choose: {offered}.")
    return table[schedule]


def sampler_list() -> list[dict]:
    """GET /samplers: the A1111 ≥ 1.9 names, then the older combined ones."""
    rows = [{"name": name, "aliases": list(aliases), "options": {}} for name, (_, aliases) in SAMPLERS.items()]
    rows += [{"name": name, "aliases": [], "options": {"scheduler": schedule}} for name, (_, schedule) in COMBINED.items()]
    return rows


def scheduler_list() -> list[dict]:
    return [{"name": name, "label": label, "aliases": None, "default_rho": 7.0 if name == "karras" else -1.0,
             "need_inner_model": False} for name, label in SCHEDULES.items()]
