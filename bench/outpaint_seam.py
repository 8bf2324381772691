"""Outpainting seam: how visible is the join between the kept image and the new area, with
and without the mask blur across it?

    python bench/outpaint_seam.py                       # the shipped demo model (assets/models/demo)
    python bench/outpaint_seam.py --model tiny --seeds 2

The scene: a light canvas with a red disc cut by the right edge (the model has to continue
it), extended to the right by --extend px exactly as the Inpaint tab's "Extend the canvas"
does (pipelines.masks.outpaint_canvas: new area masked, 8 px overlap into the image, filled
from the image's colours), then inpainted (RePaint, the UI's defaults) with mask blur 0 and
the others given. Per blur, mean ± std over seeds of:
- join_gradient: mean |Δx| of luminance (0…255) across the hard mask's border column (the
  join: kept pixels on its left, generated on its right);
- worst_column: the largest mean |Δx| of any column from 4 px before the join to 24 px
  after it (the blur moves the transition into the mask: this catches it wherever it is);
- seam: masks.seam_metric with the hard mask (±2 px band gradient minus the rest's mean).
Prints one JSON line per blur; 0 = the join looks like the rest of the picture.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from pipelines.masks import outpaint_canvas, seam_metric  # noqa: E402
from pipelines.core.requests import InpaintRequest, Limits, Sampling  # noqa: E402


def scene(size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), (235, 235, 225))
    r = size * 0.3
    ImageDraw.Draw(image).ellipse((size - r, size / 2 - r, size + r, size / 2 + r), fill=(200, 40, 40))
    return image


def join_gradient(image: Image.Image, column: int) -> float:
    grey = np.asarray(image.convert("L"), np.float64)
    return float(np.abs(grey[:, column] - grey[:, column - 1]).mean())


def worst_column(image: Image.Image, column: int) -> float:
    return max(join_gradient(image, c) for c in range(max(1, column - 4), min(image.width, column + 25)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(ROOT / "assets" / "models" / "demo"), help="diffusers folder or 'tiny'")
    parser.add_argument("--blurs", type=int, nargs="+", default=[0, 4, 8])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--extend", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    from pipelines.manager import PipelineManager

    manager = PipelineManager(device="cpu")
    if args.model == "tiny":
        from tiny_sd import save_tiny_model

        args.model = str(save_tiny_model(Path("/tmp/outpaint-seam-tiny")))
    manager.load_base(args.model)
    size = manager.native_size
    canvas, mask, _ = outpaint_canvas(scene(size), right=args.extend)
    hard = np.asarray(mask) > 127
    column = int(np.argmax(hard.any(axis=0)))  # first masked column: the join
    for blur in args.blurs:
        joins, worst, seams = [], [], []
        for seed in range(args.seeds):
            request = Limits().normalize(InpaintRequest(
                prompt="a red disc on a light background", init_image=canvas, mask=mask, mask_blur=blur,
                masked_content="fill", width=canvas.width, height=canvas.height,
                sampling=Sampling(steps=args.steps, seed=seed)))
            image = manager.run(request).images[0].image
            joins.append(join_gradient(image, column))
            worst.append(worst_column(image, column))
            seams.append(seam_metric(image, hard)["seam"])
        print(json.dumps({"model": Path(args.model).name, "size": f"{canvas.width}x{canvas.height}", "mask_blur": blur,
                          "seeds": args.seeds, "join_column": column,
                          "join_gradient": round(statistics.mean(joins), 2), "join_gradient_std": round(statistics.pstdev(joins), 2),
                          "worst_column": round(statistics.mean(worst), 2), "worst_column_std": round(statistics.pstdev(worst), 2),
                          "seam": round(statistics.mean(seams), 2), "seam_std": round(statistics.pstdev(seams), 2)}), flush=True)


if __name__ == "__main__":
    main()
