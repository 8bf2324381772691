"""The seed's DDPM / DDIM closed forms, in one place (torch only).

The app samples with diffusers' schedulers (pipelines/schedulers.py); this module is the
reference the tests hold them to and what the Diffusion-lab tab plots and demonstrates.

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
        a = _bcast(self.alpha_bar(t), x0)
        return a.sqrt() * x0, (1 - a).expand_as(x0)  # q(x_t|x_0) = N(√ᾱ_t x_0, (1−ᾱ_t) I)

    def q_sample(self, x0: torch.Tensor, t, noise: torch.Tensor) -> torch.Tensor:
        a = _bcast(self.alpha_bar(t), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise  # x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε

    # --- ε-parameterisation ------------------------------------------------------------------
    def x0_from_eps(self, xt: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
        a = _bcast(self.alpha_bar(t), xt)
        return (xt - (1 - a).sqrt() * eps) / a.sqrt()  # x_0 = (x_t − √(1−ᾱ_t) ε) / √ᾱ_t

    def eps_from_x0(self, xt: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
        a = _bcast(self.alpha_bar(t), xt)
        return (xt - a.sqrt() * x0) / (1 - a).sqrt()  # ε = (x_t − √ᾱ_t x_0) / √(1−ᾱ_t)

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
        return _bcast(c0, x0) * x0 + _bcast(ct, xt) * xt, _bcast(var, xt).expand_as(xt)

    # --- DDIM ----------------------------------------------------------------------------------
    def ddim_sigma(self, t, prev_t, eta: float, final_alpha_cumprod: float = 1.0) -> torch.Tensor:
        """σ_t(η) = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev) = η·√β̃ of the (respaced) step:
        η = 1 is DDPM's posterior σ, η = 0 makes the step deterministic."""
        a, a_prev = self.alpha_bar(t), self.alpha_bar(prev_t, final_alpha_cumprod)
        return eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()

    def ddim_step_mean(self, xt: torch.Tensor, t, prev_t, eps: torch.Tensor, eta: float,
                       final_alpha_cumprod: float = 1.0) -> torch.Tensor:
        """x_prev = √ᾱ_prev x̂_0 + √(1−ᾱ_prev−σ²) ε + σ z; this is the part without σ z."""
        a_prev = self.alpha_bar(prev_t, final_alpha_cumprod)
        sigma = self.ddim_sigma(t, prev_t, eta, final_alpha_cumprod)
        x0 = self.x0_from_eps(xt, t, eps)
        return _bcast(a_prev.sqrt(), xt) * x0 + _bcast((1 - a_prev - sigma**2).sqrt(), xt) * eps


def snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return alphas_cumprod / (1 - alphas_cumprod)  # SNR_t = ᾱ_t / (1 − ᾱ_t): signal² over noise²


def simplified_loss(eps: torch.Tensor, eps_pred: torch.Tensor) -> torch.Tensor:
    """DDPM's simplified objective ‖ε − ε_θ(x_t, t)‖², averaged over elements (= F.mse_loss)."""
    return (eps.float() - eps_pred.float()).pow(2).mean()


def _bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample coefficient (scalar or (n,)) shaped to broadcast over `like` (n, ...)."""
    coef = torch.as_tensor(coef, dtype=DTYPE).to(like.device)
    if coef.ndim:
        coef = coef.view(-1, *([1] * (like.ndim - 1)))
    return coef.to(like.dtype) if like.is_floating_point() else coef
