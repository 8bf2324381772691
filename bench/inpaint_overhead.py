"""Where an inpaint request spends time beyond txt2img's, on the host (CPU, tiny model).

On a GPU with the fast path, every model call (UNet step, VAE encode/decode, text encoder) is
a graph replay the host launches and leaves: what the host does *before the step loop* and
*after the decode's sync* (mask feathering, deriving pipelines, paste-back) adds to a request's
time one for one, while what it does between launches hides behind the queued GPU work. This
bench runs txt2img, RePaint r=1 and the 9-channel model through a manager with the fast path's
routing (a fake compile, so FastCalls serve every call as on a GPU, minus the graphs), times each
named host part, and subtracts the model calls.

    OMP_NUM_THREADS=1 python bench/inpaint_overhead.py [--size 512] [--repeats 3]

Prints one JSON line per mode: total ms, model ms, host ms outside model calls, per part,
the host time before the first UNet call and after the last one, and which path served the
VAE encode (FastCall.served).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from PIL import Image  # noqa: E402


def bench_unet(in_channels: int) -> UNet2DConditionModel:
    """The tests' tiny UNet with its attention one level down: at 512² the top level's 4096-token
    attention would cost seconds on a CPU and drown the host parts this bench is about."""
    torch.manual_seed(in_channels)
    return UNet2DConditionModel(sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)


def build_models(folder: Path) -> tuple[Path, Path]:
    from tiny_sd import tiny_pipeline

    pipe = tiny_pipeline()
    pipe.unet = bench_unet(4)
    pipe.save_pretrained(folder / "sd", safe_serialization=True)
    bench_unet(9).save_pretrained(folder / "inpaint" / "unet", safe_serialization=True)
    return folder / "sd", folder / "inpaint"


class Clock:
    """Inclusive wall time per patched callable (per request), and when model calls ran."""

    def __init__(self):
        self.parts: dict[str, float] = defaultdict(float)
        self.model_spans: list[tuple[str, float, float]] = []
        self.undo: list = []

    def patch(self, owner, attr: str, label: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.parts[label] += time.perf_counter() - start

        setattr(owner, attr, timed)
        self.undo.append((owner, attr, inner))

    def patch_fastcall(self) -> None:
        from pipelines.fast_path import FastCall

        inner = FastCall.__call__

        def call(fast, *tensors):
            start = time.perf_counter()
            try:
                return inner(fast, *tensors)
            finally:
                self.model_spans.append((fast.name, start, time.perf_counter()))

        FastCall.__call__ = call
        self.undo.append((FastCall, "__call__", inner))

    def reset(self) -> None:
        self.parts.clear()
        self.model_spans.clear()


def one_request(manager, request, clock: Clock) -> dict:
    clock.reset()
    start = time.perf_counter()
    manager.run(request)
    end = time.perf_counter()
    spans = clock.model_spans
    model = sum(b - a for _, a, b in spans)
    unet = [s for s in spans if s[0] in ("unet", "unet down+mid", "controlnet")]
    # Host time before the first UNet call / after the last one, model calls taken out: on a
    # GPU these are what the step loop's queued work cannot hide.
    before = unet[0][1] - start - sum(b - a for _, a, b in spans if b <= unet[0][1]) if unet else None
    after = end - unet[-1][2] - sum(b - a for _, a, b in spans if a >= unet[-1][2]) if unet else None
    hidden = clock.parts.get("while the device works (prepare_finish)", 0.0)
    return {"total": end - start, "model": model, "host": end - start - model, "before_loop": before,
            "after_loop": after, "exposed_on_gpu": None if before is None else before + after - hidden, **{f"part:{k}": v for k, v in clock.parts.items()},
            **{f"model:{k}": sum(b - a for n, a, b in spans if n == k) for k in {n for n, _, _ in spans}}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blur", type=int, default=4)
    parser.add_argument("--modes", default="", help="comma-separated substrings of the modes to run (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    from pipelines import manager as manager_module
    from pipelines import masks
    from pipelines.fast_path import FastPath
    from pipelines.core.requests import InpaintRequest, Limits, Sampling, Txt2ImgRequest
    from pipelines.manager import PipelineManager

    sd, inpaint = build_models(Path(tempfile.mkdtemp()))
    config = FastPath(compile="full", channels_last=False, fuse_qkv=False, compiler=lambda fn: fn)
    manager = PipelineManager(device="cpu", fast_path=config)
    manager.load_base(str(sd))
    clock = Clock()
    clock.patch_fastcall()
    clock.patch(manager_module, "prepare_inpaint", "prepare_inpaint")
    clock.patch(masks, "feather", "feather (mask blur)")
    clock.patch(masks.InpaintPlan, "finish", "paste-back (plan.finish)")
    if hasattr(masks.InpaintPlan, "prepare_finish"):  # the feather, moved to while the device works
        clock.patch(masks.InpaintPlan, "prepare_finish", "while the device works (prepare_finish)")
    clock.patch(masks, "paste_back", "paste_back")
    clock.patch(PipelineManager, "pipeline", "manager.pipeline (from_pipe)")
    clock.patch(VaeImageProcessor, "preprocess", "image/mask preprocess")
    clock.patch(VaeImageProcessor, "postprocess", "postprocess to PIL")

    size, s = args.size, Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.5, seed=3)
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))  # gpu_speed.py's mask
    limits = Limits()
    common = dict(prompt="an astronaut", width=size, height=size, sampling=s)
    requests = {
        "txt2img": Txt2ImgRequest(**common),
        "inpaint RePaint r=1": InpaintRequest(**common, init_image=init, mask=mask, mask_blur=args.blur),
        "inpaint 9-channel": InpaintRequest(**common, init_image=init, mask=mask, mask_blur=args.blur,
                                            mode="inpainting model", inpaint_model=str(inpaint)),
    }
    for name, request in requests.items():
        if args.modes and not any(part in name for part in args.modes.split(",")):
            continue
        request = limits.normalize(request)
        for _ in range(2):  # first call eager, second upgrades (fake compile): then steady
            manager.run(request)
        manager.fast_runtime.wait_idle(60)
        runs = [one_request(manager, request, clock) for _ in range(args.repeats)]
        best = {k: round(1000 * min(r.get(k, 0.0) or 0.0 for r in runs), 2) for k in runs[0]}  # min: a shared CPU
        served = {f"{call.name}": dict(call.served) for call in manager.fast_runtime.calls
                  if call.name in ("vae encode", "vae decode") and call.served}
        print(json.dumps({"mode": name, "size": size, "steps": args.steps, "ms_min": best, "served": served}), flush=True)


if __name__ == "__main__":
    main()
