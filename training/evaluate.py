"""Probes of the shipped demo models, printing numbers (docs/demo-model.md records them):

    python -m training.evaluate --n 200 --probes base,person,inpaint,canny,pose [--grid docs/demo-model-samples.png]

- base: single-object captions whose (colour, shape, background) triple training never drew;
  background / object colour / shape / position read back from pixels, CFG 5 against CFG off;
- inpaint: a box over an object, the caption asking for another colour; the hole's colour and
  the unmasked region's PSNR (before any paste-back);
- canny: edge F1 (2 px tolerance) between the control edges and the output's edges, with the
  ControlNet and with the base model alone on the same prompts and seeds (captions, and empty);
- pose: fraction of the skeleton's body limbs covered by figure pixels, with and without.
All generations: 20 steps of the shipped scheduler (DDIM), 128², seeds fixed.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.preprocess import canny, canny_edges, draw_openpose
from training import data, models, readback

STEPS = 20
CFG = 5.0


def load_pipeline(models_dir: Path, device, kind: str = "base"):
    """The shipped pipelines: base txt2img, the 9-channel inpainting model, or a ControlNet."""
    from diffusers import (ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionInpaintPipeline,
                           StableDiffusionPipeline, UNet2DConditionModel)
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32  # bf16: no fp16 overflow in the VAE
    base = StableDiffusionPipeline.from_pretrained(Path(models_dir) / models.BASE, torch_dtype=dtype)
    parts = dict(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, scheduler=base.scheduler,
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if kind == "base":
        pipe = base
    elif kind == "inpaint":
        unet = UNet2DConditionModel.from_pretrained(Path(models_dir) / models.INPAINT / "unet", torch_dtype=dtype)
        pipe = StableDiffusionInpaintPipeline(unet=unet, **parts)
    else:
        controlnet = ControlNetModel.from_pretrained(Path(models_dir) / models.CONTROLNETS[kind], torch_dtype=dtype)
        pipe = StableDiffusionControlNetPipeline(unet=base.unet, controlnet=controlnet, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(pipe, prompts: list[str], guidance: float, seed: int = 0, batch: int = 50, **per_image) -> np.ndarray:
    """uint8 images (n, 128, 128, 3); per_image lists (control images, masks…) are batched alongside."""
    out = []
    for s in range(0, len(prompts), batch):
        extra = {k: v[s:s + batch] for k, v in per_image.items()}
        g = torch.Generator(pipe.device).manual_seed(seed + s)
        images = pipe(prompts[s:s + batch], height=data.IMAGE_SIZE, width=data.IMAGE_SIZE, num_inference_steps=STEPS,
                      guidance_scale=guidance, generator=g, output_type="np", **extra).images
        out.append((np.asarray(images) * 255 + 0.5).clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def heldout_probes(n: int, seed: int = 1234) -> list[tuple[str, dict]]:
    """n (caption, truth) pairs from held-out (colour, shape, background) triples, one object."""
    triples = data.heldout_triples().nonzero().tolist()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c, s, b = triples[rng.integers(len(triples))]
        size, pos = data.SIZES[rng.integers(2)], int(rng.integers(9))
        scene = data.scene_from_objects([(size, data.COLOUR_NAMES[c], data.SHAPES[s], data.POSITIONS[pos][0])],
                                        data.COLOUR_NAMES[b])
        out.append((scene.captions[0], dict(colour=c, shape=s, background=b, position=pos)))
    return out


def score_objects(images: np.ndarray, truths: list[dict]) -> dict:
    hits = {"background": [], "colour": [], "shape": [], "position": []}
    for image, truth in zip(images, truths):
        r = readback.read_single_object(image)
        for key in hits:
            hits[key].append(getattr(r, key) == truth[key])
    return {k: round(float(np.mean(v)), 3) for k, v in hits.items()}


def colour_probe(models_dir: Path, n: int, device, scales=(1.0, CFG), pndm: bool = False) -> dict:
    """Held-out single-object captions at each CFG scale with the shipped scheduler (and, with
    pndm=True, with PNDM too: it is the sampler that fails at high CFG on this model)."""
    from diffusers import PNDMScheduler
    pipe = load_pipeline(models_dir, device)
    probes = heldout_probes(n)
    prompts, truths = [p for p, _ in probes], [t for _, t in probes]
    result = {f"cfg{g:g}": score_objects(generate(pipe, prompts, g), truths) for g in scales}
    if pndm:
        pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
        result.update({f"pndm_cfg{g:g}": score_objects(generate(pipe, prompts, g), truths) for g in (1.0, CFG)})
    print("base probe (held-out captions):", json.dumps(result), flush=True)
    return result


def person_probe(models_dir: Path, n: int, device) -> dict:
    """Figure captions: background and body colour read back, CFG off and on."""
    pipe = load_pipeline(models_dir, device)
    scenes = data.sample_scenes(n, seed=2468, person_fraction=1.0, heldout="ignore")
    prompts = [f"{data.article(data.COLOUR_NAMES[int(c)])} {data.COLOUR_NAMES[int(c)]} person {data.POSES[int(p)]} on "
               f"{data.article(data.COLOUR_NAMES[int(b)])} {data.COLOUR_NAMES[int(b)]} background"
               for c, p, b in zip(scenes.colour[:, 0], scenes.pose, scenes.background)]
    result = {}
    for g in (1.0, CFG):
        readings = [readback.read_single_object(im) for im in generate(pipe, prompts, g)]
        result[f"cfg{g:g}"] = dict(
            background=round(float(np.mean([r.background == int(b) for r, b in zip(readings, scenes.background)])), 3),
            colour=round(float(np.mean([r.colour == int(c) for r, c in zip(readings, scenes.colour[:, 0])])), 3))
    print("person probe:", json.dumps(result), flush=True)
    return result


def inpaint_probe(models_dir: Path, n: int, device) -> dict:
    """Mask a box over one large object and ask for it in another colour."""
    pipe = load_pipeline(models_dir, device, "inpaint")
    rng = np.random.default_rng(99)
    prompts, images, maskimgs, holes, wanted = [], [], [], [], []
    for i in range(n):
        bg, old, new = rng.choice(len(data.COLOURS), 3, replace=False)
        shape, pos = data.SHAPES[rng.integers(len(data.SHAPES))], data.POSITIONS[rng.integers(9)][0]
        scene = data.scene_from_objects([("large", data.COLOUR_NAMES[old], shape, pos)], data.COLOUR_NAMES[bg])
        prompt = data.scene_from_objects([("large", data.COLOUR_NAMES[new], shape, pos)], data.COLOUR_NAMES[bg]).captions[0]
        image = data.to_uint8(data.render_scenes(scene))[0].numpy()
        (x, y), r = scene.centre[0, 0].tolist(), float(scene.radius[0, 0]) + 6
        hole = np.zeros(image.shape[:2], bool)
        hole[max(0, int(y - r)):int(y + r), max(0, int(x - r)):int(x + r)] = True
        prompts.append(prompt), images.append(Image.fromarray(image)), holes.append(hole), wanted.append(int(new))
        maskimgs.append(Image.fromarray((hole * 255).astype(np.uint8)))
    out = generate(pipe, prompts, CFG, image=images, mask_image=maskimgs)
    colour_ok, kept = [], []
    for o, image, hole, w in zip(out, images, holes, wanted):
        labels = readback.palette_labels(o)
        bg = readback.background_label(labels)
        inside = readback.foreground_mask(o, labels, bg) & hole
        colour_ok.append(inside.sum() >= readback.MIN_OBJECT_PIXELS
                         and int(np.bincount(labels[inside], minlength=len(data.COLOURS)).argmax()) == w)
        kept.append(readback.psnr(o, np.asarray(image), ~hole))
    result = dict(hole_colour=round(float(np.mean(colour_ok)), 3), unmasked_psnr_db=round(float(np.mean(kept)), 2))
    print("inpaint probe:", json.dumps(result), flush=True)
    return result


def control_probe(models_dir: Path, n: int, device, kind: str) -> dict:
    """The ControlNet against the base alone, same prompts and seeds. Canny is scored with empty
    prompts too: a full caption already fixes where each shape goes, so there the map is the
    only cue and the comparison says whether the ControlNet reads it."""
    scenes = data.sample_scenes(n, seed=4321, person_fraction=1.0 if kind == "pose" else data.PERSON_FRACTION,
                                heldout="ignore")
    pixels = data.to_uint8(data.render_scenes(scenes)).numpy()
    if kind == "canny":
        controls = [canny(p) for p in pixels]
    else:
        controls = [draw_openpose(k, data.IMAGE_SIZE, data.IMAGE_SIZE) for k in scenes.keypoints.numpy()]
    cn_pipe, base_pipe = load_pipeline(models_dir, device, kind), load_pipeline(models_dir, device)

    def score(images):
        if kind == "canny":
            return float(np.mean([readback.edge_f1(canny_edges(c), canny_edges(o)) for c, o in zip(controls, images)]))
        return float(np.mean([readback.limb_coverage(o, k) for o, k in zip(images, scenes.keypoints.numpy())]))

    key = "edge_f1" if kind == "canny" else "limb_coverage"
    result = {}
    for label, prompts in (("caption", scenes.captions), ("empty_prompt", [""] * n)):
        if label == "empty_prompt" and kind != "canny":
            continue
        result[f"{key}_controlnet_{label}"] = round(score(generate(cn_pipe, prompts, CFG, image=controls)), 3)
        result[f"{key}_base_{label}"] = round(score(generate(base_pipe, prompts, CFG)), 3)
    print(f"{kind} probe:", json.dumps(result), flush=True)
    return result


def sample_grid(models_dir: Path, device, path: Path) -> None:
    """Rows: held-out single-object captions, multi-object and figure captions (CFG 5)."""
    pipe = load_pipeline(models_dir, device)
    prompts = [p for p, _ in heldout_probes(8, seed=7)] + data.sample_scenes(16, seed=55, heldout="ignore").captions
    images = generate(pipe, prompts, CFG, seed=3)
    grid = images.reshape(3, 8, *images.shape[1:]).transpose(0, 2, 1, 3, 4).reshape(3 * 128, 8 * 128, 3)
    Image.fromarray(grid).save(path)
    Path(path).with_suffix(".txt").write_text("\n".join(prompts) + "\n")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=models.MODELS_DIR)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--probes", default="base,person,inpaint,canny,pose")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--grid", type=Path, help="write a sample grid PNG (and its prompts as .txt) here")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    results = {}
    for probe in args.probes.split(","):
        if probe == "base":
            results["base"] = colour_probe(args.models, args.n, args.device, scales=(1.0, 2.0, CFG, 7.5), pndm=True)
        elif probe == "person":
            results["person"] = person_probe(args.models, args.n, args.device)
        elif probe == "inpaint":
            results["inpaint"] = inpaint_probe(args.models, args.n, args.device)
        elif probe in models.CONTROLNETS:
            results[probe] = control_probe(args.models, args.n, args.device, probe)
    if args.grid:
        sample_grid(args.models, args.device, args.grid)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results), flush=True)
    return results


if __name__ == "__main__":
    main()
