"""RePaint-style latent inpainting (Lugmayr et al. 2022) on the shared SD modules.

Works with the base UNet of any SD model (no 9-channel inpainting UNet needed): the known
region is re-imposed at every step from the init latent *forward-noised to that step*, the
unknown region comes from the model, and resampling (re-noise, denoise again) lets the two
agree across the mask border.

One step from level t to the next lower level s (s = t − 1 on the respaced schedule):

    ε̂      = ε_θ(x_t, t, c)  [CFG: ε_u + w·(ε_c − ε_u)]
    x̂_0    = (x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t
    σ      = η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_s)                         (η=1: DDPM posterior)
    x_s^pred  = √ᾱ_s·x̂_0 + √(1−ᾱ_s−σ²)·ε̂ + σ·z                     (DDIM family)
    x_s^known = √ᾱ_s·x_0 + √(1−ᾱ_s)·ε                                 (q(x_s|x_0), fresh ε)
    x_s       = m·x_s^pred + (1−m)·x_s^known                          (m = 1: inpaint)

Resampling, from s back up to t:  x_t = √(ᾱ_t/ᾱ_s)·x_s + √(1−ᾱ_t/ᾱ_s)·ε  (q(x_t|x_s)).

Levels are the scheduler's respaced timesteps τ_1 > … > τ_n followed by the clean end
(written t = −1, ᾱ = 1), so the last step returns x̂_0 blended with x_0 itself.

Jump schedule (r resamplings, jump length j): the n steps are cut into blocks of j from the
top (the last block may be shorter); each block is descended r times and climbed back up
r − 1 times in between, so the UNet runs exactly r·n times. r = 1 is plain latent blending.

Every random draw for image k comes from generators[k], so image k of a batch is
reproducible from its own seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .diffusion_math import cfg_combine, ddim_sigma, ddim_step, prediction_to_eps_x0, q_sample
from .core.requests import MASKED_CONTENT
from .noise import to_device_without_sync

CLEAN = -1  # the "timestep" of the clean end of the chain, ᾱ = 1

StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
KnownHook = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class RePaintOutput:
    latents: torch.Tensor  # x at the lowest level reached (x_0 when the run completed)
    denoised: torch.Tensor | None  # blended x̂_0 of the last UNet step (a preview of the result), None if none ran
    steps_done: int  # UNet evaluations run (each with CFG counts once)
    total_steps: int  # r × (number of denoising steps)
    stopped: bool  # should_stop() ended the run early


def respaced_schedule(scheduler_config, steps: int) -> tuple[list[int], torch.Tensor]:
    """The model's training ᾱ (its own betas, e.g. scaled-linear for SD) and the timesteps
    of a `steps`-step sampling run, respaced the way diffusers' DDIM does (the config's
    timestep_spacing and steps_offset, as every other mode of the app)."""
    from diffusers import DDIMScheduler  # a pure function of the config; nothing is shared

    scheduler = DDIMScheduler.from_config(dict(scheduler_config))
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps], scheduler.alphas_cumprod.to(torch.float64)


def jump_schedule(n: int, r: int, j: int) -> list[int]:
    """Positions visited on the level ladder 0 (start) … n (clean): +1 = a denoising step,
    −1 = a re-noising step. Blocks of j steps from the top; each descended r times."""
    if n < 0 or r < 1 or j < 1:
        raise ValueError(f"need n ≥ 0, r ≥ 1, j ≥ 1; got n={n}, r={r}, j={j}")
    path = [0]
    for top in range(0, n, j):
        bottom = min(top + j, n)
        for repeat in range(r):
            path += range(top + 1, bottom + 1)
            if repeat < r - 1:
                path += range(bottom - 1, top - 1, -1)
    return path


def _randn(generators: Sequence[torch.Generator], like: torch.Tensor) -> torch.Tensor:
    """One draw per image from its own (CPU) generator, stacked into the batch."""
    shape = (1, *like.shape[1:])
    noise = torch.cat([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators])
    return to_device_without_sync(noise, like.device)  # no host sync per step


def masked_content_latents(init_latents: torch.Tensor, mask_latent: torch.Tensor, content: str,
                           generators: Sequence[torch.Generator]) -> torch.Tensor:
    """The latent x_0 the start x_T ~ q(x_T | x_0) is noised from, per masked-content mode:
    'original' / 'fill' (the pixel side did the work) keep the init latent; 'latent noise'
    puts N(0, I) inside the mask; 'latent nothing' zeros it. Matters only for strength < 1
    (strength 1 starts from pure noise); the known region always uses the true init latent."""
    if content in ("original", "fill"):
        return init_latents
    m = mask_latent.to(init_latents)
    if content == "latent noise":
        return m * _randn(generators, init_latents) + (1 - m) * init_latents
    if content == "latent nothing":
        return (1 - m) * init_latents
    raise ValueError(f"Unknown masked content {content!r}. Choose one of: {', '.join(MASKED_CONTENT)}.")


@torch.no_grad()
def repaint(
    unet,
    scheduler_config,
    init_latents: torch.Tensor,
    mask_latent: torch.Tensor,
    prompt_embeds: torch.Tensor,
    negative_embeds: torch.Tensor | None,
    steps: int,
    guidance_scale: float,
    eta: float,
    strength: float,
    r: int,
    j: int,
    generators: Sequence[torch.Generator],
    *,
    start_latents: torch.Tensor | None = None,
    unet_extra_channels: torch.Tensor | None = None,
    on_step: StepCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_known: KnownHook | None = None,
    vary_noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    added_cond: dict | None = None,
    added_uncond: dict | None = None,
) -> RePaintOutput:
    """Inpaint `init_latents` (B, C, h, w; scaled VAE latents x_0) where `mask_latent` is 1.

    mask_latent: (B or 1, 1, h, w) in [0, 1] (soft allowed), 1 = generate, 0 = keep.
    prompt_embeds / negative_embeds: (B or 1, L, D) from the pipeline's encode_prompt.
        CFG runs when guidance_scale > 1 (ε_u + w·(ε_c − ε_u), one UNet pass of batch 2B);
        otherwise one pass of batch B and negative_embeds is ignored.
    steps: respaced sampling steps; strength ∈ [0, 1] runs the last int(steps·strength) of
        them from x ~ q(x_τ | start_latents) (strength 1: pure noise). 0 steps: x_0 comes back.
    eta: DDIM η (0 deterministic, 1 the DDPM ancestral step of the RePaint paper).
    r, j: resamplings and jump length; the UNet runs r × (denoising steps) times.
    generators: one CPU torch.Generator per image.
    start_latents: x_0 for the start only (see masked_content_latents); default init_latents.
    unet_extra_channels: (B, k, h, w) appended to the UNet input every call ([mask, masked
        image latent] for a 9-channel inpainting UNet); None for a plain 4-channel UNet.
    on_step(done, total, latents, denoised): after every UNet step (done is 1-based;
        latents already blended; denoised = m·x̂_0 + (1−m)·x_0, for previews).
    should_stop(): checked before every UNet step and re-noising; True ends the run there.
    on_known(t, x_known, noise): the known-region latent and its noise at every step
        (t = the level stepped to, −1 for the clean end); for tests.
    vary_noise: the start noise (the seeds' draw) → the noise to start from (noise.py's
        variation seed); None keeps the draw.
    added_cond / added_uncond: the UNet's added_cond_kwargs (SDXL: text_embeds, time_ids;
        batch 1 or B) for the prompt and the negative prompt; None for SD 1.x/2.x UNets.
    """
    batch = init_latents.shape[0]
    if len(generators) != batch:
        raise ValueError(f"need one generator per image: {batch} images, {len(generators)} generators")
    do_cfg = guidance_scale > 1.0
    if do_cfg and negative_embeds is None:
        raise ValueError("CFG needs negative (unconditional) embeddings: pass those of the negative prompt or of ''.")
    device = init_latents.device
    x0 = init_latents.float()
    m = mask_latent.to(device=device, dtype=torch.float32).expand(batch, 1, *x0.shape[-2:])
    start = x0 if start_latents is None else start_latents.float()

    timesteps, alphas_cumprod = respaced_schedule(scheduler_config, steps)
    n = min(int(steps * strength), steps)
    levels = timesteps[steps - n:] + [CLEAN]  # level i: timestep of rung i; rung n is the clean end
    path = jump_schedule(n, r, j)
    total = r * n

    def abar(t: int) -> float:
        return 1.0 if t == CLEAN else float(alphas_cumprod[t])

    def batch_of(embeds: torch.Tensor) -> torch.Tensor:
        return embeds if embeds.shape[0] == batch else embeds.expand(batch, *embeds.shape[1:])

    # Read once: a diffusers model's .dtype walks all its submodules (~1 ms for SD 1.5's UNet),
    # and the step loop below would otherwise pay that every step.
    dtype = unet.dtype
    cond = batch_of(prompt_embeds).to(device, dtype)
    context = torch.cat([batch_of(negative_embeds).to(device, dtype), cond]) if do_cfg else cond
    extra = None if unet_extra_channels is None else unet_extra_channels.to(device, dtype)
    added = None
    if added_cond is not None:  # batched like the context: [uncond, cond] under CFG
        added = {k: batch_of(v).to(device, dtype) for k, v in added_cond.items()}
        if do_cfg:
            added = {k: torch.cat([batch_of(added_uncond[k]).to(device, dtype), v]) for k, v in added.items()}
    kind = dict(scheduler_config).get("prediction_type", "epsilon")

    def predict(x: torch.Tensor, t: int) -> torch.Tensor:
        model_in = x.to(dtype)
        if extra is not None:
            model_in = torch.cat([model_in, extra], dim=1)
        if do_cfg:
            model_in = torch.cat([model_in, model_in])
        kwargs = {} if added is None else {"added_cond_kwargs": added}
        out = unet(model_in, torch.full((), t, device=device), encoder_hidden_states=context, return_dict=False,
                   **kwargs)[0].float()
        if do_cfg:
            out = cfg_combine(*out.chunk(2), guidance_scale)  # ε_u + w·(ε_c − ε_u)
        return out

    if n == 0:
        return RePaintOutput(x0.clone(), None, 0, 0, False)
    start_noise = _randn(generators, x0)
    if vary_noise is not None:
        start_noise = vary_noise(start_noise)
    if strength >= 1.0:
        x = start_noise  # x_T ~ N(0, I): nothing of the input leaks through √ᾱ_T
    else:
        x = q_sample(start, abar(levels[0]), start_noise)  # x_τ ~ q(x_τ | x_0)

    denoised, done = None, 0
    for here, there in zip(path, path[1:]):
        if should_stop is not None and should_stop():
            return RePaintOutput(x, denoised, done, total, True)
        t, s = levels[here], levels[there]
        a_t, a_s = abar(t), abar(s)
        if there < here:
            # Resample: x_t = √(ᾱ_t/ᾱ_s)·x_s + √(1−ᾱ_t/ᾱ_s)·ε  (here is the lower level s)
            x = q_sample(x, a_s / a_t, _randn(generators, x))
            continue
        eps, x0_hat = prediction_to_eps_x0(predict(x, t), x, a_t, kind)
        sigma = ddim_sigma(a_t, a_s, eta)  # 0 at the clean end
        # x_s^pred = √ᾱ_s·x̂_0 + √(1−ᾱ_s−σ²)·ε̂ + σ·z
        pred = ddim_step(x0_hat, eps, a_s, sigma, _randn(generators, x) if sigma > 0 else None)
        # x_s^known = √ᾱ_s·x_0 + √(1−ᾱ_s)·ε, fresh ε every step
        noise = _randn(generators, x)
        known = q_sample(x0, a_s, noise)
        if on_known is not None:
            on_known(s, known, noise)
        x = m * pred + (1 - m) * known  # x_s = m·x_s^pred + (1−m)·x_s^known
        denoised = m * x0_hat + (1 - m) * x0
        done += 1
        if on_step is not None:
            on_step(done, total, x, denoised)
    return RePaintOutput(x, denoised, done, total, False)
