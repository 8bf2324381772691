"""Live preview during sampling: a cheap latent → RGB decode and a tap on the scheduler's
prediction of x̂_0 (a denoised guess looks like the final image long before x_t does).

The cheap decode is a per-pixel affine map latent(4) → RGB(3), fitted once per VAE by least
squares on a handful of synthetic images it encodes. It works for any VAE (SD 1.5, our demo
model) without shipping model-specific constants, and costs a 4×3 matmul per preview.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from PIL import Image

from .diffusion_math import vae_encode


def _calibration_images(size: int = 64) -> torch.Tensor:
    """Solid colours, gradients and colour blocks in [-1, 1]: enough to pin an affine map."""
    colours = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1], [1, 1, 1], [0, 0, 0], [0.5, 0.5, 0.5]],
        dtype=torch.float32,
    )
    solids = colours[:, :, None, None].expand(-1, -1, size, size)
    ramp = torch.linspace(0, 1, size)
    gradient = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size), 1 - ramp[None, :].expand(size, size)])
    generator = torch.Generator().manual_seed(0)
    blocks = F.interpolate(torch.rand(3, 3, 4, 4, generator=generator), size=(size, size), mode="nearest")
    images = torch.cat([solids, gradient[None], blocks])
    return images * 2 - 1


@torch.no_grad()
def fit_latent_to_rgb(vae) -> torch.Tensor:
    """(5, 3) matrix W such that [z, 1] @ W ≈ RGB in [-1, 1], z being scaled latents."""
    images = _calibration_images().to(vae.device, vae.dtype)
    latents = vae_encode(vae, images)
    factor = images.shape[-1] // latents.shape[-1]
    targets = F.avg_pool2d(images.float(), factor)
    z = latents.float().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    rgb = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([z, torch.ones(len(z), 1, device=z.device)], dim=1)
    return torch.linalg.lstsq(design.cpu(), rgb.cpu()).solution


def latent_to_image(latent: torch.Tensor, weights: torch.Tensor) -> Image.Image:
    """One latent (C, h, w) → a small RGB preview (h×w pixels, upscaled ×8 nearest)."""
    z = latent.detach().float().cpu().permute(1, 2, 0)
    rgb = torch.cat([z, torch.ones(*z.shape[:2], 1)], dim=-1) @ weights
    array = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(array)
    return image.resize((image.width * 8, image.height * 8), Image.NEAREST)


class PreviewInFlight:
    """One preview's latent on its way from a GPU: copied to pinned host memory behind the
    queued steps, so the step loop never waits for it (a plain .cpu() would stop the host
    running ahead of the GPU every few steps); the image is made once the copy has landed."""

    def __init__(self, latent: torch.Tensor):
        self.host = torch.empty(latent.shape, dtype=torch.float32, pin_memory=True)
        self.host.copy_(latent.detach().float(), non_blocking=True)  # on the latent's GPU's current stream
        self.landed = torch.cuda.Event()
        self.landed.record(torch.cuda.current_stream(latent.device))

    def ready(self) -> bool:
        return self.landed.query()


class DenoisedTap:
    """Wraps a (per-request, never shared) scheduler's step() to keep its latest x̂_0.

    Schedulers that report pred_original_sample (Euler, DDIM, DDPM, Heun, LMS…) give the
    denoised guess; for the others the preview falls back to x_t."""

    def __init__(self, scheduler):
        self.latest: torch.Tensor | None = None
        original = scheduler.step

        # wraps(): pipelines inspect step()'s signature to decide whether to pass eta/generator.
        @functools.wraps(original)
        def step(*args, return_dict: bool = True, **kwargs):
            out = original(*args, return_dict=True, **kwargs)
            self.latest = getattr(out, "pred_original_sample", None)
            return out if return_dict else (out.prev_sample,)

        scheduler.step = step
