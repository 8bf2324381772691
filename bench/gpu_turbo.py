"""GPU benchmark of Turbo (DeepCache step-feature caching, pipelines/turbo.py) on the manager:
SD 1.5 shapes with random weights, fp16, 512², 30 steps Euler, CFG 7.5; s/image with turbo
off, DeepCache 2 and DeepCache 3, and what each costs against off (PSNR of the image, relative
error of the final latents). Txt2img, and ControlNet (1 unit) off vs DeepCache 3. All rows from
one process on one card; the fast path with compile="none" by default (CUDA graphs only, as in
rounds b-d). With `--turbo-compile full` the worker compiles the plain UNet and then the turbo
views (twins, after every plain compile); each mode's rows wait up to --compile-wait-s for the
compiles its calls queued, and log which path served the timed calls.

    PYTHONUNBUFFERED=1 python bench/gpu_turbo.py                  # H200: ~1 minute
    PYTHONUNBUFFERED=1 python bench/gpu_turbo.py --turbo-compile full --compile-wait-s 240   # ~6-8 min cold
    python bench/gpu_turbo.py --cpu-smoke                         # the same code, tiny, on CPU

`bench_turbo(folder, card, args)` is also callable with bench/gpu_speed.py's folder (built by
its `build_random_sd15`). Prints one JSON line per measurement (gpu_speed.py's `log`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gpu_speed import PROMPT, ROWS, build_random_sd15, log, median_s, psnr, section, served_between  # noqa: E402

MODES = ("Off", "DeepCache 2", "DeepCache 3")


def _modes(args) -> tuple:
    """--modes: which turbo modes, in that order (default Off first: the speed-ups are against it)."""
    return tuple(m.strip() for m in args.modes.split(",")) if getattr(args, "modes", "") else MODES


def _requests(folder: Path, args, control: bool, modes: tuple | None = None):
    from pipelines.core.requests import Control, ControlUnit, Limits, Sampling, Txt2ImgRequest

    size = args.size
    units = None
    if control:
        edges = Image.fromarray((np.random.default_rng(0).random((size, size, 3)) > 0.9).astype(np.uint8) * 255)
        units = Control(units=(ControlUnit(model=str(folder / "controlnet"), image=edges),))
    return {mode: Limits().normalize(Txt2ImgRequest(prompt=PROMPT, width=size, height=size, control=units,
                                                    **_fields(mode),
                                                    sampling=Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5,
                                                                      seed=3)))
            for mode in modes or _modes(args)}


def _fields(mode: str) -> dict:
    """A Turbo mode ("DeepCache 2") or token merging ("ToMe 0.5": Turbo off, that ratio)."""
    if mode.startswith("ToMe "):
        return {"turbo": "Off", "token_merging": float(mode.split()[1])}
    return {"turbo": mode}


@torch.no_grad()
def _final_latents(manager, mode: str, args) -> torch.Tensor:
    """The txt2img pipeline's final latents under the mode (the same UNet wrappers as a request)."""
    from pipelines.turbo import cache_interval, deep_cache

    pipe = manager.pipeline("txt2img")
    if manager.fast_runtime is not None:
        manager.fast_runtime.wait_idle(60)
    with manager._lock, deep_cache(pipe.unet, cache_interval(mode), manager.fast_runtime):  # as a request holds it
        return pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(5), output_type="latent").images.float()


def _bench_mode_set(manager, label: str, requests: dict, args, card: str) -> dict:
    times, images = {}, {}
    for mode, request in requests.items():
        manager.run(request)  # first: eager, and the inline CUDA-graph capture of each call's signature
        manager.run(request)
        runtime, compiled_in_time = manager.fast_runtime, None
        if runtime is not None and getattr(args, "compile_wait_s", 0):
            compiled_in_time = runtime.wait_idle(args.compile_wait_s)  # the compiles this mode queued
            manager.run(request)  # calls the worker upgraded are captured/served from here on
        before = runtime.served() if runtime is not None else None
        manager.turbo_counts.clear()
        times[mode] = median_s(lambda: manager.run(request), args.repeats)
        served = served_between(before, runtime.served()) if runtime is not None else None
        images[mode] = manager.run(request).images[0].image
        per_image = {k: v // (args.repeats + 1) for k, v in manager.turbo_counts.items()}
        log(bench="turbo", mode=label, turbo=mode, card=card, s_per_image=times[mode],
            speedup_vs_off=round(times["Off"] / times[mode], 2) if "Off" in times else None,
            psnr_vs_off_db=psnr(images["Off"], images[mode]) if "Off" in images else None,
            unet_calls_per_image=per_image or None, served_during=served, compiled_in_time=compiled_in_time)
    return times


@section("turbo txt2img")
def _txt2img(manager, folder, args, card, modes: tuple | None = None):
    """Each mode's row, then the final latents' error of every Turbo mode against Off (when Off
    ran; the images' PSNR in the rows covers token merging)."""
    modes = modes or _modes(args)
    times = _bench_mode_set(manager, "txt2img", _requests(folder, args, control=False, modes=modes), args, card)
    if "Off" not in times:
        return times
    off = _final_latents(manager, "Off", args)
    for mode in [m for m in modes if m != "Off" and not m.startswith("ToMe ")]:
        z = _final_latents(manager, mode, args)
        log(bench="turbo", mode="txt2img", turbo=mode, latent_rel_error_vs_off=round(float((z - off).norm() / off.norm()), 4))
    return times


def rows_for_speed_run(manager, folder: Path, args, card: str, modes: tuple) -> dict:
    """bench/gpu_speed.py --turbo: the modes on gpu_speed's own manager (its compile), so their
    s/image sit in one table with the recipe's; Off first, the same request as its txt2img row."""
    return _txt2img(manager, folder, args, card, ("Off", *modes))


@section("turbo controlnet")
def _controlnet(manager, folder, args, card):
    return _bench_mode_set(manager, "controlnet 1 unit", _requests(folder, args, control=True, modes=("Off", "DeepCache 3")),
                           args, card)


@section("turbo")
def bench_turbo(folder: Path, card: str, args) -> dict:
    """Turbo rows on the manager (its own, fast path compile=args.turbo_compile, default none)."""
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    cuda = torch.cuda.is_available() and not getattr(args, "cpu_smoke", False) and not getattr(args, "cpu", False)
    compile_mode = getattr(args, "turbo_compile", "none")
    manager = PipelineManager(device="cuda" if cuda else "cpu", dtype="fp16" if cuda else None,
                              fast_path=FastPath(compile=compile_mode))
    manager.load_base(str(folder / "sd15"))
    log(bench="turbo", applied=manager.fast_path_applied, compile=compile_mode, size=args.size, steps=args.steps)
    result = {"txt2img": _txt2img(manager, folder, args, card)}
    if not getattr(args, "skip_controlnet", False):
        result["controlnet"] = _controlnet(manager, folder, args, card)
    if manager.fast_runtime is not None:
        log(bench="turbo", served_by_call={f"{call.name} #{i}": dict(call.served)
                                           for i, call in enumerate(manager.fast_runtime.calls)})
        manager.fast_runtime.close()
    return result


def _tiny_folder(folder: Path) -> Path:
    """--cpu-smoke: the tests' tiny SD (and a ControlNet of it) in gpu_speed.py's layout."""
    sys.path.insert(0, str(ROOT / "tests"))
    from diffusers import UNet2DConditionModel
    from tiny_sd import save_tiny_controlnet, save_tiny_model

    save_tiny_model(folder / "sd15")
    save_tiny_controlnet(folder / "controlnet", UNet2DConditionModel.from_pretrained(folder / "sd15", subfolder="unet"))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default="", help='comma list of turbo modes in order (default: Off, DeepCache 2, 3); "ToMe 0.5": token merging')
    parser.add_argument("--compile-wait-s", type=float, default=0,
                        help="with --turbo-compile full: longest wait per mode for its background compiles")
    parser.add_argument("--turbo-compile", default="none", choices=("none", "full", "regional"))
    parser.add_argument("--skip-controlnet", action="store_true")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, 64², 6 steps, on CPU: checks the code runs")
    parser.add_argument("--folder", default="", help="use DIR/sd15 and DIR/controlnet (e.g. gpu_speed.py --keep's) instead of building")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (with --folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp())
    if args.folder:
        card = "cpu" if args.cpu else torch.cuda.get_device_name()
    elif args.cpu_smoke:
        args.size, args.steps, args.repeats = 64, 6, 1
        card = "cpu (smoke)"
        _tiny_folder(folder)
    else:
        card = torch.cuda.get_device_name()
        build_random_sd15(folder)
    log(stage="built models", card=card, torch=torch.__version__)
    bench_turbo(folder, card, args)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_turbo.json").write_text(json.dumps(ROWS, indent=1))
    sys.stdout.flush()
    os._exit(0)  # as gpu_speed.py: no interpreter teardown under live fast-path worker threads


if __name__ == "__main__":
    main()
