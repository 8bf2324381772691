"""The seed's DDPM / DDIM math, held against diffusers' own schedulers.

Schedulers are configured exactly as SD 1.5 ships them (assets/configs/sd15/scheduler:
1000 steps, β 0.00085 → 0.012, scaled-linear, clip_sample off, set_alpha_to_one off,
steps_offset 1), and with a linear schedule of the same endpoints. The closed forms come from
pipelines/diffusion_math.py, computed in float64. The last section shows that the app's own code
paths (RePaint, the lab, generation's decode, training) apply these very functions: their
outputs equal the functions' bit for bit.

Statistical checks use a fixed seed, but their tolerances come from the sampling error
(Z standard errors), and where it matters the test also asserts that the tolerance is
narrower than the gap to the nearest plausible wrong formula, so a bug cannot hide in it.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

from pipelines.diffusion_math import (
    Schedule, cfg_combine, ddim_sigma, ddim_step, q_sample, scale_latents, simplified_loss, snr, unscale_latents,
    vae_encode, x0_from_eps,
)
from tiny_sd import ROOT, SD_SCHEDULER_CONFIG

_SD15_JSON = json.loads((ROOT / "assets/configs/sd15/scheduler/scheduler_config.json").read_text())
SD_CONFIG = {k: v for k, v in _SD15_JSON.items() if not k.startswith("_")}
LINEAR_CONFIG = dict(SD_CONFIG, beta_schedule="linear")
CONFIGS = {"scaled_linear": SD_CONFIG, "linear": LINEAR_CONFIG}
Z = 5.0  # |z| < 5: a false alarm in ~1e-6 per comparison, a few hundred comparisons per test
TIMESTEPS = (0, 1, 10, 100, 250, 500, 750, 999)


@pytest.fixture(params=list(CONFIGS))
def config(request) -> dict:
    return CONFIGS[request.param]


def latent_like(n: int, seed: int = 0) -> torch.Tensor:
    """Values like SD latents (std ≈ 1), several beyond ±1, in float64."""
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.2


def test_sd_config_is_sd15():
    assert SD_CONFIG["num_train_timesteps"] == 1000 and SD_CONFIG["beta_schedule"] == "scaled_linear"
    assert (SD_CONFIG["beta_start"], SD_CONFIG["beta_end"]) == (0.00085, 0.012)
    assert SD_CONFIG["clip_sample"] is False
    assert {k: SD_CONFIG[k] for k in SD_SCHEDULER_CONFIG} == SD_SCHEDULER_CONFIG  # the tests' tiny model agrees


def test_schedule_matches_every_diffusers_scheduler(config):
    """β_t and ᾱ_t of the closed form = diffusers' (float32 cumprod: rel. error ≲ 1e-5; an off-by-one
    in t would be off by β_t/1 ≥ 8.5e-4 relative, so rtol 1e-4 tells them apart)."""
    s = Schedule.from_config(config)
    for cls in (DDPMScheduler, DDIMScheduler, PNDMScheduler):
        sched = cls.from_config(config)
        torch.testing.assert_close(sched.betas.double(), s.betas, rtol=1e-5, atol=0)
        torch.testing.assert_close(sched.alphas_cumprod.double(), s.alphas_cumprod, rtol=1e-4, atol=0)
    ac = s.alphas_cumprod
    assert torch.all(ac[1:] < ac[:-1]) and 0 < ac[-1] < ac[0] < 1
    assert abs(ac[0] - (1 - config["beta_start"])) < 1e-12  # index 0 is already one step of noise


# ---- forward process q(x_t | x_0) --------------------------------------------------------------

def test_add_noise_is_the_closed_form(config):
    """diffusers' add_noise(x_0, ε, t) = √ᾱ_t x_0 + √(1−ᾱ_t) ε, per sample with mixed t."""
    s, sched = Schedule.from_config(config), DDPMScheduler.from_config(config)
    t = torch.tensor(TIMESTEPS)
    x0 = latent_like(len(t) * 8).view(len(t), 8)
    eps = latent_like(len(t) * 8, seed=1).view(len(t), 8) / 1.2
    got = sched.add_noise(x0.float(), eps.float(), t).double()
    torch.testing.assert_close(got, s.q_sample(x0, t, eps), rtol=0, atol=2e-6)


def test_forward_noising_statistics(config):
    """Many draws of x_t given one x_0 (diffusers' add_noise, Gaussian ε): empirical mean per element
    within Z standard errors of √ᾱ_t x_0, empirical variance within Z SE of (1−ᾱ_t)."""
    s, sched = Schedule.from_config(config), DDPMScheduler.from_config(config)
    n, x0 = 20000, torch.linspace(-2.0, 2.0, 16, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    for t in TIMESTEPS:
        eps = torch.randn(n, 16, generator=g)
        xt = sched.add_noise(x0.float().expand(n, 16), eps, torch.full((n,), t)).double()
        mean, var = s.q_mean_var(x0, t)
        se_mean = var.sqrt() / math.sqrt(n)
        se_var = var * math.sqrt(2 / (n - 1))  # SE of a Gaussian sample variance
        assert torch.all((xt.mean(0) - mean).abs() < Z * se_mean), t
        assert torch.all((xt.var(0) - var).abs() < Z * se_var), t
        if 100 <= t <= 750:  # power: a schedule bug (mean ᾱ_t·x_0, variance β_t) lies well outside the band
            a = s.alphas_cumprod[t]
            assert (a.sqrt() - a) * x0.abs().max() > 2 * Z * se_mean.max()
            assert abs(var[0] - s.betas[t]) > 2 * Z * se_var[0]


# ---- posterior q(x_{t−1} | x_t, x_0) -------------------------------------------------------------

def _ddpm_step_with_noise(sched, eps, t, xt, seed):
    """One DDPMScheduler step on the true ε, and the N(0, 1) draw it used (same generator seed)."""
    out = sched.step(eps, t, xt, generator=torch.Generator().manual_seed(seed))
    z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(seed), dtype=xt.dtype)
    return out, z


@pytest.mark.parametrize("t", [1, 2, 10, 100, 500, 999])
def test_ddpm_step_is_the_posterior(config, t):
    """DDPMScheduler's _get_variance(t) = β̃_t, and its step fed the true ε lands on μ̃_t(x_t, x_0)
    plus √β̃_t times its own noise draw (reproduced from the same generator seed)."""
    s, sched = Schedule.from_config(config), DDPMScheduler.from_config(config)  # 1000 steps: prev = t−1
    x0 = latent_like(64).view(1, 64)  # diffusers' step wants (batch, channels, …)
    eps = latent_like(64, seed=1).view(1, 64) / 1.2
    xt = s.q_sample(x0, t, eps)
    mean, var = s.posterior(x0, xt, t)
    beta_tilde = (1 - s.alphas_cumprod[t - 1]) / (1 - s.alphas_cumprod[t]) * s.betas[t]  # written out once more
    torch.testing.assert_close(var[0, 0], beta_tilde, rtol=1e-12, atol=0)
    assert sched._get_variance(t).item() == pytest.approx(beta_tilde.item(), rel=2e-4)
    out, z = _ddpm_step_with_noise(sched, eps.float(), t, xt.float(), seed=t)
    torch.testing.assert_close(out.pred_original_sample.double(), x0, rtol=0, atol=2e-4)  # |x_0| > 1 kept
    step_mean = out.prev_sample.double() - var.sqrt() * z.double()
    torch.testing.assert_close(step_mean, mean, rtol=0, atol=2e-4)
    # the mean is not trivially x_t or x_0: both coefficients are in play
    assert (mean - xt).abs().max() > 100 * 2e-4 or (mean - x0).abs().max() > 100 * 2e-4


def test_ddpm_last_step_returns_the_posterior_mean_x0(config):
    """At index 0 the posterior is a point mass on x_0: β̃ = 0 (diffusers clamps it to 1e-20) and no noise."""
    s, sched = Schedule.from_config(config), DDPMScheduler.from_config(config)
    x0, eps = latent_like(64).view(1, 64), latent_like(64, seed=1).view(1, 64) / 1.2
    xt = s.q_sample(x0, 0, eps)
    mean, var = s.posterior(x0, xt, 0)
    assert torch.all(var == 0) and torch.allclose(mean, x0, atol=1e-12)
    assert sched._get_variance(0).item() == pytest.approx(1e-20)
    out = sched.step(eps.float(), 0, xt.float(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.prev_sample.double(), x0, rtol=0, atol=2e-4)


@pytest.mark.parametrize("t", [1, 500])
def test_ddpm_step_samples_the_posterior(t):
    """Measured: n draws of the step from one (x_t, x_0): mean within Z SE of μ̃_t, variance within Z SE of β̃_t."""
    s, sched = Schedule.from_config(SD_CONFIG), DDPMScheduler.from_config(SD_CONFIG)
    n, x0, eps = 20000, latent_like(16), latent_like(16, seed=1) / 1.2
    xt = s.q_sample(x0, t, eps)
    mean, var = s.posterior(x0, xt, t)
    out = sched.step(eps.float().expand(n, 16), t, xt.float().expand(n, 16), generator=torch.Generator().manual_seed(1))
    x = out.prev_sample.double()
    assert torch.all((x.mean(0) - mean).abs() < Z * (var / n).sqrt())
    assert torch.all((x.var(0) - var).abs() < Z * var * math.sqrt(2 / (n - 1)))
    if t == 1:  # power: β̃_1 ≈ β_1/2, so DDPM's other choice σ² = β_t ("fixed_large") would fail
        assert abs(var[0] - s.betas[t]) > 4 * Z * var[0] * math.sqrt(2 / (n - 1))


# ---- ε-parameterisation -------------------------------------------------------------------------

def test_x0_recovered_from_eps_exactly(config):
    """x_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t inverts the forward process at every t (float64: 1e-12 after
    amplification by 1/√ᾱ_T ≈ 15), and ε = (x_t − √ᾱ_t x_0)/√(1−ᾱ_t) inverts it the other way."""
    s = Schedule.from_config(config)
    t = torch.arange(1000)
    x0, eps = latent_like(1000 * 4).view(1000, 4), latent_like(1000 * 4, seed=1).view(1000, 4) / 1.2
    xt = s.q_sample(x0, t, eps)
    torch.testing.assert_close(s.x0_from_eps(xt, t, eps), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(s.eps_from_x0(xt, t, x0), eps, rtol=0, atol=1e-9)


def test_posterior_mean_in_eps_form(config):
    """μ̃_t(x_t, x̂_0(x_t, ε)) = (x_t − β_t/√(1−ᾱ_t) ε)/√α_t: the network only has to predict ε.
    (The seed's note writes 1/√ᾱ_t in front; it is 1/√α_t — with ᾱ_t the check below fails by far.)"""
    s = Schedule.from_config(config)
    t = torch.tensor([1, 10, 300, 999])
    x0, eps = latent_like(16).view(4, 4), latent_like(16, seed=1).view(4, 4)
    xt = s.q_sample(x0, t, eps)
    mean, _ = s.posterior(s.x0_from_eps(xt, t, eps), xt, t)
    b, a, ab = (v[t].view(-1, 1) for v in (s.betas, s.alphas, s.alphas_cumprod))
    torch.testing.assert_close(mean, (xt - b / (1 - ab).sqrt() * eps) / a.sqrt(), rtol=0, atol=1e-12)
    assert (mean - (xt - b / (1 - ab).sqrt() * eps) / ab.sqrt()).abs().max() > 0.1


def test_simplified_loss_is_squared_eps_error():
    """The demo model's training loss: ‖ε − ε_θ‖² per element, what training/stages/*.py return
    (simplified_loss), checked against F.mse_loss and an independent ‖·‖² / d."""
    g = torch.Generator().manual_seed(0)
    eps, pred = torch.randn(8, 4, 16, 16, generator=g), torch.randn(8, 4, 16, 16, generator=g)
    expected = torch.linalg.vector_norm((eps - pred).double()) ** 2 / eps.numel()
    assert simplified_loss(eps, pred).item() == pytest.approx(expected.item(), rel=1e-6)
    assert F.mse_loss(pred.float(), eps).item() == pytest.approx(expected.item(), rel=1e-6)
    assert simplified_loss(eps, eps).item() == 0
    # E‖ε − ε_θ‖² = 2 for an ε_θ independent of ε (both N(0, I)): within Z SE (Var of a squared
    # difference of two N(0,1)s is 8, so SE = √(8/d))
    assert abs(simplified_loss(eps, pred).item() - 2) < Z * math.sqrt(8 / eps.numel())


def test_training_forward_process_is_diffusers():
    """The x_t the demo-model training feeds its UNet (training.common.NoiseSchedule) is SD's
    q(x_t | x_0): same ᾱ_t as diffusers' SD scheduler and the same x_t as add_noise."""
    from training import models
    from training.common import NoiseSchedule

    assert {k: models.SCHEDULE[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")} == \
        {k: SD_CONFIG[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
    ns, s = NoiseSchedule("cpu"), Schedule.from_config(SD_CONFIG)
    t = torch.tensor(TIMESTEPS)
    x0, eps = latent_like(len(t) * 16).view(len(t), 4, 2, 2), latent_like(len(t) * 16, seed=1).view(len(t), 4, 2, 2)
    got = ns.add_noise(x0.float(), eps.float(), t)
    torch.testing.assert_close(got.double(), s.q_sample(x0, t, eps), rtol=0, atol=2e-6)
    assert torch.equal(got, q_sample(x0.float(), ns.alphas_cumprod[t], eps.float()))  # the shared formula, per sample


def test_simplified_loss_drops_the_vlb_weight():
    """Per step, KL(q(x_{t−1}|x_t,x_0) ‖ p_θ) with p_θ's mean μ̃(x̂_0(ε_θ)) and variance σ² = β̃ is
    β_t²/(2σ²α_t(1−ᾱ_t))·‖ε − ε_θ‖² (the seed's L_vlb weight); the simplified loss sets it to 1.
    That weight is by far largest at small t (0.50 at t=1, ≥ 100× its minimum 0.0033 near t = 420;
    ≈ β_T/2 = 0.006 at the end), so the simplified loss
    shifts emphasis to large t, as the seed says; and ‖ε − ε_θ‖² = SNR_t·‖x_0 − x̂_0‖²."""
    s = Schedule.from_config(SD_CONFIG)
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_pred = (torch.randn(64, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (1, 50, 999):
        xt = s.q_sample(x0, t, eps)
        mu, var = s.posterior(x0, xt, t)
        mu_theta, _ = s.posterior(s.x0_from_eps(xt, t, eps_pred), xt, t)
        kl = ((mu - mu_theta) ** 2).sum() / (2 * var[0])  # equal variances: only the means differ
        b, a, ab = s.betas[t], s.alphas[t], s.alphas_cumprod[t]
        weight = b**2 / (2 * var[0] * a * (1 - ab))
        sq = ((eps - eps_pred) ** 2).sum()
        assert kl.item() == pytest.approx((weight * sq).item(), rel=1e-9)
        x0_err = ((x0 - s.x0_from_eps(xt, t, eps_pred)) ** 2).sum()
        assert sq.item() == pytest.approx((s.snr[t] * x0_err).item(), rel=1e-9)
    t = torch.arange(1, 1000)
    ac, ac_prev = s.alphas_cumprod[t], s.alphas_cumprod[t - 1]
    w = s.betas[t] ** 2 / (2 * (1 - ac_prev) / (1 - ac) * s.betas[t] * s.alphas[t] * (1 - ac))
    assert w[0] > 0.49 and w.argmax() == 0 and w.max() / w.min() > 100  # 0.50 at t=1, min 0.0033
    assert torch.all(w[1:400] < w[:399])  # falls to t ≈ 420, then rises slowly to ≈ β_T/2 = 0.006


# ---- DDIM ------------------------------------------------------------------------------------------

def _gaussian_eps_model(s: Schedule):
    """The exact ε-predictor E[ε | x_t] for data x_0 ~ N(0, I): √(1−ᾱ_t)·x_t. A deterministic model."""
    ac = s.alphas_cumprod.float()
    return lambda x, t: (1 - ac[t]).sqrt() * x


def _ddim_sample(config, x_T, eta, generator, steps=20):
    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(steps)
    model = _gaussian_eps_model(Schedule.from_config(config))
    x = x_T.clone()
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, eta=eta, generator=generator).prev_sample
    return x


def test_ddim_eta0_is_deterministic_given_xT(config):
    """η = 0: the same x_T gives bit-identical samples whatever the generator; η = 1 does not."""
    x_T = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    a = _ddim_sample(config, x_T, 0.0, torch.Generator().manual_seed(1))
    b = _ddim_sample(config, x_T, 0.0, torch.Generator().manual_seed(2))
    c = _ddim_sample(config, x_T, 0.0, None)
    assert torch.equal(a, b) and torch.equal(a, c)
    a1 = _ddim_sample(config, x_T, 1.0, torch.Generator().manual_seed(1))
    b1 = _ddim_sample(config, x_T, 1.0, torch.Generator().manual_seed(2))
    assert (a1 - b1).abs().max() > 0.01 and (a1 - a).abs().max() > 0.01


def test_ddim_eta1_sigma_is_the_ddpm_posterior_sigma(config):
    """On the respaced steps (50 of 1000, 'leading' + offset 1: 981, 961, …, 1), DDIMScheduler's
    _get_variance·η² with η = 1 is β̃ of the strided step, (1−ᾱ_prev)/(1−ᾱ_t)·(1 − ᾱ_t/ᾱ_prev), and
    equals DDPMScheduler's own variance on the same 50 steps — except the last step, where DDIM
    (set_alpha_to_one=False, as SD ships) steps to ᾱ_0 rather than to x_0 (ᾱ = 1) like DDPM."""
    s = Schedule.from_config(config)
    ddim, ddpm = DDIMScheduler.from_config(config), DDPMScheduler.from_config(config)
    ddim.set_timesteps(50)
    ddpm.set_timesteps(50)
    assert torch.equal(ddim.timesteps, ddpm.timesteps) and ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1
    ts, eta = ddim.timesteps.tolist(), 1.0
    for t, prev in zip(ts, ts[1:] + [ts[-1] - 20]):
        var_ddim = eta**2 * ddim._get_variance(t, prev).item()
        _, closed = s.posterior(torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64), t, prev)
        sigma = s.ddim_sigma(t, prev, eta, final_alpha_cumprod=s.alphas_cumprod[0].item())
        if prev >= 0:
            assert var_ddim == pytest.approx(closed.item(), rel=2e-4)
            assert ddpm._get_variance(t).item() == pytest.approx(var_ddim, rel=1e-6)
            assert var_ddim > 1.5 * s.posterior(torch.zeros(1), torch.zeros(1), t)[1].item()  # not the 1-step β̃
        else:
            assert closed.item() == 0 and ddpm._get_variance(t).item() == pytest.approx(1e-20)
            assert var_ddim > 0.5 * s.betas[0].item()  # DDIM's last step still adds noise (ᾱ_prev = ᾱ_0 < 1)
        assert var_ddim == pytest.approx(sigma.item() ** 2, rel=2e-4)


@pytest.mark.parametrize("eta", [0.5, 1.0])
def test_ddim_step_mean_and_noise(eta):
    """DDIM's step fed the true ε: with its noise zeroed it lands on √ᾱ_prev x_0 + √(1−ᾱ_prev−σ²) ε,
    which for η = 1 is the DDPM posterior mean of the strided step; measured over n draws, the
    step's noise has std η·σ_DDPM (within Z SE = σ/√(2n))."""
    s, sched = Schedule.from_config(SD_CONFIG), DDIMScheduler.from_config(SD_CONFIG)
    sched.set_timesteps(50)
    t, prev = 501, 481
    n, x0, eps = 20000, latent_like(16), latent_like(16, seed=1) / 1.2
    xt = s.q_sample(x0, t, eps)
    zero = sched.step(eps.float(), t, xt.float(), eta=eta, variance_noise=torch.zeros(16)).prev_sample.double()
    torch.testing.assert_close(zero, s.ddim_step_mean(xt, t, prev, eps, eta), rtol=0, atol=2e-5)
    post_mean, post_var = s.posterior(x0, xt, t, prev)
    if eta == 1.0:
        torch.testing.assert_close(zero, post_mean, rtol=0, atol=2e-5)
    else:
        assert (zero - post_mean).abs().max() > 0.01
    x = sched.step(eps.float().expand(n, 16), t, xt.float().expand(n, 16), eta=eta,
                   generator=torch.Generator().manual_seed(0)).prev_sample.double()
    std, sigma = (x - zero).std(0), eta * post_var[0].sqrt()
    assert torch.all((std - sigma).abs() < Z * sigma / math.sqrt(2 * n))


# ---- scaled-linear vs linear -----------------------------------------------------------------------

def test_scaled_linear_keeps_more_signal_than_linear():
    """The seed asks why SD uses scaled-linear betas. With the same endpoints,
    β_lin − β_scaled = (√β_T − √β_1)²·s(1−s) ≥ 0 (s = (t−1)/(T−1)): β grows more slowly early and
    faster late, is smaller at every interior t, so ᾱ_t and SNR_t are higher at every t > 0
    — more signal survives at each noise level, which matters for ~unit-variance latents (the noise
    swamps them sooner than pixels in [−1, 1] with their strong local correlation). Numerically:
    SNR crosses 1 at t = 354 instead of 284, the SNR ratio grows to ≈ 3 by the end, and neither
    reaches pure noise: ᾱ_T = 0.0047 (√ᾱ_T ≈ 0.07 of x_0 is still in x_T) vs 0.0016."""
    sl, li = DDPMScheduler.from_config(SD_CONFIG), DDPMScheduler.from_config(LINEAR_CONFIG)
    b_s, b_l = sl.betas.double(), li.betas.double()
    s = torch.linspace(0, 1, 1000, dtype=torch.float64)
    gap = (0.012**0.5 - 0.00085**0.5) ** 2 * s * (1 - s)
    torch.testing.assert_close(b_l - b_s, gap, rtol=0, atol=1e-8)  # gap peaks at 1.6e-3 mid-way
    assert b_s[0] == pytest.approx(b_l[0]) and b_s[-1] == pytest.approx(b_l[-1])
    assert (b_s[1] - b_s[0]) < 0.5 * (b_l[1] - b_l[0]) and (b_s[-1] - b_s[-2]) > 1.5 * (b_l[-1] - b_l[-2])
    snr_s, snr_l = snr(sl.alphas_cumprod.double()), snr(li.alphas_cumprod.double())
    assert torch.all(snr_s[1:] > snr_l[1:])
    ratio = snr_s / snr_l
    assert torch.all(ratio[1:901] > ratio[:900]) and 2.5 < ratio[-1] < 3.5
    assert int((snr_s < 1).nonzero()[0]) == 354 and int((snr_l < 1).nonzero()[0]) == 284
    assert sl.alphas_cumprod[-1].item() == pytest.approx(0.00466, rel=1e-2)
    assert li.alphas_cumprod[-1].item() == pytest.approx(0.00158, rel=1e-2)
    # versus DDPM's own pixel schedule (linear 1e-4 → 0.02): SD adds more noise for t < 102, far less after
    ddpm = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    snr_d = snr(ddpm.alphas_cumprod.double())
    assert int((snr_s > snr_d).nonzero()[0]) == 102 and torch.all(snr_s[102:] > snr_d[102:])
    assert snr_s[-1] / snr_d[-1] > 100


# ---- the app's own schedulers on SD's config ---------------------------------------------------------

@pytest.mark.parametrize("name", ["DDIM", "DDPM"])
def test_app_schedulers_do_not_clip_latents(name):
    from pipelines.core.schedulers import build_scheduler

    sched = build_scheduler(name, PNDMScheduler(**SD_SCHEDULER_CONFIG).config)
    sched.set_timesteps(50)
    s = Schedule.from_config(SD_CONFIG)
    # shaped like a latent batch (1, 4, 4, 4): DDPM's step reads the channel dimension
    x0, eps = latent_like(64).reshape(1, 4, 4, 4), latent_like(64, seed=1).reshape(1, 4, 4, 4) / 1.2
    assert x0.abs().max() > 1.5
    xt = s.q_sample(x0, 501, eps)
    out = sched.step(eps.float(), 501, xt.float(), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.pred_original_sample.double(), x0, rtol=0, atol=2e-4)


# ---- the app applies these formulas, bit for bit ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny_unet_and_prompts():
    from tiny_sd import tiny_unet

    g = torch.Generator().manual_seed(5)
    return tiny_unet().eval(), torch.randn(1, 77, 32, generator=g), torch.randn(1, 77, 32, generator=g)


def _init_latents(seed=0):
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed)) * 1.2


def test_repaints_known_region_is_q_sample_bit_for_bit(tiny_unet_and_prompts):
    """Every x_s^known RePaint imposes (resampling on: r = 2, j = 2) is q_sample(x_0, ᾱ_s, ε) of the
    schedule it respaced, and that schedule's ᾱ is the closed form's."""
    from pipelines.repaint import repaint, respaced_schedule

    unet, cond, uncond = tiny_unet_and_prompts
    x0, mask = _init_latents(), torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    seen = []
    with torch.no_grad():
        repaint(unet, SD_SCHEDULER_CONFIG, x0, mask, cond, uncond, 4, 5.0, 1.0, 1.0, 2, 2,
                [torch.Generator().manual_seed(7)], on_known=lambda t, known, noise: seen.append((t, known, noise)))
    _, alphas_cumprod = respaced_schedule(SD_SCHEDULER_CONFIG, 4)
    assert len(seen) == 8 and seen[-1][0] == -1
    for t, known, noise in seen:
        assert torch.equal(known, q_sample(x0, 1.0 if t == -1 else float(alphas_cumprod[t]), noise)), t
    torch.testing.assert_close(alphas_cumprod, Schedule.from_config(SD_CONFIG).alphas_cumprod, rtol=1e-4, atol=0)


def test_repaints_update_is_ddim_step_of_the_cfg_combination_bit_for_bit(tiny_unet_and_prompts):
    """A mask of ones leaves RePaint nothing but its sampler: replaying its random draws, each step is
    ddim_step(x0_from_eps(x_t, ᾱ_t, ε̂), ε̂, ᾱ_s, ddim_sigma(ᾱ_t, ᾱ_s, η), z) with ε̂ = cfg_combine(ε_u, ε_c, w)."""
    from pipelines.repaint import repaint, respaced_schedule

    unet, cond, uncond = tiny_unet_and_prompts
    x0, mask, eta, steps, w = _init_latents(), torch.ones(1, 1, 8, 8), 0.5, 3, 5.0
    with torch.no_grad():
        got = repaint(unet, SD_SCHEDULER_CONFIG, x0, mask, cond, uncond, steps, w, eta, 1.0, 1, 1,
                      [torch.Generator().manual_seed(7)]).latents
        timesteps, alphas_cumprod = respaced_schedule(SD_SCHEDULER_CONFIG, steps)
        g = torch.Generator().manual_seed(7)
        x = torch.randn(x0.shape, generator=g)  # x_T
        levels = timesteps + [-1]
        for t, s in zip(levels, levels[1:]):
            a_t, a_s = float(alphas_cumprod[t]), 1.0 if s == -1 else float(alphas_cumprod[s])
            out = unet(torch.cat([x, x]), torch.tensor(t), encoder_hidden_states=torch.cat([uncond, cond]),
                       return_dict=False)[0].float()
            eps = cfg_combine(*out.chunk(2), w)
            sigma = ddim_sigma(a_t, a_s, eta)
            z = torch.randn(x.shape, generator=g) if sigma > 0 else None
            pred = ddim_step(x0_from_eps(x, a_t, eps), eps, a_s, sigma, z)
            known = q_sample(x0, a_s, torch.randn(x.shape, generator=g))  # drawn, then weighted by 1 − m = 0
            x = mask * pred + (1 - mask) * known
    assert torch.equal(got, x)
    assert sigma == 0 and 0 < ddim_sigma(float(alphas_cumprod[timesteps[0]]), float(alphas_cumprod[timesteps[1]]), eta)


def test_lab_forward_process_is_q_sample_of_the_vae_encode_bit_for_bit(manager):
    """The lab's latent x_t (run as the UI runs it) is q_sample(vae_encode(image), ᾱ_t, ε) with ε from its seed."""
    from pipelines.core.images import fit
    from pipelines.lab import demo_image, to_tensor
    from pipelines.core.lab_requests import LabForwardRequest

    view = manager.run(LabForwardRequest(None, 300, 5))
    vae = manager.pipeline("txt2img").vae
    with torch.no_grad():
        z0 = vae_encode(vae, to_tensor(fit(demo_image(64), 64, 64, "crop and resize")))
    eps = torch.randn(z0.shape, generator=torch.Generator().manual_seed(5))
    a = float(Schedule.from_config(SD_SCHEDULER_CONFIG).alphas_cumprod[299])  # slider t = diffusers index t − 1
    assert view.alpha_bar == a and torch.equal(view.latent, q_sample(z0, a, eps))


def test_half_precision_latents_get_coefficients_computed_in_full_precision():
    """On a GPU the lab's latents are fp16 while ᾱ is a float32 tensor: √(1−ᾱ_0) = √0.00085 must not become
    √(1 − fp16(0.99915)) = √0.00098 (15 % more noise variance); results stay fp16."""
    a0 = Schedule.from_config(SD_CONFIG).alphas_cumprod[:1].float()  # ᾱ_0 = 0.99915, per sample
    x, eps = torch.zeros(1, 4, dtype=torch.float16), torch.ones(1, 4, dtype=torch.float16)
    noisy = q_sample(x, a0, eps)
    assert noisy.dtype == torch.float16
    assert torch.equal(noisy, torch.full_like(noisy, math.sqrt(1 - a0.item())))
    assert abs(math.sqrt(1 - a0.half().item()) - math.sqrt(1 - a0.item())) > 0.05 * math.sqrt(1 - a0.item())


def test_vae_scaling_honours_a_shift_factor_in_encode_decode_and_training_latents():
    """A VAE whose config has shift_factor (SD3/Flux-style): latents are (raw − shift)·scaling going in,
    z/scaling + shift coming out, in the app's encode, generation's decode and the training pool."""
    from diffusers.image_processor import VaeImageProcessor

    from pipelines.generation import decode
    from tiny_sd import tiny_pipeline
    from training.pool import Pool

    pipe = tiny_pipeline()
    pipe.vae.register_to_config(scaling_factor=0.5, shift_factor=0.25)
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        mean = pipe.vae.encode(pixels).latent_dist.mean
        z = vae_encode(pipe.vae, pixels)
        assert torch.equal(z, (mean - 0.25) * 0.5)
        torch.testing.assert_close(unscale_latents(z, pipe.vae.config), mean, rtol=0, atol=1e-6)
        expected = VaeImageProcessor(vae_scale_factor=8).postprocess(
            pipe.vae.decode(z / 0.5 + 0.25, return_dict=False)[0], output_type="pil")[0]
        assert np.array_equal(np.asarray(decode(pipe, z)[0]), np.asarray(expected))
    # no shift_factor (SD 1.x, 2.x): only the scaling, as diffusers' own pipelines do it
    assert torch.equal(scale_latents(mean, {"scaling_factor": 0.18215}), mean * 0.18215)
    # the training pool's z = scale_latents(μ + σ·ε): with σ = 0 exactly (mean − shift)·scaling
    moments = torch.cat([mean, torch.full_like(mean, -1e4)], dim=1)  # log-variance −1e4: σ = 0
    pool = Pool(moments, torch.zeros(1, 77, dtype=torch.long), dict(pipe.vae.config), None, None)
    assert torch.equal(pool.latents(torch.tensor([0])), (mean - 0.25) * 0.5)
