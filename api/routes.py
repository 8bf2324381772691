"""The A1111-compatible routes (/sdapi/v1/…, the ControlNet extension's /controlnet/…)."""
from __future__ import annotations

import asyncio
import logging
import re
import time

from fastapi import APIRouter, Depends, Request

from pipelines.core import catalog
from pipelines.core import styles as style_lib
from pipelines.core.errors import ModelLoadError, RequestError
from pipelines.core.infotext import model_name
from pipelines.core.metadata import parse_infotext, read_infotext
from pipelines.core.requests import LATENT_UPSCALERS, PIXEL_UPSCALERS, Limits, Sampling, Txt2ImgRequest

from . import controlnet
from .convert import apply_options, convert, info, parameters_echo
from .errors import ApiError
from .fields import MODEL_OPTION, OPTIONS, Field, sampler_list, scheduler_list
from .http import ApiRoute, caller_dependency
from .images import decode_image, encode_png
from .jobs import ApiJobs
from .models import DetectBody, Img2ImgBody, PngInfoBody, Txt2ImgBody

log = logging.getLogger("sd-studio.api")
_HASH = re.compile(r"\s*\[[0-9a-fA-F]+\]$")


def limit_rows(request, limits: Limits, settings) -> list[tuple[str, float, float]]:
    """(field, value, this host's limit): the UI's limits, applied to API requests. A new host
    limit is one more row."""
    s = request.sampling
    return [
        ("width", request.width, limits.max_width),
        ("height", request.height, limits.max_height),
        ("steps", s.steps, limits.max_steps),
        ("batch_size", s.batch_size, limits.max_batch_size),
        ("n_iter", s.batch_count, limits.max_batch_count),
    ] + ([("prompt (characters)", len(request.prompt), settings.max_prompt_chars),
          ("negative_prompt (characters)", len(request.negative_prompt), settings.max_prompt_chars)]
         if settings.max_prompt_chars else []) + hires_rows(request, limits)


def hires_rows(request, limits: Limits) -> list[tuple[str, float, float]]:
    """The hires fix's final size and steps count against the same limits."""
    if not getattr(request, "enable_hr", False):
        return []
    width, height = request.hires_size
    return [("hires width (hr_scale, hr_resize_x)", width, limits.max_width),
            ("hires height (hr_scale, hr_resize_y)", height, limits.max_height),
            ("hr_second_pass_steps", request.hr_second_pass_steps, limits.max_steps)]


def with_styles(body: dict, styles_file: str) -> dict:
    """A1111's `styles`: names of the host's prompt styles (--styles-file), merged into the
    prompts before anything else reads them."""
    names = body.get("styles") or []
    if not names:
        return body
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ApiError(422, "styles must be a list of style names.")
    known = {style.name: style for style in (style_lib.load(styles_file) if styles_file else [])}
    missing = [n for n in names if n not in known]
    if missing:
        raise ApiError(422, f"Unknown style {missing[0][:80]!r}: GET /sdapi/v1/prompt-styles lists this host's styles.")
    prompt, negative = style_lib.apply_styles(str(body.get("prompt") or ""), str(body.get("negative_prompt") or ""),
                                              [known[n] for n in names])
    return {**body, "prompt": prompt, "negative_prompt": negative, "styles": []}


def max_input_pixels(limits: Limits, settings) -> int:
    """Largest input image accepted: the host's upload limit (the same as for the tabs'
    uploads); with none set, four times the largest generation (room for only-masked crops)."""
    if settings.max_upload_megapixels:
        return int(settings.max_upload_megapixels * 1_000_000)
    return 4 * limits.max_width * limits.max_height


class ApiContext:
    """What the routes share: the backend line, the host's limits, saving, jobs, options."""

    def __init__(self, backend, settings, store):
        self.backend, self.settings, self.store = backend, settings, store
        self.limits: Limits = settings.limits
        self.max_pixels = max_input_pixels(self.limits, settings)
        self.jobs = ApiJobs(backend, max_jobs=settings.queue_size)
        self.options: dict = {}  # POST /options values of A1111 keys we map (eta_ddim), applied to every request
        self._models: dict[str, str] = {}
        self.refresh_models()

    # ------------------------------------------------------------- base models
    def refresh_models(self) -> None:
        sources = [self.settings.model_source, *catalog.base_models()]
        loaded = self.loaded_source()
        self._models = {model_name(s): s for s in [*sources, loaded] if s} | self._models

    def loaded_source(self) -> str | None:
        model = self.backend.model
        return None if model is None else model.source.location

    def loaded_name(self) -> str | None:
        model = self.backend.model
        return None if model is None else model.name

    def models(self) -> dict[str, str]:
        return self._models

    def resolve_model(self, name) -> str | None:
        """A model name/title → its source; None when it is the loaded one already."""
        if not isinstance(name, str) or not name.strip():
            raise ApiError(422, f"{MODEL_OPTION} must be a model name from GET /sdapi/v1/sd-models.")
        wanted = _HASH.sub("", name.strip()).lower()
        if wanted == (self.loaded_name() or "").lower():
            return None
        match = next((source for title, source in self._models.items() if title.lower() == wanted), None)
        if match is None:
            raise ApiError(422, f"Unknown model {name!r}. Choose one of: {', '.join(self._models)} (GET /sdapi/v1/sd-models).")
        if not self.settings.allow_model_change:
            raise ApiError(403, "This host does not allow changing models.")
        return match

    def load_in_turn(self, source: str):
        """For a job that already holds its turn in the line."""
        def load():
            _load(self.backend.backend, source)
            self._models[model_name(source)] = source
        return load


def build_router(backend, settings, store) -> APIRouter:
    ctx = ApiContext(backend, settings, store)
    caller = caller_dependency(settings)
    router = APIRouter(route_class=ApiRoute, dependencies=[Depends(caller)])
    sd = "/sdapi/v1"

    async def generate(task: str, body: dict, http: Request, who: str) -> dict:
        try:
            body = with_styles(body, settings.styles_file)
        except RequestError as error:  # a malformed styles file
            raise ApiError(422, str(error)) from None
        except (OSError, UnicodeDecodeError):
            raise ApiError(422, "This host's styles file could not be read.") from None
        converted = convert(task, body, ctx.options, ctx.max_pixels, catalog.controlnets())
        for what, value, limit in limit_rows(converted.request, ctx.limits, settings):
            if value > limit:
                raise ApiError(422, f"{what} {value:g} is over this host's limit of {limit:g}.")
        try:
            request = ctx.limits.normalize(converted.request)
        except RequestError as error:
            raise ApiError(422, str(error)) from None
        source = ctx.resolve_model(converted.model) if converted.model is not None else None
        prepare = ctx.load_in_turn(source) if source else None
        result = await ctx.jobs.run(request, who, prepare, http.is_disconnected)
        if body.get("save_images") and result.images:
            await asyncio.to_thread(ctx.store.save, result.task, result.images)
        images = [encode_png(image.image, image.infotext) for image in result.images] if body.get("send_images", True) else []
        return {"images": images, "parameters": parameters_echo(body), "info": info(request, result, converted.ignored)}

    @router.post(f"{sd}/txt2img", tags=["generation"])
    async def txt2img(body: Txt2ImgBody, http: Request, who: str = Depends(caller)):
        return await generate("txt2img", body.model_dump(), http, who)

    @router.post(f"{sd}/img2img", tags=["generation"])
    async def img2img(body: Img2ImgBody, http: Request, who: str = Depends(caller)):
        """img2img; with `mask`, inpainting (RePaint by default, or `inpaint_mode`)."""
        return await generate("img2img", body.model_dump(), http, who)

    @router.get(f"{sd}/progress", tags=["jobs"])
    def progress(skip_current_image: bool = False, who: str = Depends(caller)):
        record, count = ctx.jobs.progress(who)
        idle = {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
                "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}
        if record is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": idle, "current_image": None, "textinfo": None,
                    "current_task": None}
        step = record.step
        fraction = step.fraction if step else 0.0
        elapsed = time.time() - (record.started_at or record.queued_at)
        state = {**idle, "skipped": record.job.skipping, "interrupted": record.job.cancelled,
                 "job": record.task if record.running else "waiting", "job_count": step.batch_count if step else 1,
                 "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(record.queued_at)),
                 "job_no": step.batch if step else 0, "sampling_step": step.step if step else 0,
                 "sampling_steps": step.total if step else 0}
        image = None if skip_current_image or record.preview is None else encode_png(record.preview)
        return {"progress": round(fraction, 4), "eta_relative": elapsed / fraction - elapsed if fraction > 0.01 else 0.0,
                "state": state, "current_image": image,
                "textinfo": None if record.running else f"Waiting in line ({count} job(s) of yours)",
                "current_task": None}

    @router.post(f"{sd}/interrupt", tags=["jobs"])
    def interrupt(who: str = Depends(caller)):
        """Stops the caller's running job (its images so far come back). Browser users' jobs are never touched."""
        ctx.jobs.interrupt(who)
        return None

    @router.post(f"{sd}/skip", tags=["jobs"])
    def skip(who: str = Depends(caller)):
        """Ends the batch being sampled now (kept as it is); the job goes on with its next batch."""
        ctx.jobs.skip(who)
        return None

    @router.get(f"{sd}/options", tags=["settings"])
    def get_options():
        return {MODEL_OPTION: ctx.loaded_name(), "sd_checkpoint_hash": None, "sd_vae": "Automatic",
                "CLIP_stop_at_last_layers": ctx.options.get("CLIP_stop_at_last_layers", 1),
                "eta_ddim": ctx.options.get("eta_ddim", 0.0),
                "token_merging_ratio": ctx.options.get("token_merging_ratio", 0.0),
                "samples_save": settings.save_outputs, "samples_format": "png", "enable_pnginfo": True}

    @router.post(f"{sd}/options", tags=["settings"])
    async def set_options(body: dict):
        """sd_model_checkpoint loads that model (when the host allows it); eta_ddim becomes the default η."""
        values: dict = {}
        model = apply_options(values, body, [])
        try:
            if "sampling.eta" in values:
                Sampling(eta=values["sampling.eta"])
            for name in ("clip_skip", "token_merging"):
                if name in values:
                    Txt2ImgRequest(**{name: values[name]})
        except RequestError as error:
            raise ApiError(422, str(error)) from None
        if model is not None:
            source = ctx.resolve_model(model)
            if source:
                await asyncio.to_thread(_load_queued, ctx, source)
        ctx.options.update({key: value for key, value in body.items() if isinstance(OPTIONS.get(key), Field)})
        return None

    @router.get(f"{sd}/sd-models", tags=["models"])
    def sd_models():
        return [{"title": name, "model_name": name, "hash": None, "sha256": None, "filename": name, "config": None}
                for name in ctx.models()]

    @router.post(f"{sd}/refresh-checkpoints", tags=["models"])
    def refresh_checkpoints():
        ctx.refresh_models()
        return None

    @router.get(f"{sd}/samplers", tags=["models"])
    def samplers():
        return sampler_list()

    @router.get(f"{sd}/schedulers", tags=["models"])
    def schedulers():
        return scheduler_list()

    @router.get(f"{sd}/sd-vae", tags=["models"])
    def sd_vae():
        return []  # the model's own VAE only (sd_vae: Automatic)

    @router.get(f"{sd}/loras", tags=["models"])
    def loras():
        return []

    @router.get(f"{sd}/embeddings", tags=["models"])
    def embeddings():
        return {"loaded": {}, "skipped": {}}

    @router.get(f"{sd}/upscalers", tags=["models"])
    def upscalers():
        return [{"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": scale}
                for name, scale in (("None", 1), *((n, 4) for n in PIXEL_UPSCALERS))]

    @router.get(f"{sd}/latent-upscale-modes", tags=["models"])
    def latent_upscale_modes():
        return [{"name": name} for name in LATENT_UPSCALERS]  # the hires fix's latent upscalers

    @router.get(f"{sd}/prompt-styles", tags=["models"])
    def prompt_styles():
        try:
            styles = style_lib.load(settings.styles_file) if settings.styles_file else []
        except (RequestError, OSError, UnicodeDecodeError):
            styles = []
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]

    for empty in ("hypernetworks", "face-restorers", "script-info"):
        router.add_api_route(f"{sd}/{empty}", lambda: [], methods=["GET"], tags=["models"], name=empty)
    for noop in ("refresh-loras", "refresh-vae", "refresh-embeddings"):
        router.add_api_route(f"{sd}/{noop}", lambda: None, methods=["POST"], tags=["models"], name=noop)

    @router.get(f"{sd}/scripts", tags=["models"])
    def scripts():
        from .fields import SCRIPTS

        return {"txt2img": list(SCRIPTS), "img2img": list(SCRIPTS)}

    @router.post(f"{sd}/png-info", tags=["images"])
    def png_info(body: PngInfoBody):
        image = decode_image(body.image, "image", ctx.max_pixels)
        text = read_infotext(image) or ""
        items = {k: v for k, v in image.info.items() if isinstance(v, str) and k != "parameters"}
        return {"info": text, "items": items, "parameters": parse_infotext(text) if text else {}}

    @router.get("/controlnet/version", tags=["controlnet"])
    def controlnet_version():
        return {"version": 2}

    @router.get("/controlnet/model_list", tags=["controlnet"])
    def controlnet_models(update: bool = True):
        return {"model_list": [controlnet.model_name(s) for s in catalog.controlnets()]}

    @router.get("/controlnet/module_list", tags=["controlnet"])
    def controlnet_modules(alias_names: bool = False):
        return {"module_list": controlnet.module_names()}

    @router.post("/controlnet/detect", tags=["controlnet"])
    async def controlnet_detect(body: DetectBody):
        """The control map of each image at its own size (processor_res is not used)."""
        from pipelines.preprocess_extra import control_map

        module = controlnet.resolve_module(body.controlnet_module)
        texts = body.controlnet_input_images or body.controlnet_images or []
        if not texts:
            raise ApiError(422, "controlnet_input_images must hold at least one base64 image.")
        if len(texts) > ctx.limits.max_batch_size:
            raise ApiError(422, f"At most {ctx.limits.max_batch_size} images per call on this host.")
        unit = {"threshold_a": body.controlnet_threshold_a, "threshold_b": body.controlnet_threshold_b}
        params = dict(controlnet._params(module, unit))
        images = []
        for index, text in enumerate(texts):
            image = decode_image(text, f"controlnet_input_images[{index}]", ctx.max_pixels)
            result = await asyncio.to_thread(control_map, module, image, image.width, image.height, **params)
            images.append(encode_png(result.image))
        return {"images": images, "info": "Success"}

    return router


def _load(backend, source: str) -> None:
    try:
        backend.load_base(source)
    except ModelLoadError as error:
        log.warning("API model load failed: %s", error)  # the message names server paths: log only
        raise ApiError(422, f"Model {model_name(source)!r} could not be loaded (the server log says why); "
                            "the previous model stays loaded.") from None


def _load_queued(ctx: ApiContext, source: str) -> None:
    _load(ctx.backend, source)  # the line's load_base waits its turn
    ctx.models()[model_name(source)] = source


def internal_router() -> APIRouter:
    """A1111's /internal/ping (clients use it to see whether the server is up); no login."""
    router = APIRouter(route_class=ApiRoute)
    router.add_api_route("/internal/ping", lambda: {}, methods=["GET"], tags=["jobs"], name="ping")
    return router


