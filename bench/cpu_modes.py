"""Seconds per image of every mode on the demo model, CPU, one process:
txt2img, img2img, inpaint (RePaint r=1, r=4; the 9-channel model), ControlNet with one and
two units. Median of --repeats runs after a warm-up.

    python bench/cpu_modes.py [--size 128] [--steps 20] [--repeats 3]
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
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from pipelines.core import catalog  # noqa: E402
from pipelines.manager import PipelineManager  # noqa: E402
from pipelines.pose import preset_pose  # noqa: E402
from pipelines.core.requests import (Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling,  # noqa: E402
                                Txt2ImgRequest)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    manager = PipelineManager(device="cpu")
    manager.load_base(str(catalog.ASSET_MODELS / "demo"))
    size, s = args.size, Sampling(scheduler="Euler a", steps=args.steps, seed=1)
    init = manager.run(Limits().normalize(Txt2ImgRequest(prompt="a large red circle on a white background",
                                                         width=size, height=size, sampling=s))).images[0].image
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    canny = ControlUnit(model=catalog.default_controlnet("canny"), image=init, preprocessor="canny")
    pose = ControlUnit(model=catalog.default_controlnet("pose"), image=preset_pose("arms up", size, size).draw())
    common = dict(width=size, height=size, sampling=s)
    modes = {
        "txt2img": Txt2ImgRequest(prompt="a blue square on a yellow background", **common),
        "img2img (strength 0.6)": Img2ImgRequest(prompt="a blue circle", init_image=init, strength=0.6, **common),
        "inpaint RePaint r=1": InpaintRequest(prompt="a blue square on a white background", init_image=init, mask=mask, **common),
        "inpaint RePaint r=4 j=4": InpaintRequest(prompt="a blue square on a white background", init_image=init, mask=mask,
                                                  repaint_r=4, repaint_j=4, **common),
        "inpaint model (9-channel)": InpaintRequest(prompt="a blue square on a white background", init_image=init, mask=mask,
                                                    mode="inpainting model", inpaint_model=catalog.inpaint_models()[0], **common),
        "ControlNet, 1 unit (canny)": Txt2ImgRequest(prompt="a green circle on a white background",
                                                     control=Control(units=(canny,)), **common),
        "ControlNet, 2 units (canny + pose)": Txt2ImgRequest(prompt="a green person on a white background",
                                                             control=Control(units=(canny, pose)), **common),
    }
    for name, request in modes.items():
        request = Limits().normalize(request)
        manager.run(request)  # warm-up: loads extra modules on first use
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            manager.run(request)
            times.append(time.perf_counter() - started)
        print(json.dumps({"mode": name, "size": size, "steps": args.steps, "s_per_image": round(statistics.median(times), 3)}),
              flush=True)


if __name__ == "__main__":
    main()
