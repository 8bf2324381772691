"""Seam metric of RePaint inpainting: does resampling (r > 1) heal the mask border?

    python bench/seam_metric.py                                   # tiny random model built in code
    python bench/seam_metric.py --model assets/models/demo --seeds 8 --r 1 4 --j 4

For every r and seed: inpaint a box of an init image, by default a drawn "large red circle
in the centre on a white background" (--scene complete: the box covers the circle's right
half and the prompt asks for the same scene, so the border cuts through the object the
model must continue; --scene replace: the box covers the whole circle, asked to become a
blue square), decode, paste back with a hard mask (mask blur 0, so nothing hides the seam), and measure
masks.seam_metric: mean gradient magnitude in a ±2 px band around the mask border minus
the mean of the inside and outside means (0 = no visible seam). Prints one JSON line per
r (mean ± std over seeds, seconds per image) and one line comparing the first and last r.
On the tiny random model the numbers only show that the script runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from pipelines.generation import decode  # noqa: E402
from pipelines.inpainting import encode_image  # noqa: E402
from pipelines.masks import prepare_inpaint, seam_metric  # noqa: E402
from pipelines.repaint import masked_content_latents, repaint  # noqa: E402


def load(model: str, device: str):
    if model == "tiny":
        from tiny_sd import tiny_pipeline

        return tiny_pipeline().to(device)
    from pipelines.loading import load_pipeline, resolve_source

    return load_pipeline(resolve_source(model), torch.float32, False).to(device)


SCENES = {  # name → (prompt, mask box as fractions of the size)
    "complete": ("a large red circle in the centre on a white background", (0.5, 0.25, 0.8, 0.75)),
    "replace": ("a large blue square in the centre on a white background", (0.28, 0.28, 0.72, 0.72)),
}


def default_scene(size: int, scene: str) -> tuple[Image.Image, Image.Image]:
    """A white canvas with a large red circle in the centre, and the scene's mask box."""
    image = Image.new("RGB", (size, size), (245, 245, 245))
    r = size * 0.15
    c = size / 2
    ImageDraw.Draw(image).ellipse((c - r, c - r, c + r, c + r), fill=(215, 40, 40))
    mask = Image.new("L", (size, size), 0)
    x0, y0, x1, y1 = (round(v * size) for v in SCENES[scene][1])
    ImageDraw.Draw(mask).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    return image, mask


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="diffusers folder / .safetensors / 'tiny' (random, in code)")
    parser.add_argument("--image", help="init image (default: a drawn scene)")
    parser.add_argument("--mask", help="mask image, white = inpaint (default: a centre box)")
    parser.add_argument("--scene", choices=sorted(SCENES), default="complete")
    parser.add_argument("--prompt", help="default: the scene's prompt")
    parser.add_argument("--negative", default="")
    parser.add_argument("--size", type=int, default=0, help="generation size (default: the model's native size)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--eta", type=float, default=1.0, help="1 = RePaint's DDPM ancestral step")
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--r", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--j", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--band", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--save", help="folder to write the decoded images into")
    args = parser.parse_args()

    pipe = load(args.model, args.device)
    size = args.size or int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    image, mask = default_scene(size, args.scene)
    prompt = args.prompt or SCENES[args.scene][0]
    if args.image:
        image = Image.open(args.image)
    if args.mask:
        mask = Image.open(args.mask)
    plan = prepare_inpaint(image, mask, size, size, mask_blur=0)
    device = torch.device(args.device)

    init_latents = encode_image(pipe, plan.init_image)  # the posterior mean (= its mode), scaled
    m = torch.from_numpy(plan.latent_mask(pipe.vae_scale_factor))[None, None].to(device)
    cond, uncond = pipe.encode_prompt(prompt, device, 1, args.cfg > 1, args.negative)

    rows = {}
    for r in args.r:
        seams, raw_seams, seconds = [], [], []
        for seed in range(args.seeds):
            generators = [torch.Generator().manual_seed(seed)]
            start = masked_content_latents(init_latents, m, "original", generators)
            began = time.perf_counter()
            out = repaint(pipe.unet, pipe.scheduler.config, init_latents, m, cond, uncond, args.steps, args.cfg,
                          args.eta, args.strength, r, args.j, generators, start_latents=start)
            generated = decode(pipe, out.latents)[0]
            seconds.append(time.perf_counter() - began)
            final = plan.finish(generated)
            seams.append(seam_metric(final, plan.mask, args.band)["seam"])
            raw_seams.append(seam_metric(generated, plan.mask, args.band)["seam"])
            if args.save:
                Path(args.save).mkdir(parents=True, exist_ok=True)
                final.save(Path(args.save) / f"{args.scene}_r{r}_j{args.j}_seed{seed}.png")
        rows[r] = statistics.mean(seams)
        print(json.dumps({
            "model": Path(args.model).name, "scene": "custom" if args.image else args.scene, "size": size, "steps": args.steps, "r": r, "j": args.j, "eta": args.eta,
            "cfg": args.cfg, "seeds": args.seeds, "unet_calls": r * int(args.steps * args.strength),
            "seam_pasted_mean": round(rows[r], 3), "seam_pasted_std": round(float(np.std(seams)), 3),
            "seam_decoded_mean": round(statistics.mean(raw_seams), 3),
            "s_per_image": round(statistics.median(seconds), 3), "device": args.device,
        }), flush=True)
    first, last = args.r[0], args.r[-1]
    if first != last:
        print(json.dumps({f"seam_r{last}_minus_r{first}": round(rows[last] - rows[first], 3),
                          "lower_with_more_resampling": rows[last] < rows[first]}), flush=True)


if __name__ == "__main__":
    main()
