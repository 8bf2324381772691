"""RePaint inpainting as a sampler for the manager's generation loop (see generation.py):
the init image encoded once, the prompt encoded once, then repaint.py per batch."""
from __future__ import annotations

import torch

from .diffusion_math import vae_encode
from .families import unet_conditioning, vae_precision
from .masks import InpaintPlan
from .noise import NoiseSpec
from .repaint import masked_content_latents, repaint


@torch.no_grad()
def encode_image(pipe, image) -> torch.Tensor:
    """Scaled VAE latents of a PIL image (the distribution's mean: deterministic)."""
    with vae_precision(pipe) as vae:
        pixels = pipe.image_processor.preprocess(image).to(vae.device, vae.dtype)
        return vae_encode(vae, pixels)


@torch.no_grad()
def repaint_sampler(pipe, request, plan: InpaintPlan, scheduler_config: dict):
    s = request.sampling
    device = pipe.unet.device
    # The mask's copy first: a host→device copy waits for the queued work, which here is none
    # yet (after the encode it would wait for the encode while the device then sits idle).
    mask = torch.from_numpy(plan.latent_mask(pipe.vae_scale_factor))[None, None].to(device)
    init = encode_image(pipe, plan.init_image).float()
    cond, uncond, added, added_uncond = unet_conditioning(pipe, request, device, s.cfg)

    def sample(seeds: list[int], report) -> torch.Tensor:
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        batch = init.expand(len(seeds), *init.shape[1:])
        start = masked_content_latents(batch, mask, request.masked_content, generators)
        stop = [False]

        def on_step(done, total, latents, denoised):
            stop[0] = report(done - 1, total, latents, denoised)

        return repaint(pipe.unet, scheduler_config, batch, mask, cond, uncond, s.steps, s.guidance_scale, s.eta,
                       request.strength, request.repaint_r, request.repaint_j, generators, start_latents=start,
                       on_step=on_step, should_stop=lambda: stop[0], added_cond=added,
                       added_uncond=added_uncond, vary_noise=NoiseSpec.of(request, seeds).vary).latents

    return sample
