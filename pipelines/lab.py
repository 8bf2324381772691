"""Diffusion lab: the seed's processes run on the loaded model and made visible (torch only).

- forward process  x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, in latent space (decoded by the VAE) and in
  pixel space, with the signal and noise weights and the SNR;
- training schedules β_t, ᾱ_t, log SNR_t for linear vs scaled-linear betas (and the model's own);
- a denoising trajectory: x_t and the predicted x̂_0 every k DDIM steps, η = 0 vs η = 1 from
  the same x_T;
- CFG anatomy: ε_uncond, ε_cond and ε = ε_u + s·(ε_c − ε_u) at one step, each shown as its x̂_0,
  and the finished image at several scales.

The sampling loop is written out here (not hidden in a pipeline call) because seeing its
parts is the point; it is the same DDIM loop diffusers runs (diffusers' DDIMScheduler, as
generation), on the manager's shared modules (nothing is copied). The formulas it applies
itself (q_sample, x̂_0, CFG, VAE scaling) are diffusion_math's. Each experiment is a request
(lab_requests.py) that the manager runs under its device lock as a Job: per-step progress,
interruptible between steps (run_lab below).

Slider convention: t = 0 … T, t = 0 is x_0 itself (ᾱ = 1) and t ≥ 1 is diffusers' index t−1
(see diffusion_math: index 0 is already one step of noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw

from .diffusion_math import Schedule, cfg_combine, make_betas, q_sample, vae_decode, vae_encode, x0_from_eps
from .core.errors import RequestError, StudioError
from .families import text_conditioning
from .core.grid import compose_grid
from .core.images import fit
from .core.jobs import Job, StepInfo
from .core.lab_requests import LabCfgRequest, LabForwardRequest, LabSchedulesRequest, LabTrajectoryRequest
from .prompt_encoding import encode_prompts
from .core.schedulers import build_scheduler

# The two β schedules the seed compares: DDPM's linear betas (pixels) and LDM/SD's scaled-linear.
DDPM_LINEAR = dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=1000)
SD_SCALED_LINEAR = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000)
SD_RANGE_LINEAR = dict(SD_SCALED_LINEAR, beta_schedule="linear")  # SD's endpoints, linear in β


# ----------------------------------------------------------------- schedules (no model needed)
@dataclass
class ScheduleCurve:
    name: str
    betas: np.ndarray  # β_t, t = 1 … T
    alphas_cumprod: np.ndarray  # ᾱ_t
    log_snr: np.ndarray  # log SNR_t = log(ᾱ_t / (1 − ᾱ_t))

    @property
    def timesteps(self) -> np.ndarray:
        return np.arange(1, len(self.betas) + 1)


def _curve(name: str, betas: torch.Tensor) -> ScheduleCurve:
    schedule = Schedule(betas.to(torch.float64))
    ac = schedule.alphas_cumprod
    return ScheduleCurve(name, schedule.betas.numpy(), ac.numpy(), torch.log(ac / (1 - ac)).numpy())


def schedule_curves(model_config: dict | None = None) -> list[ScheduleCurve]:
    """Linear (DDPM), linear over SD's β range, scaled-linear (SD), and the loaded model's own
    schedule as its scheduler computes it (any beta_schedule, trained_betas included)."""
    curves = [_curve(f"{label} (β {c['beta_start']:g} → {c['beta_end']:g})",
                     make_betas(c["beta_schedule"], c["beta_start"], c["beta_end"], c["num_train_timesteps"]))
              for label, c in (("linear, DDPM", DDPM_LINEAR), ("linear, SD's range", SD_RANGE_LINEAR),
                               ("scaled-linear, SD", SD_SCALED_LINEAR))]
    if model_config:
        from diffusers import DDPMScheduler  # the model's own betas, whatever its beta_schedule

        own = DDPMScheduler.from_config(dict(model_config))
        curves.append(_curve(f"this model ({model_config.get('beta_schedule', 'linear')})", own.betas))
    return curves


# ----------------------------------------------------------------- image helpers
def demo_image(size: int) -> Image.Image:
    """A picture for the forward process when the user brings none: flat shapes with sharp
    edges, so what the noise destroys first (edges, then colours) is easy to see."""
    image = Image.new("RGB", (size, size), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    s = size / 128
    draw.ellipse((14 * s, 14 * s, 70 * s, 70 * s), fill=(220, 40, 40))
    draw.rectangle((62 * s, 58 * s, 114 * s, 110 * s), fill=(40, 80, 210))
    draw.polygon([(18 * s, 114 * s), (46 * s, 70 * s), (74 * s, 114 * s)], fill=(40, 170, 70))
    return image


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL → (1, 3, H, W) in [−1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def to_image(pixels: torch.Tensor) -> Image.Image:
    """(3, H, W) in [−1, 1] (clipped) → RGB PIL."""
    array = ((pixels.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


# ----------------------------------------------------------------- results
@dataclass
class ForwardView:
    t: int
    T: int
    alpha_bar: float
    signal: float  # √ᾱ_t: weight of x_0
    noise: float  # √(1−ᾱ_t): weight of ε
    snr: float  # ᾱ_t / (1−ᾱ_t), inf at t = 0
    latent_decoded: Image.Image  # decode(√ᾱ_t z_0 + √(1−ᾱ_t) ε)
    pixel: Image.Image  # √ᾱ_t x_0 + √(1−ᾱ_t) ε in pixels
    latent: torch.Tensor = field(repr=False)  # z_t (scaled latents)


@dataclass
class Frame:
    step: int  # steps done, 1-based
    timestep: int  # the training timestep (diffusers index) the step started from
    reached: int  # the timestep of the sample it produced (0 after the last step: x_0)
    x_t: Image.Image  # the sample after the step, decoded
    x0: Image.Image  # the step's prediction x̂_0, decoded


@dataclass
class Trajectory:
    runs: dict[float, list[Frame]]  # η → frames
    strip: Image.Image
    steps: int
    every: int


@dataclass
class CfgAnatomy:
    step: int  # 0-based index of the inspected step
    timestep: int
    scale: float
    eps: dict[str, torch.Tensor] = field(repr=False)  # "uncond", "cond", "guided"
    x0: dict[str, torch.Tensor] = field(repr=False)  # the same as x̂_0 latents
    predictions: dict[str, Image.Image] = field(repr=False)  # decoded x̂_0
    finals: list[tuple[float, Image.Image]] = field(repr=False)  # (scale, finished image)
    predictions_strip: Image.Image = field(repr=False)  # uncond | cond | guided, as x̂_0
    finals_strip: Image.Image = field(repr=False)  # the finished image per scale

    @property
    def guidance_ratio(self) -> float:
        """‖ε_c − ε_u‖ / ‖ε_u‖: how much the prompt changes the prediction at this step (CFG
        multiplies this difference by s)."""
        return float((self.eps["cond"] - self.eps["uncond"]).norm() / self.eps["uncond"].norm())


# ----------------------------------------------------------------- progress and interrupt
class LabInterrupted(StudioError):
    """The lab run's Job was cancelled between two UNet steps."""


class StepReport:
    """A lab run's per-step report: StepInfo to on_step, and a stop when the Job is cancelled."""

    def __init__(self, job: Job | None, on_step, total: int, batch_count: int = 1):
        self.job, self.on_step, self.total, self.batch_count = job or Job(), on_step, total, batch_count

    def __call__(self, done: int, batch: int = 0) -> None:
        if self.on_step is not None:
            self.on_step(StepInfo(done, self.total, batch, self.batch_count))
        if self.job.cancelled:
            raise LabInterrupted(f"Interrupted at step {done} of {self.total}: the lab run stopped, nothing to show.")

    def check(self) -> None:
        if self.job.cancelled:
            raise LabInterrupted("Interrupted before the lab run started.")


# ----------------------------------------------------------------- the lab on a model
class DiffusionLab:
    """Lab experiments on a loaded pipeline's modules (read only) and its scheduler config.
    The caller holds the device (the manager's lock: see run_lab)."""

    def __init__(self, pipe, scheduler_config: dict):
        self.pipe, self.config = pipe, dict(scheduler_config)
        self.schedule = Schedule.from_config(self.config) if self.config.get("beta_schedule", "linear") in (
            "linear", "scaled_linear") and not self.config.get("trained_betas") else None
        self._own = None
        self._added = None  # SDXL: [uncond, cond] text_embeds/time_ids of the last _embeddings

    def curves(self) -> list[ScheduleCurve]:
        return schedule_curves(self.config)

    @property
    def T(self) -> int:
        return int(self.config.get("num_train_timesteps", 1000))

    @property
    def size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * self.pipe.vae_scale_factor

    @property
    def device(self):
        return self.pipe.unet.device

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ of the model's training schedule, float64 (closed form when there is one)."""
        if self.schedule is not None:
            return self.schedule.alphas_cumprod
        if self._own is None:
            from diffusers import DDPMScheduler

            self._own = DDPMScheduler.from_config(self.config).alphas_cumprod.to(torch.float64)
        return self._own

    def alpha_bar(self, t: int) -> float:
        """ᾱ at slider position t: 1 at t = 0 (x_0), else the training ᾱ at index t − 1."""
        return 1.0 if t <= 0 else float(self.alphas_cumprod[t - 1])

    # --- VAE ----------------------------------------------------------------------------------
    def encode(self, image: Image.Image) -> torch.Tensor:
        vae = self.pipe.vae
        return vae_encode(vae, to_tensor(image).to(vae.device, vae.dtype))  # the mean: no sampling noise

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return [to_image(p) for p in vae_decode(self.pipe.vae, latents.to(self.pipe.vae.device))]

    # --- forward process ----------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, image: Image.Image | None, t: int, seed: int = 0) -> ForwardView:
        """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, in latent space (then decoded) and in pixel space, with
        the same seed's ε (one draw per space)."""
        if not 0 <= t <= self.T:
            raise RequestError(f"t must be between 0 and {self.T}, got {t}.")
        image = fit(image if image is not None else demo_image(self.size), self.size, self.size, "crop and resize")
        a = self.alpha_bar(t)
        generator = torch.Generator().manual_seed(seed)
        z0 = self.encode(image)
        eps_latent = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0.device, z0.dtype)
        zt = q_sample(z0, a, eps_latent)
        latent_decoded = self.decode(zt)[0]
        x0 = to_tensor(image)
        pixel = to_image(q_sample(x0, a, torch.randn(x0.shape, generator=generator))[0])
        snr = math.inf if a >= 1 else a / (1 - a)
        return ForwardView(t, self.T, a, a ** 0.5, (1 - a) ** 0.5, snr, latent_decoded, pixel, zt.cpu())

    # --- sampling parts -------------------------------------------------------------------------
    def _embeddings(self, prompt: str, negative: str) -> torch.Tensor:
        """[uncond, cond] text embeddings, as the pipeline batches them for CFG."""
        cond, uncond, added, added_uncond = text_conditioning(self.pipe, prompt, negative, self.size, self.size,
                                                              self.device, True)
        self._added = None if added is None else {k: torch.cat([added_uncond[k], v]) for k, v in added.items()}
        return torch.cat([uncond, cond])

    def _eps(self, latents: torch.Tensor, t, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ε_θ(x_t, t, ∅) and ε_θ(x_t, t, c) for a batch of latents, in one UNet call."""
        n = latents.shape[0]
        doubled = torch.cat([latents, latents])
        context = embeddings.repeat_interleave(n, dim=0)  # n × uncond, then n × cond
        kwargs = {} if self._added is None else {
            "added_cond_kwargs": {k: v.repeat_interleave(n, dim=0) for k, v in self._added.items()}}
        eps = self.pipe.unet(doubled, t, encoder_hidden_states=context, return_dict=False, **kwargs)[0]
        return eps[:n], eps[n:]

    def _noise(self, seed: int, batch: int = 1) -> tuple[torch.Tensor, torch.Generator]:
        """x_T as diffusers' pipelines draw it for this seed (CPU generator), and that generator."""
        generator = torch.Generator("cpu").manual_seed(seed)
        latent = self.pipe.unet.config.sample_size
        shape = (1, self.pipe.unet.config.in_channels, latent, latent)
        x = torch.randn(shape, generator=generator, dtype=self.pipe.unet.dtype).to(self.device)
        return x.repeat(batch, 1, 1, 1), generator

    def _scheduler(self, steps: int):
        scheduler = build_scheduler("DDIM", self.config)  # fresh: schedulers hold state
        scheduler.set_timesteps(steps, device=self.device)
        return scheduler

    # --- denoising trajectory -------------------------------------------------------------------
    @torch.no_grad()
    def trajectory(self, prompt: str, negative: str = "", steps: int = 20, every: int = 5, cfg_scale: float = 7.0,
                   seed: int = 0, etas: tuple[float, ...] = (0.0, 1.0), report: StepReport | None = None) -> Trajectory:
        """DDIM from one x_T with each η: x_t and x̂_0 after every `every` steps (and the last).

        x̂_0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t;  x_prev = √ᾱ_prev x̂_0 + √(1−ᾱ_prev−σ²) ε̂ + σ z,
        σ = η·√((1−ᾱ_prev)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_prev): η = 0 adds no noise, η = 1 is DDPM's σ."""
        if steps < 1 or every < 1:
            raise RequestError("Steps and show-every must be at least 1.")
        report = report or StepReport(None, None, steps, len(etas))
        keep = [i for i in range(steps) if (i + 1) % every == 0 or i == steps - 1]
        runs: dict[float, list[Frame]] = {}
        embeddings = self._embeddings(prompt, negative)
        for run_index, eta in enumerate(etas):
            x, generator = self._noise(seed)  # the same x_T for every η
            scheduler = self._scheduler(steps)
            kept_xt, kept_x0, levels = [], [], []
            timesteps = [int(t) for t in scheduler.timesteps] + [0]  # the run ends at x_0
            for i, t in enumerate(scheduler.timesteps):
                eps = cfg_combine(*self._eps(x, t, embeddings), cfg_scale)  # ε = ε_u + s·(ε_c − ε_u)
                out = scheduler.step(eps, t, x, eta=eta, generator=generator)
                x = out.prev_sample
                if i in keep:
                    kept_xt.append(x)
                    kept_x0.append(out.pred_original_sample)
                    levels.append((timesteps[i], timesteps[i + 1]))
                report(i + 1, run_index)
            decoded = self.decode(torch.cat(kept_xt + kept_x0))
            n = len(keep)
            runs[float(eta)] = [Frame(i + 1, start, end, decoded[j], decoded[n + j])
                                for j, (i, (start, end)) in enumerate(zip(keep, levels))]
        images, row_labels = [], []
        for eta, frames in runs.items():
            images += [f.x_t for f in frames] + [f.x0 for f in frames]
            row_labels += [f"η={eta:g}: x_t", f"η={eta:g}: predicted x_0"]
        column_labels = [f"step {f.step}/{steps}: t {f.timestep}→{f.reached}" for f in next(iter(runs.values()))]
        strip = compose_grid(images, len(keep), column_labels, row_labels)
        return Trajectory(runs, strip, steps, every)

    # --- CFG anatomy --------------------------------------------------------------------------
    @torch.no_grad()
    def cfg_anatomy(self, prompt: str, negative: str = "", steps: int = 20, step: int = 0, scale: float = 7.0,
                    seed: int = 0, scales: tuple[float, ...] = (1.0, 3.0, 7.0, 12.0, 20.0),
                    report: StepReport | None = None) -> CfgAnatomy:
        """At DDIM step `step` (0-based, reached by guided η=0 sampling at `scale`): the unconditional,
        conditional and guided ε, each as x̂_0; then the finished image at every scale in
        `scales`, all from the same x_T."""
        if not 0 <= step < steps:
            raise RequestError(f"Inspect step must be between 1 and the {steps} steps of the run.")
        report = report or StepReport(None, None, step + 1 + steps)
        embeddings = self._embeddings(prompt, negative)
        x, _ = self._noise(seed)
        scheduler = self._scheduler(steps)
        for i, t in enumerate(scheduler.timesteps):
            uncond, cond = self._eps(x, t, embeddings)
            guided = cfg_combine(uncond, cond, scale)
            report(i + 1)
            if i == step:
                break
            x = scheduler.step(guided, t, x, eta=0.0).prev_sample
        a = scheduler.alphas_cumprod[int(t)].to(x.device, x.dtype)
        eps = {"uncond": uncond, "cond": cond, "guided": guided}
        x0 = {k: x0_from_eps(x, a, e) for k, e in eps.items()}  # x̂_0 = (x_t − √(1−ᾱ_t) ε)/√ᾱ_t
        decoded = self.decode(torch.cat(list(x0.values())))
        predictions = dict(zip(x0, decoded))
        finals = self._finished(embeddings, seed, steps, scales, lambda done: report(step + 1 + done))
        predictions_strip = compose_grid(list(predictions.values()), 3,
                                         ["uncond ε → x̂_0", "cond ε → x̂_0", f"guided ε (s={scale:g}) → x̂_0"],
                                         [f"step {step + 1}/{steps}, t={int(t)}"])
        finals_strip = compose_grid([image for _, image in finals], len(finals),
                                    [f"s={value:g}" for value, _ in finals], ["finished"])
        return CfgAnatomy(step, int(t), scale, {k: v.cpu() for k, v in eps.items()},
                          {k: v.cpu() for k, v in x0.items()}, predictions, finals, predictions_strip, finals_strip)

    def _finished(self, embeddings, seed: int, steps: int, scales, report=lambda done: None) -> list[tuple[float, Image.Image]]:
        """The finished image at every CFG scale: one batch, the same x_T, DDIM η = 0."""
        x, _ = self._noise(seed, len(scales))
        s = torch.tensor(scales, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1)
        scheduler = self._scheduler(steps)
        for i, t in enumerate(scheduler.timesteps):
            x = scheduler.step(cfg_combine(*self._eps(x, t, embeddings), s), t, x, eta=0.0).prev_sample
            report(i + 1)
        return list(zip(scales, self.decode(x)))


# ----------------------------------------------------------------- a lab request, run
def run_lab(pipe, scheduler_config: dict, request, on_step=None, job: Job | None = None):
    """One lab request on a loaded pipeline (the caller holds the device): ForwardView,
    list[ScheduleCurve], Trajectory or CfgAnatomy. on_step gets StepInfo per UNet step;
    a cancelled job stops the run between steps (LabInterrupted)."""
    if isinstance(request, LabSchedulesRequest):
        return schedule_curves(scheduler_config)
    lab = DiffusionLab(pipe, scheduler_config)
    if isinstance(request, LabForwardRequest):
        StepReport(job, None, 1).check()
        return lab.forward(request.image, request.t, request.seed)
    if isinstance(request, LabTrajectoryRequest):
        etas = (0.0, 1.0)
        report = StepReport(job, on_step, request.steps, len(etas))
        report.check()
        return lab.trajectory(request.prompt, request.negative, request.steps, request.every, request.cfg_scale,
                              request.seed, etas, report)
    if isinstance(request, LabCfgRequest):
        report = StepReport(job, on_step, request.step + request.steps)
        report.check()
        return lab.cfg_anatomy(request.prompt, request.negative, request.steps, request.step - 1, request.scale,
                               request.seed, request.scales, report)
    raise RequestError(f"Unknown lab request {type(request).__name__}.")
