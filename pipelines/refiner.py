"""SDXL refiner hand-off (the "ensemble of expert denoisers"): the base denoises the high-noise
part of the schedule, t from T down to the switch point, and hands its *latents* (not a
decoded image) to the refiner, which runs the rest. In diffusers terms: the base with
``denoising_end=switch``, the refiner (an SDXL img2img pipeline) with ``denoising_start=switch``
over the same number of steps, so together they walk one schedule once.

The refiner shares the base's VAE (both live in the same latent space); its UNet and its one
text encoder (OpenCLIP bigG) are its own. One refiner is kept loaded at a time.
"""
from __future__ import annotations

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

from .core.errors import ModelLoadError
from .loading import ModelSource, _with_variant, explain, resolve_source
from .preview import DenoisedTap
from .core.schedulers import build_scheduler
from .noise import without_host_sync

REFINER_WHAT_TO_PASS = ("Pass an SDXL refiner as a diffusers folder (containing model_index.json) or a Hub id "
                        "such as stabilityai/stable-diffusion-xl-refiner-1.0.")


def load_refiner(source_text: str, base, device, dtype, allow_download: bool, variant: str | None = None):
    if len(source_text) > 4096:
        raise ModelLoadError("The refiner name is too long. " + REFINER_WHAT_TO_PASS)
    source = resolve_source(source_text, "model_index.json", "an SDXL refiner", REFINER_WHAT_TO_PASS)
    if source.kind == "single_file":
        raise ModelLoadError(f"{source.name!r} is a single file: the refiner loads from a diffusers folder or a "
                             "Hub id. " + REFINER_WHAT_TO_PASS)
    local = source.kind == "folder" or not allow_download
    try:
        refiner = _with_variant(lambda **v: StableDiffusionXLImg2ImgPipeline.from_pretrained(
            source.location, vae=base.vae, dtype=dtype, local_files_only=local, add_watermarker=False, **v), variant)
    except Exception as error:
        raise explain(error, source, allow_download, None, "an SDXL refiner") from error
    check_refiner(refiner, base, source)
    refiner.set_progress_bar_config(disable=True)
    for name in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(refiner, name, None)
        if module is not None:
            module.to(device)
    return refiner


def check_refiner(refiner, base, source: ModelSource) -> None:
    unet = refiner.unet
    if getattr(unet.config, "addition_embed_type", None) != "text_time":
        raise ModelLoadError(f"{source.name!r} is not an SDXL model, so it cannot refine SDXL latents.")
    if unet.config.in_channels != base.unet.config.in_channels:
        raise ModelLoadError(f"{source.name!r} takes {unet.config.in_channels} input channels; a refiner takes "
                             f"{base.unet.config.in_channels}, as the base.")


def refiner_prompt_embeds(refiner, request) -> dict:
    """The prompts through the refiner's one encoder (OpenCLIP bigG) with the app's A1111
    encoding, as the base's: LoRA tags out, emphasis, BREAK and 75-token chunks, clip skip.
    (diffusers' own encoding would read "<lora:x:1>" and "(red:1.2)" as words.)"""
    from .prompt_encoding import encode_prompts

    cfg = request.sampling.cfg
    e = encode_prompts(refiner, request.prompt, request.negative_prompt, request.clip_skip, cfg)
    embeds = {"prompt_embeds": e.cond, "pooled_prompt_embeds": e.pooled}
    if cfg:
        uncond, uncond_pooled = e.uncond, e.uncond_pooled
        if not request.negative_prompt and refiner.config.get("force_zeros_for_empty_prompt", False):
            uncond, uncond_pooled = torch.zeros_like(uncond), torch.zeros_like(uncond_pooled)  # as diffusers does
        embeds.update(negative_prompt_embeds=uncond, negative_pooled_prompt_embeds=uncond_pooled)
    return embeds


def refined_sampler(base_sample_with, refiner, request, scheduler_config: dict):
    """A sampler that runs the base to the switch point, then the refiner from it.
    base_sample_with(extra_call_kwargs) → the base's sampler with those extra arguments."""
    s = request.sampling
    switch = request.refiner_switch
    base_sample = base_sample_with({"denoising_end": switch} if switch < 1.0 else {})
    refiner_config = dict(refiner.scheduler.config)

    def sample(seeds: list[int], report) -> torch.Tensor:
        stopped = [False]

        def watched(*args):  # an interrupt during the base must not start the refiner
            stopped[0] = report(*args)
            return stopped[0]

        latents = base_sample(seeds, watched)
        if switch >= 1.0 or stopped[0]:
            return latents
        scheduler = without_host_sync(build_scheduler(s.scheduler, refiner_config))
        tap = DenoisedTap(scheduler)
        refiner.scheduler = scheduler

        def callback(p, index, timestep, tensors):
            if report(index, p.num_timesteps, tensors["latents"], tap.latest):
                p._interrupt = True
            return {}

        n = len(seeds)
        prompts = refiner_prompt_embeds(refiner, request)
        return refiner(
            **{k: v.repeat(n, *[1] * (v.dim() - 1)) for k, v in prompts.items()},
            image=latents,
            num_inference_steps=s.steps,
            denoising_start=switch,
            guidance_scale=s.guidance_scale,
            eta=s.eta,
            generator=[torch.Generator("cpu").manual_seed(seed + 1) for seed in seeds],
            output_type="latent",
            callback_on_step_end=callback,
        ).images

    return sample
