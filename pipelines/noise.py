"""The initial noise of every image, in one place: the seed's draw, A1111's variation seed
(slerp towards a second seed's noise) and "resize seed from width/height".

Image k's noise comes from its own CPU generator seeded with its seed, drawn exactly as
diffusers draws it (`torch.randn((1, C, h, w), generator, dtype)`), so a request without a
variation gives the same image as before and on any device. The generator then goes on to
the sampler (ancestral samplers draw their per-step noise from it, as A1111's do from the
main seed), in the same state as if the pipeline had drawn the noise itself.

    noise = slerp(s, n_seed, n_subseed)                 s = subseed_strength
    slerp(s, a, b) = sin((1−s)Ω)/sin Ω · a + sin(sΩ)/sin Ω · b,   cos Ω = â·b̂

slerp keeps the noise on the shell where Gaussian noise lives (|n| ≈ √dim); a linear mix
would shrink it (|½a + ½b| ≈ 0.71·√dim) and wash the image out. s = 0 returns a itself and
s = 1 returns b itself, bit for bit.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Sequence

import torch

LATENT_FACTOR = 8  # the VAE's downsampling: latents are (C, H/8, W/8)


def to_device_without_sync(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor (CPU-drawn noise, a control map) onto the sampling device. A copy to a GPU
    from ordinary (pageable) memory first waits for every kernel queued there, so a step loop
    that draws noise each step would stop running ahead of the GPU at every step; from pinned
    memory the copy just queues behind them (the pinned block is kept until the copy is done)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def _step_noise(shape, generator=None, device=None, dtype=None, layout=None):
    """diffusers' randn_tensor for schedulers: the same draws from the same generators, and
    CPU-drawn noise handed to a GPU without a host sync (to_device_without_sync)."""
    from diffusers.utils.torch_utils import randn_tensor

    device = torch.device(device) if isinstance(device, str) else device
    first = generator[0] if isinstance(generator, list) and generator else generator
    if device is None or device.type != "cuda" or first is None or first.device.type != "cpu":
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype, layout=layout)
    cpu = randn_tensor(shape, generator=generator, device=torch.device("cpu"), dtype=dtype, layout=layout)
    return to_device_without_sync(cpu, device)


def without_host_sync(scheduler):
    """The scheduler, its per-step noise (Euler a — the default —, DPM2 a, DDPM, the SDE
    samplers, DDIM with η > 0) drawn by _step_noise: diffusers' scheduler modules call their
    module's randn_tensor, so that name is rebound once per module."""
    module = sys.modules.get(type(scheduler).__module__)
    if module is not None and getattr(module, "randn_tensor", _step_noise) is not _step_noise:
        module.randn_tensor = _step_noise
    return scheduler


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from low (strength 0) to high (strength 1), over the whole
    tensor taken as one vector. Nearly parallel vectors fall back to a linear mix."""
    if strength <= 0:
        return low
    if strength >= 1:
        return high
    a, b = low.double().flatten(), high.double().flatten()
    dot = torch.clamp((a / a.norm()) @ (b / b.norm()), -1.0, 1.0)
    if dot > 0.9995:
        mixed = (1 - strength) * a + strength * b
    else:
        omega = torch.acos(dot)
        mixed = (torch.sin((1 - strength) * omega) * a + torch.sin(strength * omega) * b) / torch.sin(omega)
    return mixed.reshape(low.shape).to(low.dtype)


def seed_noise(seed: int, shape: Sequence[int], dtype: torch.dtype, generator: torch.Generator | None = None) -> torch.Tensor:
    """(1, *shape) standard normal noise of one seed, as diffusers draws it on a CPU generator."""
    generator = generator or torch.Generator("cpu").manual_seed(seed)
    return torch.randn((1, *shape), generator=generator, dtype=dtype)


@dataclass(frozen=True)
class NoiseSpec:
    """What shapes the noise of one batch: seeds, variation seeds and strength, seed resize."""

    seeds: tuple[int, ...]
    subseeds: tuple[int, ...] = ()
    strength: float = 0.0
    resize_from: tuple[int, int] | None = None  # (width, height) in pixels

    @classmethod
    def of(cls, request, seeds: Sequence[int]) -> "NoiseSpec":
        """From a request and one batch's seeds (subseeds follow seeds: +k each)."""
        seed = request.sampling.seed
        subseeds = [(s - seed + request.subseed) % 2**32 for s in seeds] if request.subseed >= 0 else []
        return cls(tuple(seeds), tuple(subseeds), request.subseed_strength if subseeds else 0.0, request.seed_resize)

    @property
    def varies(self) -> bool:
        return self.strength > 0 or self.resize_from is not None

    def vary(self, noise: torch.Tensor) -> torch.Tensor:
        """The batch's plain seed noise (B, C, h, w) → the noise this spec asks for. Identity
        (the same tensor) when nothing varies."""
        if not self.varies:
            return noise
        if len(self.seeds) != noise.shape[0]:
            raise ValueError(f"{noise.shape[0]} noise images for {len(self.seeds)} seeds")
        return torch.cat([self._vary_one(i, noise[i : i + 1]) for i in range(len(self.seeds))])

    def _vary_one(self, i: int, plain: torch.Tensor) -> torch.Tensor:
        dtype, channels = plain.dtype, plain.shape[1]
        base = plain.cpu()
        if self.resize_from is not None:
            w, h = self.resize_from
            base = seed_noise(self.seeds[i], (channels, max(1, h // LATENT_FACTOR), max(1, w // LATENT_FACTOR)), dtype)
        if self.strength > 0:
            base = slerp(self.strength, base, seed_noise(self.subseeds[i], base.shape[1:], dtype))
        if self.resize_from is not None:
            base = paste_centred(base, plain.cpu())
        return base.to(plain.device)


def paste_centred(small: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A1111's seed resize: the noise drawn at the old size, centred on the new size's noise
    (cropped where it is larger). Keeps a composition found at one size at another."""
    out = target.clone()
    (sh, sw), (th, tw) = small.shape[-2:], target.shape[-2:]
    dy, dx = (th - sh) // 2, (tw - sw) // 2
    h, w = min(sh, th), min(sw, tw)
    ty, tx = max(dy, 0), max(dx, 0)
    sy, sx = max(-dy, 0), max(-dx, 0)
    out[..., ty : ty + h, tx : tx + w] = small[..., sy : sy + h, sx : sx + w]
    return out


def initial_latents(spec: NoiseSpec, shape: Sequence[int], dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Generator]]:
    """The batch's starting noise (B, *shape) for txt2img, and one generator per image in
    the state it would be in had the pipeline drawn the seed's noise itself."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in spec.seeds]
    plain = torch.cat([seed_noise(seed, shape, dtype, g) for seed, g in zip(spec.seeds, generators)])
    return spec.vary(plain), generators


class VariedAddNoise:
    """Makes a scheduler's add_noise use the varied noise: img2img and inpainting pipelines
    draw the seed's noise themselves (after the VAE's own draw) and hand it to add_noise,
    which is linear in the noise, so varying it there is varying the initial noise. Set on
    the per-batch scheduler only (schedulers are built per batch), never on a shared one."""

    def __init__(self, scheduler, spec: NoiseSpec):
        self.add_noise, self.spec = scheduler.add_noise, spec

    def __call__(self, original, noise, timesteps):
        if noise.shape[0] == len(self.spec.seeds):
            noise = self.spec.vary(noise)
        return self.add_noise(original, noise, timesteps)

    @classmethod
    def install(cls, scheduler, spec: NoiseSpec) -> None:
        if spec.varies:
            scheduler.add_noise = cls(scheduler, spec)


def sampler_noise(pipe, scheduler, call_kwargs: dict, spec: NoiseSpec, width: int, height: int):
    """(extra pipeline arguments, generators) giving a diffusers pipeline this batch's noise:
    txt2img gets `latents=`; inpainting from pure noise (strength 1) too when the noise varies;
    img2img and partial inpainting vary the noise their scheduler adds (VariedAddNoise)."""
    from_noise = "strength" not in call_kwargs or (
        "mask_image" in call_kwargs and call_kwargs["strength"] >= 1.0 and spec.varies)
    if not from_noise:
        VariedAddNoise.install(scheduler, spec)
        return {}, [torch.Generator("cpu").manual_seed(seed) for seed in spec.seeds]
    factor = pipe.vae_scale_factor
    shape = (pipe.vae.config.latent_channels, height // factor, width // factor)
    # diffusers draws in the prompt embeddings' dtype: the text encoder's
    dtype = pipe.text_encoder.dtype if getattr(pipe, "text_encoder", None) is not None else pipe.unet.dtype
    latents, generators = initial_latents(spec, shape, dtype)
    return {"latents": latents}, generators
