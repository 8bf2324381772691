"""One request's batches, whatever samples them: seeds per image, per-step progress with a
live preview, interrupt within one step (on a GPU: once the few steps already queued have
run, RUN_AHEAD_STEPS), decode, infotext.

A *sampler* is a function ``sample(seeds, report) -> latents`` that runs one batch and calls
``report(index, total, latents, x0)`` after every step; report returns True when the job
was interrupted and the sampler must stop. diffusers pipelines and our RePaint loop both
become samplers, so everything around them is written once.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import torch
from PIL import Image

from .diffusion_math import vae_decode
from .families import vae_precision
from .core.jobs import GeneratedImage, GenerationResult, Job, StepInfo
from .noise import NoiseSpec, sampler_noise, without_host_sync
from .preview import DenoisedTap, PreviewInFlight, latent_to_image
from .prompt_encoding import effective_clip_skip, encode_prompts, tokenize
from .core.prompt_syntax import parse_prompt
from .core.schedulers import build_scheduler

Sampler = Callable[[list[int], Callable], torch.Tensor]


# How many steps a GPU step loop may have queued beyond the one the device is on. With CUDA
# graphs and no host sync in the loop, the host would otherwise queue every step at once:
# progress would read 30/30 at once and an interrupt could stop nothing already queued. Two
# or three queued steps keep the GPU fed (a step's host work is well under a step's GPU time).
RUN_AHEAD_STEPS = 3


class StepReporter:
    """Turns a sampler's per-step report into StepInfo (+ preview) and the stop decision; on a
    GPU it also paces the loop (RUN_AHEAD_STEPS), so steps are reported as the device runs them."""

    def __init__(self, job: Job, on_step, preview_weights: Callable[[], torch.Tensor], preview_every: int,
                 batch: int, batch_count: int):
        self.job, self.on_step = job, on_step
        self.preview_weights, self.preview_every = preview_weights, preview_every
        self.batch, self.batch_count = batch, batch_count
        self.steps_done, self.total = 0, 0
        self.latest_x0: torch.Tensor | None = None
        self.in_flight: PreviewInFlight | None = None
        self.queued: deque = deque()  # one CUDA event per step launched

    def __call__(self, index: int, total: int, latents: torch.Tensor, x0: torch.Tensor | None) -> bool:
        self.steps_done, self.total, self.latest_x0 = index + 1, total, x0
        if latents.device.type == "cuda":
            self._pace(latents.device)
        if self.on_step is not None:
            # x̂_0 looks like the final image long before x_t does.
            preview = self._preview((x0 if x0 is not None else latents)[0])
            self.on_step(StepInfo(self.steps_done, total, self.batch, self.batch_count, preview))
        return self.job.cancelled or self.job.skipping

    def _pace(self, device: torch.device) -> None:
        """Wait (GIL released) until the device has finished the step RUN_AHEAD_STEPS before
        the one just launched: the steps in between keep it busy meanwhile."""
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))  # that GPU's, whichever is this thread's current one
        self.queued.append(event)
        if len(self.queued) > RUN_AHEAD_STEPS:
            self.queued.popleft().synchronize()

    def _preview(self, latent: torch.Tensor):
        """Every preview_every steps, and on the CPU at the last too. On a GPU a due preview
        is sent off (PreviewInFlight) and handed over at the first step that finds it landed;
        the last step starts none (the image itself comes right after)."""
        due = self.steps_done % self.preview_every == 0
        if latent.device.type != "cuda":
            return latent_to_image(latent, self.preview_weights()) if due or self.steps_done == self.total else None
        landed = None
        if self.in_flight is not None and self.in_flight.ready():
            landed, self.in_flight = latent_to_image(self.in_flight.host, self.preview_weights()), None
        if due and self.steps_done < self.total and self.in_flight is None:
            self.in_flight = PreviewInFlight(latent)
        return landed


def diffusers_sampler(pipe, request, call_kwargs: dict, scheduler_config: dict) -> Sampler:
    """A diffusers pipeline as a sampler: a fresh scheduler per batch (schedulers hold state),
    one CPU generator per image (image k is reproducible from its own seed on any device),
    the initial noise from noise.py (variation seeds)."""
    s = request.sampling
    # Encoded once per request (chunks, emphasis, clip skip): the pipeline gets embeddings.
    embeddings = encode_prompts(pipe, request.prompt, request.negative_prompt, request.clip_skip, s.cfg)

    def sample(seeds: list[int], report) -> torch.Tensor:
        scheduler = without_host_sync(build_scheduler(s.scheduler, scheduler_config))
        tap = DenoisedTap(scheduler)
        pipe.scheduler = scheduler
        noise_kwargs, generators = sampler_noise(pipe, scheduler, call_kwargs, NoiseSpec.of(request, seeds),
                                                 request.width, request.height)

        def callback(p, index, timestep, tensors):
            if report(index, p.num_timesteps, tensors["latents"], tap.latest):
                p._interrupt = True  # diffusers skips the remaining steps
            return {}

        return pipe(
            prompt_embeds=embeddings.cond.expand(len(seeds), -1, -1),
            negative_prompt_embeds=None if embeddings.uncond is None else embeddings.uncond.expand(len(seeds), -1, -1),
            **pooled_kwargs(embeddings, len(seeds)),
            height=request.height,
            width=request.width,
            num_inference_steps=s.steps,
            guidance_scale=s.guidance_scale,
            eta=s.eta,
            generator=generators,
            output_type="latent",
            callback_on_step_end=callback,
            **call_kwargs,
            **noise_kwargs,
        ).images

    return sample


@torch.no_grad()
def decode(pipe, latents: torch.Tensor) -> list[Image.Image]:
    with vae_precision(pipe) as vae:
        return to_pil(pipe.image_processor, vae_decode(vae, latents))


def to_pil(processor, pixels: torch.Tensor) -> list[Image.Image]:
    """processor.postprocess(pixels, "pil"). On an accelerator the rounding to uint8 happens
    there (quantize): half of fp16's bytes cross to the host and no full-size float arrays are
    made on it, after the sync where a GPU cannot hide host work (~3 ms at 512², 4× at 1024²).
    On the CPU numpy rounds faster than torch: diffusers' own path."""
    if pixels.device.type == "cpu":
        return processor.postprocess(pixels, output_type="pil")
    return uint8_to_pil(quantize(processor, pixels).cpu().numpy())


def quantize(processor, pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 of VAE pixels, the numbers postprocess makes: denormalized in the
    pixels' dtype, ×255 in float32, rounded half to even (IEEE on any device)."""
    pixels = processor._denormalize_conditionally(pixels, None)
    return (pixels.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def uint8_to_pil(images) -> list[Image.Image]:
    if images.shape[-1] == 1:  # as diffusers' numpy_to_pil
        return [Image.fromarray(image.squeeze(), mode="L") for image in images]
    return [Image.fromarray(image) for image in images]


def run_batches(
    request,
    sample: Sampler,
    decode_latents: Callable[[torch.Tensor], list[Image.Image]],
    infotext: Callable[[int], str],
    job: Job,
    on_step,
    preview_weights: Callable[[], torch.Tensor],
    preview_every: int,
    notes: list[str],
    finish: Callable[[list[Image.Image], list[int]], list[Image.Image]] = lambda images, seeds: images,
    while_device_works: Callable[[], None] | None = None,
) -> GenerationResult:
    """Every batch of the request through `sample`; `finish` post-processes decoded images
    (e.g. inpainting's paste-back). `while_device_works`: host-only work `finish` needs, run
    once a batch's steps are queued and before its decode waits for them: on a GPU, where
    the step loop launches graphs and runs ahead, it hides behind those steps (inpainting's
    mask feather) instead of delaying the first one."""
    images: list[GeneratedImage] = []
    seed_batches = request.sampling.image_seeds()
    interrupted = False
    for batch, seeds in enumerate(seed_batches):
        if job.cancelled:
            interrupted = True
            break
        job.take_skip()  # a skip that arrived between batches does not carry over (as A1111)
        report = StepReporter(job, on_step, preview_weights, preview_every, batch, len(seed_batches))
        sampled = sample(seeds, report)
        if while_device_works is not None:
            while_device_works()
        latents, interrupted = close_batch(job, report, sampled, batch, notes)
        for image, seed in zip(finish(decode_latents(latents), seeds), seeds):
            images.append(GeneratedImage(image, seed, infotext(seed)))
        if interrupted:
            break
    return GenerationResult(request.task, images, notes, interrupted)


def close_batch(job: Job, report: StepReporter, latents: torch.Tensor, batch: int, notes: list[str]):
    """(latents to decode, interrupted) of one sampled batch: an interrupted or skipped batch
    keeps its denoised estimate so far (the image "so far"), with a note saying where it stopped."""
    cut_short = report.steps_done < report.total
    interrupted = False
    if job.cancelled:
        interrupted = True
        notes.append(f"Interrupted at step {report.steps_done}/{report.total} of batch {batch + 1}.")
    elif job.take_skip() and cut_short:
        notes.append(f"Skipped at step {report.steps_done}/{report.total} of batch {batch + 1}; the next batch went on.")
    else:
        cut_short = False
    if cut_short and report.latest_x0 is not None:
        latents = report.latest_x0
    return latents, interrupted


def pooled_kwargs(embeddings, n: int) -> dict:
    """SDXL pipelines take encoder 2's pooled output beside the embeddings."""
    if embeddings.pooled is None:
        return {}
    kwargs = {"pooled_prompt_embeds": embeddings.pooled.expand(n, -1)}
    if embeddings.uncond_pooled is not None:
        kwargs["negative_pooled_prompt_embeds"] = embeddings.uncond_pooled.expand(n, -1)
    return kwargs


def prompt_notes(pipe, request) -> list[str]:
    """What the user should know about their prompts: a prompt over 75 tokens is encoded in
    several chunks (nothing is cut), a negative prompt that cannot act."""
    notes = []
    for label, text in (("Prompt", request.prompt), ("Negative prompt", request.negative_prompt)):
        tokenized = tokenize(pipe, parse_prompt(text))
        if len(tokenized.chunks) > 1:
            notes.append(f"{label}: {tokenized.token_count} tokens, encoded as {len(tokenized.chunks)} chunks of 75 "
                         "(as A1111 does; nothing is cut).")
    skip = effective_clip_skip(pipe.text_encoder, request.clip_skip)
    if skip != request.clip_skip:
        notes.append(f"Clip skip {request.clip_skip} is more than this text encoder's layers allow: {skip} was used.")
    if request.negative_prompt and not request.sampling.cfg:
        notes.append("The negative prompt has no effect with CFG off (it only enters the unconditional pass).")
    return notes
