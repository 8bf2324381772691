"""The SDXL LoRA row (issues 14 + 15), its own unattended call: a random kohya-format SDXL LoRA
(`lora_unet_*` + `lora_te1_*` + `lora_te2_*`, rank 16, fp16) through the manager with the fast
path, on SDXL base 1.0's architecture with random weights (bench/gpu_sdxl.py builds it), 1024².

One JSON line per measurement (gpu_speed.log), each a @section:
- s/image of txt2img with the LoRA vs without it, same manager, same run (the ratio);
- the first LoRA request (file read, injection into the UNet and both text encoders, merge);
- whether weight 0 and the plain request after it give the plain image bit for bit;
- the same LoRA on the 9-channel inpainting UNet (its UNet half merged there too): s/image.

    PYTHONUNBUFFERED=1 python bench/gpu_sdxl_lora.py        # H200: about 3-4 min (one SDXL load, warm-ups)
    python bench/gpu_sdxl_lora.py --cpu-smoke               # tiny SDXL, 64², 3 steps, no compile
"""
from __future__ import annotations

import argparse
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

from gpu_sdxl import build_random_sdxl, build_tiny_sdxl, median_s  # noqa: E402
from gpu_speed import PROMPT, log, psnr, section  # noqa: E402

TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def write_random_xl_lora(model_dir: Path, path: Path, rank: int = 16, scale: float = 0.02, seed: int = 0) -> Path:
    """A kohya-format SDXL LoRA with random weights (diffusers layer names, both text encoders);
    the shapes come from the model's configs (built on the meta device: no weights in memory)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipelines.adapters import peft_tolerates_old_torchao

    peft_tolerates_old_torchao()
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(model_dir, subfolder="unet"))
        one = CLIPTextModel(CLIPTextConfig.from_pretrained(model_dir, subfolder="text_encoder"))
        two = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(model_dir, subfolder="text_encoder_2"))
    g = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, model, targets in (("lora_unet_", unet, UNET_TARGETS), ("lora_te1_text_model_", one, TEXT_TARGETS),
                                   ("lora_te2_text_model_", two, TEXT_TARGETS)):
        model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model)
        for key, value in get_peft_model_state_dict(model).items():
            module, kind = key.rsplit(".lora_", 1)
            name = prefix + module.removeprefix("text_model.").replace(".", "_")
            out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = (
                torch.randn(tuple(value.shape), generator=g) * scale).half()
            out[f"{name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return path


@section("sdxl lora: setup")
def setup(folder: Path, args):
    from pipelines.core import catalog
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    models = folder / "models"
    t0 = time.perf_counter()
    lora = write_random_xl_lora(folder / "sdxl", models / "Lora" / "random-xl.safetensors")
    log(stage="random SDXL LoRA written", seconds=round(time.perf_counter() - t0, 1), mib=round(lora.stat().st_size / 2**20, 1))
    catalog.configure(models)
    config = FastPath(compile="full") if args.compile else FastPath(compile="full", compiler=lambda fn: fn)
    manager = PipelineManager(device=args.device, dtype="fp16" if args.device == "cuda" else "fp32", fast_path=config)
    t0 = time.perf_counter()
    manager.load_base(str(folder / "sdxl"))
    log(stage="SDXL loaded", load_s=round(time.perf_counter() - t0, 1), fast_path=manager.fast_path_applied)
    return manager


def txt2img(args, prompt):
    from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest

    return Limits(max_width=4096, max_height=4096).normalize(Txt2ImgRequest(
        prompt=prompt, width=args.size, height=args.size, sampling=Sampling(scheduler="Euler", steps=args.steps, seed=7)))


@section("sdxl lora: txt2img")
def bench_txt2img(manager, args):
    plain, tagged, zero = txt2img(args, PROMPT), txt2img(args, PROMPT + " <lora:random-xl:0.8>"), txt2img(args, PROMPT + " <lora:random-xl:0>")
    first = manager.run(plain).images[0].image  # warm-up (the fast path's captures)
    if manager.fast_runtime is not None:
        manager.fast_runtime.wait_idle(args.catch_up_s)  # background compiles in, before timing
    s_plain = median_s(lambda: manager.run(plain), args.repeats, args.device)
    t0 = time.perf_counter()
    with_lora = manager.run(tagged).images[0].image  # reads, injects and merges the LoRA
    first_lora_s = time.perf_counter() - t0
    s_lora = median_s(lambda: manager.run(tagged), args.repeats, args.device)
    same = lambda image: bool(np.array_equal(np.asarray(image), np.asarray(first)))  # noqa: E731
    log(config="SDXL ours txt2img + kohya LoRA (unet, te1, te2; rank 16)", card=args.card, size=args.size,
        steps=args.steps, s_per_image=s_lora, s_per_image_plain=s_plain, plain_over_lora=round(s_plain / s_lora, 2),
        first_lora_request_s=round(first_lora_s, 2), parts=manager.adapters.loras.slots["random-xl"].parts,
        merged=manager.adapters.loras.fused is not None, psnr_lora_vs_plain_db=psnr(first, with_lora),
        weight0_equals_plain=same(manager.run(zero).images[0].image),
        after_equals_plain=same(manager.run(plain).images[0].image))


@section("sdxl lora: 9-channel inpainting UNet")
def bench_inpaint(manager, folder: Path, args):
    from pipelines.core.requests import InpaintRequest, Limits, Sampling

    init = Image.new("RGB", (args.size, args.size), (90, 120, 200))
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (args.size // 4, args.size // 4, 3 * args.size // 4, 3 * args.size // 4))

    def request(prompt):
        return Limits(max_width=4096, max_height=4096).normalize(InpaintRequest(
            prompt=prompt, width=args.size, height=args.size, init_image=init, mask=mask, mode="inpainting model",
            inpaint_model=str(folder / "inpaint-unet"), sampling=Sampling(scheduler="Euler", steps=args.steps, seed=7)))

    plain, tagged = request(PROMPT), request(PROMPT + " <lora:random-xl:0.8>")
    first = manager.run(plain).images[0].image
    if manager.fast_runtime is not None:
        manager.fast_runtime.wait_idle(args.catch_up_s)
    s_plain = median_s(lambda: manager.run(plain), args.repeats, args.device)
    with_lora = manager.run(tagged)
    s_lora = median_s(lambda: manager.run(tagged), args.repeats, args.device)
    log(config="SDXL ours 9-channel inpaint + kohya LoRA", card=args.card, s_per_image=s_lora, s_per_image_plain=s_plain,
        plain_over_lora=round(s_plain / s_lora, 2), psnr_lora_vs_plain_db=psnr(first, with_lora.images[0].image),
        notes=[n for n in with_lora.notes if "LoRA" in n],
        after_equals_plain=bool(np.array_equal(np.asarray(manager.run(plain).images[0].image), np.asarray(first))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--catch-up-s", type=float, default=240, help="longest wait for the background compiles")
    parser.add_argument("--cpu-smoke", action="store_true", help="CPU, tiny random SDXL, 64², 3 steps, no compile")
    args = parser.parse_args()
    if args.cpu_smoke:
        args.device, args.compile, args.card = "cpu", False, "cpu (smoke)"
        args.size, args.steps, args.repeats = 64, 3, 1
    else:
        args.device, args.compile, args.card = "cuda", True, torch.cuda.get_device_name()
    folder = Path(tempfile.mkdtemp(prefix="sdxl-lora-bench-"))
    (build_tiny_sdxl if args.cpu_smoke else lambda f: build_random_sdxl(f, "cuda"))(folder)
    manager = setup(folder, args)
    if manager is not None:
        bench_txt2img(manager, args)
        bench_inpaint(manager, folder, args)


if __name__ == "__main__":
    main()
