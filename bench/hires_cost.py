"""CPU benchmark: what the hires fix costs, against a plain txt2img at the final size, in one
process on the same weights (ratios, not seconds, are the result).

    python bench/hires_cost.py                                   # the shipped demo model, 128 → 256
    python bench/hires_cost.py --size 64 --steps 10 --repeats 2

A1111's accounting: pass 1 runs `steps` at the base size, pass 2 runs int(hires steps ×
denoising strength) at the final size, so with 20 steps, strength 0.5 and ×2 the UNet work is
20·¼ + 10·1 = 15 final-size steps against 20: about 0.75 of a plain run at the final size,
plus the upscale (a latent interpolate, or a VAE decode + encode for pixel upscalers).
Prints one JSON line per configuration and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402


def seconds(manager, request, repeats: int) -> float:
    manager.run(request)  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        manager.run(request)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "assets" / "models" / "demo"))
    parser.add_argument("--size", type=int, default=128, help="base size; the final size is twice it")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    manager = PipelineManager(device="cpu")
    manager.load_base(args.model)
    limits = Limits(max_width=4 * args.size, max_height=4 * args.size)

    def request(size: int, **hires) -> Txt2ImgRequest:
        sampling = Sampling(steps=args.steps, seed=1, scheduler="Euler")
        return limits.normalize(Txt2ImgRequest(prompt="a red circle", width=size, height=size, sampling=sampling, **hires))

    plain = seconds(manager, request(2 * args.size), args.repeats)
    rows = {"plain at the final size": plain}
    for upscaler in ("Latent", "Lanczos"):
        hires = request(args.size, enable_hr=True, hr_scale=2, hr_upscaler=upscaler, denoising_strength=args.strength)
        rows[f"hires {upscaler}"] = seconds(manager, hires, args.repeats)
    for name, value in rows.items():
        print(json.dumps({"config": name, "seconds": round(value, 3), "ratio_to_plain": round(value / plain, 3),
                          "base": args.size, "final": 2 * args.size, "steps": args.steps, "strength": args.strength}))


if __name__ == "__main__":
    main()
