"""GPU benchmark, one process: vanilla diffusers vs the manager's fast path on an SD 1.5-shaped
pipeline with random weights (the cost of trained ones), fp16, 512², 30 steps, CFG 7.5, Euler,
batch 1. Prints a JSON line per measurement (unbuffered) and ratio lines.

    PYTHONUNBUFFERED=1 python bench/gpu_speed.py [--steps 30] [--size 512] [--compile regional]

Also: UNet ms per CFG call, warm-up seconds, peak VRAM, image agreement (PSNR), and mode
switches txt2img → img2img → inpaint (RePaint) → ControlNet → txt2img with their first-call
time and the VRAM with every mode loaded vs the base alone.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionPipeline,  # noqa: E402
                       UNet2DConditionModel)
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

SD15 = ROOT / "assets" / "configs" / "sd15"
PROMPT = "a photograph of an astronaut riding a horse"


def log(**fields):
    print(json.dumps(fields), flush=True)


def build_random_sd15(folder: Path) -> Path:
    """SD 1.5's architecture from the shipped configs, random weights, saved as fp16."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15, subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15, subfolder="text_encoder"))
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(SD15, subfolder="tokenizer"),
                                   unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(SD15, subfolder="scheduler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder)
    return folder


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((x - y) ** 2).mean()
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def unet_ms(unet, repeats: int = 30) -> float:
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
    c = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    t = torch.tensor(500.0, device="cuda")
    with torch.inference_mode():
        for _ in range(3):
            unet(x, t, encoder_hidden_states=c, return_dict=False)
        return statistics.median(timed(lambda: unet(x, t, encoder_hidden_states=c, return_dict=False), repeats)) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", default="regional", choices=("regional", "full", "none"))
    parser.add_argument("--skip-modes", action="store_true")
    args = parser.parse_args()
    card = torch.cuda.get_device_name()
    folder = Path(tempfile.mkdtemp()) / "sd15-random"
    started = time.perf_counter()
    build_random_sd15(folder)
    log(stage="built random SD 1.5", seconds=round(time.perf_counter() - started, 1), card=card)

    # ------------------------------------------------------------------ vanilla diffusers
    vanilla = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float16, safety_checker=None,
                                                      requires_safety_checker=False).to("cuda")
    vanilla.set_progress_bar_config(disable=True)
    vanilla.scheduler = EulerDiscreteScheduler.from_config(vanilla.scheduler.config)

    def run_vanilla(seed=1):
        return vanilla(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.5,
                       generator=torch.Generator("cpu").manual_seed(seed)).images[0]

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run_vanilla()
    warm_vanilla = time.perf_counter() - t0
    run_vanilla()
    times = timed(run_vanilla, args.repeats)
    vanilla_s = statistics.median(times)
    reference = run_vanilla(seed=7)
    log(config="vanilla diffusers", card=card, size=args.size, steps=args.steps, s_per_image=round(vanilla_s, 4),
        it_per_s=round(args.steps / vanilla_s, 1), unet_ms_per_cfg_call=round(unet_ms(vanilla.unet), 2),
        warmup_s=round(warm_vanilla, 1), peak_vram_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    vanilla = None  # free its weights before the manager loads its own copy
    torch.cuda.empty_cache()

    # ------------------------------------------------------------------ the manager's fast path
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager
    from pipelines.requests import Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling, Txt2ImgRequest

    limits = Limits()
    manager = PipelineManager(device="cuda", dtype="fp16", fast_path=FastPath(compile=args.compile))
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    manager.load_base(str(folder))
    load_s = time.perf_counter() - t0

    def request(seed=1, **kw):
        return limits.normalize(Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size,
                                               sampling=Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=seed), **kw))

    t0 = time.perf_counter()
    manager.run(request())
    manager.run(request())
    manager.run(request())  # warm-up, shape capture
    warm_fast = time.perf_counter() - t0
    fast_s = statistics.median(timed(lambda: manager.run(request()), args.repeats))
    fast_image = manager.run(request(seed=7)).images[0].image
    base_vram = torch.cuda.max_memory_allocated() / 2**30
    log(config=f"manager fast path ({', '.join(manager.fast_path_applied)})", card=card, size=args.size, steps=args.steps,
        s_per_image=round(fast_s, 4), it_per_s=round(args.steps / fast_s, 1),
        unet_ms_per_cfg_call=round(unet_ms(manager.pipeline("txt2img").unet), 2), load_s=round(load_s, 1),
        warmup_s=round(warm_fast, 1), peak_vram_gib=round(base_vram, 2), psnr_vs_vanilla_db=round(psnr(reference, fast_image), 1))
    log(ratio="vanilla / fast path, end-to-end s per image", speedup=round(vanilla_s / fast_s, 2),
        compute_limit_s=round(args.steps * 2.03e-3, 3))
    if args.skip_modes:
        return

    # ------------------------------------------------------------------ mode switches
    init = fast_image
    mask = Image.new("L", (args.size, args.size), 0)
    mask.paste(255, (args.size // 4, args.size // 4, 3 * args.size // 4, 3 * args.size // 4))
    controlnet_dir = folder.parent / "controlnet"
    ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(folder, subfolder="unet")).to(torch.float16).save_pretrained(controlnet_dir)
    edges = Image.fromarray((np.random.default_rng(0).random((args.size, args.size, 3)) > 0.9).astype(np.uint8) * 255)
    s = Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=3)
    modes = [
        ("img2img", Img2ImgRequest(prompt=PROMPT, width=args.size, height=args.size, init_image=init, strength=0.75, sampling=s)),
        ("inpaint (RePaint r=1)", InpaintRequest(prompt=PROMPT, width=args.size, height=args.size, init_image=init, mask=mask, sampling=s)),
        ("controlnet", Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size, sampling=s,
                                      control=Control(units=(ControlUnit(model=str(controlnet_dir), image=edges),)))),
        ("txt2img again", Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size, sampling=s)),
    ]
    for name, req in modes:
        req = limits.normalize(req)
        first = timed(lambda: manager.run(req), 1)[0]
        steady = statistics.median(timed(lambda: manager.run(req), 3))
        log(mode=name, first_call_s=round(first, 3), steady_s=round(steady, 4),
            unet_graphs=len(manager.pipeline("txt2img").unet._sd_studio_graphs.graphs))
    report = manager.memory_report()
    log(memory="all modes loaded", peak_vram_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
        base_only_peak_vram_gib=round(base_vram, 2), ratio=round(torch.cuda.max_memory_allocated() / 2**30 / base_vram, 3),
        weights_shared_gib=round(report["shared_bytes"] / 2**30, 3), extra_modules_gib=round(report["extra_bytes"] / 2**30, 3))


if __name__ == "__main__":
    main()
