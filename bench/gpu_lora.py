"""The LoRA row of the GPU benchmark (issue 14): LoRAs on the fast path.

With the fast path a LoRA set is merged into the weights in place (pipelines/adapters.py), so
LoRA requests replay the same compiled CUDA graphs as plain ones. Measured on the manager
bench/gpu_speed.py has already compiled (same process, same card):
- the first request with a new LoRA (file read, adapter injection, merge) and its steady
  s/image, vs plain txt2img;
- switching sets every request (A, B, none, ...): the merge/restore cost per request;
- a plain request after LoRA ones equals the plain image bit for bit (weights restored);
- the LoRA image vs diffusers' own unmerged `load_lora_weights` on the vanilla pipeline (PSNR).

Random LoRAs of a typical size: rank 64 on the UNet's attention projections (to_q/k/v/out)
and the text encoder's (q/k/v/out_proj), diffusers/PEFT keys, fp16.

    python bench/gpu_speed.py            # runs this after the fast-path section
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def random_lora(pipe_dir: Path, path: Path, seed: int, rank: int = 64, scale: float = 0.02) -> Path:
    """A diffusers-format LoRA file for the model in pipe_dir, from its modules' shapes (meta device)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(pipe_dir, subfolder="unet"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(pipe_dir, subfolder="text_encoder"))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for prefix, model, targets in (("unet", unet, UNET_TARGETS), ("text_encoder", text, TEXT_TARGETS)):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(targets):
                key = name if prefix == "unet" or name.startswith("text_model.") else f"text_model.{name}"
                tensors[f"{prefix}.{key}.lora_A.weight"] = (torch.randn(rank, module.in_features, generator=g) * scale).half()
                tensors[f"{prefix}.{key}.lora_B.weight"] = (torch.randn(module.out_features, rank, generator=g) * scale).half()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, path)
    return path


def bench_lora(folder: Path, args, card, manager, plain_request, plain_s, vanilla_pipe=None):
    from gpu_speed import log, median_s, psnr, timed

    from pipelines.core import catalog

    models = folder / "models"
    for name, seed in (("bench-a", 11), ("bench-b", 12)):
        random_lora(folder / "sd15", models / "Lora" / f"{name}.safetensors", seed)
    catalog.configure(models)
    try:
        def request(prompt_tail: str):
            from dataclasses import replace

            return replace(plain_request, prompt=f"{plain_request.prompt}{prompt_tail}")

        plain_before = manager.run(plain_request).images[0].image
        with_a = request(" <lora:bench-a:0.8>")
        first = timed(lambda: manager.run(with_a), 1)[0]
        manager.run(with_a)
        unet = manager.pipeline("txt2img").unet._sd_studio_fast
        served_before = dict(unet.served)
        steady = median_s(lambda: manager.run(with_a), args.repeats)
        served = {k: v - served_before.get(k, 0) for k, v in unet.served.items()}
        lora_image = manager.run(with_a).images[0].image
        cycle = [with_a, request(" <lora:bench-b:1>"), plain_request]
        switching = []
        for _ in range(2):
            for r in cycle:
                switching.append(timed(lambda: manager.run(r), 1)[0])
        plain_after = manager.run(plain_request).images[0].image
        row = dict(config="manager fast path + LoRA (rank 64, merged in place)", card=card,
                   first_lora_request_s=round(first, 3), s_per_image=steady,
                   ratio_to_plain=round(steady / plain_s, 3) if plain_s else None,
                   unet_served_during_steady=served,
                   switching_a_b_none_s=[round(s, 3) for s in switching],
                   switching_median_s=round(float(np.median(switching)), 4),
                   plain_after_lora_bit_exact=bool(np.array_equal(np.asarray(plain_before), np.asarray(plain_after))),
                   lora_changes_image_psnr_db=psnr(plain_before, lora_image))
        if vanilla_pipe is not None:
            vanilla_pipe.load_lora_weights(str(models / "Lora" / "bench-a.safetensors"), adapter_name="a")
            vanilla_pipe.set_adapters(["a"], [0.8])
            t0 = time.perf_counter()
            from gpu_speed import PROMPT

            reference = vanilla_pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps,
                                     guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(3)).images[0]
            row["vanilla_unmerged_lora_s"] = round(time.perf_counter() - t0, 3)
            row["psnr_vs_diffusers_unmerged_lora_db"] = psnr(reference, lora_image)
            vanilla_pipe.unload_lora_weights()
        log(**row)
    finally:
        catalog.configure(None)


def main() -> None:
    """Standalone: SD 1.5 shapes, the manager's fast path (txt2img only), then the LoRA row."""
    import argparse
    import os
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu_speed import build_random_sd15, diffusers_pipe, log, median_s, mode_requests

    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", default="full", choices=("full", "none"))
    parser.add_argument("--compile-wait-s", type=float, default=120)
    args = parser.parse_args()
    card = torch.cuda.get_device_name()
    folder = Path(tempfile.mkdtemp())
    build_random_sd15(folder)
    vanilla = diffusers_pipe(folder)
    manager = PipelineManager(device="cuda", dtype="fp16", fast_path=FastPath(compile=args.compile))
    manager.load_base(str(folder / "sd15"))
    from PIL import Image

    plain = mode_requests(folder, args, Image.new("RGB", (args.size, args.size), (90, 120, 200)))["txt2img"]
    manager.run(plain)
    manager.run(plain)
    idle = manager.fast_runtime.wait_idle(args.compile_wait_s)
    manager.run(plain)
    plain_s = median_s(lambda: manager.run(plain), args.repeats)
    log(config="manager fast path, plain txt2img", card=card, s_per_image=plain_s, compiled=idle,
        served=dict(manager.pipeline("txt2img").unet._sd_studio_fast.served))
    bench_lora(folder, args, card, manager, plain, plain_s, vanilla)
    out = os.environ.get("OUT")
    if out:
        import json

        from gpu_speed import ROWS

        Path(out, "gpu_lora.json").write_text(json.dumps(ROWS, indent=1))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
