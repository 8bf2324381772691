"""What every training stage shares: device and precision, the noise schedule, EMA, the
learning-rate schedule, and a time-budgeted optimisation loop."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from pipelines.diffusion_math import q_sample
from training import models


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on the GPU; plain fp32 on the CPU (tests)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


class NoiseSchedule:
    """Forward process q(x_t | x_0): x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε, SD's scaled-linear betas."""

    def __init__(self, device):
        scheduler = DDPMScheduler(**models.SCHEDULE)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device)
        self.steps = len(self.alphas_cumprod)

    def sample_t(self, n: int, device) -> torch.Tensor:
        return torch.randint(0, self.steps, (n,), device=device)

    def add_noise(self, x0, noise, t):
        return q_sample(x0, self.alphas_cumprod[t], noise)


class EMA:
    """Exponential moving average of parameters, shadow kept in fp32:
    θ̄ ← θ̄ + (1 − d)(θ − θ̄), with d = min(decay, (1 + step) / (10 + step)) so early steps count."""

    def __init__(self, params, decay: float):
        self.params = [p for p in params]
        self.shadow = [p.detach().float().clone() for p in self.params]
        self.decay = decay

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self.params], 1 - d)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        for p, s in zip(self.params, self.shadow):
            p.copy_(s)


def lr_factor(step: int, warmup: int, progress: float, floor: float = 0.05) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 down to `floor` as progress 0 → 1."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class LoopResult:
    steps: int
    seconds: float
    final_loss: float
    losses: list


def run_loop(params, loss_fn, *, lr: float, max_steps: int, time_budget_s: float, warmup: int = 500,
             cosine_span=(0.0, 1.0), ema: EMA | None = None, log_every: int = 200, grad_clip: float = 1.0,
             weight_decay: float = 0.01, device=torch.device("cpu"), deadline: float | None = None) -> LoopResult:
    """AdamW on loss_fn(step) until max_steps or the time budget, whichever comes first.

    The cosine follows whichever of steps and time is further along; cosine_span lets a run
    that resumes another cover only its part of one long schedule (e.g. (0.4, 1.0))."""
    params = [p for p in params if p.requires_grad]
    if deadline is not None:  # an absolute end (time.time()) wins over the relative budget
        time_budget_s = max(1.0, deadline - time.time())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=weight_decay,
                            fused=device.type == "cuda")
    start, step, losses = time.time(), 0, []
    running = torch.zeros((), device=device)
    window = 0
    while step < max_steps:
        elapsed = time.time() - start
        if elapsed > time_budget_s:
            break
        frac = max(step / max_steps, elapsed / time_budget_s)
        progress = cosine_span[0] + (cosine_span[1] - cosine_span[0]) * frac
        for group in opt.param_groups:
            group["lr"] = lr * lr_factor(step, warmup, progress)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if ema is not None:
            ema.update(step)
        running += loss.detach().float()
        window += 1
        step += 1
        if step % log_every == 0 or step == max_steps:
            mean = running.item() / window  # one sync per log line
            losses.append((step, mean))
            print(f"  step {step:6d}  loss {mean:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                  f"{step / (time.time() - start):.1f} steps/s", flush=True)
            running.zero_()
            window = 0
    if window:
        losses.append((step, running.item() / window))
    return LoopResult(step, time.time() - start, losses[-1][1] if losses else float("nan"), losses)


def train_with_ema(params, loss_fn, args, device: torch.device, lr: float, ema_decay: float, **loop) -> LoopResult:
    """run_loop with the stage's defaults (flags override), keeping an EMA of the weights and
    leaving it in the model at the end: what every stage ships."""
    params = list(params)
    ema = EMA(params, decay=getattr(args, "ema_decay", None) or ema_decay)
    loop = {"warmup": args.warmup, "cosine_span": args.cosine_span, **loop}
    result = run_loop(params, loss_fn, lr=args.lr or lr, max_steps=args.max_steps, time_budget_s=args.minutes * 60,
                      ema=ema, log_every=args.log_every, device=device, deadline=args.deadline_at, **loop)
    ema.copy_to_params()
    return result


def fast_module(module, device: torch.device, compile_: bool):
    """channels_last for the convolutions on the GPU, and optionally torch.compile; the module's
    parameters stay shared, so saving and EMA use `module` itself."""
    if device.type != "cuda":
        return module
    module.to(memory_format=torch.channels_last)
    return torch.compile(module) if compile_ else module


def compiled(loss_fn, modules, args, device: torch.device) -> bool:
    """With --compile on CUDA, compile by running the loss once. False when compilation
    failed: it is a speed-up only, so the caller trains its eager modules instead."""
    if not (args.compile and device.type == "cuda"):
        return True
    try:
        print(f"compiled in {warm_up(loss_fn, modules):.0f} s", flush=True)
        return True
    except Exception as exc:
        print(f"torch.compile failed ({type(exc).__name__}: {exc}); training eagerly", flush=True)
        return False


def warm_up(loss_fn, modules) -> float:
    """One forward/backward to trigger compilation outside the timed loop; gradients dropped.
    Returns seconds taken. Raises whatever compilation raised."""
    start = time.time()
    loss_fn(0).backward()
    for m in modules:
        m.zero_grad(set_to_none=True)
    return time.time() - start
