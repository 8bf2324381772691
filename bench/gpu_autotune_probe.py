"""Could inductor's max-autotune (Triton GEMM/convolution templates autotuned against cuBLAS
and cuDNN) make SD 1.5's UNet step much faster? Its convolutions and GEMMs are 3.5 of the
step's 6.16 ms on an H200 (docs/performance.md, round e); txt2img at 1.3× diffusers' recipe
needs the step near 5.0 ms, i.e. those kernels ~1.45× faster. A whole-UNet max-autotune
compile does not fit one 10-minute device call, so this times the UNet's costliest shapes
alone (512², CFG batch 2, fp16, channels_last), each as one CUDA graph: the eager op (what
the compiled UNet calls: cuDNN / cuBLAS) against `torch.compile(mode="max-autotune-no-cudagraphs")`,
which keeps the ATen kernel when no template beats it.

    PYTHONUNBUFFERED=1 python bench/gpu_autotune_probe.py [--budget-s 200]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

import torch  # noqa: E402

from gpu_controlnet_overlap import step_ms  # noqa: E402
from gpu_speed import budget_watchdog, log  # noqa: E402

# (name, uses per UNet step, module, input shape): the 3×3 convolutions of the resnets and the
# transformer blocks' largest GEMMs at each level (about how often each runs per CFG step).
CASES = [
    ("conv 3x3 320->320 @64x64", 7, lambda: torch.nn.Conv2d(320, 320, 3, padding=1), (2, 320, 64, 64)),
    ("conv 3x3 640->640 @32x32", 6, lambda: torch.nn.Conv2d(640, 640, 3, padding=1), (2, 640, 32, 32)),
    ("conv 3x3 1280->1280 @16x16", 6, lambda: torch.nn.Conv2d(1280, 1280, 3, padding=1), (2, 1280, 16, 16)),
    ("linear 320->2560 (GEGLU) x8192 tokens", 5, lambda: torch.nn.Linear(320, 2560), (8192, 320)),
    ("linear 1280->320 (FF out) x8192 tokens", 5, lambda: torch.nn.Linear(1280, 320), (8192, 1280)),
    ("linear 640->5120 (GEGLU) x2048 tokens", 5, lambda: torch.nn.Linear(640, 5120), (2048, 640)),
]


def graph_us(fn, x) -> float:
    """µs per call of fn(x): ten calls captured in one CUDA graph (so the graph's launch does
    not decide the number), timed by gpu_controlnet_overlap.step_ms."""
    ms, _ = step_ms(lambda x: [fn(x) for _ in range(10)], (x,), repeats=20)
    return ms * 1000 / 10


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=200)
    args = parser.parse_args()
    budget_watchdog(args.budget_s)
    log(card=torch.cuda.get_device_name(), torch=torch.__version__)
    saved_eager = saved_tuned = 0.0
    for name, uses, make, shape in CASES:
        with torch.no_grad():
            module = make().cuda().half()
            x = torch.randn(*shape, device="cuda", dtype=torch.float16)
            if x.dim() == 4:
                module, x = module.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            eager = graph_us(module, x)
            started = time.perf_counter()
            tuned_fn = torch.compile(module, mode="max-autotune-no-cudagraphs", fullgraph=True, dynamic=False)
            tuned_fn(x)
            tune_s = time.perf_counter() - started
            tuned = graph_us(tuned_fn, x)
            error = float((tuned_fn(x).float() - module(x).float()).abs().max())
        saved_eager += uses * eager
        saved_tuned += uses * tuned
        log(case=name, uses_per_step=uses, eager_us=round(eager, 1), max_autotune_us=round(tuned, 1),
            speedup=round(eager / tuned, 3), autotune_s=round(tune_s, 1), max_abs_diff=error)
    log(summary="these shapes' share of one UNet step", eager_ms=round(saved_eager / 1000, 3),
        max_autotune_ms=round(saved_tuned / 1000, 3), saved_ms=round((saved_eager - saved_tuned) / 1000, 3))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
