"""Turbo (DeepCache, pipelines/turbo.py) on the shipped demo model, CPU: what it costs in
read-back accuracy and what it saves in time.

    OMP_NUM_THREADS=2 python bench/turbo_quality.py --n 40 --time-n 4 --rounds 2   # CPU

Held-out single-object captions (training/evaluate.py's base probe: colour/shape/background
triples never drawn in training), read back from pixels, CFG 5, 20 DDIM steps, 128², the same
seeds for every row; rows: turbo off, DeepCache 2, DeepCache 3. Per row: the probe scores,
PSNR and mean |Δ| of the pixels against turbo off, the latents' relative error
‖z − z_off‖ / ‖z_off‖, full/shallow UNet call counts, and s/image (wall, and this process's
CPU seconds) on a batch of `--time-n` captions (rows interleaved, `--rounds` times after a
warm-up round, min: other load only adds time; ratios within this run only), and the cost
of one full and one shallow UNet call (min of 20) with the speed-up they imply for the UNet.
Prints one JSON line per row.
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
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.core.requests import TURBO_MODES  # noqa: E402
from pipelines.token_merging import merged_model, token_merging as merging  # noqa: E402
from pipelines.turbo import cache_interval, deep_cache  # noqa: E402
from training import data  # noqa: E402
from training.evaluate import CFG, STEPS, heldout_probes, load_pipeline, score_objects  # noqa: E402


@torch.no_grad()
def sample(pipe, prompts: list[str], mode: str, seed: int = 0, token_merging: float = 0.0
           ) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Latents and uint8 images of one batch (one sampling run) under the turbo mode (and a
    token-merging ratio: bench/tome_quality.py)."""
    with merging(pipe.unet, token_merging if mode == "Off" else 0.0), \
            deep_cache(pipe.unet, cache_interval(mode), model=merged_model(pipe.unet, token_merging)) as stepper:
        latents = pipe(prompts, height=data.IMAGE_SIZE, width=data.IMAGE_SIZE, num_inference_steps=STEPS,
                       guidance_scale=CFG, generator=torch.Generator("cpu").manual_seed(seed),
                       output_type="latent").images
    images = pipe.image_processor.postprocess(pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample,
                                              output_type="np")
    counts = {"full": stepper.full_calls, "shallow": stepper.shallow_calls} if stepper else {"full": STEPS, "shallow": 0}
    return latents, (np.asarray(images) * 255 + 0.5).clip(0, 255).astype(np.uint8), counts


@torch.no_grad()
def call_costs(pipe, batch: int, repeats: int = 20) -> tuple[float, float]:
    """ms of one full and one shallow UNet call at the probe's shape (CFG batch), min of `repeats`."""
    unet, size = pipe.unet, data.IMAGE_SIZE // pipe.vae_scale_factor
    x = torch.randn(2 * batch, unet.config.in_channels, size, size)
    c = torch.randn(2 * batch, 77, unet.config.cross_attention_dim)
    t = torch.tensor(500)
    best = {"full": float("inf"), "shallow": float("inf")}
    with deep_cache(unet, 2) as stepper:  # calls alternate full, shallow
        for index in range(2 * repeats):
            start = time.perf_counter()
            unet(x, t, c)
            kind = "full" if index % 2 == 0 else "shallow"
            best[kind] = min(best[kind], time.perf_counter() - start)
    assert stepper.full_calls == stepper.shallow_calls == repeats
    return round(best["full"] * 1000, 2), round(best["shallow"] * 1000, 2)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b) ** 2).mean()
    return float("inf") if mse == 0 else round(10 * np.log10(255 ** 2 / mse), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="held-out captions scored")
    parser.add_argument("--time-n", type=int, default=8, help="captions per timed batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pipe = load_pipeline(ROOT / "assets" / "models", "cpu")
    probes = heldout_probes(args.n)
    captions, truths = [c for c, _ in probes], [t for _, t in probes]
    results = {mode: sample(pipe, captions, mode) for mode in TURBO_MODES}
    times = {mode: [] for mode in TURBO_MODES}
    cpu_times = {mode: [] for mode in TURBO_MODES}
    for round_ in range(args.rounds + 1):  # interleaved: a noisy shared CPU slows every row alike; round 0 warms up
        for mode in TURBO_MODES:
            start, cpu_start = time.perf_counter(), time.process_time()
            sample(pipe, captions[:args.time_n], mode, seed=1)
            if round_:
                times[mode].append((time.perf_counter() - start) / args.time_n)
                cpu_times[mode].append((time.process_time() - cpu_start) / args.time_n)
    off_latents, off_images, _ = results["Off"]
    # min over rounds: other load on a shared machine only ever adds time
    off_s, off_cpu = min(times["Off"]), min(cpu_times["Off"])
    full_ms, shallow_ms = call_costs(pipe, args.time_n)
    for mode, (latents, images, counts) in results.items():
        s, cpu = min(times[mode]), min(cpu_times[mode])
        print(json.dumps({
            "turbo": mode, "n": args.n, **score_objects(images, truths),
            "psnr_vs_off_db": psnr(images, off_images),
            "mean_abs_pixel_diff_vs_off": round(float(np.abs(images.astype(np.float64) - off_images).mean()), 2),
            "latent_rel_error_vs_off": round(float((latents - off_latents).norm() / off_latents.norm()), 4),
            "unet_calls": counts, "s_per_image": round(s, 4), "speedup_vs_off": round(off_s / s, 2),
            # CPU seconds of this process: the work done, less sensitive to other load on a shared machine
            "cpu_s_per_image": round(cpu, 4), "cpu_speedup_vs_off": round(off_cpu / cpu, 2),
            "threads": torch.get_num_threads(),
            # from one full and one shallow UNet call's cost (min of 20 each) and the call counts
            "unet_ms_full_call": full_ms, "unet_ms_shallow_call": shallow_ms,
            "unet_speedup_from_call_costs": round(sum(counts.values()) * full_ms /
                                                  (counts["full"] * full_ms + counts["shallow"] * shallow_ms), 2),
        }), flush=True)


if __name__ == "__main__":
    main()
