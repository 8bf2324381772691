"""A1111 request JSON → our request objects (through the table in fields.py), and results
back into A1111's response JSON."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields as dataclass_fields

from pipelines.core.errors import RequestError
from pipelines.core.infotext import VERSION
from pipelines.core.metadata import parse_infotext
from pipelines.core.requests import Img2ImgRequest, InpaintRequest, Sampling, Txt2ImgRequest

from . import controlnet
from .errors import ApiError
from .fields import IGNORED, IMG2IMG, MODEL_OPTION, OPTIONS, SCRIPTS, TXT2IMG, Field, Unsupported, resolve_sampler
from .images import decode_image

# Fields only an inpainting request has: an A1111 img2img without a mask sends them too.
INPAINT_ONLY = {f.name for f in dataclass_fields(InpaintRequest)} - {f.name for f in dataclass_fields(Img2ImgRequest)}


@dataclass
class Converted:
    request: Txt2ImgRequest
    model: str | None  # override_settings.sd_model_checkpoint, if any
    ignored: list[str]  # what we did not know: extensions' fields and options, said in info


def apply_options(values: dict, options: dict, ignored: list[str]) -> str | None:
    """override_settings / stored options → our fields; returns the model asked for."""
    if not isinstance(options, dict):
        raise ApiError(422, "override_settings must be an object of option names to values.")
    model = None
    for key, value in options.items():
        if key == MODEL_OPTION:
            model = value
            continue
        spec = OPTIONS.get(key)
        if isinstance(spec, Unsupported):
            spec.check(key, value)
        elif isinstance(spec, Field) and value is not None:
            values[spec.target] = spec.convert(value)
        elif spec is None:
            ignored.append(key)
    return model


def _apply_body(values: dict, body: dict, table: dict) -> None:
    for key, value in body.items():
        spec = table.get(key)
        if isinstance(spec, Unsupported):
            spec.check(key, value)
        elif isinstance(spec, Field) and value is not None:
            values[spec.target] = spec.convert(value)


def _apply_script(values: dict, name, args) -> None:
    if name in (None, ""):
        return
    if not isinstance(name, str) or name.lower() not in SCRIPTS:
        raise ApiError(422, f"Unknown script_name {name!r}. This server offers: {', '.join(SCRIPTS)}.")
    fixed, positional = SCRIPTS[name.lower()]
    args = args or []
    if not isinstance(args, list) or len(args) > len(positional):
        raise ApiError(422, f"script {name!r} takes up to {len(positional)} script_args: {', '.join(positional) or 'none'}.")
    values.update(fixed)
    values.update(zip(positional, args))


def _split(values: dict) -> tuple[dict, dict]:
    sampling = {k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("sampling.")}
    own = {k: v for k, v in values.items() if not k.startswith("sampling.")}
    return sampling, own


def convert(task: str, body: dict, stored_options: dict, max_pixels: int, controlnets: list[str]) -> Converted:
    """body: the request JSON with A1111's defaults filled in. Raises ApiError (422) with a
    sentence for anything we cannot do as asked."""
    values: dict = {}
    ignored: list[str] = []
    apply_options(values, stored_options, [])
    overrides: list[str] = []
    model = apply_options(values, body.get("override_settings") or {}, overrides)
    table = TXT2IMG if task == "txt2img" else IMG2IMG
    _apply_body(values, body, table)
    ignored += [f"field {key}" for key in body if key not in table and key not in IGNORED][:20]
    ignored += [f"override setting {key}" for key in overrides][:20]
    _apply_script(values, body.get("script_name"), body.get("script_args"))
    values["sampling.scheduler"] = resolve_sampler(body.get("sampler_name"), body.get("scheduler"), body.get("sampler_index"))
    sampling_values, own = _split(values)
    if own.get("inpaint_model"):
        own["inpaint_model"] = _inpaint_model(own["inpaint_model"])
    if own.get("refiner"):
        own["refiner"] = _catalogue_entry(own["refiner"], "refiner_checkpoint", "refiners")
    try:
        sampling = Sampling(**sampling_values)
        if task == "img2img":
            init = body.get("init_images") or []
            if not isinstance(init, list) or not init:
                raise ApiError(422, "img2img needs init_images: a list with one base64 image.")
            own["init_image"] = decode_image(init[0], "init_images[0]", max_pixels)
        width, height = own.get("width", 512), own.get("height", 512)
        control = controlnet.units(body.get("alwayson_scripts"), width, height, own.get("init_image"), max_pixels, controlnets)
        if task == "txt2img":
            return Converted(Txt2ImgRequest(sampling=sampling, control=control, **own), model, ignored)
        if body.get("mask"):
            own["mask"] = decode_image(body["mask"], "mask", max_pixels)
            return Converted(InpaintRequest(sampling=sampling, control=control, **own), model, ignored)
        own = {k: v for k, v in own.items() if k not in INPAINT_ONLY}
        return Converted(Img2ImgRequest(sampling=sampling, control=control, **own), model, ignored)
    except RequestError as error:
        raise ApiError(422, str(error)) from None
    except TypeError:  # a value of a shape no field takes (a list for a number, say)
        raise ApiError(422, "A field has a value of the wrong type: see /docs for each field's type.") from None


def _inpaint_model(name) -> str:
    return _catalogue_entry(name, "inpaint_model", "inpaint_models")


def _catalogue_entry(name, key: str, listing: str) -> str:
    """Only models of this server's catalogue, by name: a client never names a server path."""
    from pathlib import Path

    from pipelines.core import catalog

    sources = getattr(catalog, listing)()
    match = next((s for s in sources if isinstance(name, str) and name.strip() in (Path(s).name, s)
                  and (name.strip() == Path(s).name or not Path(s).is_absolute())), None)
    if match is None:
        names = ", ".join(Path(s).name if Path(s).is_absolute() else s for s in sources) or "none on this server"
        raise ApiError(422, f"Unknown {key} {name!r}. Choose one of: {names}.")
    return match


def parameters_echo(body: dict) -> dict:
    """The request as A1111 echoes it, without the images it carried."""
    echo = {k: v for k, v in body.items() if k not in ("init_images", "mask")}
    if "init_images" in body:
        echo["init_images"], echo["mask"] = None, None
    scripts = echo.get("alwayson_scripts")
    if isinstance(scripts, dict):
        echo["alwayson_scripts"] = {name: controlnet.without_images(value) if name.lower() == "controlnet" else value
                                    for name, value in scripts.items()}
    return echo


def info(request: Txt2ImgRequest, result, ignored: list[str]) -> str:
    """A1111's `info`: a JSON string with seeds, sizes, infotexts…, plus our notes."""
    images = result.images
    count = len(images)
    seeds = [image.seed for image in images]
    infotexts = [image.infotext for image in images]
    model = parse_infotext(infotexts[0]).get("Model") if infotexts else None
    s = request.sampling
    notes = list(result.notes) + ([f"Ignored (unknown here): {', '.join(ignored)}."] if ignored else [])
    return json.dumps({
        "prompt": request.prompt, "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt, "all_negative_prompts": [request.negative_prompt] * count,
        "seed": seeds[0] if seeds else s.seed, "all_seeds": seeds,
        "subseed": request.subseed, "all_subseeds": [(seed - s.seed + request.subseed) % 2**32 for seed in seeds],
        "subseed_strength": request.subseed_strength,
        "width": request.width, "height": request.height,
        "sampler_name": s.scheduler, "cfg_scale": s.cfg_scale, "steps": s.steps, "batch_size": s.batch_size,
        "restore_faces": False, "face_restoration_model": None,
        "sd_model_name": model, "sd_model_hash": None, "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": request.seed_resize_from_w or -1, "seed_resize_from_h": request.seed_resize_from_h or -1,
        "denoising_strength": (request.denoising_strength if getattr(request, "enable_hr", False)
                               else getattr(request, "strength", 0)),
        "extra_generation_params": {},
        "index_of_first_image": 0, "infotexts": infotexts, "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": getattr(request, "mode", "") == "inpainting model",
        "version": VERSION,
        "sd_studio": {"notes": notes, "interrupted": result.interrupted, "seconds": round(result.seconds, 3)},
    })
