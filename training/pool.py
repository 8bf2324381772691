"""Training data held on the training device: scenes rendered once, encoded once by the VAE
(posterior mean and log-variance), captions tokenized once. Each step then only gathers rows
and draws z ~ N(μ, σ²), so the GPU never waits on data (the earlier attempt rendered with
PIL on the CPU and was stuck at ~9 steps/s)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.diffusion_math import scale_latents
from pipelines.preprocess import canny_edges, draw_openpose_array
from training import data
from training.common import autocast

CANNY_LOW_RANGE = (50, 150)  # training thresholds vary, high = 2 × low, so any slider setting is familiar


@dataclass
class Pool:
    moments: torch.Tensor         # (N, 8, 16, 16): VAE posterior mean (4) and log-variance (4)
    tokens: torch.Tensor          # (N, 77) CLIP ids
    vae_config: dict              # the VAE's scaling_factor (and shift_factor, if any)
    images: torch.Tensor | None   # (N, 3, 128, 128) uint8, when a stage needs pixels
    controls: torch.Tensor | None  # (N, C, 128, 128) uint8 control maps (C = 1 canny, 3 pose)

    def __len__(self) -> int:
        return len(self.tokens)

    def latents(self, idx: torch.Tensor) -> torch.Tensor:
        """z = scale_latents(μ + σ·ε), as SD samples its training latents."""
        mean, logvar = self.moments[idx].float().chunk(2, dim=1)
        return scale_latents(mean + torch.exp(0.5 * logvar) * torch.randn_like(mean), self.vae_config)

    def control(self, idx: torch.Tensor) -> torch.Tensor:
        """Control maps in [0, 1], 3 channels, as ControlNet pipelines feed them."""
        c = self.controls[idx].float() / 255.0
        return c.expand(-1, 3, -1, -1) if c.shape[1] == 1 else c


def control_maps(kind: str, images_u8: torch.Tensor, scenes: data.Scenes, seed: int) -> torch.Tensor:
    """Control maps from the app's own preprocessors (pipelines/preprocess.py), on the CPU."""
    rng = np.random.default_rng(seed)
    if kind == "canny":
        lows = rng.integers(*CANNY_LOW_RANGE, size=len(images_u8))
        maps = [canny_edges(img, int(lo), int(2 * lo))[None] for img, lo in zip(images_u8.numpy(), lows)]
    elif kind == "pose":
        maps = [draw_openpose_array(k, data.IMAGE_SIZE, data.IMAGE_SIZE).transpose(2, 0, 1)
                for k in scenes.keypoints.numpy()]
    else:
        raise ValueError(f"unknown control kind {kind!r}")
    return torch.from_numpy(np.stack(maps))


@torch.no_grad()
def build_pool(n: int, seed: int, vae, tokenize, device, person_fraction: float = data.PERSON_FRACTION,
               keep_images: bool = False, control: str | None = None, chunk: int = 1024) -> Pool:
    scenes = data.sample_scenes(n, seed, person_fraction=person_fraction)
    tokens = tokenize(scenes.captions).to(device)
    moments, images, controls = [], [], []
    for s in range(0, n, chunk):
        part = scenes.select(torch.arange(s, min(s + chunk, n)))
        pixels = data.render_scenes(part, device)
        with autocast(device):
            dist = vae.encode(pixels * 2 - 1).latent_dist
        moments.append(torch.cat([dist.mean, dist.logvar], dim=1).to(torch.bfloat16 if device.type == "cuda" else torch.float32))
        u8 = data.to_uint8(pixels)
        if keep_images:
            images.append(u8.permute(0, 3, 1, 2).to(device))
        if control:
            controls.append(control_maps(control, u8, part, seed + s).to(device))
    return Pool(moments=torch.cat(moments), tokens=tokens, vae_config=dict(vae.config),
                images=torch.cat(images) if keep_images else None,
                controls=torch.cat(controls) if control else None)
