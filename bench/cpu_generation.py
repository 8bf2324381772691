"""CPU benchmark: the manager's txt2img vs vanilla diffusers on the same weights, in one
process, plus the weight memory of one mode vs every mode loaded.

    python bench/cpu_generation.py                      # tiny random model built in code
    python bench/cpu_generation.py --model assets/models/demo --size 128 --steps 20

Prints one JSON line per configuration and a ratio line (manager / vanilla; ~1.0 means the
manager's per-request scheduler, preview and bookkeeping cost nothing noticeable).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline  # noqa: E402

from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.core.requests import Limits, Sampling, Txt2ImgRequest  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = args.model
    if not model:
        from tiny_sd import save_tiny_model

        model = str(save_tiny_model(Path(tempfile.mkdtemp()) / "tiny-sd"))
    torch.set_num_threads(os.cpu_count() or 1)
    prompt = "a large red circle on a white background"

    vanilla = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32, safety_checker=None,
                                                      requires_safety_checker=False)
    vanilla.set_progress_bar_config(disable=True)
    vanilla.scheduler = EulerAncestralDiscreteScheduler.from_config(vanilla.scheduler.config)

    def run_vanilla():
        vanilla(prompt, height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.0,
                generator=torch.Generator().manual_seed(1))

    manager = PipelineManager(device="cpu")
    started = time.perf_counter()
    manager.load_base(model)
    load_seconds = time.perf_counter() - started
    request = Limits().normalize(Txt2ImgRequest(prompt=prompt, width=args.size, height=args.size,
                                                sampling=Sampling(scheduler="Euler a", steps=args.steps, seed=1)))

    results = {}
    for name, fn in (("vanilla diffusers", run_vanilla), ("manager", lambda: manager.run(request))):
        times = timed(fn, args.repeats)
        results[name] = statistics.median(times)
        print(json.dumps({"config": name, "model": Path(model).name, "size": args.size, "steps": args.steps,
                          "s_per_image": round(results[name], 4), "it_per_s": round(args.steps / results[name], 1),
                          "threads": torch.get_num_threads()}), flush=True)
    print(json.dumps({"ratio_manager_over_vanilla": round(results["manager"] / results["vanilla diffusers"], 3),
                      "manager_load_s": round(load_seconds, 2)}), flush=True)

    one = manager.memory_report()
    inpaint_model, controlnet = extra_models(model, manager)
    manager.pipeline("img2img")
    manager.pipeline("inpaint", unet=manager.inpaint_unet(inpaint_model))
    unit = manager.controlnets.get(controlnet, manager.pipeline("txt2img").unet, manager.device, manager.dtype, False)
    manager.pipeline("controlnet", controlnet=unit)
    every = manager.memory_report()
    print(json.dumps({"weights_mib_txt2img_only": round(one["base_bytes"] / 2**20, 2),
                      "weights_mib_shared_by_all_modes": round(every["shared_bytes"] / 2**20, 2),
                      "weights_mib_extra_modules": round(every["extra_bytes"] / 2**20, 2),
                      "weights_mib_all_modes": round(every["all_modes_bytes"] / 2**20, 2),
                      "modes": every["modes"]}), flush=True)


def extra_models(model: str, manager) -> tuple[str, str]:
    """A 9-channel UNet and a ControlNet for the model: the demo family's, or tiny ones."""
    from pipelines.core import catalog

    if Path(model).resolve().parent == catalog.ASSET_MODELS:
        return catalog.inpaint_models()[0], catalog.default_controlnet("canny")
    from tiny_sd import save_tiny_controlnet, save_tiny_inpaint_unet

    folder = Path(tempfile.mkdtemp())
    return (str(save_tiny_inpaint_unet(folder / "inpaint")),
            str(save_tiny_controlnet(folder / "controlnet", manager.pipeline("txt2img").unet)))


if __name__ == "__main__":
    main()
