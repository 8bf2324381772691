"""Images of a fixed set of inpaint/txt2img/img2img requests (tiny model, CPU, fixed seeds), to
check a change keeps them bit for bit: run it on the code before and after, then compare.

    OMP_NUM_THREADS=1 python bench/inpaint_images.py /tmp/before.npz     # on the old commit
    OMP_NUM_THREADS=1 python bench/inpaint_images.py /tmp/after.npz      # on the new one
    python bench/inpaint_images.py --compare /tmp/before.npz /tmp/after.npz

Every request runs twice, on the plain manager and on the fast path's routing (fake compile)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import numpy as np  # noqa: E402


def images(out: str) -> None:
    import torch
    from PIL import Image
    from tiny_sd import save_tiny_inpaint_unet, save_tiny_model

    from pipelines.core.requests import Img2ImgRequest, InpaintRequest, Limits, Sampling, Txt2ImgRequest
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager

    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp())
    model, inpaint_unet = save_tiny_model(folder / "tiny"), str(save_tiny_inpaint_unet(folder / "inpaint"))
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    mask = Image.new("L", (96, 96), 0)
    mask.paste(255, (20, 30, 70, 80))
    mask.paste(255, (0, 0, 10, 96))  # a second part, on the border
    nine = {"mode": "inpainting model", "inpaint_model": inpaint_unet}
    cases = {
        "repaint blur 0": {"mask_blur": 0}, "repaint blur 4": {"mask_blur": 4},
        "repaint blur 8 fill": {"mask_blur": 8, "masked_content": "fill"},
        "repaint only masked": {"mask_blur": 4, "inpaint_area": "only masked", "padding": 8},
        "9-channel blur 4": {"mask_blur": 4, **nine},
        "9-channel only masked batch 2": {"mask_blur": 6, "inpaint_area": "only masked", "batch_size": 2, **nine},
    }
    saved = {}
    for fast in (False, True):
        config = FastPath(compile="full", channels_last=False, fuse_qkv=False, compiler=lambda fn: fn) if fast else None
        manager = PipelineManager(device="cpu", fast_path=config)
        manager.load_base(str(model))
        requests = {}
        for name, fields in cases.items():
            fields = dict(fields)
            sampling = Sampling(scheduler="Euler" if "9-channel" in name else "DDIM", steps=4, seed=11,
                                batch_size=fields.pop("batch_size", 1))
            requests[name] = InpaintRequest(prompt="a cat", width=64, height=64, init_image=init, mask=mask,
                                            sampling=sampling, **fields)
        requests["txt2img"] = Txt2ImgRequest(prompt="a cat", width=64, height=64,
                                             sampling=Sampling(scheduler="Euler", steps=4, seed=5))
        requests["img2img"] = Img2ImgRequest(prompt="a cat", width=64, height=64, init_image=init, strength=0.6,
                                             sampling=Sampling(scheduler="DDIM", steps=5, seed=5))
        for name, request in requests.items():
            for repeat in range(2):
                for k, image in enumerate(manager.run(Limits().normalize(request)).images):
                    saved[f"{'fast' if fast else 'plain'} | {name} | run {repeat} | image {k}"] = np.asarray(image.image)
    np.savez(out, **saved)
    print(f"{len(saved)} images -> {out}")


def compare(a: str, b: str) -> None:
    x, y = np.load(a), np.load(b)
    if sorted(x.files) != sorted(y.files):
        raise SystemExit(f"different request sets: {sorted(set(x.files) ^ set(y.files))}")
    different = [k for k in x.files if not np.array_equal(x[k], y[k])]
    print(f"{len(x.files)} images compared, {len(different)} different" + (f": {different}" if different else ""))
    raise SystemExit(1 if different else 0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", nargs="?", default="inpaint_images.npz")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"))
    args = parser.parse_args()
    compare(*args.compare) if args.compare else images(args.out)
