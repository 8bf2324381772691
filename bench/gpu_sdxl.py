"""SDXL on the GPU (issues 15 and 17), one process, every row on the same card: random
weights from SDXL base 1.0's published configs (assets/configs/sdxl), fp16, 1024², 30 steps,
Euler, CFG 7, the same prompt and negative prompt everywhere.

- **vanilla** diffusers `StableDiffusionXLPipeline` (eager, SDPA): the baseline of the ratios;
- **diffusers' recipe**, the same five lines as bench/gpu_speed.py's SD 1.5 row:
  `fuse_qkv_projections()`, channels_last, `torch.compile(unet, mode="reduce-overhead",
  fullgraph=True)` and the same on `vae.decode`. Not `max-autotune` (diffusers' SDXL
  tutorial uses it): its autotuning of SDXL's UNet alone takes several minutes, past this
  bench's budget of one unattended H200 call of at most 9 minutes;
- **ours**: `PipelineManager` with `FastPath(compile="full")`: the first request of each mode
  (eager, captures inside it, compiles in the background), the background catch-up (bounded by
  the time budget), then steady s/image per mode (txt2img, img2img, RePaint inpaint,
  9-channel inpaint, ControlNet 1 unit) with which path served it, the peak VRAM with every
  mode loaded (memory_report + torch.cuda.max_memory_allocated) and PSNR vs vanilla.

Prints one JSON line per measurement as it goes and a summary table at the end; each
measurement is a @section, so one failure does not stop the rest. `--budget-s` (480 s from
the start of the process) bounds the background catch-up so the whole run ends in time;
sections that would start too late are skipped with a line saying so.

    PYTHONUNBUFFERED=1 python bench/gpu_sdxl.py                      # H200: about 8-9 min
    PYTHONUNBUFFERED=1 python bench/gpu_sdxl.py --skip-recipe --modes txt2img,controlnet
    python bench/gpu_sdxl.py --cpu-smoke      # the whole script on the CPU: tiny weights, 64², 2 steps, no compile
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gpu_speed import PROMPT, ROWS, T0, log, median_s, psnr, section, timed  # noqa: E402

SDXL = ROOT / "assets" / "configs" / "sdxl"
NEGATIVE = "blurry, low quality"  # diffusers would zero an empty one (force_zeros_for_empty_prompt): both get text
MODES = ("txt2img", "img2img", "repaint", "inpaint9", "controlnet")
LABELS = {"txt2img": "txt2img", "img2img": "img2img 0.6", "repaint": "inpaint RePaint r=1",
          "inpaint9": "inpaint 9-channel", "controlnet": "ControlNet 1 unit"}


# ----------------------------------------------------------------------------- timing


def elapsed() -> float:
    return time.perf_counter() - T0


def gib(n: float) -> float:
    return round(n / 2**30, 2)


def peak_vram() -> dict:
    if not torch.cuda.is_available():
        return {}
    return {"peak_allocated_gib": gib(torch.cuda.max_memory_allocated()),
            "peak_reserved_gib": gib(torch.cuda.max_memory_reserved()),
            "allocated_now_gib": gib(torch.cuda.memory_allocated())}


# ----------------------------------------------------------------------------- models
def build_random_sdxl(folder: Path, device: str) -> Path:
    """SDXL base's architecture with random weights (fp16) as a diffusers folder; beside it a
    9-channel UNet and a ControlNet of the same shapes."""
    from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device(device):
        unet_config = UNet2DConditionModel.load_config(SDXL, subfolder="unet")
        unet = UNet2DConditionModel.from_config(unet_config).half()
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SDXL, subfolder="vae")).half()
        one = CLIPTextModel(CLIPTextConfig.from_pretrained(SDXL, subfolder="text_encoder")).half()
        two = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(SDXL, subfolder="text_encoder_2")).half()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=one, text_encoder_2=two, unet=unet,
        tokenizer=CLIPTokenizer.from_pretrained(SDXL, subfolder="tokenizer"),
        tokenizer_2=CLIPTokenizer.from_pretrained(SDXL, subfolder="tokenizer_2"),
        scheduler=EulerDiscreteScheduler.from_pretrained(SDXL, subfolder="scheduler"), add_watermarker=False)
    pipe.save_pretrained(folder / "sdxl")
    with torch.device(device):  # built where it is initialised (1.25 B parameters)
        ControlNetModel.from_unet(unet).half().save_pretrained(folder / "controlnet")
    del pipe, unet, vae, one, two
    with torch.device(device):
        UNet2DConditionModel.from_config({**unet_config, "in_channels": 9}).half().save_pretrained(folder / "inpaint-unet")
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def build_tiny_sdxl(folder: Path) -> Path:
    """--cpu-smoke: the same layout from tests/tiny_sdxl.py's tiny random SDXL."""
    sys.path.insert(0, str(ROOT / "tests"))
    from diffusers import ControlNetModel
    from tiny_sdxl import tiny_xl_pipeline, tiny_xl_unet

    pipe = tiny_xl_pipeline(seed=0)
    pipe.save_pretrained(folder / "sdxl")
    ControlNetModel.from_unet(pipe.unet).save_pretrained(folder / "controlnet")
    tiny_xl_unet(in_channels=9, seed=1).save_pretrained(folder / "inpaint-unet")
    return folder


# ----------------------------------------------------------------------------- diffusers rows
def diffusers_pipe(folder: Path, args):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder / "sdxl", torch_dtype=args.dtype, add_watermarker=False)
    pipe.to(args.device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_run(pipe, args, seed=1):
    return pipe(PROMPT, negative_prompt=NEGATIVE, height=args.size, width=args.size, num_inference_steps=args.steps,
                guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def free(device) -> None:
    import gc

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


@section("sdxl vanilla")
def bench_vanilla(folder, args):
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pipe = diffusers_pipe(folder, args)
    t0 = time.perf_counter()
    diffusers_run(pipe, args)
    warm = time.perf_counter() - t0
    s = median_s(lambda: diffusers_run(pipe, args), args.repeats)
    reference = diffusers_run(pipe, args, seed=7)
    log(config="SDXL vanilla diffusers (eager, SDPA)", card=args.card, size=args.size, steps=args.steps, s_per_image=s,
        warmup_s=round(warm, 1), **peak_vram())
    del pipe
    free(args.device)
    return s, reference


@section("sdxl recipe")
def bench_recipe(folder, args, reference):
    """diffusers' documented torch.compile recipe, as a user would paste it (gpu_speed.py's)."""
    compile_ = torch.compile if args.compile else (lambda fn, **kw: fn)  # --cpu-smoke: every line but the compile
    pipe = diffusers_pipe(folder, args)
    pipe.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = compile_(pipe.unet, mode="reduce-overhead", fullgraph=True)
    pipe.vae.decode = compile_(pipe.vae.decode, mode="reduce-overhead", fullgraph=True)
    t0 = time.perf_counter()
    diffusers_run(pipe, args)
    warm = time.perf_counter() - t0
    diffusers_run(pipe, args)
    s = median_s(lambda: diffusers_run(pipe, args), args.repeats)
    log(config="SDXL diffusers recipe (fuse_qkv, channels_last, compile reduce-overhead fullgraph on unet + vae.decode)",
        card=args.card, s_per_image=s, warmup_s=round(warm, 1),
        note="fp16 SDXL: diffusers converts the VAE to fp32 and back around every decode (force_upcast)",
        psnr_vs_vanilla_db=psnr(reference, diffusers_run(pipe, args, seed=7)) if reference is not None else None)
    del pipe
    if args.compile:
        torch._dynamo.reset()  # its graphs and CUDA-graph pools go before ours load
    free(args.device)
    return s


# ----------------------------------------------------------------------------- ours
def mode_requests(folder, args, init: Image.Image) -> dict:
    from pipelines.core.requests import (Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling,
                                         Txt2ImgRequest)

    size = args.size
    sampling = Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.0, seed=3)
    common = dict(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size, sampling=sampling)
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    edges = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) > 0.9).astype(np.uint8) * 255)
    init = init.resize((size, size))
    every = {
        "txt2img": lambda: Txt2ImgRequest(**common),
        "img2img": lambda: Img2ImgRequest(**common, init_image=init, strength=0.6),
        "repaint": lambda: InpaintRequest(**common, init_image=init, mask=mask),
        "inpaint9": lambda: InpaintRequest(**common, init_image=init, mask=mask, mode="inpainting model",
                                           inpaint_model=str(folder / "inpaint-unet")),
        "controlnet": lambda: Txt2ImgRequest(**common, control=Control(units=(
            ControlUnit(model=str(folder / "controlnet"), image=edges),))),
    }
    limits = Limits(max_width=4096, max_height=4096)
    return {mode: limits.normalize(every[mode]()) for mode in args.modes}


def served_path(before: dict, after) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


@section("sdxl ours: load")
def ours_load(folder, args):
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    before = {}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = {"allocated_before_ours_gib": gib(torch.cuda.memory_allocated())}  # what earlier rows left behind
    # --cpu-smoke: the background worker runs for real, with an identity "compile"
    config = FastPath(compile="full") if args.compile else FastPath(compile="full", compiler=lambda fn: fn)
    manager = PipelineManager(device=args.device, dtype="fp16" if args.device == "cuda" else "fp32", fast_path=config)
    t0 = time.perf_counter()
    manager.load_base(str(folder / "sdxl"))
    load_s = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    if "inpaint9" in args.modes:
        manager.inpaint_unet(str(folder / "inpaint-unet"))
    if "controlnet" in args.modes:  # loaded before timing first requests: their disk load is not compute
        manager._fast(manager.controlnets.get(str(folder / "controlnet"), manager.pipeline("txt2img").unet,
                                              manager.device, manager.dtype, False))
    log(stage="SDXL ours loaded", family=manager.family_name, load_s=load_s,
        preload_extra_modules_s=round(time.perf_counter() - t0, 1), weight_gib=gib(manager.model.weight_bytes),
        fast_path=manager.fast_path_applied, **before)
    return manager


@section("sdxl ours: first requests")
def ours_first(manager, requests, args, vanilla_s, firsts: dict):
    """Back to back from a cold start: each served at once (eager, graphs captured inside the
    request for the step loop) while the worker compiles in the background."""
    runtime = manager.fast_runtime
    for mode, request in requests.items():
        before, paused = dict(runtime.served()), runtime.gate.paused_total()
        firsts[mode] = round(timed(lambda: manager.run(request), 1)[0], 3)
        log(mode=LABELS[mode], first_request_s=firsts[mode],
            vs_vanilla_txt2img=round(firsts[mode] / vanilla_s, 2) if vanilla_s else None,
            compile_paused_s=round(runtime.gate.paused_total() - paused, 2),  # the compile steps aside (compile_yield.py)
            served=served_path(before, runtime.served()))


@section("sdxl ours: background catch-up")
def ours_catch_up(manager, requests, args, firsts):
    """txt2img a few times while its UNet compiles (each served at once, on the eager graphs),
    then wait for the upgrades — until the budget's reserve for the steady rows."""
    runtime = manager.fast_runtime
    reserve = 30 + sum((1 + args.repeats) * firsts.get(m, 5.0) for m in requests)
    deadline = min(T0 + args.budget_s - reserve, time.perf_counter() + args.catch_up_s)
    unet = manager.pipeline("txt2img").unet._sd_studio_fast
    start = time.perf_counter()
    series = []
    # A few, not a loop until compiled: the compiling worker pauses while requests run.
    while ("txt2img" in requests and len(series) < 3 and time.perf_counter() < deadline
           and not (unet.served.get("compiled-graph", 0) or unet.served.get("compiled", 0))):
        series.append(round(timed(lambda: manager.run(requests["txt2img"]), 1)[0], 3))
    log(catch_up="txt2img requests while the UNet compiles", seconds=series)
    idle = runtime.wait_idle(max(0.0, deadline - time.perf_counter()))
    dropped = []
    if not idle:
        # Queued compiles would install between the steady rows' timed requests (each install
        # waits for the request lock): drop them; the one in flight may still install once,
        # which a median of 3 rides over.
        with runtime._cv:
            dropped = [f"{job[0].name} {list(job[2][0].shape)}" for job in runtime._compile_jobs]
            runtime._compile_jobs.clear()
    t_events = runtime.events[0][0] if runtime.events else time.time()
    log(background="every submitted upgrade installed" if idle else "still compiling at the budget's deadline",
        waited_s=round(time.perf_counter() - start, 1), reserve_for_steady_s=round(reserve),
        compiles_dropped=dropped, events=[(round(t - t_events, 1), e) for t, e in runtime.events])
    return idle


@section("sdxl ours: steady")
def ours_steady(manager, requests, args, vanilla_s, recipe_s, steady: dict, paths: dict):
    """Fills steady (mode → s/image) and paths (mode → calls per request by path) as it goes,
    so a failure in one mode keeps the others' rows."""
    runtime = manager.fast_runtime
    for mode, request in requests.items():
        manager.run(request)
        # ControlNet: that request taught the step's parts; the worker now captures the whole
        # step as one graph (control_overlap.py), installed before the timed requests.
        runtime.wait_idle(60)
        manager.run(request)
        before = dict(runtime.served())
        steady[mode] = median_s(lambda: manager.run(request), args.repeats)
        # per request: the calls of the runs timed
        paths[mode] = {k: v // args.repeats for k, v in served_path(before, runtime.served()).items()}
        log(config=f"SDXL ours {LABELS[mode]}", card=args.card, s_per_image=steady[mode],
            vs_vanilla=round(vanilla_s / steady[mode], 2) if vanilla_s and mode == "txt2img" else None,
            vs_recipe=round(recipe_s / steady[mode], 2) if recipe_s and mode == "txt2img" else None,
            ratio_to_txt2img=round(steady[mode] / steady["txt2img"], 2) if "txt2img" in steady else None,
            served_per_request=paths[mode], worker_busy=not runtime.wait_idle(0))
    log(served_by_call={f"{call.name} #{i}": dict(call.served) for i, call in enumerate(runtime.calls)})


@section("sdxl ours: PSNR vs vanilla")
def ours_psnr(manager, args, reference):
    from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest

    request = Limits(max_width=4096, max_height=4096).normalize(Txt2ImgRequest(
        prompt=PROMPT, negative_prompt=NEGATIVE, width=args.size, height=args.size,
        sampling=Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.0, seed=7)))
    image = manager.run(request).images[0].image
    log(psnr_ours_vs_vanilla_db=psnr(reference, image) if reference is not None else None)


@section("sdxl ours: memory, every mode loaded")
def ours_memory(manager, args):
    report = manager.memory_report()
    log(stage="SDXL every mode loaded", modes=report["modes"], base_gib=gib(report["base_bytes"]),
        shared_gib=gib(report["shared_bytes"]), extra_gib=gib(report["extra_bytes"]),
        all_modes_weights_gib=gib(report["all_modes_bytes"]), **peak_vram())


def main_path(served: dict) -> str:
    """The path that served most calls of a steady request, e.g. 'compiled-graph 31/33'."""
    if not served:
        return "-"
    how, n = max(served.items(), key=lambda kv: kv[1])
    return f"{how} {n}/{sum(served.values())}"


def summary(vanilla_s, recipe_s, firsts, steady, paths) -> None:
    """One table like gpu_speed.py's; ratios to vanilla and the recipe only for txt2img (the
    same task), the other modes against our own txt2img."""
    print("\n| configuration | s/image | vs vanilla | vs recipe | vs our txt2img | first request s | steady calls served by |",
          flush=True)
    print("|---|---|---|---|---|---|---|")
    fmt = lambda x, spec: format(x, spec) if x else "-"  # noqa: E731
    for label, s in (("SDXL vanilla diffusers (eager, SDPA)", vanilla_s), ("SDXL diffusers recipe", recipe_s)):
        if s:
            print(f"| {label} | {s:.3f} | {vanilla_s / s if vanilla_s else 0:.2f}x | "
                  f"{f'{recipe_s / s:.2f}x' if recipe_s else '-'} | - | - | - |")
    base = steady.get("txt2img")
    for mode in dict.fromkeys([*firsts, *steady]):
        s, same_task = steady.get(mode), mode == "txt2img"
        print(f"| SDXL ours: {LABELS[mode]} | {fmt(s, '.3f')} | "
              f"{f'{vanilla_s / s:.2f}x' if same_task and s and vanilla_s else '-'} | "
              f"{f'{recipe_s / s:.2f}x' if same_task and s and recipe_s else '-'} | "
              f"{f'{s / base:.2f}' if s and base else '-'} | {fmt(firsts.get(mode), '.2f')} | "
              f"{main_path(paths.get(mode, {}))} |", flush=True)


def save_rows() -> None:
    """Every row so far into $OUT/gpu_sdxl.json (the device tool's output folder), after each
    stage: a run cut off by the machine's time limit keeps what it measured."""
    out = os.environ.get("OUT")
    if out:
        Path(out, "gpu_sdxl.json").write_text(json.dumps(ROWS, indent=1, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per steady row (the median)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--budget-s", type=float, default=480, help="the whole run's target wall time")
    parser.add_argument("--catch-up-s", type=float, default=400, help="longest wait for the background compiles")
    parser.add_argument("--cpu-smoke", action="store_true", help="CPU, tiny random SDXL, 64², 2 steps, no compile")
    args = parser.parse_args()
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {', '.join(MODES)}")
    if args.cpu_smoke:
        args.device, args.dtype, args.compile, args.card = "cpu", torch.float32, False, "cpu (smoke)"
        args.size, args.steps, args.repeats = 64, 2, 1
    else:
        args.device, args.dtype, args.compile = "cuda", torch.float16, True
        args.card = torch.cuda.get_device_name()
    folder = Path(tempfile.mkdtemp(prefix="sdxl-bench-"))
    (build_tiny_sdxl if args.cpu_smoke else lambda f: build_random_sdxl(f, "cuda"))(folder)
    log(stage="built random SDXL + 9-channel UNet + ControlNet", card=args.card, torch=torch.__version__,
        seconds=round(elapsed(), 1), size=args.size, steps=args.steps, modes=args.modes)

    vanilla_s, reference = bench_vanilla(folder, args) or (None, None)
    save_rows()
    recipe_s = None
    if args.skip_recipe:
        log(section="sdxl recipe", skipped="--skip-recipe")
    elif elapsed() > 0.4 * args.budget_s:  # its compile cannot be cut short: leave ours its time
        log(section="sdxl recipe", skipped=f"{elapsed():.0f} s gone of the {args.budget_s:.0f} s budget before it")
    else:
        recipe_s = bench_recipe(folder, args, reference)
    save_rows()
    firsts, steady, paths = {}, {}, {}
    manager = ours_load(folder, args)
    if manager is not None:
        init = reference if reference is not None else Image.new("RGB", (args.size, args.size), (90, 120, 200))
        requests = mode_requests(folder, args, init)
        ours_first(manager, requests, args, vanilla_s, firsts)
        ours_catch_up(manager, requests, args, firsts)
        save_rows()
        ours_steady(manager, requests, args, vanilla_s, recipe_s, steady, paths)
        ours_psnr(manager, args, reference)
        ours_memory(manager, args)
    summary(vanilla_s, recipe_s, firsts, steady, paths)
    log(stage="done", wall_s=round(elapsed(), 1), budget_s=args.budget_s)
    save_rows()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown under a live compile worker thread (it aborted once)


if __name__ == "__main__":
    main()
