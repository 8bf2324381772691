"""The seed's diffusion maths, written once (torch only): the app's code and the reference.

The formulas every part of the app applies itself live here as small functions, used by
RePaint (repaint.py), the Diffusion lab (lab.py), generation (generation.py, preview.py,
inpainting.py) and the training stages (training/):

    q_sample        x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε                 forward noising q(x_t | x_0)
    x0_from_eps     x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t             (and prediction_to_eps_x0 for v / x_0 models)
    ddim_sigma      σ = η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_s)          η = 1: DDPM's posterior σ
    ddim_step       x_s = √ᾱ_s x̂_0 + √(1−ᾱ_s−σ²) ε̂ + σ z         the DDIM/DDPM update
    cfg_combine     ε = ε_u + s·(ε_c − ε_u)                       classifier-free guidance
    scale_latents   z = (raw − shift)·scaling                     VAE latents as the UNet sees them
    unscale_latents raw = z / scaling + shift                     (shift only when the VAE config has one)

ᾱ may be a Python float (RePaint: exact float64 scalars) or a tensor, scalar or one value per
sample; tensors are shaped to broadcast over the batch and cast to its dtype. Generation's own
samplers are diffusers' schedulers (pipelines/core/schedulers.py); Schedule below is the float64
reference the tests hold them (and these functions) to, and what the lab plots.

Index convention: diffusers' timestep index t = 0 … T−1 is the paper's step t+1 = 1 … T, so
ᾱ[0] = 1 − β_1 (one step of noise, not zero). "The previous step" of t is t−1, or any earlier
index when sampling on a respaced (strided) subset; before index 0 lies x_0 itself, ᾱ = 1.
Everything is computed in float64 so it can serve as ground truth for float32 schedulers.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPE = torch.float64


def make_betas(beta_schedule: str, beta_start: float, beta_end: float, num_train_timesteps: int) -> torch.Tensor:
    """β_1 … β_T of a training schedule, as diffusers names them."""
    s = torch.linspace(0.0, 1.0, num_train_timesteps, dtype=DTYPE)
    if beta_schedule == "linear":
        # β_t = β_start + (β_end − β_start)·s, s = (t−1)/(T−1)                    (DDPM, pixels)
        return beta_start + (beta_end - beta_start) * s
    if beta_schedule == "scaled_linear":
        # β_t = (√β_start + (√β_end − √β_start)·s)²: linear in √β, then squared   (LDM / SD)
        a, b = beta_start**0.5, beta_end**0.5
        return (a + (b - a) * s) ** 2
    raise ValueError(f"beta_schedule {beta_schedule!r}: only 'linear' and 'scaled_linear' have a closed form here")


# ----------------------------------------------------------------- the formulas the app uses
def _coef(value, like: torch.Tensor):
    """ᾱ (or σ) shaped for `like` (n, …): a float stays a float; a tensor, scalar or (n,), goes to
    like's device in at least float32 (1 − ᾱ for ᾱ ≈ 1 loses its digits in half precision),
    viewed (n, 1, …)."""
    if not isinstance(value, torch.Tensor):
        return value
    value = value.to(like.device, torch.promote_types(value.dtype, torch.float32))
    return value.view(-1, *([1] * (like.ndim - 1))) if value.ndim else value


def _as(coef, like: torch.Tensor):
    """A coefficient computed in full precision, in like's dtype: results keep the data's dtype."""
    return coef.to(like.dtype) if isinstance(coef, torch.Tensor) and like.is_floating_point() else coef


def q_sample(x0: torch.Tensor, alpha_bar, noise: torch.Tensor) -> torch.Tensor:
    """Forward noising: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε. With ᾱ = ᾱ_t/ᾱ_s and x_s in place of x_0
    it is q(x_t | x_s), RePaint's re-noising step."""
    a = _coef(alpha_bar, x0)
    return _as(a ** 0.5, x0) * x0 + _as((1 - a) ** 0.5, x0) * noise


def x0_from_eps(xt: torch.Tensor, alpha_bar, eps: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t: the clean sample an ε-prediction implies."""
    a = _coef(alpha_bar, xt)
    return (xt - _as((1 - a) ** 0.5, xt) * eps) / _as(a ** 0.5, xt)


def eps_from_x0(xt: torch.Tensor, alpha_bar, x0: torch.Tensor) -> torch.Tensor:
    """ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t)."""
    a = _coef(alpha_bar, xt)
    return (xt - _as(a ** 0.5, xt) * x0) / _as((1 - a) ** 0.5, xt)


def prediction_to_eps_x0(output: torch.Tensor, xt: torch.Tensor, alpha_bar, kind: str):
    """ε̂ and x̂_0 from a model output, whatever the model was trained to predict."""
    if kind == "epsilon":
        return output, x0_from_eps(xt, alpha_bar, output)
    a = _coef(alpha_bar, xt)
    sa, sb = _as(a ** 0.5, xt), _as((1 - a) ** 0.5, xt)
    if kind == "v_prediction":  # v = √ᾱ·ε − √(1−ᾱ)·x_0
        return sa * output + sb * xt, sa * xt - sb * output
    if kind == "sample":
        return (xt - sa * output) / sb, output
    raise ValueError(f"Unsupported prediction_type {kind!r}")


def ddim_sigma(alpha_bar_t, alpha_bar_prev, eta: float):
    """σ_t(η) = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev) = η·√β̃ of the (respaced) step:
    η = 1 is DDPM's posterior σ, η = 0 makes the step deterministic; 0 when ᾱ_prev = 1 (x_0)."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar_t)) ** 0.5 * (1 - alpha_bar_t / alpha_bar_prev) ** 0.5


def ddim_step(x0_hat: torch.Tensor, eps: torch.Tensor, alpha_bar_prev, sigma, noise: torch.Tensor | None = None):
    """The DDIM/DDPM update x_prev = √ᾱ_prev x̂_0 + √(1−ᾱ_prev−σ²) ε̂ + σ z (z = noise; None: the mean)."""
    a, s = _coef(alpha_bar_prev, x0_hat), _coef(sigma, x0_hat)
    direction = 1 - a - s ** 2
    direction = max(direction, 0.0) if not isinstance(direction, torch.Tensor) else direction.clamp(min=0)
    out = _as(a ** 0.5, x0_hat) * x0_hat + _as(direction ** 0.5, x0_hat) * eps
    return out if noise is None else out + _as(s, x0_hat) * noise


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale) -> torch.Tensor:
    """Classifier-free guidance: ε = ε_u + s·(ε_c − ε_u) (s = 1: the conditional ε alone)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def _vae_factors(config) -> tuple[float, float | None]:
    get = config.get if hasattr(config, "get") else lambda key, default=None: getattr(config, key, default)
    return float(get("scaling_factor", 1.0) or 1.0), get("shift_factor", None)


def scale_latents(raw: torch.Tensor, vae_config) -> torch.Tensor:
    """What the UNet sees: z = (raw − shift_factor)·scaling_factor (shift only when the config has one)."""
    scaling, shift = _vae_factors(vae_config)
    return (raw if shift is None else raw - shift) * scaling


def unscale_latents(latents: torch.Tensor, vae_config) -> torch.Tensor:
    """What the VAE decodes: raw = z / scaling_factor + shift_factor, the inverse of scale_latents."""
    scaling, shift = _vae_factors(vae_config)
    raw = latents / scaling
    return raw if shift is None else raw + shift


def vae_encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latents of pixels in [−1, 1] (the posterior mean: deterministic)."""
    return scale_latents(vae.encode(pixels).latent_dist.mean, vae.config)


def vae_decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Pixels in about [−1, 1] of scaled latents (cast to the VAE's dtype)."""
    return vae.decode(unscale_latents(latents.to(dtype=vae.dtype), vae.config), return_dict=False)[0]


@dataclass(frozen=True)
class Schedule:
    betas: torch.Tensor  # β_t, float64, index 0 … T−1

    @classmethod
    def from_config(cls, config) -> "Schedule":
        """From a scheduler config (a diffusers config or a plain dict)."""
        c = dict(config)
        return cls(make_betas(c.get("beta_schedule", "linear"), c.get("beta_start", 0.0001),
                              c.get("beta_end", 0.02), c.get("num_train_timesteps", 1000)))

    @property
    def num_train_timesteps(self) -> int:
        return len(self.betas)

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas  # α_t = 1 − β_t

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)  # ᾱ_t = ∏_{s≤t} α_s

    @property
    def snr(self) -> torch.Tensor:
        return snr(self.alphas_cumprod)

    def alpha_bar(self, t, final_alpha_cumprod: float = 1.0) -> torch.Tensor:
        """ᾱ at index t (int or tensor); index < 0 means x_0, ᾱ = final_alpha_cumprod (1 in
        DDPM; diffusers' DDIM with set_alpha_to_one=False, as SD ships, uses ᾱ[0] instead)."""
        t = torch.as_tensor(t)
        ac = self.alphas_cumprod[t.clamp(min=0)]
        return torch.where(t >= 0, ac, torch.as_tensor(final_alpha_cumprod, dtype=DTYPE))

    # --- the forward process q(x_t | x_0) ----------------------------------------------------
    def q_mean_var(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        a = _coef(self.alpha_bar(t), x0)
        return _as(a.sqrt(), x0) * x0, _as(1 - a, x0).expand_as(x0)  # q(x_t|x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I)

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        return q_sample(x0, self.alpha_bar(t), noise)  # x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε

    # --- ε-parameterisation ------------------------------------------------------------------
    def x0_from_eps(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        return x0_from_eps(xt, self.alpha_bar(t), eps)  # x_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t

    def eps_from_x0(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        return eps_from_x0(xt, self.alpha_bar(t), x0)  # ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t)

    # --- the posterior q(x_{t−1} | x_t, x_0) ---------------------------------------------------
    def posterior(self, x0: torch.Tensor, xt: torch.Tensor, t, prev_t=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean μ̃_t and variance β̃_t. With prev_t (respaced sampling, prev_t < t−1) the step's
        own β is 1 − ᾱ_t/ᾱ_prev and ᾱ_{t−1} becomes ᾱ_prev; index −1 is x_0 (ᾱ = 1, β̃ = 0)."""
        prev_t = torch.as_tensor(t) - 1 if prev_t is None else prev_t
        a, a_prev = self.alpha_bar(t), self.alpha_bar(prev_t)
        beta = 1 - a / a_prev  # β_t (= 1 − α_t for consecutive steps)
        c0 = a_prev.sqrt() * beta / (1 - a)  # μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x_0
        ct = (1 - beta).sqrt() * (1 - a_prev) / (1 - a)  # + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t
        var = (1 - a_prev) / (1 - a) * beta  # β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t
        c0, ct, var = (_as(_coef(c, xt), xt) for c in (c0, ct, var))
        return c0 * x0 + ct * xt, var.expand_as(xt)

    # --- DDIM ----------------------------------------------------------------------------------
    def ddim_sigma(self, t, prev_t, eta: float, final_alpha_cumprod: float = 1.0) -> torch.Tensor:
        """σ_t(η) of the step t → prev_t (see ddim_sigma)."""
        return ddim_sigma(self.alpha_bar(t), self.alpha_bar(prev_t, final_alpha_cumprod), eta)

    def ddim_step_mean(self, xt: torch.Tensor, t, prev_t, eps: torch.Tensor, eta: float,
                       final_alpha_cumprod: float = 1.0) -> torch.Tensor:
        """x_prev = √ᾱ_prev x̂_0 + √(1−ᾱ_prev−σ²) ε + σ z; this is the part without σ z."""
        a_prev = self.alpha_bar(prev_t, final_alpha_cumprod)
        sigma = self.ddim_sigma(t, prev_t, eta, final_alpha_cumprod)
        return ddim_step(self.x0_from_eps(xt, t, eps), eps, a_prev, sigma)


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod / (1 - alphas_cumprod)  # SNR_t = ᾱ_t / (1 − ᾱ_t): signal² over noise²


def simplified_loss(eps: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """DDPM's simplified objective ‖ε − ε_θ(x_t, t)‖², averaged over elements (= F.mse_loss)."""
    return (eps.float() - eps_pred.float()).pow(2).mean()

