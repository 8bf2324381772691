"""SDXL rows for the GPU benchmark (issue 15): random weights from SDXL base 1.0's published
configs (assets/configs/sdxl), at 1024², in one run:

- vanilla diffusers StableDiffusionXLPipeline (eager, SDPA), the baseline of the ratios;
- diffusers' documented compile recipe (channels_last, fuse_qkv, torch.compile of the UNet);
- ours: PipelineManager on the same folder (with its fast path when on CUDA), txt2img;
- every mode loaded at once (txt2img, img2img, RePaint inpaint, 9-channel inpaint, a
  ControlNet): weight bytes from memory_report() and the peak VRAM of the run;
- a random kohya-format SDXL LoRA (lora_unet_ + lora_te1_ + lora_te2_, rank 16) through the
  manager: s/image with and without it (ratio in the same run), its load time, and whether
  weight 0 and the request after it give the plain image bit for bit.

Ratios are s/image of the baseline over each row's, measured in this process. Not run by the
SDXL helper (no device there); the GPU helper folds these rows into gpu_speed.py's table.

    python bench/gpu_sdxl.py --steps 30 --repeats 3
    python bench/gpu_sdxl.py --cpu-smoke     # the LoRA section on the tiny SDXL of tests/, on CPU
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

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from gpu_speed import PROMPT, log, median_s, psnr, section  # noqa: E402

SDXL = ROOT / "assets" / "configs" / "sdxl"


def build_random_sdxl(folder: Path) -> Path:
    """SDXL base's architecture, random weights, fp16; beside it a 9-channel UNet and a ControlNet."""
    from diffusers import AutoencoderKL, ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    torch.manual_seed(0)
    with torch.device("cuda"):
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
    ControlNetModel.from_unet(unet).half().save_pretrained(folder / "controlnet")
    del pipe, unet
    torch.cuda.empty_cache()
    with torch.device("cuda"):
        UNet2DConditionModel.from_config({**unet_config, "in_channels": 9}).half().save_pretrained(folder / "inpaint-unet")
    torch.cuda.empty_cache()
    return folder


def diffusers_pipe(folder: Path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(folder / "sdxl", torch_dtype=torch.float16,
                                                     add_watermarker=False).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_run(pipe, args, seed=1):
    return pipe(PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.0,
                generator=torch.Generator("cpu").manual_seed(seed)).images[0]


@section("sdxl vanilla")
def bench_vanilla(folder, args, card):
    pipe = diffusers_pipe(folder)
    diffusers_run(pipe, args)
    s = median_s(lambda: diffusers_run(pipe, args), args.repeats)
    log(config="SDXL vanilla diffusers (eager, SDPA)", card=card, size=args.size, s_per_image=s,
        peak_vram_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    reference = diffusers_run(pipe, args, seed=7)
    del pipe
    torch.cuda.empty_cache()
    return s, reference


@section("sdxl recipe")
def bench_recipe(folder, args, card, baseline, reference):
    pipe = diffusers_pipe(folder)
    pipe.fuse_qkv_projections()
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
    t0 = time.perf_counter()
    diffusers_run(pipe, args)
    warm = time.perf_counter() - t0
    s = median_s(lambda: diffusers_run(pipe, args), args.repeats)
    log(config="SDXL diffusers recipe (fuse_qkv, channels_last, compile max-autotune fullgraph unet)", card=card,
        s_per_image=s, warmup_s=round(warm, 1), vs_vanilla=round(baseline / s, 2) if baseline else None,
        psnr_vs_vanilla_db=psnr(reference, diffusers_run(pipe, args, seed=7)) if reference else None)
    del pipe
    torch.cuda.empty_cache()


@section("sdxl ours")
def bench_ours(folder, args, card, baseline, reference):
    from pipelines.manager import PipelineManager
    from pipelines.core.requests import (Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling,
                                    Txt2ImgRequest)

    torch.cuda.reset_peak_memory_stats()
    manager = PipelineManager()
    t0 = time.perf_counter()
    manager.load_base(str(folder / "sdxl"))
    log(stage="SDXL loaded", family=manager.family_name, seconds=round(time.perf_counter() - t0, 1),
        weight_gib=round(manager.model.weight_bytes / 2**30, 2), fast_path=manager.fast_path_applied)
    limits = Limits(max_width=4096, max_height=4096)
    sampling = Sampling(scheduler="Euler", steps=args.steps, cfg_scale=7.0, seed=7)
    txt2img = limits.normalize(Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size, sampling=sampling))
    manager.run(txt2img)  # warm-up (and the fast path's captures)
    s = median_s(lambda: manager.run(txt2img), args.repeats)
    image = manager.run(txt2img).images[0].image
    log(config="SDXL ours txt2img", card=card, s_per_image=s, vs_vanilla=round(baseline / s, 2) if baseline else None,
        psnr_vs_vanilla_db=psnr(reference, image) if reference else None)

    init = image
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (init.width // 4, init.height // 4, 3 * init.width // 4, 3 * init.height // 4))
    unit = ControlUnit(model=str(folder / "controlnet"), image=init)
    modes = {
        "img2img": Img2ImgRequest(prompt=PROMPT, width=args.size, height=args.size, init_image=init, strength=0.6,
                                  sampling=sampling),
        "inpaint RePaint": InpaintRequest(prompt=PROMPT, width=args.size, height=args.size, init_image=init, mask=mask,
                                          sampling=sampling),
        "inpaint 9-channel": InpaintRequest(prompt=PROMPT, width=args.size, height=args.size, init_image=init, mask=mask,
                                            mode="inpainting model", inpaint_model=str(folder / "inpaint-unet"),
                                            sampling=sampling),
        "controlnet": Txt2ImgRequest(prompt=PROMPT, width=args.size, height=args.size, sampling=sampling,
                                     control=Control(units=(unit,))),
    }
    for name, request in modes.items():
        request = limits.normalize(request)
        manager.run(request)
        log(config=f"SDXL ours {name}", card=card, s_per_image=median_s(lambda: manager.run(request), 1))
    report = manager.memory_report()
    log(stage="SDXL every mode loaded", modes=report["modes"], shared_gib=round(report["shared_bytes"] / 2**30, 2),
        extra_gib=round(report["extra_bytes"] / 2**30, 2), all_modes_gib=round(report["all_modes_bytes"] / 2**30, 2),
        peak_vram_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))


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
    text_targets = ["q_proj", "k_proj", "v_proj", "out_proj"]
    for prefix, model, targets in (("lora_unet_", unet, ["to_q", "to_k", "to_v", "to_out.0"]),
                                   ("lora_te1_text_model_", one, text_targets), ("lora_te2_text_model_", two, text_targets)):
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


def _median(fn, repeats: int) -> float:
    if torch.cuda.is_available():
        return median_s(fn, repeats)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(sorted(times)[len(times) // 2], 4)


@section("sdxl lora")
def bench_lora(folder, args, card):
    import numpy as np

    from pipelines.core import catalog
    from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest
    from pipelines.manager import PipelineManager

    models = folder / "models"
    t0 = time.perf_counter()
    write_random_xl_lora(folder / "sdxl", models / "Lora" / "random-xl.safetensors")
    log(stage="random SDXL LoRA written", seconds=round(time.perf_counter() - t0, 1),
        mib=round((models / "Lora" / "random-xl.safetensors").stat().st_size / 2**20, 1))
    catalog.configure(models)
    manager = PipelineManager(device="cpu") if args.cpu_smoke else PipelineManager()
    manager.load_base(str(folder / "sdxl"))
    limits = Limits(max_width=4096, max_height=4096)

    def request(prompt):
        return limits.normalize(Txt2ImgRequest(prompt=prompt, width=args.size, height=args.size,
                                               sampling=Sampling(scheduler="Euler", steps=args.steps, seed=7)))

    plain, tagged, zero = request(PROMPT), request(PROMPT + " <lora:random-xl:0.8>"), request(PROMPT + " <lora:random-xl:0>")
    first = manager.run(plain).images[0].image  # warm-up (and the fast path's captures)
    s_plain = _median(lambda: manager.run(plain), args.repeats)
    t0 = time.perf_counter()
    with_lora = manager.run(tagged).images[0].image  # loads the LoRA (and fuses it on the fast path)
    first_lora_s = time.perf_counter() - t0
    s_lora = _median(lambda: manager.run(tagged), args.repeats)
    same = lambda image: bool(np.array_equal(np.asarray(image), np.asarray(first)))  # noqa: E731
    log(config="SDXL ours txt2img + kohya LoRA (unet, te1, te2; rank 16)", card=card, size=args.size,
        s_per_image=s_lora, s_per_image_plain=s_plain, plain_over_lora=round(s_plain / s_lora, 2),
        first_lora_request_s=round(first_lora_s, 2), parts=manager.adapters.loras.slots["random-xl"].parts,
        fused=manager.adapters.loras.fused is not None, psnr_lora_vs_plain_db=psnr(first, with_lora),
        weight0_equals_plain=same(manager.run(zero).images[0].image),
        after_equals_plain=same(manager.run(plain).images[0].image))
    catalog.configure(None)


def smoke_folder(folder: Path) -> Path:
    """--cpu-smoke: the tiny SDXL of tests/tiny_sdxl.py where the real-size one would go."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_sdxl import save_tiny_xl_model

    save_tiny_xl_model(folder / "sdxl")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-recipe", action="store_true")
    parser.add_argument("--skip-lora", action="store_true", help="leave out the SDXL LoRA section (a second model load)")
    parser.add_argument("--cpu-smoke", action="store_true", help="only the LoRA section, on a tiny SDXL, on CPU")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    if args.cpu_smoke:
        args.size, args.steps, args.repeats = 64, 3, 1
        bench_lora(smoke_folder(folder), args, "cpu")
        return
    card = torch.cuda.get_device_name()
    build_random_sdxl(folder)
    log(stage="built random SDXL + 9-channel UNet + ControlNet", card=card, torch=torch.__version__)
    baseline, reference = bench_vanilla(folder, args, card) or (None, None)
    if not args.skip_recipe:
        bench_recipe(folder, args, card, baseline, reference)
    bench_ours(folder, args, card, baseline, reference)
    if not args.skip_lora:
        import gc

        gc.collect()  # the previous section's manager
        torch.cuda.empty_cache()
        bench_lora(folder, args, card)


if __name__ == "__main__":
    main()
