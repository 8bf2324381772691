"""PipelineManager: one set of model weights on one device, shared by every task.

It loads a base model once (VAE, text encoder, tokenizer, UNet) and derives each task's
diffusers pipeline from it with ``from_pipe``, so txt2img, img2img, inpainting and ControlNet
hold the *same* module objects — no copies. The 9-channel inpainting UNet and ControlNets are
extra modules loaded on demand (ControlNets cached with a size cap). One job runs at a time
per device (a lock; the Gradio queue in front of it keeps the order), except that compatible
waiting txt2img/img2img requests may run as one batch (batching.py). A scheduler is built
per request.
"""
from __future__ import annotations

import gc
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import DiffusionPipeline, MultiControlNetModel
from PIL import Image

from . import quiet_logs
from .core import catalog
from .adapters import Adapters
from .components import ControlNetCache, load_inpaint_unet
from .control import control_maps, maps_on_device
from .core.errors import GenerationError, RequestError
from .families import SD, Family, family_of_pipeline, single_file_config as config_for
from .families import call_kwargs as call_kwargs_of
from .batching import Batcher, Member, NotBatched, batch_key, default_max_batch, sample_together
from .execution_device import pin_execution_device
from .fast_path import FastPath, FastPathRuntime, FifoLock, apply_fast_path
from .generation import decode, diffusers_sampler, prompt_notes, run_batches
from .core.images import fit
from .hires import hires_sampler
from .core.infotext import model_name, request_infotext
from .inpainting import repaint_sampler
from .core.jobs import GeneratedImage, GenerationResult, Job, StepInfo, stream_run
from .core.lab_requests import LabRequest
from .loading import ModelSource, load_pipeline, resolve_source
from .masks import prepare_inpaint
from .preview import fit_latent_to_rgb
from .core.catalog import upscaler_models
from .prompt_encoding import count_tokens
from .refiner import load_refiner, refined_sampler
from .token_merging import merge_level, merging_sampler, token_merging
from .turbo import turbo_sampler
from .core.requests import FIELDS, HIRES_UPSCALERS, SDXL_SIZE_FIELDS, Img2ImgRequest, InpaintRequest, Txt2ImgRequest
from .upscalers import UpscalerCache, upscale_with_model

log = logging.getLogger(__name__)
quiet_logs.install()

NO_MODEL = (
    "No model is loaded. Start the app with --model PATH_OR_HUB_ID (a diffusers folder, a "
    ".safetensors/.ckpt file, or a Hub id with --allow-download), or load one in the Models tab."
)

MAX_COUNTED_CHARS = 20_000  # the live token counter reads at most this much of a prompt box

# Task name → diffusers class derived from the base pipeline (ControlNet variants get the
# ControlNet module passed in). These are SD 1.x/2.x's; the loaded model's family has its own
# (families.py: SDXL's StableDiffusionXL* classes), derived the same way.
TASK_PIPELINES: dict[str, type[DiffusionPipeline]] = SD.pipelines


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
    family: str = "SD"  # "SD" | "SDXL"
    weight_bytes: int = 0  # the base's weights, each storage counted once


def _plain_tensors(tensor):
    """The tensors holding a parameter's data: itself, or the inner tensors of a wrapper
    subclass (torchao's fp8 weights: float8 data + scale), which has no storage of its own."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if is_traceable_wrapper_subclass(tensor):
        for name in tensor.__tensor_flatten__()[0]:
            yield from _plain_tensors(getattr(tensor, name))
    else:
        yield tensor


def _weight_storages(modules) -> dict[int, int]:
    """data pointer → bytes of every parameter/buffer storage (each counted once)."""
    seen: dict[int, int] = {}
    for module in modules:
        if isinstance(module, torch.nn.Module):
            for tensor in list(module.parameters()) + list(module.buffers()):
                for plain in _plain_tensors(tensor):
                    seen[plain.untyped_storage().data_ptr()] = plain.untyped_storage().nbytes()
    return seen


class PipelineManager:
    """Implements pipelines.core.backend.Backend on one device."""

    concurrency = 1  # jobs let through to this device at once: max_batch (set in __init__)
    model: ModelInfo | None = None  # the loaded base model

    def __init__(
        self,
        device: str | None = None,
        dtype: str | None = None,
        allow_download: bool = False,
        single_file_config: str | None = None,
        vae_tiling: bool = False,
        cpu_offload: bool = False,
        preview_every: int = 0,
        max_controlnets: int = 4,
        variant: str | None = None,
        fast_path: FastPath | None | str = "auto",
        upscaler_dir: str = "",
        fp8: bool = False,
        max_batch: int = 0,
    ):
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.allow_download = allow_download
        self.single_file_config = single_file_config
        self.vae_tiling = vae_tiling
        self.cpu_offload = cpu_offload and self.device.type == "cuda"
        # 0 = auto: every step on CPU; every 5th on a GPU, where a preview (a device→host copy,
        # hence a sync) would cost more than the step itself.
        self.preview_every = preview_every if preview_every > 0 else (1 if self.device.type == "cpu" else 5)
        self.variant = variant or None  # e.g. "fp16": prefer those weight files when a repo has them
        # CUDA graphs + fast compilation on CUDA (not with CPU offload: modules move between devices)
        if fast_path == "auto":
            fast_path = FastPath() if self.device.type == "cuda" and not self.cpu_offload else None
        if fp8 and fast_path is not None:
            fast_path = replace(fast_path, fp8=True)  # checked against the device at load (fast_path.py)
        elif fp8:
            log.warning("fp8 is off: it is an option of the GPU fast path, which is off here. Generating without it.")
        self.fast_path: FastPath | None = fast_path
        self.fast_path_applied: list[str] = []
        self.fast_runtime: FastPathRuntime | None = None  # background compile + graphs (fast_path.py)
        self.model: ModelInfo | None = None
        self.controlnets = ControlNetCache(max_controlnets)
        self.upscaler_dir = upscaler_dir  # model upscalers for the hires fix (A1111's models/ESRGAN)
        self._upscalers = UpscalerCache()
        self._inpaint_unet = None  # (source text, 9-channel UNet): one at a time
        self._refiner = None  # (source text, SDXL refiner pipeline sharing the base's VAE): one at a time
        self._base: DiffusionPipeline | None = None
        self.family: Family = SD  # of the loaded model (families.py)
        self._pipelines: dict[str, DiffusionPipeline] = {}
        self._scheduler_config: dict = {}
        self._latent_rgb: torch.Tensor | None = None
        self._lock = FifoLock()  # one job per device at a time, in arrival order
        # UNet calls under turbo (full / shallow: turbo.py) or token merging alone (merged: token_merging.py),
        # for tests and benches
        self.turbo_counts: dict[str, int] = {}
        # Compatible waiting txt2img/img2img requests share one UNet batch (batching.py); 0 = auto
        # (4 on CUDA, 1 = off elsewhere). Twice as many requests as one batch holds may wait
        # here, so the line in front (FairGate, Gradio, a worker process) lets that many
        # through: a batch samples while the next one's members already wait in the manager's
        # line. With max_batch, a finished batch freed its slots at once and the next jobs came
        # in one by one: 16 requests ran as [1, 3, 3, 3, 2, 2, 2] instead of [1, 4, 4, 4, 3].
        self.max_batch = max_batch if max_batch > 0 else default_max_batch(self.device)
        self.concurrency = 2 * self.max_batch if self.max_batch > 1 else 1
        self.batching = Batcher(self._lock, self.max_batch, self._run_locked, self._batch_key, self._run_batch)
        # LoRAs, embeddings, VAEs (pipelines/adapters.py); with the fast path LoRAs are always fused
        self.adapters = Adapters(self.device, self.dtype, fuse_always=self.fast_path is not None)

    # ----------------------------------------------------------------- model loading
    def load_base(self, source_text: str) -> ModelInfo:
        """Load a base model; on failure the previously loaded model stays in place."""
        source = resolve_source(catalog.source_for("checkpoint", source_text))
        with self.batching.alone():  # no batch spans two models
            started = time.perf_counter()
            pipe = load_pipeline(source, self.dtype, self.allow_download, self.single_file_config, self.variant)
            pipe.set_progress_bar_config(disable=True)
            if self.vae_tiling:
                pipe.vae.enable_tiling()
            if self.cpu_offload:
                pipe.enable_model_cpu_offload(device=self.device)
            else:
                pipe.to(self.device)
            runtime = apply_fast_path(pipe, self.fast_path, self.device, self._lock) if self.fast_path else None
            if not self.cpu_offload:
                pin_execution_device(pipe)
            self._release()
            self.fast_runtime = runtime
            self.fast_path_applied = runtime.applied if runtime else []
            self._base = pipe
            self.family = family_of_pipeline(pipe)
            # Kept apart: the pipelines' scheduler slot is overwritten per request.
            self._scheduler_config = dict(pipe.scheduler.config)
            self._pipelines = {"txt2img": pipe}
            self.adapters.attach(pipe)  # embeddings/ words into its tokenizer + text encoder
            self.adapters.loras.on_change = runtime.module_state_changed if runtime else None
            self.model = ModelInfo(source.name, source, time.perf_counter() - started, self.family.name,
                                   sum(_weight_storages(pipe.components.values()).values()))
            log.info("loaded %s (%s, %s, %.0f MiB) in %.1fs on %s/%s", source.name, self.family.name, source.kind,
                     self.model.weight_bytes / 2**20, self.model.seconds, self.device, self.dtype)
            return self.model

    def _release(self) -> None:
        self._base, self._pipelines, self._latent_rgb, self.model = None, {}, None, None
        self.controlnets.clear()  # they were checked against the old base
        self._inpaint_unet = None
        self._refiner = None
        self.family = SD
        if self.fast_runtime is not None:
            self.fast_runtime.close()
            self.fast_runtime = None
        self.adapters.reset()
        self._free_memory()

    def refresh_models(self) -> None:
        """Rescan the model folders; new embeddings become words of the loaded model."""
        catalog.refresh()
        with self.batching.alone():  # new embedding words: no batch spans the change
            if self._base is not None:
                self.adapters.attach(self._base)

    def _fast(self, module):
        """A module loaded after the base (ControlNet, 9-channel UNet) onto the fast path."""
        return self.fast_runtime.adopt(module) if self.fast_runtime is not None else module

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def native_size(self) -> int:
        """The resolution the model was trained at (SD 1.5: 512, SDXL: 1024, the demo model: 128)."""
        if self._base is None:
            return self.family.native_size
        return int(self._base.unet.config.sample_size) * self._base.vae_scale_factor

    @property
    def train_steps(self) -> int:
        """T of the model's training schedule (1000 before a model is loaded)."""
        return int(self._scheduler_config.get("num_train_timesteps", 1000))

    @property
    def family_name(self) -> str:
        """"SD" or "SDXL": what the UI shows SDXL-only fields for (ui/ never sees torch objects)."""
        return self.family.name

    def describe(self) -> str:
        if self.model is None:
            return NO_MODEL
        return (f"Model **{self.model.name}** ({self.family.name}, {self.model.source.kind}) on {self.device.type} "
                f"{str(self.dtype).replace('torch.', '')}, native size {self.native_size}².")

    def pipeline(self, task: str, **modules) -> DiffusionPipeline:
        """The task's pipeline derived from the base, sharing its modules. from_pipe only wires
        references, it copies nothing; the latest pipeline per task is kept and served again
        while its modules are the same objects (the 9-channel UNet, one ControlNet): deriving
        costs ~13 ms of host time on SD 1.5 (its .to(dtype) walks every parameter), which on
        a GPU would delay each such request's first step."""
        if self._base is None:
            raise GenerationError(NO_MODEL)
        cached = self._pipelines.get(task)
        if cached is not None and self._derived_with(cached, modules):
            return cached
        # dtype= always: from_pipe otherwise casts every (shared!) module to float32 in place.
        pipe = self.family.pipelines[task].from_pipe(self._base, dtype=self.dtype, **modules)
        pipe.set_progress_bar_config(disable=True)
        if not self.cpu_offload:
            pin_execution_device(pipe)
        self._pipelines[task] = pipe  # also what memory reports count
        return pipe

    def _derived_with(self, pipe, modules: dict) -> bool:
        """pipe holds exactly these extra modules and, for the rest, the base's current ones
        (the scheduler aside: it is set per request)."""
        parts = pipe.components
        return (all(parts.get(name) is module for name, module in modules.items())
                and all(parts[name] is module for name, module in self._base.components.items()
                        if name in parts and name not in modules and name != "scheduler"))

    def memory_report(self) -> dict:
        """Bytes of weights (each storage counted once): the base alone; what all derived task
        pipelines hold apart from the extra modules (equal to the base when nothing is
        copied); the extra modules (ControlNets, the 9-channel UNet); and everything."""
        if self._base is None:
            return {"modes": [], "base_bytes": 0, "shared_bytes": 0, "extra_bytes": 0, "all_modes_bytes": 0}
        base = _weight_storages(self._base.components.values())
        refiner = [m for m in self._refiner[1].components.values() if m is not self._base.vae] if self._refiner else []
        extra = _weight_storages(self.controlnets.loaded() + ([self._inpaint_unet[1]] if self._inpaint_unet else []) + refiner)
        pipelines = _weight_storages([m for p in self._pipelines.values() for m in p.components.values()])
        shared = {k: v for k, v in pipelines.items() if k not in extra}
        return {
            "modes": sorted(self._pipelines),
            "base_bytes": sum(base.values()),
            "shared_bytes": sum(shared.values()),
            "extra_bytes": sum(extra.values()),
            "all_modes_bytes": sum({**shared, **extra}.values()),
            **self.adapters.memory(self._base),  # LoRA weights (inside the base modules) and cached VAEs
        }

    # ----------------------------------------------------------------- generation
    def run(
        self,
        request: Txt2ImgRequest,
        on_step: Callable[[StepInfo], None] | None = None,
        job: Job | None = None,
    ) -> GenerationResult:
        """One request to its result: a GenerationResult, or for a Diffusion-lab request
        (lab_requests.py) what pipelines/lab.py makes of it."""
        if isinstance(request, LabRequest):
            return self._run_lab(request, on_step, job or Job())
        if not request.is_normalized:
            raise RequestError("The request was not normalized (sizes must be multiples of 8, seed drawn): call Limits.normalize first.")
        job = job or Job()
        if self.max_batch > 1:
            return self.batching.run(request, on_step, job)
        with self._lock:
            return self._run_locked(request, on_step, job)

    def _run_locked(self, request, on_step, job: Job) -> GenerationResult:
        """One request, the lock held."""
        if self._base is None:
            raise GenerationError(NO_MODEL)
        started = time.perf_counter()
        try:
            with self._serving(), self.adapters.applied(self._base, self._pipelines, request):  # LoRA set + VAE
                result = self._dispatch(request, on_step, job)
        except torch.OutOfMemoryError as error:
            self._free_memory()
            raise GenerationError(
                f"Out of GPU memory at {request.width}×{request.height}, batch size {request.sampling.batch_size}. "
                "Lower the size or batch size, or start with --vae-tiling / --cpu-offload. "
                "The memory was freed; the app keeps serving."
            ) from error
        result.seconds = time.perf_counter() - started
        result.worker = f"{os.getpid()}:{self.device}"
        return result

    def _serving(self):
        """Around a request's device work, the lock held: the fast path's background compile
        pauses meanwhile (compile_yield.py), so it does not slow the request down."""
        return self.fast_runtime.serving() if self.fast_runtime is not None else nullcontext()

    def _batch_key(self, request):
        """batching.batch_key on the loaded model; None (runs alone) without one."""
        if self._base is None:
            return None
        pipe = self.pipeline("txt2img")
        if request.token_merging > 0 and (self.cpu_offload or merge_level(pipe.unet) is None):
            return None  # alone it gets its note (_turbo)
        return batch_key(pipe, self.family, request)

    def _run_batch(self, entries) -> None:
        """Several txt2img (or img2img) requests with one key as one batch, the lock held (batching.py).
        Raises when the batch as a whole failed: the members not served then run alone."""
        started = time.perf_counter()

        def stamp(result: GenerationResult) -> GenerationResult:
            result.seconds = time.perf_counter() - started
            result.worker = f"{os.getpid()}:{self.device}"
            return result

        members = [Member(entry, lambda seed, request=entry.request: self._infotext(request, seed), stamp)
                   for entry in entries]
        pipe = self.pipeline(entries[0].request.task)  # txt2img or img2img
        try:
            with self._serving(), self.adapters.applied(self._base, self._pipelines, entries[0].request), \
                    token_merging(pipe.unet, entries[0].request.token_merging, self.fast_runtime):  # equal for all (the key)
                sample_together(pipe, members, self._scheduler_config, call_kwargs_of(self.family, entries[0].request),
                                lambda: self._preview_weights(pipe), self.preview_every,
                                lambda request: fit(request.init_image, request.width, request.height, request.resize_mode))
        except torch.OutOfMemoryError:
            self._free_memory()  # each member then runs alone and gets its own message
            raise
        except (NotBatched, RequestError, GenerationError):
            raise  # fewer than two could be prepared, or a user's error each member meets alone
        except Exception:
            log.exception("a batch of %d requests failed; its members run alone", len(entries))
            raise

    def stream(self, request: Txt2ImgRequest, job: Job | None = None):
        """run() as a generator: StepInfo per step, then the GenerationResult."""
        return stream_run(self.run, request, job or Job())

    def _dispatch(self, request, on_step, job) -> GenerationResult:
        if request.task == "txt2img":
            return self._txt2img(request, on_step, job)
        if request.task == "img2img":
            return self._img2img(request, on_step, job)
        if request.task == "inpaint":
            return self._inpaint(request, on_step, job)
        raise RequestError(f"Unknown task {request.task!r}.")

    def _control_kwargs(self, request) -> tuple[dict, list[str]]:
        """The ControlNet module(s) and call arguments for a request with control units."""
        units = request.control.units
        models = [self._fast(self.controlnets.get(catalog.source_for("controlnet", u.model), self._base.unet, self.device, self.dtype, self.allow_download,
                                                  self.variant)) for u in units]
        maps, notes = control_maps(units, request.width, request.height)
        maps = maps_on_device(maps, self.device)
        single = len(units) == 1
        return {
            "controlnet": models[0] if single else self._fast(MultiControlNetModel(models)),
            "maps": maps[0] if single else maps,
            "call": dict(
                controlnet_conditioning_scale=units[0].weight if single else [u.weight for u in units],
                control_guidance_start=units[0].start if single else [u.start for u in units],
                control_guidance_end=units[0].end if single else [u.end for u in units],
                guess_mode=request.control.guess_mode,
            ),
        }, notes

    def _txt2img(self, request, on_step, job) -> GenerationResult:
        if request.refiner.strip() not in ("", "None"):
            if self.family.is_xl and request.control is None:
                if request.enable_hr:
                    # The refiner hands off mid-schedule (a noisy latent): a hires pass after it
                    # would need the refiner in both passes. Not offered yet, so say so.
                    raise RequestError("The hires fix and the SDXL refiner cannot be used together yet: "
                                       "turn off one of them.")
                return self._refined_txt2img(request, on_step, job)
            why = "the loaded model is not SDXL" if not self.family.is_xl else "ControlNet units are on"
            request = replace(request, notes=request.notes + (f"The refiner was not used: {why}.",))
        if request.enable_hr:
            return self._hires(request, on_step, job)
        if request.control is None:
            return self._generate(self.pipeline("txt2img"), request, {}, on_step, job)
        control, notes = self._control_kwargs(request)
        pipe = self.pipeline("controlnet", controlnet=control["controlnet"])
        return self._generate(pipe, request, {"image": control["maps"], **control["call"]}, on_step, job, notes)

    def _hires(self, request, on_step, job) -> GenerationResult:
        """txt2img with the hires fix (hires.py): ControlNet maps made again at the final size."""
        notes: list[str] = []
        if request.control is None:
            first, first_call, second, second_call = self.pipeline("txt2img"), {}, self.pipeline("img2img"), {}
        else:
            control, notes = self._control_kwargs(request)
            first = self.pipeline("controlnet", controlnet=control["controlnet"])
            first_call = {"image": control["maps"], **control["call"]}
            width, height = request.hires_size
            big, _ = self._control_kwargs(replace(request, width=width, height=height))
            second = self.pipeline("controlnet-img2img", controlnet=big["controlnet"])
            second_call = {"control_image": big["maps"], **big["call"]}
        width, height = request.hires_size  # SDXL: each pass conditioned on its own size
        first_call = {**first_call, **call_kwargs_of(self.family, request)}
        second_call = {**second_call, **call_kwargs_of(self.family, replace(request, width=width, height=height))}
        sampler = hires_sampler(request, first, first_call, second, second_call, self._scheduler_config,
                                self._model_upscale(request.hr_upscaler))
        return self._run_sampler(second, request, sampler, on_step, job, notes)

    def _model_upscale(self, name: str):
        """upscale(image, W, H) for a model upscaler on this host's disk; None for the built-in ones."""
        if name in HIRES_UPSCALERS:
            return None
        path = upscaler_models(self.upscaler_dir).get(name)
        if path is None:
            raise RequestError(f"The hires upscaler {name[:80]!r} is not on this host. Choose one of: "
                               f"{', '.join([*HIRES_UPSCALERS, *upscaler_models(self.upscaler_dir)])}.")
        model = self._upscalers.get(path, self.device)
        return lambda image, width, height: upscale_with_model(model, image, width, height)

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
            images = [GeneratedImage(init.copy(), seed, self._infotext(request, seed))
                      for seeds in s.image_seeds() for seed in seeds]
            return GenerationResult("img2img", images, list(request.notes) + [note])
        if request.strength >= 1.0:
            # x_T ~ N(0, I): starting from the very end of the schedule leaves nothing of the
            # input (SD's ᾱ_T ≈ 0.005 would otherwise leak √ᾱ_T ≈ 7 % of it).
            result = self._txt2img(request, on_step, job)
            result.task = "img2img"
            result.notes.append("Denoising strength 1 starts from pure noise: the init image is not used.")
            return result
        call = {"image": init, "strength": request.strength}
        if request.control is None:
            return self._generate(self.pipeline("img2img"), request, call, on_step, job)
        control, notes = self._control_kwargs(request)
        pipe = self.pipeline("controlnet-img2img", controlnet=control["controlnet"])
        return self._generate(pipe, request, {**call, "control_image": control["maps"], **control["call"]}, on_step, job, notes)

    def refiner(self, source_text: str):
        """The SDXL refiner pipeline (sharing the base's VAE), kept until another is asked for."""
        if self._refiner is None or self._refiner[0] != source_text:
            self._refiner = None
            self._free_memory()
            refiner = load_refiner(catalog.source_for("checkpoint", source_text), self._base, self.device, self.dtype,
                                   self.allow_download, self.variant)
            for name in ("unet", "text_encoder_2"):  # its VAE is the base's, already on the fast path
                self._fast(getattr(refiner, name, None))
            self._refiner = (source_text, refiner)
        return self._refiner[1]

    def _refined_txt2img(self, request, on_step, job) -> GenerationResult:
        """SDXL txt2img with the refiner hand-off (refiner.py)."""
        pipe = self.pipeline("txt2img")
        refiner = self.refiner(request.refiner)
        conditioning = call_kwargs_of(self.family, request)
        sampler = refined_sampler(
            lambda extra: diffusers_sampler(pipe, request, {**conditioning, **extra}, self._scheduler_config),
            refiner, request, self._scheduler_config)
        extra = {"Refiner": Path(request.refiner.strip()).name, "Refiner switch at": request.refiner_switch}
        return self._run_sampler(pipe, request, sampler, on_step, job, [], extra)

    def inpaint_unet(self, source_text: str):
        """The 9-channel UNet for 'inpainting model' mode, loaded once and kept until another
        is asked for; it shares the base's VAE, text encoder and tokenizer."""
        if self._inpaint_unet is None or self._inpaint_unet[0] != source_text:
            if self._inpaint_unet is not None:  # a pipeline derived with the old one would keep it in memory
                old = self._inpaint_unet[1]
                self._pipelines = {task: pipe for task, pipe in self._pipelines.items()
                                   if getattr(pipe, "unet", None) is not old}
            self._inpaint_unet = None
            self._free_memory()
            unet, _ = load_inpaint_unet(catalog.source_for("inpaint", source_text), self._base.unet, self.device, self.dtype,
                                        self.allow_download, config_for(self.family, self.single_file_config), self.variant)
            self._inpaint_unet = (source_text, self._fast(unet))
        # LoRAs trained on the base act on the inpainting UNet's matching layers too (adapters.py)
        self.adapters.loras.attach_unet(self._base, self._inpaint_unet[1])
        return self._inpaint_unet[1]

    def _inpaint(self, request: InpaintRequest, on_step, job) -> GenerationResult:
        plan = prepare_inpaint(
            request.init_image, request.mask, request.width, request.height, invert=request.invert_mask,
            mask_blur=request.mask_blur, inpaint_area=request.inpaint_area, padding=request.padding,
            masked_content=request.masked_content, resize_mode=request.resize_mode)
        notes = list(plan.notes)
        extra = {"Inpaint mode": request.mode, "Mask blur": request.mask_blur, "Masked content": request.masked_content,
                 "Inpaint area": request.inpaint_area,
                 "Only masked padding": request.padding if request.inpaint_area == "only masked" else None,
                 "RePaint r": None, "RePaint j": None, "Inpainting model": None}  # set below where they act
        finish = lambda images, seeds: [plan.finish(image) for image in images]  # noqa: E731 — paste back
        if int(request.sampling.steps * request.strength) == 0:
            images = [GeneratedImage(plan.original.copy(), seed, self._infotext(request, seed, extra))
                      for seeds in request.sampling.image_seeds() for seed in seeds]
            return GenerationResult("inpaint", images, list(request.notes) + notes +
                                    ["Denoising strength × steps rounds to 0 denoising steps: the input is returned unchanged."])
        if request.mode == "RePaint" and request.control is None:
            # RePaint's own update is DDIM's with η (η = 1: DDPM's posterior): record that, not
            # the scheduler dropdown it ignores, so PNG info brings back what ran.
            extra.update({"Sampler": "DDIM", "Eta": request.sampling.eta,
                          "RePaint r": request.repaint_r, "RePaint j": request.repaint_j})
            pipe = self.pipeline("txt2img")
            sampler = repaint_sampler(pipe, request, plan, self._scheduler_config)
            if request.sampling.scheduler not in ("DDIM", "DDPM"):
                notes.append("RePaint samples with its own DDIM/DDPM update (η from the DDIM η slider); "
                             "the scheduler choice applies to the inpainting-model mode.")
            return self._run_sampler(pipe, request, sampler, on_step, job, notes, extra, finish, plan.prepare_finish)
        mask_image = Image.fromarray(plan.gen_mask.astype(np.uint8) * 255)
        call = {"image": plan.init_image, "mask_image": mask_image, "strength": request.strength}
        modules = {}
        if request.mode == "inpainting model":
            modules["unet"] = self.inpaint_unet(request.inpaint_model)
            extra["Inpainting model"] = model_name(request.inpaint_model)
            notes += [f"LoRA “{t.name}” does not fit the inpainting model's UNet: only its text-encoder part acted."
                      for t in request.loras if t.weight != 0 and t.name in self.adapters.loras.extra_misses]
        elif request.repaint_r > 1:
            notes.append("With ControlNet, inpainting blends the known region every step without RePaint resampling (r = 1).")
        if request.control is None:
            pipe = self.pipeline("inpaint", **modules)
            return self._generate(pipe, request, call, on_step, job, notes, extra, finish, plan.prepare_finish)
        control, control_notes = self._control_kwargs(request)
        pipe = self.pipeline("controlnet-inpaint", controlnet=control["controlnet"], **modules)
        call.update(control_image=control["maps"], **control["call"])
        return self._generate(pipe, request, call, on_step, job, notes + control_notes, extra, finish,
                              plan.prepare_finish)

    def _generate(self, pipe, request, call_kwargs: dict, on_step, job: Job, notes: list[str] | None = None,
                  extra_infotext: dict | None = None, finish=None, while_device_works=None) -> GenerationResult:
        call_kwargs = {**call_kwargs, **call_kwargs_of(self.family, request)}
        sampler = diffusers_sampler(pipe, request, call_kwargs, self._scheduler_config)
        return self._run_sampler(pipe, request, sampler, on_step, job, notes, extra_infotext, finish, while_device_works)

    def _run_sampler(self, pipe, request, sampler, on_step, job, notes=None, extra_infotext=None, finish=None,
                     while_device_works=None):
        all_notes = list(request.notes) + list(notes or []) + prompt_notes(pipe, request) + self.adapters.notes(request)
        sampler, extra_infotext = self._turbo(pipe, request, sampler, all_notes, extra_infotext)
        kwargs = {"finish": finish} if finish else {}
        if while_device_works is not None:
            kwargs["while_device_works"] = while_device_works
        return run_batches(
            request, sampler, lambda latents: decode(pipe, latents),
            lambda seed: self._infotext(request, seed, extra_infotext), job, on_step,
            lambda: self._preview_weights(pipe), self.preview_every, all_notes, **kwargs,
        )

    def _turbo(self, pipe, request, sampler, notes: list[str], extra_infotext: dict | None):
        """The sampler with the request's lossy speed-ups, turbo (turbo.py) and token merging
        (token_merging.py), on pipe's UNet; where one cannot act, a note and its infotext key
        left out."""
        ratio = request.token_merging
        if request.turbo == "Off" and ratio == 0:
            return sampler, extra_infotext
        extra_infotext = dict(extra_infotext or {})
        if self.cpu_offload:
            # Offloading moves the UNet onto the device inside its own forward; the views of
            # it (turbo's, token merging's) run diffusers' forward directly.
            if request.turbo != "Off":
                notes.append(f"Turbo ({request.turbo}) is not available with CPU offload: the image was made without it.")
            if ratio > 0:
                notes.append(f"Token merging ({ratio:g}) is not available with CPU offload: the image was made without it.")
            return sampler, {**extra_infotext, "Turbo": None, "Token merging ratio": None}
        if ratio > 0 and merge_level(pipe.unet) is None:
            notes.append("Token merging found no attention layers in this UNet to merge: the image was made without it.")
            extra_infotext["Token merging ratio"] = None
            ratio = 0.0
        on = [f"Turbo ({request.turbo})"] * (request.turbo != "Off") + [f"Token merging ({ratio:g})"] * (ratio > 0)
        if on and getattr(request, "refiner", "").strip() not in ("", "None") and self.family.is_xl:
            notes.append(f"{' and '.join(on)} act{'s' * (len(on) == 1)} on the base model's steps; "
                         "the refiner's run in full.")
        if request.turbo == "Off":
            return merging_sampler(sampler, pipe, ratio, self.fast_runtime, self.turbo_counts), extra_infotext
        return (turbo_sampler(sampler, pipe, request.turbo, self.fast_runtime, self.turbo_counts, token_merging=ratio),
                extra_infotext)

    def _preview_weights(self, pipe) -> torch.Tensor:
        if self._latent_rgb is None:
            self._latent_rgb = fit_latent_to_rgb(pipe.vae)
        return self._latent_rgb

    def _infotext(self, request, seed: int, extra: dict | None = None) -> str:
        # The refiner writes its own keys where it ran (its name, never a path); SDXL's size
        # fields did not act on another family's model.
        acted = {"Refiner": None, "Refiner switch at": None}
        if not self.family.is_xl:
            acted.update({FIELDS[name].infotext: None for name in SDXL_SIZE_FIELDS})
        if self.fast_runtime is not None and self.fast_runtime.fp8:
            acted["FP8 weight"] = "UNet linears"  # lossy (docs/performance.md#fp8): say so in every image
        extra = {**acted, **self.adapters.infotext(request), **(extra or {})}  # Lora hashes, TI hashes, VAE hash
        return request_infotext(request, seed, self.model.name if self.model else None, extra)

    def count_tokens(self, text: str) -> tuple[int, int] | None:
        """(tokens, limit) of a prompt as A1111's counter shows them ('80/150'); tokenizer only,
        no lock (a running job holds it for long). None without a model or for text the
        prompt syntax rejects (the request will say why)."""
        pipe = self._base
        if pipe is None or not isinstance(text, str):
            return None
        try:
            return count_tokens(pipe, text[:MAX_COUNTED_CHARS])
        except ValueError:
            return None

    # ----------------------------------------------------------------- diffusion lab (issue 8)
    def _run_lab(self, request: LabRequest, on_step, job: Job):
        """A lab experiment on the loaded model's modules (nothing copied) and its training
        schedule, holding the device like a generation; the schedules need only the config."""
        from .lab import run_lab

        if not request.needs_device:
            if self._base is None:
                raise GenerationError(NO_MODEL)
            return run_lab(None, self._scheduler_config, request)
        with self._lock:
            if self._base is None:
                raise GenerationError(NO_MODEL)
            try:
                with self._serving():
                    return run_lab(self._base, self._scheduler_config, request, on_step, job)
            except torch.OutOfMemoryError as error:
                self._free_memory()
                raise GenerationError("Out of GPU memory in the Diffusion lab: use fewer steps or scales. "
                                      "The memory was freed; the app keeps serving.") from error
