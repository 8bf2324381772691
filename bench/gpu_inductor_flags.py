"""Lossless inductor settings past diffusers' 5-line recipe? One UNet step (SD 1.5 shapes,
random weights, fp16, 512², CFG batch 2, channels_last + fused QKV) compiled fullgraph and
captured in one CUDA graph, as the fast path serves it, with inductor's defaults and then
with the settings diffusers' SDXL speed guide adds (1×1 convolutions as matmuls, coordinate
descent tuning of the generated kernels, no epilogue fusion), each in the same process, with
where each one's GPU time goes (kernel kinds over 20 graph replays).

Coordinate-descent tuning benchmarks every generated kernel at its first run: minutes for a
UNet. Its choices land in the inductor cache, so a second run with the same
TORCHINDUCTOR_CACHE_DIR resumes where a budget cut the first one off.

    TORCHINDUCTOR_CACHE_DIR=.inductor-cache PYTHONUNBUFFERED=1 python bench/gpu_inductor_flags.py \
        [--settings defaults,cd] [--budget-s 300]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402

from gpu_controlnet_overlap import step_ms  # noqa: E402
from gpu_speed import budget_watchdog, kernel_breakdown, log, section  # noqa: E402

SD15 = ROOT / "assets" / "configs" / "sd15"
SETTINGS = {
    "defaults": {},
    "guide": {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True, "epilogue_fusion": False,
              "coordinate_descent_check_all_directions": True},
    "1x1 as mm only": {"conv_1x1_as_mm": True},
    "cd": {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True},
}


@section("settings")
def measure(name, unet, inputs, reference):
    import torch._inductor.config as inductor

    saved = {k: getattr(inductor, k) for k in SETTINGS[name]}
    for key, value in SETTINGS[name].items():
        setattr(inductor, key, value)
    try:
        torch._dynamo.reset()
        started = time.perf_counter()
        compiled = torch.compile(lambda x, t, c: unet(x, t, c, return_dict=False)[0], fullgraph=True, dynamic=False)
        with torch.no_grad():
            compiled(*inputs)
            compile_s = time.perf_counter() - started
            ms, out = step_ms(compiled, inputs, 100)
        row = dict(settings=name, unet_step_ms=ms, compile_s=round(compile_s, 1), by_kind_ms_per_step=breakdown(compiled, inputs))
        if reference:
            row.update(vs_defaults=round(reference[0] / ms, 3),
                       max_abs_vs_defaults=float((out.float() - reference[1].float()).abs().max()))
        else:
            reference.extend([ms, out.clone()])
        log(**row)
    finally:
        for key, value in saved.items():
            setattr(inductor, key, value)


def breakdown(fn, inputs, replays: int = 20) -> dict:
    """GPU ms per kernel kind and step, fn's kernels captured in one graph and replayed."""
    from torch.profiler import ProfilerActivity, profile

    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        fn(*inputs)
    graph.replay()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {kind: round(ms / replays, 3) for kind, ms in kernel_breakdown(events).items()} | {"kernels": len(events) // replays}


def served_unet_step():
    """SD 1.5's UNet (random fp16 weights, channels_last, fused QKV: as the fast path serves it)
    and one CFG step's inputs at 512²: latents, timestep 500, text embeddings."""
    torch.manual_seed(0)
    with torch.device("cuda"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15, subfolder="unet")).half().eval()
    unet.to(memory_format=torch.channels_last)
    unet.fuse_qkv_projections()
    g = torch.Generator("cuda").manual_seed(1)
    inputs = (torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16, generator=g).contiguous(memory_format=torch.channels_last),
              torch.full((2,), 500.0, device="cuda"),
              torch.randn(2, 77, 768, device="cuda", dtype=torch.float16, generator=g))
    return unet, inputs


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=300)
    parser.add_argument("--settings", default="defaults,cd", help=f"comma list of {', '.join(SETTINGS)}")
    args = parser.parse_args()

    budget_watchdog(args.budget_s)
    unet, inputs = served_unet_step()
    log(card=torch.cuda.get_device_name(), torch=torch.__version__)
    reference: list = []
    for name in args.settings.split(","):
        measure(name, unet, inputs, reference)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
