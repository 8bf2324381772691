"""PipelineManager: one set of model weights on one device, shared by every task.

It loads a base model once (VAE, text encoder, tokenizer, UNet) and derives each task's
diffusers pipeline from it with ``from_pipe``, so txt2img, img2img and the later tasks hold
the *same* module objects — no copies. One job runs at a time per device (a lock; the
Gradio queue in front of it keeps the order). A scheduler is built per request.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DiffusionPipeline, StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from PIL import Image

from .errors import GenerationError, RequestError
from .images import fit
from .jobs import GeneratedImage, GenerationResult, Job, StepInfo
from .loading import ModelSource, load_pipeline, resolve_source
from .metadata import build_infotext
from .preview import DenoisedTap, fit_latent_to_rgb, latent_to_image
from .requests import Img2ImgRequest, Txt2ImgRequest
from .schedulers import ETA_SCHEDULERS, build_scheduler

log = logging.getLogger(__name__)

VERSION = "sd-studio 0.1"
NO_MODEL = (
    "No model is loaded. Start the app with --model PATH_OR_HUB_ID (a diffusers folder, a "
    ".safetensors/.ckpt file, or a Hub id with --allow-download), or load one in the Models tab."
)

# Task name → diffusers class derived from the base pipeline.
TASK_PIPELINES: dict[str, type[DiffusionPipeline]] = {
    "txt2img": StableDiffusionPipeline,
    "img2img": StableDiffusionImg2ImgPipeline,
}


def pick_device(name: str | None = None) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, name: str | None = None) -> torch.dtype:
    """fp16 on accelerators (bf16 on request), fp32 on CPU where half precision is slow."""
    if name:
        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]
    return torch.float32 if device.type == "cpu" else torch.float16


@dataclass
class ModelInfo:
    name: str
    source: ModelSource
    seconds: float


class PipelineManager:
    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        allow_download: bool = False,
        single_file_config: str | None = None,
        vae_tiling: bool = False,
        cpu_offload: bool = False,
        preview_every: int = 1,
    ):
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.allow_download = allow_download
        self.single_file_config = single_file_config
        self.vae_tiling = vae_tiling
        self.cpu_offload = cpu_offload and self.device.type == "cuda"
        self.preview_every = max(1, preview_every)
        self.model: ModelInfo | None = None
        self._base: StableDiffusionPipeline | None = None
        self._pipelines: dict[str, DiffusionPipeline] = {}
        self._latent_rgb: torch.Tensor | None = None
        self._lock = threading.Lock()  # one job per device at a time

    # ----------------------------------------------------------------- model loading
    def load_base(self, source_text: str) -> ModelInfo:
        """Load a base model; on failure the previously loaded model stays in place."""
        source = resolve_source(source_text)
        with self._lock:
            started = time.perf_counter()
            pipe = load_pipeline(source, self.dtype, self.allow_download, self.single_file_config)
            pipe.set_progress_bar_config(disable=True)
            if self.vae_tiling:
                pipe.vae.enable_tiling()
            if self.cpu_offload:
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
            self._release()
            self._base = pipe
            # Kept apart: the pipelines' scheduler slot is overwritten per request.
            self._scheduler_config = dict(pipe.scheduler.config)
            self._pipelines = {"txt2img": pipe}
            self.model = ModelInfo(source.name, source, time.perf_counter() - started)
            log.info("loaded %s (%s) in %.1fs on %s/%s", source.name, source.kind, self.model.seconds, self.device, self.dtype)
            return self.model

    def _release(self) -> None:
        self._base, self._pipelines, self._latent_rgb, self.model = None, {}, None, None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def loaded(self) -> bool:
        return self._base is not None

    @property
    def native_size(self) -> int:
        """The resolution the model was trained at (SD 1.5: 512, the demo model: 128)."""
        if self._base is None:
            return 512
        return int(self._base.unet.config.sample_size) * self._base.vae_scale_factor

    def describe(self) -> str:
        if self.model is None:
            return NO_MODEL
        return (f"Model **{self.model.name}** ({self.model.source.kind}) on {self.device.type} {str(self.dtype).replace('torch.', '')}, "
                f"native size {self.native_size}².")

    def pipeline(self, task: str) -> DiffusionPipeline:
        """The task's pipeline, derived once from the base and sharing its modules."""
        if self._base is None:
            raise GenerationError(NO_MODEL)
        if task not in self._pipelines:
            self._pipelines[task] = TASK_PIPELINES[task].from_pipe(self._base)
            self._pipelines[task].set_progress_bar_config(disable=True)
        return self._pipelines[task]

    def memory_report(self) -> dict:
        """Bytes of weights held by the base alone vs by all derived pipelines together
        (tensors counted once per storage): equal when nothing is copied."""
        def storages(pipes) -> dict[int, int]:
            seen: dict[int, int] = {}
            for pipe in pipes:
                for module in pipe.components.values():
                    if isinstance(module, torch.nn.Module):
                        for tensor in list(module.parameters()) + list(module.buffers()):
                            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return seen

        if self._base is None:
            return {"modes": [], "base_bytes": 0, "all_modes_bytes": 0}
        base = storages([self._base])
        every = storages(self._pipelines.values())
        return {"modes": sorted(self._pipelines), "base_bytes": sum(base.values()), "all_modes_bytes": sum(every.values())}

    # ----------------------------------------------------------------- generation
    def run(
        self,
        request: Txt2ImgRequest,
        on_step: Callable[[StepInfo], None] | None = None,
        job: Job | None = None,
    ) -> GenerationResult:
        if not request.is_normalized:
            raise RequestError("The request was not normalized (sizes must be multiples of 8, seed drawn): call Limits.normalize first.")
        job = job or Job()
        with self._lock:
            if self._base is None:
                raise GenerationError(NO_MODEL)
            started = time.perf_counter()
            try:
                result = self._dispatch(request, on_step, job)
            except torch.OutOfMemoryError as error:
                self._recover_from_oom()
                raise GenerationError(
                    f"Out of GPU memory at {request.width}×{request.height}, batch size {request.sampling.batch_size}. "
                    "Lower the size or batch size, or start with --vae-tiling / --cpu-offload. "
                    "The memory was freed; the app keeps serving."
                ) from error
            result.seconds = time.perf_counter() - started
            return result

    def _recover_from_oom(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _dispatch(self, request, on_step, job) -> GenerationResult:
        if request.task == "txt2img":
            return self._generate("txt2img", request, {}, on_step, job)
        if request.task == "img2img":
            return self._img2img(request, on_step, job)
        raise RequestError(f"Unknown task {request.task!r}.")

    def _img2img(self, request: Img2ImgRequest, on_step, job) -> GenerationResult:
        init = fit(request.init_image, request.width, request.height, request.resize_mode)
        s = request.sampling
        if int(s.steps * request.strength) == 0:
            # Zero denoising steps: nothing of the schedule is re-run, the input comes back as is.
            note = (
                "Denoising strength 0: the input is returned unchanged."
                if request.strength == 0
                else f"Strength {request.strength:g} × {s.steps} steps rounds to 0 denoising steps: "
                "the input is returned unchanged. Raise steps or strength."
            )
            images = [
                GeneratedImage(init.copy(), seed, self._infotext(request, seed))
                for seeds in s.image_seeds()
                for seed in seeds
            ]
            return GenerationResult("img2img", images, list(request.notes) + [note])
        if request.strength >= 1.0:
            # x_T ~ N(0, I): starting from the very end of the schedule leaves nothing of the
            # input (SD's ᾱ_T ≈ 0.005 would otherwise leak √ᾱ_T ≈ 7 % of it).
            result = self._generate("txt2img", request, {}, on_step, job)
            result.task = "img2img"
            result.notes.append("Denoising strength 1 starts from pure noise: the init image is not used.")
            return result
        return self._generate("img2img", request, {"image": init, "strength": request.strength}, on_step, job)

    def _generate(self, task: str, request: Txt2ImgRequest, call_kwargs: dict, on_step, job: Job) -> GenerationResult:
        pipe = self.pipeline(task)
        s = request.sampling
        notes = list(request.notes) + self._prompt_notes(pipe, request)
        images: list[GeneratedImage] = []
        interrupted = False
        seed_batches = s.image_seeds()
        for batch, seeds in enumerate(seed_batches):
            if job.cancelled:
                interrupted = True
                break
            scheduler = build_scheduler(s.scheduler, self._scheduler_config)
            tap = DenoisedTap(scheduler)
            pipe.scheduler = scheduler
            callback = self._step_callback(job, on_step, tap, batch, len(seed_batches))
            latents = pipe(
                prompt=[request.prompt] * len(seeds),
                negative_prompt=[request.negative_prompt] * len(seeds) if s.cfg and request.negative_prompt else None,
                height=request.height,
                width=request.width,
                num_inference_steps=s.steps,
                guidance_scale=s.guidance_scale,
                eta=s.eta,
                generator=[torch.Generator("cpu").manual_seed(seed) for seed in seeds],
                output_type="latent",
                callback_on_step_end=callback,
                **call_kwargs,
            ).images
            if job.cancelled:
                interrupted = True
                # The denoised estimate x̂_0 of the last step is the image "so far".
                if tap.latest is not None:
                    latents = tap.latest
                notes.append(f"Interrupted at step {callback.steps_done}/{pipe.num_timesteps} of batch {batch + 1}.")
            for image, seed in zip(self._decode(pipe, latents), seeds):
                images.append(GeneratedImage(image, seed, self._infotext(request, seed)))
            if interrupted:
                break
        return GenerationResult(request.task, images, notes, interrupted)

    def _step_callback(self, job: Job, on_step, tap: DenoisedTap, batch: int, batch_count: int):
        def callback(pipe, index, timestep, tensors):
            callback.steps_done = index + 1
            if on_step is not None:
                preview = None
                if callback.steps_done % self.preview_every == 0 or callback.steps_done == pipe.num_timesteps:
                    latent = tap.latest if tap.latest is not None else tensors["latents"]
                    preview = latent_to_image(latent[0], self._preview_weights(pipe))
                on_step(StepInfo(callback.steps_done, pipe.num_timesteps, batch, batch_count, preview))
            if job.cancelled:
                pipe._interrupt = True  # diffusers skips the remaining steps
            return {}

        callback.steps_done = 0
        return callback

    def _preview_weights(self, pipe) -> torch.Tensor:
        if self._latent_rgb is None:
            self._latent_rgb = fit_latent_to_rgb(pipe.vae)
        return self._latent_rgb

    @torch.no_grad()
    def _decode(self, pipe, latents: torch.Tensor) -> list[Image.Image]:
        vae = pipe.vae
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return pipe.image_processor.postprocess(decoded, output_type="pil")

    def _prompt_notes(self, pipe, request: Txt2ImgRequest) -> list[str]:
        notes = []
        tokenizer = pipe.tokenizer
        limit = tokenizer.model_max_length
        for label, text in (("Prompt", request.prompt), ("Negative prompt", request.negative_prompt)):
            ids = tokenizer(text, truncation=False, add_special_tokens=True).input_ids
            if len(ids) > limit:
                dropped = tokenizer.decode(ids[limit - 1 : -1])
                notes.append(
                    f"{label} is {len(ids) - 2} tokens; the text encoder reads {limit - 2}. Ignored: “{dropped.strip()}”."
                )
        if request.negative_prompt and not request.sampling.cfg:
            notes.append("The negative prompt has no effect with CFG off (it only enters the unconditional pass).")
        return notes

    def _infotext(self, request: Txt2ImgRequest, seed: int) -> str:
        s = request.sampling
        params = {
            "Steps": s.steps,
            "Sampler": s.scheduler,
            "CFG scale": s.cfg_scale,
            "CFG": None if s.cfg else "off",
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model": self.model.name if self.model else None,
            "Denoising strength": getattr(request, "strength", None),
            "Resize mode": getattr(request, "resize_mode", None),
            "Eta": s.eta if s.scheduler in ETA_SCHEDULERS else None,
            "Version": VERSION,
        }
        return build_infotext(request.prompt, request.negative_prompt, params)
