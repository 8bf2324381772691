"""GPU benchmark, one process, every row on the same card: vanilla diffusers, diffusers'
documented compile recipe, the app's manager with the fast path off (eager, per mode) and on
(first request of each mode, the background catch-up, steady speed per mode, a second size).
SD 1.5 shapes with random weights (the cost of trained ones), fp16, 30 steps, CFG 7.5, Euler.

    PYTHONUNBUFFERED=1 python bench/gpu_speed.py [--size 512] [--steps 30] [--skip-recipe]
    python bench/gpu_speed.py --cpu-smoke     # the hires rows' code on a tiny model on the CPU (a dry run)

Prints one JSON line per measurement as it goes, and a summary table at the end.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import (AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionPipeline,  # noqa: E402
                       UNet2DConditionModel)
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: E402

SD15 = ROOT / "assets" / "configs" / "sd15"
PROMPT = "a photograph of an astronaut riding a horse"
ROWS: list[dict] = []
T0 = time.perf_counter()


def log(**fields):
    fields["t"] = round(time.perf_counter() - T0, 1)
    ROWS.append(fields)
    print(json.dumps(fields), flush=True)


def budget_watchdog(seconds: float, on_stop=None) -> None:
    """End the process after `seconds` with what it has logged (one device call has a time limit)."""
    def stop():
        time.sleep(seconds)
        log(watchdog=f"budget of {seconds:.0f} s used up")
        if on_stop is not None:
            on_stop()
        sys.stdout.flush()
        os._exit(0)

    threading.Thread(target=stop, daemon=True).start()


def section(name):
    """Run a bench section; a failure is logged and the next section still runs."""
    def wrap(fn):
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 — a benchmark reports, then goes on
                log(section=name, error=f"{type(error).__name__}: {error}", trace=traceback.format_exc()[-2000:])
        return run
    return wrap


def build_random_sd15(folder: Path) -> Path:
    """SD 1.5's architecture from the shipped configs, random weights, saved as fp16; beside
    it a 9-channel inpainting UNet and a ControlNet of the same shapes."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet_config = UNet2DConditionModel.load_config(SD15, subfolder="unet")
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(SD15, subfolder="vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(SD15, subfolder="text_encoder"))
        inpaint_unet = UNet2DConditionModel.from_config({**unet_config, "in_channels": 9})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(SD15, subfolder="tokenizer"),
                                   unet=unet, scheduler=EulerDiscreteScheduler.from_pretrained(SD15, subfolder="scheduler"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder / "sd15")
    inpaint_unet.to(torch.float16).save_pretrained(folder / "inpaint-unet")
    ControlNetModel.from_unet(unet).to(torch.float16).save_pretrained(folder / "controlnet")
    return folder


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mse = ((x - y) ** 2).mean()
    return float("inf") if mse == 0 else round(10 * math.log10(255 ** 2 / mse), 1)


def _sync() -> None:
    if torch.cuda.is_initialized():  # CPU smoke runs (no CUDA work queued) time wall clock alone
        torch.cuda.synchronize()


def timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return times


def median_s(fn, repeats: int) -> float:
    return round(statistics.median(timed(fn, repeats)), 4)


def diffusers_pipe(folder: Path):
    pipe = StableDiffusionPipeline.from_pretrained(folder / "sd15", torch_dtype=torch.float16, safety_checker=None,
                                                   requires_safety_checker=False).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def diffusers_run(pipe, args, seed=1):
    return pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.5,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


@section("vanilla")
def bench_vanilla(folder, args, card):
    pipe = diffusers_pipe(folder)
    t0 = time.perf_counter()
    diffusers_run(pipe, args)
    warm = time.perf_counter() - t0
    diffusers_run(pipe, args)
    s = median_s(lambda: diffusers_run(pipe, args), args.repeats)
    log(config="vanilla diffusers (eager, SDPA)", card=card, s_per_image=s, warmup_s=round(warm, 1))
    return s, diffusers_run(pipe, args, seed=7), pipe


@section("recipe")
def bench_recipe(folder, args, card, reference):
    """diffusers' documented torch.compile recipe, as a user would paste it."""
    pipe = diffusers_pipe(folder)
    pipe.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode="reduce-overhead", fullgraph=True)
    pipe.vae.decode = torch.compile(pipe.vae.decode, mode="reduce-overhead", fullgraph=True)
    t0 = time.perf_counter()
    diffusers_run(pipe, args)
    warm = time.perf_counter() - t0
    diffusers_run(pipe, args)
    s = median_s(lambda: diffusers_run(pipe, args), args.repeats)
    log(config="diffusers recipe (fuse_qkv, channels_last, compile reduce-overhead fullgraph on unet + vae.decode)",
        card=card, s_per_image=s, warmup_s=round(warm, 1), psnr_vs_vanilla_db=psnr(reference, diffusers_run(pipe, args, seed=7)))
    return s, pipe


def mode_requests(folder, args, init):
    from pipelines.core.requests import Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling, Txt2ImgRequest

    size, s = args.size, Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=3)
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    edges = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) > 0.9).astype(np.uint8) * 255)
    limits = Limits()
    return {name: limits.normalize(req) for name, req in [
        ("txt2img", Txt2ImgRequest(prompt=PROMPT, width=size, height=size, sampling=s)),
        ("img2img 0.75", Img2ImgRequest(prompt=PROMPT, width=size, height=size, init_image=init, strength=0.75, sampling=s)),
        ("inpaint RePaint r=1", InpaintRequest(prompt=PROMPT, width=size, height=size, init_image=init, mask=mask, sampling=s)),
        ("inpaint 9-channel", InpaintRequest(prompt=PROMPT, width=size, height=size, init_image=init, mask=mask, sampling=s,
                                             mode="inpainting model", inpaint_model=str(folder / "inpaint-unet"))),
        ("controlnet 1 unit", Txt2ImgRequest(prompt=PROMPT, width=size, height=size, sampling=s,
                                             control=Control(units=(ControlUnit(model=str(folder / "controlnet"), image=edges),)))),
        # A1111's common pairing (e.g. canny + depth): here the one random ControlNet twice, on two maps.
        ("controlnet 2 units", Txt2ImgRequest(prompt=PROMPT, width=size, height=size, sampling=s, control=Control(units=(
            ControlUnit(model=str(folder / "controlnet"), image=edges),
            ControlUnit(model=str(folder / "controlnet"), image=edges.transpose(Image.Transpose.ROTATE_90), weight=0.6))))),
    ]}


def preload(manager, folder):
    """Extra modules loaded before timing first requests (their disk load is not compute)."""
    t0 = time.perf_counter()
    manager.inpaint_unet(str(folder / "inpaint-unet"))
    manager.controlnets.get(str(folder / "controlnet"), manager.pipeline("txt2img").unet, manager.device, manager.dtype, False)
    return round(time.perf_counter() - t0, 1)


@section("eager modes")
def bench_eager_modes(folder, args, card, requests):
    from pipelines.manager import PipelineManager

    manager = PipelineManager(device="cuda", dtype="fp16", fast_path=None)
    manager.load_base(str(folder / "sd15"))
    preload(manager, folder)
    eager = {}
    for name, req in requests.items():
        manager.run(req)
        eager[name] = median_s(lambda: manager.run(req), 2)
        log(config="manager, fast path off (eager)", mode=name, card=card, s_per_image=eager[name])
    if not args.skip_hires:
        bench_eager_hires(manager, args, card, eager)
    return eager


# ------------------------------------------------------------------ hires fix (issue 17)
HIRES_SCALE = 1.5  # 512 -> 768; the rest at the app's defaults: "Latent" upscaler, denoise 0.7, same steps


def hires_request(args):
    from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest

    return Limits().normalize(Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size, enable_hr=True,
                                             hr_scale=HIRES_SCALE, sampling=Sampling(scheduler="Euler", steps=args.steps,
                                                                                     cfg_scale=7.5, seed=3)))


def hires_name(args) -> str:
    return f"txt2img + hires {args.size}->{int(args.size * HIRES_SCALE)}"


@section("eager hires")
def bench_eager_hires(manager, args, card, eager):
    """The hires request on the manager with the fast path off: the reference its first request is held to."""
    name, req = hires_name(args), hires_request(args)
    manager.run(req)
    eager[name] = median_s(lambda: manager.run(req), 2)
    log(config="manager, fast path off (eager)", mode=name, card=card, s_per_image=eager[name])


def served_by_call(runtime) -> Counter:
    """'call name: how' -> calls served, over every FastCall of the runtime."""
    total = Counter()
    for call in runtime.calls:
        total.update({f"{call.name}: {how}": n for how, n in call.served.items()})
    return total


def served_between(before: Counter, after: Counter) -> dict:
    return {k: after[k] - before.get(k, 0) for k in sorted(after) if after[k] - before.get(k, 0)}


@section("hires fast path")
def bench_hires(manager, args, card, eager, steady):
    """The hires fix's second pass (img2img at 1.5x) on the fast path, after every other row: its
    first request (pass 1 on the 512 graphs; pass 2's UNet, VAE decode and text encoder at a new
    size: eager, then an eager graph, the compile submitted), a second one, steady on graphs,
    then steady once the final size's compiles are in (waiting at most --hires-wait-s)."""
    runtime, name, req = manager.fast_runtime, hires_name(args), hires_request(args)
    eager_s = (eager or {}).get(name)
    start = time.time()
    before = served_by_call(runtime)
    first = round(timed(lambda: manager.run(req), 1)[0], 3)
    log(mode=name, first_request_s=first, eager_steady_s=eager_s,
        ratio_to_eager=round(first / eager_s, 2) if eager_s else None,
        served_during=served_between(before, served_by_call(runtime)))
    before = served_by_call(runtime)
    second = round(timed(lambda: manager.run(req), 1)[0], 3)
    log(mode=name, second_request_s=second, served_during=served_between(before, served_by_call(runtime)))
    repeats = max(1, min(args.repeats, 3))
    manager.run(req)  # the VAE's and text encoder's graphs went in after the second request
    before = served_by_call(runtime)
    graphs_s = median_s(lambda: manager.run(req), repeats)
    log(config="manager fast path, before the final size is compiled", mode=name, card=card, s_per_image=graphs_s,
        served_during=served_between(before, served_by_call(runtime)))
    idle = runtime.wait_idle(args.hires_wait_s)
    final = int(args.size * HIRES_SCALE)
    at_final = sorted({f"{call.name} {list(key[0][0])}: {how}" for call in runtime.calls
                       for key, (_, how) in call.fast.items()
                       if tuple(key[0][0][-2:]) in ((final, final), (final // 8, final // 8))})
    log(background="final size upgraded" if idle else f"still compiling after {args.hires_wait_s:.0f}s",
        after_s=round(time.time() - start, 1), fast_at_final_size=at_final,
        events=[(round(t - start, 1), e) for t, e in runtime.events if t >= start])
    manager.run(req)
    before = served_by_call(runtime)
    steady_s = median_s(lambda: manager.run(req), args.repeats)
    base = (steady or {}).get("txt2img")
    log(config="manager fast path", mode=name, card=card, s_per_image=steady_s,
        ratio_to_txt2img=round(steady_s / base, 2) if base else None,
        speedup_vs_eager=round(eager_s / steady_s, 2) if eager_s else None, compiled_in_time=idle,
        served_during=served_between(before, served_by_call(runtime)))


@section("fast path")
def bench_fast(folder, args, card, requests, eager, reference):
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager
    from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest

    manager = PipelineManager(device="cuda", dtype="fp16", fast_path=FastPath(compile=args.compile))
    t0 = time.perf_counter()
    manager.load_base(str(folder / "sd15"))
    log(config="manager fast path", applied=manager.fast_path_applied, load_s=round(time.perf_counter() - t0, 1),
        preload_extra_modules_s=preload(manager, folder))
    runtime = manager.fast_runtime
    gate = runtime.gate  # the background compile pauses while a request runs (pipelines/compile_yield.py)
    start = time.time()
    # First request of every mode, back to back from a cold start: served eager while the
    # worker captures and compiles in the background.
    firsts, first_images = {}, {}
    for name, req in requests.items():
        paused = gate.paused_total()
        firsts[name] = round(timed(lambda: first_images.__setitem__(name, manager.run(req).images[0].image), 1)[0], 3)
        log(mode=name, first_request_s=firsts[name], eager_steady_s=(eager or {}).get(name),
            ratio_to_eager=round(firsts[name] / eager[name], 2) if eager and name in eager else None,
            compile_paused_s=round(gate.paused_total() - paused, 2), worker_busy=not runtime.wait_idle(0),
            served=dict(runtime.served()))
    # Catch-up: txt2img again and again until its UNet runs from a compiled graph, with a gap
    # between requests (a user's pace): back to back, the compile would get only its minimum
    # share of the time (1 - FastPath.yield_share) and take up to 4x longer.
    unet = manager.pipeline("txt2img").unet._sd_studio_fast
    catch_up = []
    paused = gate.paused_total()
    while time.time() - start < args.catch_up_s and unet.served.get("compiled-graph", 0) == 0:
        catch_up.append(round(timed(lambda: manager.run(requests["txt2img"]), 1)[0], 3))
        time.sleep(args.catch_up_gap_s)
    log(catch_up="txt2img requests while compiling", seconds=catch_up, gap_s=args.catch_up_gap_s,
        until_compiled_s=round(time.time() - start, 1), compile_paused_s=round(gate.paused_total() - paused, 1))
    idle = runtime.wait_idle(max(1.0, args.catch_up_s - (time.time() - start)))
    log(background="all modes upgraded" if idle else "still compiling at the deadline",
        after_s=round(time.time() - start, 1), compile_paused_total_s=round(gate.paused_total(), 1),
        pauses=gate.pauses, events=[(round(t - start, 1), e) for t, e in runtime.events])
    steady = {}
    for name, req in requests.items():
        reserved = torch.cuda.memory_reserved()
        manager.run(req)
        runtime.wait_idle(60)  # steady: calls made once per request (e.g. ControlNet's hint) get their second call here
        if name.startswith("controlnet"):  # what the joint step's graph (captured just now) holds
            log(mode=name, joint_step_ready=runtime.overlap.joint and any(
                    call.prebuilt and call.fast for call in runtime.calls),
                reserved_growth_mib=round((torch.cuda.memory_reserved() - reserved) / 2**20),
                reserved_gib=round(torch.cuda.memory_reserved() / 2**30, 2))
        before, overlapped = dict(runtime.served()), runtime.overlap.overlapped
        steady[name] = median_s(lambda: manager.run(req), args.repeats)
        after = runtime.served()
        overlapped = runtime.overlap.overlapped - overlapped  # ControlNet steps on two streams
        # The same request's image from the graphs against its first, eager one: compiled
        # kernels round differently (~50-60 dB); a graph reading a buffer another overwrote would not.
        graphed = manager.run(req).images[0].image
        log(config="manager fast path", mode=name, card=card, s_per_image=steady[name],
            psnr_vs_first_request_db=psnr(first_images[name], graphed),
            ratio_to_txt2img=round(steady[name] / steady["txt2img"], 2) if "txt2img" in steady else 1.0,
            speedup_vs_eager=round(eager[name] / steady[name], 2) if eager and name in eager else None,
            served_during={k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)},
            **({"controlnet_steps_on_two_streams": overlapped} if overlapped else {}))
    log(served_by_call={f"{call.name} #{i}": dict(call.served) for i, call in enumerate(runtime.calls)})
    joint_vs_three_graphs(manager, "controlnet 1 unit", requests, args, steady)
    joint_vs_three_graphs(manager, "controlnet 2 units", requests, args, steady)
    image = manager.run(Limits().normalize(Txt2ImgRequest(
        prompt=PROMPT, width=args.size, height=args.size,
        sampling=Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=7)))).images[0].image
    log(psnr_fast_vs_vanilla_db=psnr(reference, image) if reference is not None else None)
    # The UI's live preview (every 5th step: a device->host copy, hence a sync).
    previews = []
    with_preview = median_s(lambda: manager.run(requests["txt2img"], on_step=lambda info: previews.append(info.preview)), 3)
    log(config="manager fast path, live preview every 5 steps", s_per_image=with_preview)
    # Per-call costs of the graphed modules.
    x = torch.randn(2, 4, args.size // 8, args.size // 8, device="cuda", dtype=torch.float16)
    c = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    t = torch.tensor(500.0, device="cuda")
    with torch.no_grad():
        unet_ms = median_s(lambda: unet(x, t, c), 30) * 1000
    log(unet_ms_per_cfg_call=round(unet_ms, 2), unet_share_of_image=round(args.steps * unet_ms / 1000 / steady["txt2img"], 3))
    # A second size: first request (eager while it compiles), no waiting for it.
    second = Limits().normalize(Txt2ImgRequest(prompt=PROMPT, width=args.second_width, height=args.size,
                                               sampling=Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=3)))
    stall = [round(timed(lambda: manager.run(second), 1)[0], 3) for _ in range(3)]
    log(second_size=f"{args.second_width}x{args.size}", first_requests_s=stall)
    return steady, manager


@section("joint step")
def joint_vs_three_graphs(manager, name, requests, args, steady) -> None:
    """The ControlNet step as one CUDA graph (control_overlap.py's joint step) against the
    graphs it is built from (one ControlNet on a second stream beside the UNet's first half,
    the other units' after it, then the second half), interleaved request by request, and
    their images compared."""
    overlap, request = manager.fast_runtime.overlap, requests.get(name)
    if request is not None:  # learns the step's parts, and the worker captures the joint step
        manager.run(request)
        manager.fast_runtime.wait_idle(60)
        manager.run(request)
    if request is None or not overlap.joined:
        log(joint_step="not measured: no ControlNet step ran as one graph", joined=overlap.joined)
        return
    times, images = {False: [], True: []}, {}
    for _ in range(args.repeats):
        for joint in (False, True):
            overlap.joint = joint
            joined = overlap.joined
            times[joint] += timed(lambda: images.__setitem__(joint, np.asarray(manager.run(request).images[0].image)), 1)
            assert (overlap.joined > joined) == joint, "the joint step did not serve (or served when off)"
    overlap.joint = True
    three, one = statistics.median(times[False]), statistics.median(times[True])
    log(mode=name, three_graphs_s=round(three, 4), one_graph_s=round(one, 4),
        speedup=round(three / one, 3), ratio_to_txt2img={"three graphs": round(three / steady["txt2img"], 3),
                                                          "one graph": round(one / steady["txt2img"], 3)},
        **same_pixels(images[False], images[True]))
    if len(request.control.units) > 1:
        return
    # A unit at weight 0.8 that stops at half the steps: the residuals scaled inside the graph.
    from dataclasses import replace

    unit = replace(request.control.units[0], weight=0.8, end=0.5)
    weighted = replace(request, control=replace(request.control, units=(unit,)))
    overlap.joint = False
    three = np.asarray(manager.run(weighted).images[0].image)
    overlap.joint = True
    manager.run(weighted)  # asks the worker for the scaled step's graph
    manager.fast_runtime.wait_idle(60)
    joined = overlap.joined
    one = np.asarray(manager.run(weighted).images[0].image)
    log(mode="controlnet 1 unit, weight 0.8, end 0.5", joined_steps=overlap.joined - joined, **same_pixels(three, one))


def same_pixels(a: np.ndarray, b: np.ndarray) -> dict:
    return dict(images_identical=bool(np.array_equal(a, b)), max_abs_diff=int(np.abs(a.astype(int) - b.astype(int)).max()))


@section("lora")
def lora_section(*args):
    from gpu_lora import bench_lora

    bench_lora(*args)


@section("sdpa backends")
def bench_sdpa(unet, args):
    """The UNet (fused QKV, channels_last) in one eager CUDA graph per SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pipelines.fast_path import CapturedGraph

    unet.fuse_qkv_projections()
    unet.to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, args.size // 8, args.size // 8, device="cuda", dtype=torch.float16)
    c = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    t = torch.tensor(500.0, device="cuda")
    results = {}
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        try:
            with torch.no_grad(), sdpa_kernel(backend):
                graph = CapturedGraph(lambda a, b, e: (unet(a, b, e, return_dict=False)[0],), [x, t, c], None)
                results[backend.name] = round(median_s(lambda: graph(x, t, c), 30) * 1000, 2)
        except Exception as error:  # noqa: BLE001
            results[backend.name] = f"{type(error).__name__}: {str(error)[:120]}"
    log(sdpa_backend_unet_eager_graph_ms=results)


KERNEL_KINDS = (  # name fragments -> kind, first match wins (inductor names kernels after
    # the ops they fuse, "triton_poi_fused_convolution_...": its prefixes go first)
    ("inductor reductions (norms)", ("triton_red", "triton_per")),
    ("inductor pointwise", ("triton_poi",)),
    ("attention", ("sdpa", "fmha", "flash", "attention")),
    ("convolution", ("fprop", "conv", "dgrad", "implicit_gemm")),
    ("matmul", ("nvjet", "gemm", "cutlass", "cublas", "wgmma")),
    ("copy", ("memcpy", "memset", "copy")),
)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, parts in KERNEL_KINDS if any(p in lowered for p in parts)), "other")


def kernel_breakdown(events) -> dict:
    """ms of GPU time per kind of kernel: where a step's time goes (reductions vs GEMMs vs ...)."""
    kinds = Counter()
    for e in events:
        kinds[kernel_kind(e.name)] += e.time_range.elapsed_us() / 1000
    return {k: round(v, 1) for k, v in kinds.most_common()}


def idle_gaps(events, request) -> dict:
    """Where the GPU waits inside one request: before its first kernel, after its last, and the
    widest gaps between kernels (host work or a sync the step loop did not run ahead of)."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events)
    gaps, reach = [], spans[0][1]
    for (start, end, name), (_, _, before) in zip(spans[1:], spans):
        if start - reach > 20:
            gaps.append((round((start - reach) / 1000, 2), round((reach - spans[0][0]) / 1000, 1), before[:40], name[:40]))
        reach = max(reach, end)
    gaps.sort(reverse=True)
    return dict(lead_ms=round((spans[0][0] - request.start) / 1000, 2),
                tail_ms=round((request.end - reach) / 1000, 2),
                inner_gaps_ms=round(sum(g[0] for g in gaps), 2), inner_gaps=len(gaps),
                widest=[dict(ms=g[0], at_ms=g[1], after=g[2], before=g[3]) for g in gaps[:6]])


@section("profile")
def bench_profile(name, fn):
    """GPU busy time vs wall time of one request: idle gaps are host overhead or syncs."""
    from torch.profiler import ProfilerActivity, profile, record_function

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        with record_function("bench request"):
            fn()
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    # The label also shows on the GPU's timeline, as an annotation spanning the request's kernels.
    events = [e for e in prof.events() if e.device_type == cuda and e.name != "bench request"]
    request = next(e.time_range for e in prof.events() if e.name == "bench request" and e.device_type == cpu)
    syncs = [(round((e.time_range.start - request.start) / 1000, 1), e.name, round(e.time_range.elapsed_us() / 1000, 2))
             for e in prof.events() if "Synchronize" in e.name or e.name.startswith("cudaMemcpy")]
    busy = sum(e.time_range.elapsed_us() for e in events) / 1000
    top = sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:10]
    log(profile=name, wall_ms=round(wall * 1000, 1), gpu_kernel_ms=round(busy, 1), kernels=len(events),
        by_kind=kernel_breakdown(events), gpu_idle=idle_gaps(events, request), host_waits=syncs[:12],
        top=[(e.key[:60], round(e.self_device_time_total / 1000, 1), e.count) for e in top])


@section("host gaps")
def host_gaps(name, fn):
    from host_gaps import profile_host_gaps

    log(host_gaps=name, **profile_host_gaps(fn, keep_trace=name.replace(" ", "_")))


def turbo_rows(manager, folder, args, card) -> dict:
    """--turbo: each mode's s/image on this manager, as 'txt2img Turbo <mode> (lossy)' rows."""
    from gpu_turbo import rows_for_speed_run

    args.compile_wait_s = args.turbo_wait_s
    modes = tuple(m.strip() for m in args.turbo.split(","))
    times = rows_for_speed_run(manager, folder, args, card, modes) or {}
    return {f"txt2img Turbo {mode} (lossy)": s for mode, s in times.items() if mode != "Off"}


def write_rows() -> None:
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_speed.json").write_text(json.dumps(ROWS, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--second-width", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", default="full", choices=("regional", "full", "none"))
    parser.add_argument("--catch-up-s", type=float, default=300, help="longest wait for the background compiles")
    parser.add_argument("--catch-up-gap-s", type=float, default=1.0, help="idle time between catch-up requests")
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--skip-eager", action="store_true")
    parser.add_argument("--skip-lora", action="store_true")
    parser.add_argument("--keep", default="", help="copy the random models here (for bench/gpu_restart.py)")
    parser.add_argument("--skip-hires", action="store_true")
    parser.add_argument("--hires-wait-s", type=float, default=45,
                        help="longest wait for the hires final size's background compiles (the section's budget)")
    parser.add_argument("--turbo", default="", help='lossy Turbo rows on our manager, e.g. "DeepCache 2,DeepCache 3"')
    parser.add_argument("--turbo-wait-s", type=float, default=150, help="longest wait per Turbo mode for its view compiles")
    parser.add_argument("--host-gaps", action="store_true",
                        help="profile a txt2img and a ControlNet request with Python stacks (bench/host_gaps.py)")
    parser.add_argument("--budget-s", type=float, default=0, help="end with what was logged after this long (0: no limit)")
    parser.add_argument("--cpu-smoke", action="store_true", help="only the hires rows, tiny model, CPU, fake compile")
    args = parser.parse_args()
    if args.cpu_smoke:
        cpu_smoke(args)
        return
    if args.budget_s:
        budget_watchdog(args.budget_s, on_stop=write_rows)
    card = torch.cuda.get_device_name()
    folder = Path(tempfile.mkdtemp())
    build_random_sd15(folder)
    log(stage="built random SD 1.5 + 9-channel UNet + ControlNet", card=card, torch=torch.__version__)

    vanilla = bench_vanilla(folder, args, card)
    vanilla_s, reference, vanilla_pipe = vanilla if vanilla else (None, None, None)
    recipe = None if args.skip_recipe else bench_recipe(folder, args, card, reference)
    recipe_s, recipe_pipe = recipe if recipe else (None, None)
    torch.cuda.empty_cache()
    requests = mode_requests(folder, args, reference or Image.new("RGB", (args.size, args.size), (90, 120, 200)))
    eager = None if args.skip_eager else bench_eager_modes(folder, args, card, requests)
    torch.cuda.empty_cache()
    steady, manager = bench_fast(folder, args, card, requests, eager, reference) or ({}, None)
    if manager is not None and args.turbo:
        steady.update(turbo_rows(manager, folder, args, card))

    print("\n| configuration | s/image | vs vanilla | vs recipe |", flush=True)
    print("|---|---|---|---|")
    for label, s in [("vanilla diffusers", vanilla_s), ("diffusers recipe", recipe_s)] + \
            [(f"ours: {name}", value) for name, value in steady.items()]:
        if s:
            print(f"| {label} | {s:.3f} | {vanilla_s / s if vanilla_s else float('nan'):.2f}x | "
                  f"{recipe_s / s if recipe_s else float('nan'):.2f}x |")
    if manager is not None and not args.skip_lora:
        lora_section(folder, args, card, manager, requests["txt2img"], steady.get("txt2img"), vanilla_pipe)
    if vanilla_pipe is not None:
        bench_sdpa(vanilla_pipe.unet, args)
    if manager is not None:
        bench_profile("ours txt2img", lambda: manager.run(requests["txt2img"]))
        bench_profile("ours controlnet", lambda: manager.run(requests["controlnet 1 unit"]))
    if manager is not None and args.host_gaps:
        for name in ("txt2img", "controlnet 1 unit"):
            host_gaps(name, lambda: manager.run(requests[name]))
    if recipe_pipe is not None:
        bench_profile("diffusers recipe", lambda: diffusers_run(recipe_pipe, args))
    if manager is not None and not args.skip_hires:  # last: its compiles run after every other row
        bench_hires(manager, args, card, eager, steady)
    if args.keep:  # for bench/gpu_restart.py: the same weights, read by a new process
        import shutil

        shutil.copytree(folder / "sd15", Path(args.keep) / "sd15", dirs_exist_ok=True)
    write_rows()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown under live compile worker threads (it aborted once)


def cpu_smoke(args) -> None:
    """The hires sections on the tests' tiny model on the CPU: eager, then the fast path with a
    fake compile (FastCalls route and upgrade as on a GPU, minus the graphs)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_sd import save_tiny_model

    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    args.size, args.steps, args.repeats, args.hires_wait_s = 64, 4, 2, 30
    folder = save_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sd")
    eager_manager = PipelineManager(device="cpu", fast_path=None)
    eager_manager.load_base(str(folder))
    eager: dict = {}
    bench_eager_hires(eager_manager, args, "cpu", eager)
    manager = PipelineManager(device="cpu", fast_path=FastPath(compile="full", compiler=lambda fn: fn))
    manager.load_base(str(folder))
    txt2img = hires_request(args).__class__(**{**vars(hires_request(args)), "enable_hr": False})
    manager.run(txt2img)
    steady = {"txt2img": median_s(lambda: manager.run(txt2img), 2)}
    bench_hires(manager, args, "cpu", eager, steady)
    errors = [row for row in ROWS if "error" in row]
    print(f"cpu smoke: {len(ROWS)} rows, {len(errors)} errors", flush=True)


if __name__ == "__main__":
    main()
