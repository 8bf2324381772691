"""One ControlNet step, three ways, on one GPU (SD 1.5 shapes, random weights, fp16, 512²,
CFG batch 2, channels_last + fused QKV as the fast path prepares them), each in one CUDA graph:

- the UNet alone (a txt2img step: the reference),
- sequential: the ControlNet, then the UNet with its residuals (what diffusers' pipeline does),
- overlapped: the ControlNet on a second stream beside the UNet's down+mid half
  (pipelines/unet_split.py), joined before the up half,

first on eager graphs, then on compiled ones (torch.compile fullgraph, as the fast path
does), plus the ControlNet's hint embedding alone (constant over a request) and the
9-channel inpainting UNet's step vs the 4-channel one (conv_in with 9 input channels).

    PYTHONUNBUFFERED=1 python bench/gpu_controlnet_overlap.py [--budget-s 420]
"""
from __future__ import annotations

import argparse
import sys
import time
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402

from gpu_speed import budget_watchdog, log, section  # noqa: E402
from pipelines import split_forward as unet_split  # noqa: E402

SD15 = ROOT / "assets" / "configs" / "sd15"


def step_ms(fn, inputs, repeats: int = 60) -> tuple[float, tuple]:
    """fn(*inputs) captured in one CUDA graph; ms per replay (median of 3 runs of `repeats`)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn(*inputs)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*inputs)
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(repeats):
            graph.replay()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - started) / repeats * 1000)
    return round(sorted(times)[1], 3), out


def build():
    torch.manual_seed(0)
    with torch.device("cuda"):
        config = UNet2DConditionModel.load_config(SD15, subfolder="unet")
        unet = UNet2DConditionModel.from_config(config).half().eval()
        unet9 = UNet2DConditionModel.from_config({**config, "in_channels": 9}).half().eval()
        cn = ControlNetModel.from_unet(unet).half().eval()
    for p in cn.parameters():  # from_unet zeroes the output convs: random, so residuals are real
        if p.dim() > 1 and not p.any():
            p.data.normal_(0, 0.02)
    for m in (unet, unet9, cn):
        m.to(memory_format=torch.channels_last)
        m.fuse_qkv_projections()
    return unet, unet9, cn


def functions(unet, unet9, cn):
    def plain(x, t, c):
        return unet(x, t, c, return_dict=False)[0]

    def plain9(x9, t, c):
        return unet9(x9, t, c, return_dict=False)[0]

    def controlnet(x, t, c, hint):
        down, mid = cn(x, t, c, hint, 1.0, return_dict=False)
        return (*down, mid)

    def with_residuals(x, t, c, *res):
        return unet(x, t, c, down_block_additional_residuals=res[:-1], mid_block_additional_residual=res[-1],
                    return_dict=False)[0]

    def down(x, t, c):
        return unet_split.down_mid(unet, x, t, c)

    def upper(emb, ctx, sample, *rest):
        n = (len(rest)) // 2
        skips, res = rest[:n], rest[n:]
        return unet_split.up(unet, emb, ctx, sample, skips, res[:-1], res[-1])

    def hint_embedding(hint):
        return cn.controlnet_cond_embedding(hint)

    return dict(plain=plain, plain9=plain9, controlnet=controlnet, with_residuals=with_residuals, down=down,
                up=upper, hint_embedding=hint_embedding)


def combos(f, side: torch.cuda.Stream):
    def sequential(x, t, c, hint):
        res = f["controlnet"](x, t, c, hint)
        return f["with_residuals"](x, t, c, *res)

    def overlapped(x, t, c, hint):
        main = torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            res = f["controlnet"](x, t, c, hint)
        state = f["down"](x, t, c)
        main.wait_stream(side)
        emb, ctx, sample, *skips = state
        return f["up"](emb, ctx, sample, *skips, *res)

    def split_sequential(x, t, c, hint):
        res = f["controlnet"](x, t, c, hint)
        emb, ctx, sample, *skips = f["down"](x, t, c)
        return f["up"](emb, ctx, sample, *skips, *res)

    return sequential, overlapped, split_sequential


def measure(label, f, inputs, with_unet9: bool = True):
    """Each number is logged as soon as it is taken (a compile can run into the budget)."""
    x, t, c, hint, x9 = inputs
    side = torch.cuda.Stream()
    sequential, overlapped, split_sequential = combos(f, side)
    ms = {}
    with torch.no_grad():
        parts = [("unet step", f["plain"], (x, t, c)),
                 ("9-channel unet step", f["plain9"], (x9, t, c)),
                 ("controlnet alone", f["controlnet"], (x, t, c, hint)),
                 ("hint embedding", f["hint_embedding"], (hint,)),
                 ("sequential", sequential, (x, t, c, hint)),
                 ("split, sequential", split_sequential, (x, t, c, hint)),
                 ("overlapped", overlapped, (x, t, c, hint))]
        for name, fn, args in parts:
            if name.startswith("9-channel") and not with_unet9:
                continue
            ms[name], out = step_ms(fn, args)
            row = dict(mode=label, part=name, ms=ms[name], vs_unet_step=round(ms[name] / ms["unet step"], 3))
            if name == "sequential":
                reference = out
            elif name in ("split, sequential", "overlapped"):
                row.update(vs_sequential=round(ms["sequential"] / ms[name], 3),
                           max_abs_vs_sequential=float((out.float() - reference.float()).abs().max()))
            log(**row)


@section("eager graphs")
def eager(f, inputs):
    measure("eager graphs", f, inputs)


@section("compiled graphs")
def compiled(f, inputs):
    started = time.perf_counter()
    g = {name: torch.compile(fn, fullgraph=True, dynamic=False) for name, fn in f.items()}
    log(stage="compiling (first calls)")
    measure("compiled graphs", g, inputs, with_unet9=False)
    log(stage="compiled graphs measured", seconds=round(time.perf_counter() - started, 1))


@section("conv_in probe")
def conv_probe(x9):
    """The 9-channel conv_in alone, vs the same conv zero-padded to 16 input channels."""
    with torch.device("cuda"):
        conv9 = torch.nn.Conv2d(9, 320, 3, padding=1).half().to(memory_format=torch.channels_last)
        conv16 = torch.nn.Conv2d(16, 320, 3, padding=1).half().to(memory_format=torch.channels_last)
        conv4 = torch.nn.Conv2d(4, 320, 3, padding=1).half().to(memory_format=torch.channels_last)
    x16 = torch.cat([x9, torch.zeros_like(x9[:, :7])], 1).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        log(conv_in_ms={"9 ch": step_ms(conv9, (x9,), 200)[0], "16 ch (padded)": step_ms(conv16, (x16,), 200)[0],
                        "4 ch": step_ms(conv4, (x9[:, :4].contiguous(memory_format=torch.channels_last),), 200)[0],
                        "9 ch contiguous": step_ms(conv9.to(memory_format=torch.contiguous_format), (x9.contiguous(),), 200)[0]})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--budget-s", type=float, default=480)
    args = parser.parse_args()

    budget_watchdog(args.budget_s)
    unet, unet9, cn = build()
    g = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16, generator=g).contiguous(memory_format=torch.channels_last)
    x9 = torch.randn(2, 9, 64, 64, device="cuda", dtype=torch.float16, generator=g).contiguous(memory_format=torch.channels_last)
    t = torch.full((2,), 500.0, device="cuda")
    c = torch.randn(2, 77, 768, device="cuda", dtype=torch.float16, generator=g)
    hint = torch.rand(2, 3, 512, 512, device="cuda", dtype=torch.float16, generator=g)
    log(card=torch.cuda.get_device_name(), torch=torch.__version__)
    f = functions(unet, unet9, cn)
    conv_probe(x9)
    eager(f, (x, t, c, hint, x9))
    compiled(f, (x, t, c, hint, x9))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
