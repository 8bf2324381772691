"""Token merging (ToMe for SD, pipelines/token_merging.py): what it costs in quality and what
it saves in time, at ratios 0.3 and 0.5 against off.

    OMP_NUM_THREADS=2 python bench/tome_quality.py --n 40                 # CPU (device auto)
    PYTHONUNBUFFERED=1 python bench/tome_quality.py --device cuda --n 60  # a GPU (fp16; eager and CUDA graph)

Two parts, one JSON line per row:
1. `demo`: the shipped demo model (assets/models/demo), the read-back probes of
   bench/turbo_quality.py (held-out single-object captions scored from pixels, CFG 5,
   20 DDIM steps, 128², same seeds per row; its `sample` with a token-merging ratio): probe
   scores, PSNR / mean |Δ| of the pixels and the latents' relative error against off. Quality
   only: the time is measured on SD 1.5's shapes (part 2), where attention at 64×64 matters.
2. `sd15`: SD 1.5's architecture (assets/configs/sd15) with random weights, 512²: the UNet
   call at the CFG batch (2 latents of 64×64, 77 text tokens), off vs each ratio, median of
   `--repeats` calls interleaved (same process; CPU fp32 eager; GPU fp16 eager and CUDA
   graph), as a speed-up ratio; then the final image of a short Euler run (`--steps`, CFG
   7.5, one seed) and its PSNR against off. Random weights draw no picture, but the PSNR
   still measures how far the merge moves the output.
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
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.token_merging import token_merging  # noqa: E402
from turbo_quality import psnr, sample  # noqa: E402

RATIOS = (0.0, 0.3, 0.5)
SD15 = ROOT / "assets" / "configs" / "sd15"


def log(**fields) -> None:
    print(json.dumps(fields), flush=True)


def demo_probes(args) -> None:
    from training.evaluate import heldout_probes, load_pipeline, score_objects

    pipe = load_pipeline(ROOT / "assets" / "models", "cpu")
    probes = heldout_probes(args.n)
    captions, truths = [c for c, _ in probes], [t for _, t in probes]
    results = {ratio: sample(pipe, captions, "Off", token_merging=ratio)[:2] for ratio in RATIOS}
    off_latents, off_images = results[0.0]
    for ratio, (latents, images) in results.items():
        log(part="demo", token_merging=ratio, n=args.n, **score_objects(images, truths),
            psnr_vs_off_db=psnr(images, off_images),
            mean_abs_pixel_diff_vs_off=round(float(np.abs(images.astype(np.float64) - off_images).mean()), 2),
            latent_rel_error_vs_off=round(float((latents - off_latents).norm() / off_latents.norm()), 4))


def random_sd15(device, dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15, subfolder="text_encoder"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder,
                                   tokenizer=CLIPTokenizer.from_pretrained(SD15, subfolder="tokenizer"), unet=unet,
                                   scheduler=EulerDiscreteScheduler.from_pretrained(SD15, subfolder="scheduler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _graphed(fn, inputs):
    from pipelines.fast_path import CapturedGraph

    graph = CapturedGraph(fn, inputs, torch.cuda.graph_pool_handle())
    return lambda: graph(*inputs)


@torch.no_grad()
def sd15_rows(args, device, dtype) -> None:
    pipe = random_sd15(device, dtype)
    unet = pipe.unet.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 4, args.size // 8, args.size // 8, device=device, dtype=dtype)  # the CFG batch
    c = torch.randn(2, 77, 768, device=device, dtype=dtype)
    t = torch.tensor(500.0, device=device)

    def call(ratio):
        def run():
            with token_merging(unet, ratio):
                return (unet(x, t, c, return_dict=False)[0],)
        return run

    paths = {"eager": {r: call(r) for r in RATIOS}}
    if device.type == "cuda":
        paths["cuda graph"] = {r: _graphed(lambda *_, r=r: call(r)(), [x]) for r in RATIOS}
    for path, runs in paths.items():
        for run in runs.values():
            run()  # warm-up (allocations, kernels' first launch)
        times = {r: [] for r in RATIOS}
        for _ in range(args.repeats):  # interleaved: other load slows every ratio alike
            for ratio, run in runs.items():
                _sync(device)
                start = time.perf_counter()
                run()
                _sync(device)
                times[ratio].append(time.perf_counter() - start)
        off = statistics.median(times[0.0])
        for ratio in RATIOS:
            ms = statistics.median(times[ratio])
            log(part="sd15 unet call", path=path, device=str(device), dtype=str(dtype).split(".")[-1],
                token_merging=ratio, size=args.size, batch=2, repeats=args.repeats, ms_median=round(ms * 1000, 1),
                speedup_vs_off=round(off / ms, 3), threads=torch.get_num_threads())
    images = {}
    for ratio in RATIOS:
        with token_merging(unet, ratio):
            images[ratio] = np.asarray(pipe("a photograph of an astronaut riding a horse", height=args.size, width=args.size,
                                            num_inference_steps=args.steps, guidance_scale=7.5,
                                            generator=torch.Generator("cpu").manual_seed(0)).images[0])
    for ratio in RATIOS[1:]:
        log(part="sd15 image", device=str(device), token_merging=ratio, steps=args.steps, size=args.size,
            psnr_vs_off_db=psnr(images[ratio], images[0.0]),
            mean_abs_pixel_diff_vs_off=round(float(np.abs(images[ratio].astype(np.float64) - images[0.0]).mean()), 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--n", type=int, default=40, help="held-out captions scored on the demo model")
    parser.add_argument("--repeats", type=int, default=None, help="timed UNet calls per ratio (CPU 3, GPU 20)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps of the sd15 image (CPU 4, GPU 30)")
    parser.add_argument("--size", type=int, default=512, help="sd15 rows: image side (latents side/8)")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-sd15", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    gpu = device.type == "cuda"
    args.repeats = args.repeats or (20 if gpu else 3)
    args.steps = args.steps or (30 if gpu else 4)
    if not args.skip_demo:
        demo_probes(args)  # the demo model is small: its probes run on the CPU either way
    if not args.skip_sd15:
        sd15_rows(args, device, torch.float16 if gpu else torch.float32)


if __name__ == "__main__":
    main()
