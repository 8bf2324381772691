"""fp8 on Hopper (the fast path's `fp8` option, pipelines/fp8.py): speed and what it costs in
quality, one process, one card.

- SD 1.5 shapes, random weights, fp16, 512², 30 steps Euler, CFG 7.5: the manager's fast path
  (compile "full", CUDA graphs) with fp8 off vs on: s/image, one UNet call (CFG pair) in ms, the
  relative error of the final latent vs fp16 ‖a − b‖ / ‖b‖ and the PSNR of the images; both on
  eager maths (first request) and on compiled maths, with fp16 eager vs fp16 compiled as the
  noise floor;
- the shipped demo model (bf16 on CUDA) read back on held-out captions (training/evaluate.py's
  probe: colour, shape, background, position), without fp8 and with fp8 per-row and per-tensor
  (every linear ≥ 16 wide: the default 256 filter takes none of the demo's 64/128-wide layers);
- SDPA: each backend per SD 1.5 attention shape (head size 40/80/160, self and cross);
- cuDNN's convolution autotuning (`torch.backends.cudnn.benchmark`) on the fp16 UNet, off vs on.

    PYTHONUNBUFFERED=1 python bench/gpu_fp8.py [--demo-models assets/models]   # ~3 min on an H200 (cold compile cache)
    python bench/gpu_fp8.py --cpu-smoke     # the same code on a tiny model on the CPU: fp8 is refused there
    PYTHONUNBUFFERED=1 python bench/gpu_fp8.py --family sdxl --size 1024 --repeats 3 --max-batch 1 --compile-wait-s 200
                                            # SDXL base shapes at 1024²: the two managers' rows only, ~5.5 min

One JSON line per measurement (bench/gpu_speed.py's log); a failing section logs and the rest runs.
"""
from __future__ import annotations

import argparse
import gc
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

from gpu_speed import PROMPT, bench_profile, build_random_sd15, log, median_s, psnr, section  # noqa: E402


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖ / ‖b‖ in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def _request(args, steps=None, seed=7):
    from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest

    return Limits().normalize(Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size,
                                             sampling=Sampling(scheduler="Euler", steps=steps or args.steps,
                                                               cfg_scale=7.5, seed=seed)))


def _run_recording_latent(manager, request):
    """(final latent handed to the VAE, image) of one request."""
    vae = manager.pipeline("txt2img").vae
    inner, seen = vae.decode, []

    def decode(z, *rest, **kwargs):
        seen.append(z.detach().float().cpu())
        return inner(z, *rest, **kwargs)

    vae.decode = decode
    try:
        image = manager.run(request).images[0].image
    finally:
        vae.decode = inner
    return seen[-1], image


def _served(manager) -> dict:
    return dict(manager.fast_runtime.served()) if manager.fast_runtime else {}


@section("fp8 manager")
def bench_manager(folder: Path, card: str, args, fp8: bool) -> dict | None:
    """One manager (fast path, fp8 off or on): eager-maths latent, compile, compiled latent, speed."""
    from pipelines.core.warmup import warm_up
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    label = "fp8" if fp8 else "fp16"
    config = FastPath(compile=args.compile, compile_vae=args.compile_vae)
    manager = PipelineManager(device=args.device, dtype=args.dtype, fast_path=config, fp8=fp8, max_batch=args.max_batch)
    start, t0 = time.time(), time.perf_counter()
    manager.load_base(str(folder / args.family))
    unet = manager.pipeline("txt2img").unet
    log(config=f"manager fast path, {label}", applied=manager.fast_path_applied, load_s=round(time.perf_counter() - t0, 1),
        fp8_layers=len(getattr(unet, "_sd_studio_fp8", [])), unet_weight_mib=round(_unet_bytes(unet) / 2**20, 1))
    request = _request(args)
    # First request: eager maths (then an eager CUDA graph of the same maths, captured in-request).
    eager_latent, eager_image = _run_recording_latent(manager, request)
    log(config=f"manager fast path, {label}", first_request_served=_served(manager))
    seconds = warm_up(manager, [(args.size, args.size)], timeout=args.compile_wait_s)
    runtime = manager.fast_runtime
    events = [(round(t - start, 1), e) for t, e in runtime.events] if runtime else []
    compiled_latent, compiled_image = _run_recording_latent(manager, request)
    before = _served(manager)
    s = median_s(lambda: manager.run(request), args.repeats)
    after = _served(manager)
    unet_ms, unet_how = None, None
    fast = getattr(unet, "_sd_studio_fast", None)
    if fast is not None and args.device == "cuda":
        # One UNet call of the very signature the requests ran (the best version installed for it).
        best = {"compiled-graph": 0, "compiled": 1, "eager-graph": 2}
        served = sorted(fast.fast.items(), key=lambda item: best.get(item[1][1], 9))
        if served:
            signature, (_, unet_how) = served[0]
            inputs = [torch.randn(shape, device=device).to(dtype) if dtype.is_floating_point
                      else torch.zeros(shape, device=device, dtype=dtype) for shape, dtype, device in signature]
            if inputs[1].dtype.is_floating_point:
                inputs[1].fill_(500.0)  # the timestep
            with torch.no_grad():
                unet_ms = round(median_s(lambda: fast(*inputs), 30) * 1000, 2)
    log(config=f"manager fast path, {label}", card=card, s_per_image=s, unet_ms_per_cfg_call=unet_ms, unet_call_served_by=unet_how,
        warmup_s=round(seconds, 1), compile_events=events,
        served_during={k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)})
    if args.device == "cuda":
        bench_profile(f"ours txt2img, {label}", lambda: manager.run(request))  # GPU busy vs wall, top kernels
    result = dict(s=s, unet_ms=unet_ms, eager_latent=eager_latent, eager_image=eager_image,
                  compiled_latent=compiled_latent, compiled_image=compiled_image)
    if runtime:
        runtime.close()
    del manager, unet, fast
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return result


def _unet_bytes(unet) -> int:
    from pipelines.manager import _weight_storages

    return sum(_weight_storages([unet]).values())


@section("fp8 quality")
def compare(card: str, fp16: dict, fp8: dict) -> None:
    log(comparison="fp16 compiled vs fp16 eager (noise floor)", card=card,
        rel_latent_error=round(rel_error(fp16["compiled_latent"], fp16["eager_latent"]), 5),
        psnr_db=psnr(fp16["compiled_image"], fp16["eager_image"]))
    log(comparison="fp8 eager vs fp16 eager", card=card,
        rel_latent_error=round(rel_error(fp8["eager_latent"], fp16["eager_latent"]), 5),
        psnr_db=psnr(fp8["eager_image"], fp16["eager_image"]))
    log(comparison="fp8 compiled vs fp16 compiled", card=card,
        rel_latent_error=round(rel_error(fp8["compiled_latent"], fp16["compiled_latent"]), 5),
        psnr_db=psnr(fp8["compiled_image"], fp16["compiled_image"]),
        s_per_image_fp16=fp16["s"], s_per_image_fp8=fp8["s"],
        speedup=round(fp16["s"] / fp8["s"], 3) if fp16["s"] and fp8["s"] else None,
        unet_ms_fp16=fp16["unet_ms"], unet_ms_fp8=fp8["unet_ms"])


@section("fp8 demo probes")
def bench_demo_probes(card: str, args) -> None:
    """Held-out captions read back from the demo model's images, without and with fp8."""
    models = Path(args.demo_models)
    if not (models / "demo" / "model_index.json").is_file():
        log(section="fp8 demo probes", skipped=f"no demo model under {models} (pass --demo-models DIR)")
        return
    from pipelines.fp8 import (MIN_FEATURES, emulate_fp8_on_cpu, fp8_linear_names, fp8_unavailable_reason,
                               quantize_unet_fp8)
    from training.evaluate import CFG, STEPS, generate, heldout_probes, load_pipeline, score_objects

    probes = heldout_probes(args.probe_n)
    prompts, truths = [p for p, _ in probes], [t for _, t in probes]
    pipe = load_pipeline(models, args.device)
    log(probe="demo model", card=card, dtype=str(pipe.unet.dtype), n=args.probe_n, cfg=CFG, steps=STEPS,
        fp8_layers_default_filter=len(fp8_linear_names(pipe.unet, MIN_FEATURES)),
        fp8_layers_min16_per_row=len(fp8_linear_names(pipe.unet, 16, per_row=True)),
        fp8_layers_min16_per_tensor=len(fp8_linear_names(pipe.unet, 16, per_row=False)))
    t0 = time.perf_counter()
    reference = generate(pipe, prompts, CFG)
    log(probe="demo model, no fp8", card=card, seconds=round(time.perf_counter() - t0, 1), **score_objects(reference, truths))
    # On a CPU the same fp8 weights run on the CPU's torch._scaled_mm (emulate_fp8_on_cpu).
    emulated = args.device == "cpu"
    reason = None if emulated else fp8_unavailable_reason(args.device)
    for per_row in (True, False):
        row = (f"demo model, fp8 {'per-row' if per_row else 'per-tensor'} (linears >= 16 wide)"
               + (", emulated on the CPU" if emulated else ""))
        if reason:
            log(probe=row, skipped=reason)
            continue
        pipe = load_pipeline(models, args.device)  # fresh weights for each granularity
        if emulated:
            layers = emulate_fp8_on_cpu(pipe.unet, min_features=16, per_row=per_row)
        else:
            layers = quantize_unet_fp8(pipe.unet, min_features=16, per_row=per_row)
        t0 = time.perf_counter()
        images = generate(pipe, prompts, CFG)
        psnrs = [psnr(a, b) for a, b in zip(images, reference)]  # inf where identical
        log(probe=row, card=card, layers=len(layers), seconds=round(time.perf_counter() - t0, 1),
            median_psnr_vs_no_fp8_db=round(float(np.median(psnrs)), 1), min_psnr_vs_no_fp8_db=round(float(np.min(psnrs)), 1),
            **score_objects(images, truths))


@section("sdpa per head size")
def bench_sdpa_shapes(card: str, args) -> None:
    """Each SDPA backend on SD 1.5's attention shapes at 512², batch 2 (CFG), 8 heads."""
    if args.device != "cuda":
        log(section="sdpa per head size", skipped="CUDA only")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    side = args.size // 8
    shapes = {}
    for level, (tokens, head) in enumerate([(side * side, 40), (side * side // 4, 80), (side * side // 16, 160),
                                             (side * side // 64, 160)]):
        shapes[f"self {tokens}x{tokens} d{head}"] = (tokens, tokens, head)
        shapes[f"cross {tokens}x77 d{head}"] = (tokens, 77, head)
    loops = 20
    for name, (q_len, kv_len, head) in shapes.items():
        q = torch.randn(2, 8, q_len, head, device="cuda", dtype=torch.float16)
        k = torch.randn(2, 8, kv_len, head, device="cuda", dtype=torch.float16)
        v = torch.randn_like(k)
        row = {}
        for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            try:
                with sdpa_kernel(backend):
                    def calls():
                        for _ in range(loops):
                            torch.nn.functional.scaled_dot_product_attention(q, k, v)
                    calls()
                    row[backend.name] = round(median_s(calls, 5) / loops * 1e6, 1)
            except Exception as error:  # noqa: BLE001 — a backend that refuses the shape says so
                row[backend.name] = f"{type(error).__name__}: {str(error)[:80]}"
        log(sdpa_shape=name, card=card, us_per_call=row)


@section("cudnn benchmark")
def bench_cudnn_benchmark(folder: Path, card: str, args) -> None:
    """Convolutions are the largest kernel share of an image (~50 of 194 ms, run 3's profile),
    picked by cuDNN's heuristics; `torch.backends.cudnn.benchmark` times every algorithm per
    shape instead. The fp16 UNet (fused QKV, channels_last) in one eager CUDA graph, both ways."""
    if args.device != "cuda":
        log(section="cudnn benchmark", skipped="CUDA only")
        return
    from diffusers import UNet2DConditionModel

    from pipelines.fast_path import CapturedGraph

    unet = UNet2DConditionModel.from_pretrained(folder / "sd15", subfolder="unet", torch_dtype=torch.float16).to("cuda")
    unet.fuse_qkv_projections()
    unet.to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, args.size // 8, args.size // 8, device="cuda", dtype=torch.float16)
    c = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16)
    t = torch.tensor(500.0, device="cuda")
    row, outputs = {}, {}
    was = torch.backends.cudnn.benchmark
    try:
        for on in (False, True):
            torch.backends.cudnn.benchmark = on
            with torch.no_grad():
                graph = CapturedGraph(lambda a, b, e: (unet(a, b, e, return_dict=False)[0],), [x, t, c], None)
                row[f"benchmark={on}"] = round(median_s(lambda: graph(x, t, c), 30) * 1000, 2)
                outputs[on] = graph(x, t, c)[0].float()
            del graph
    finally:
        torch.backends.cudnn.benchmark = was
    log(cudnn_benchmark_unet_eager_graph_ms=row, card=card,
        rel_output_difference=round(rel_error(outputs[True], outputs[False]), 6) if len(outputs) == 2 else None)
    del unet
    torch.cuda.empty_cache()


@section("fp8 api")
def check_torchao_api(args) -> None:
    """The installed torchao has the names pipelines/fp8.py uses; where fp8 cannot run, the
    option says why (the CPU smoke's stand-in for the GPU rows)."""
    from pipelines.fp8 import fp8_unavailable_reason

    try:
        import torchao
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_  # noqa: F401

        for granularity in (PerRow(), PerTensor()):
            Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=False)
        version = torchao.__version__
    except Exception as error:  # noqa: BLE001
        version = f"not usable: {type(error).__name__}: {error}"
    log(torchao=version, device=args.device, fp8_refused=fp8_unavailable_reason(args.device))


def _tiny_folder(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_sd import save_tiny_model

    save_tiny_model(folder / "sd15")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", default="full", choices=("full", "none"))
    parser.add_argument("--compile-vae", action="store_true",
                        help="compile the VAE decode too (the same in both rows: off saves ~16 s of budget)")
    parser.add_argument("--compile-wait-s", type=float, default=150, help="longest wait for each manager's compiles")
    parser.add_argument("--demo-models", default=str(ROOT / "assets" / "models"), help="folder holding demo/ (the demo family)")
    parser.add_argument("--probe-n", type=int, default=None, help="held-out captions (default 100; 2 with --cpu-smoke)")
    parser.add_argument("--folder", default="", help="an existing build_random_sd15 / build_random_sdxl folder (else built here)")
    parser.add_argument("--family", default="sd15", choices=("sd15", "sdxl"),
                        help="SD 1.5 or SDXL base shapes (SDXL: only the two managers' rows and their comparison)")
    parser.add_argument("--max-batch", type=int, default=0,
                        help="the managers' --max-batch (0: the app's default); 1 compiles one UNet shape per size")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU: every code path that runs there")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.device, args.dtype, args.size, args.steps, args.repeats = "cpu", "fp32", 64, 3, 1
        args.probe_n = args.probe_n or 2
        args.compile = "none"
        card = "cpu"
    else:
        args.device, args.dtype = "cuda", "fp16"
        args.probe_n = args.probe_n or 100
        card = torch.cuda.get_device_name()
    bench_fp8(Path(args.folder) if args.folder else None, card, args)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown under live compile worker threads (as gpu_speed.py)


def bench_fp8(folder: Path | None, card: str, args) -> None:
    """Every fp8 row; `folder` holds build_random_sd15's sd15/ (None: built here)."""
    defaults = dict(device="cuda", dtype="fp16", steps=30, size=512, repeats=5, compile="full", compile_vae=False,
                    compile_wait_s=150.0, demo_models=str(ROOT / "assets" / "models"), probe_n=100, family="sd15",
                    max_batch=0)
    for name, value in defaults.items():  # called from another bench's main with its own args
        if not hasattr(args, name):
            setattr(args, name, value)
    check_torchao_api(args)
    if folder is None:
        folder = Path(tempfile.mkdtemp())
        if args.family == "sdxl":
            from gpu_sdxl import build_random_sdxl, build_tiny_sdxl

            build_tiny_sdxl(folder) if args.device == "cpu" else build_random_sdxl(folder, args.device)
        else:
            (_tiny_folder if args.device == "cpu" else build_random_sd15)(folder)
        log(stage="built the model", folder_kind="tiny" if args.device == "cpu" else f"{args.family} shapes, random",
            card=card, torch=torch.__version__)
    fp16 = bench_manager(folder, card, args, fp8=False)
    fp8 = bench_manager(folder, card, args, fp8=True)
    if fp16 and fp8:
        compare(card, fp16, fp8)
    if args.family != "sd15":
        return  # the sections below are SD 1.5's
    bench_demo_probes(card, args)
    bench_sdpa_shapes(card, args)
    bench_cudnn_benchmark(folder, card, args)


if __name__ == "__main__":
    main()
