"""The demo LoRA and the demo textual-inversion embedding: small files that teach the shipped
demo model (assets/models/demo) something it cannot do today, trained on the CPU in minutes.

    OMP_NUM_THREADS=1 python -m training.adapters --what lora --minutes 15 --pool 1024 --batch 12 --t-min 150 --lr 3e-3
    OMP_NUM_THREADS=1 python -m training.adapters --what embedding --minutes 12 --pool 128 --batch 8 --t-min 150 --lr 1e-2
    OMP_NUM_THREADS=1 python -m training.adapters --what probe --n 24 --parts heart,sun   (docs/models.md)

- **demo-heart** (Lora/demo-heart.safetensors, kohya/A1111 format): a new shape word, "heart".
  The base world has seven shapes; hearts are drawn here by one more signed-distance function.
  LoRA (rank 8) on the UNet's mid/up-block attention + feed-forward layers and the text
  encoder's attention, trained on single-object scenes, half hearts, half the seven known shapes
  (so the rest of the world is kept).
  (colour, background) pairs where (c + 3b) mod 7 = 0 never carry a heart in training: the probe
  asks for those.
- **demo-sun** (embeddings/demo-sun.safetensors, A1111 format, 4 vectors): a new *word* for a
  composition the model can already draw — a large yellow circle at the top right. The UNet
  and text encoder stay frozen; only the 4 input vectors are learned (what an embedding can
  do). Backgrounds blue, green and pink are left out of training: the probe asks for those.

Read-back (training/readback.py): shape by silhouette IoU over the seven shapes plus the heart.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import data, models, readback, render
from training.common import NoiseSchedule

HEART = "heart"
LORA_NAME, EMBEDDING_NAME = "demo-heart", "demo-sun"
EMBEDDING_VECTORS = 4
SUN = ("large", "yellow", "circle", "at the top right")
SUN_HELDOUT_BACKGROUNDS = ("blue", "green", "pink")
# Decoder side only (mid + up blocks): the backward pass then stops at the mid block, which
# halves a CPU step, and the up blocks' cross-attention is where the prompt shapes the image.
UNET_TARGETS = r".*(mid_block|up_blocks).*\.(to_q|to_k|to_v|to_out\.0|proj_in|proj_out|ff\.net\.0\.proj|ff\.net\.2)$"
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
RANK = 8
TOKEN_TABLE = "embeddings.token_embedding.weight"  # CLIPTextModel (transformers 5: no text_model level)


def sdf_heart(x, y, r):
    """Heart pointing down (Inigo Quilez's sdHeart), its bounding box centred on the origin."""
    s = 1.6 * r
    px, py = (x / s).abs(), -y / s + 0.55  # y up; the tip sits at py = 0, the lobes top out at ≈ 1.1
    upper = _len(px - 0.25, py - 0.75) - math.sqrt(2.0) / 4
    m = 0.5 * (px + py).clamp(min=0)
    lower = torch.sqrt(torch.minimum((px ** 2 + (py - 1) ** 2), (px - m) ** 2 + (py - m) ** 2)) * torch.sign(px - py)
    return torch.where(px + py > 1, upper, lower) * s


def _len(x, y):
    return torch.sqrt(x * x + y * y)


READ_SHAPES = {**render.SHAPE_SDFS, HEART: sdf_heart}
READ_NAMES = tuple(READ_SHAPES)


def heart_heldout(colour: int, background: int) -> bool:
    return (colour + 3 * background) % 7 == 0


# ----------------------------------------------------------------------------- data
def heart_scenes(n: int, seed: int, heart_fraction: float = 0.5):
    """Single-object shape scenes; in `heart_fraction` of them the object is a heart."""
    sc = data.sample_scenes(n, seed, person_fraction=0.0)
    sc.present[:, 1:] = False
    g = torch.Generator().manual_seed(seed + 1)
    hearts = torch.rand(n, generator=g) < heart_fraction
    for i in hearts.nonzero().squeeze(1).tolist():
        c, b = int(sc.colour[i, 0]), int(sc.background[i])
        while heart_heldout(c, b) or c == b:
            c = (c + 1) % len(data.COLOURS)
        sc.colour[i, 0] = c
    captions = _captions_with_hearts(sc, hearts)
    return sc, hearts, captions


def _captions_with_hearts(sc, hearts) -> list[str]:
    # the colour may have moved: rebuild captions, then rename the first object's shape
    omit = torch.zeros(len(sc), dtype=torch.bool)
    captions = data._captions(sc, omit_centre=omit | True, omit_size=omit, omit_background=omit)
    out = []
    for i, caption in enumerate(captions):
        if hearts[i]:
            caption = re.sub(rf"\b{data.SHAPES[int(sc.shape[i, 0])]}\b", HEART, caption, count=1)
        out.append(caption)
    return out


def render_with_hearts(sc, hearts) -> torch.Tensor:
    present = sc.present.clone()
    sc.present[hearts, 0] = False
    images = data.render_scenes(sc)
    sc.present = present
    rows = hearts.nonzero().squeeze(1)
    if len(rows):
        px, py = render.pixel_grid(data.IMAGE_SIZE, "cpu")
        d = sdf_heart(px - sc.centre[rows, 0, 0, None, None], py - sc.centre[rows, 0, 1, None, None],
                      sc.radius[rows, 0, None, None])
        data._paint(images, rows, render.coverage(d), data.PALETTE[sc.colour[rows, 0]])
    return images


def sun_scenes(n: int, seed: int, heldout: bool = False) -> tuple[list[str], torch.Tensor, list[str]]:
    """(the plain caption, images, the caption with the word) of suns on named backgrounds."""
    rng = np.random.default_rng(seed)
    allowed = [c for c in data.COLOUR_NAMES if c != "yellow" and ((c in SUN_HELDOUT_BACKGROUNDS) == heldout)]
    plain, words, images = [], [], []
    for _ in range(n):
        bg = allowed[rng.integers(len(allowed))]
        scene = data.scene_from_objects([SUN], bg)
        jitter = torch.from_numpy(rng.uniform(-3, 3, 2)).float()
        scene.centre[0, 0] += jitter
        scene.radius[0, 0] = float(rng.uniform(*data.RADIUS_RANGE[1]))
        images.append(data.render_scenes(scene)[0])
        plain.append(scene.captions[0])
        words.append(f"{EMBEDDING_NAME} on {data.article(bg)} {bg} background")
    return plain, torch.stack(images), words


@torch.no_grad()
def encode(vae, images: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    moments = []
    for s in range(0, len(images), chunk):
        dist = vae.encode(images[s:s + chunk] * 2 - 1).latent_dist
        moments.append(torch.cat([dist.mean, dist.logvar], 1))
    return torch.cat(moments)


def sample_latents(moments, idx, scaling):
    mean, logvar = moments[idx].chunk(2, dim=1)
    return (mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)) * scaling


# ----------------------------------------------------------------------------- LoRA
def train_lora(out: Path, minutes: float, pool: int, batch: int, seed: int, lr: float = 1e-3, resume: bool = False,
               t_min: int = 0) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from pipelines.adapters import peft_tolerates_old_torchao

    peft_tolerates_old_torchao()

    torch.manual_seed(seed)
    root = models.MODELS_DIR / models.BASE
    vae = models.load(AutoencoderKL, root / "vae").eval().requires_grad_(False)
    unet = models.load(UNet2DConditionModel, root / "unet").requires_grad_(False)
    text_encoder = models.load(CLIPTextModel, root / "text_encoder").requires_grad_(False)
    adapter = "default"
    previous = out / "Lora" / f"{LORA_NAME}.safetensors"
    if resume and previous.is_file():  # continue from the shipped file, read back by the app's own loader
        from diffusers import StableDiffusionPipeline

        from pipelines.adapters import load_lora_into

        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, unet=unet, tokenizer=models.load_tokenizer(),
                                       scheduler=None, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        adapter = "resumed"
        load_lora_into(pipe, str(previous), adapter)
    else:
        unet = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=UNET_TARGETS, init_lora_weights="gaussian"), unet)
        text_encoder = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=TEXT_TARGETS, init_lora_weights="gaussian"), text_encoder)
    params = [p for m in (unet, text_encoder) for n, p in m.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    t0 = time.time()
    cache = Path(f"/tmp/sd-studio-heart-pool-{pool}-{seed}.pt")
    if cache.is_file():
        moments, captions, n_hearts = torch.load(cache)
    else:
        sc, hearts, captions = heart_scenes(pool, seed)
        moments, n_hearts = encode(vae, render_with_hearts(sc, hearts)), int(hearts.sum())
        torch.save((moments, captions, n_hearts), cache)
    tokenize = data.CaptionTokenizer(models.load_tokenizer())
    tokens = tokenize(captions)
    empty = tokenize([""])
    print(f"lora: pool {pool} ({n_hearts} hearts) in {time.time() - t0:.0f} s; "
          f"{sum(p.numel() for p in params) / 1e3:.0f} k LoRA params", flush=True)
    schedule = NoiseSchedule("cpu")
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scaling = float(vae.config.scaling_factor)
    start, step, running = time.time(), 0, []
    unet.train(), text_encoder.train()
    while time.time() - start < minutes * 60:
        warm = min(1.0, (step + 1) / 50)
        for group in opt.param_groups:
            group["lr"] = lr * warm
        idx = torch.randint(pool, (batch,))
        z0 = sample_latents(moments, idx, scaling)
        drop = torch.rand(batch, 1) < 0.1
        ids = torch.where(drop, empty, tokens[idx])
        noise = torch.randn_like(z0)
        t = torch.randint(t_min, schedule.steps, (batch,))  # t_min > 0: the steps where shapes form
        pred = unet(schedule.add_noise(z0, noise, t), t, text_encoder(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        running.append(loss.item())
        step += 1
        if step % 5 == 0:
            print(f"  step {step}  loss {np.mean(running[-25:]):.4f}  {step / (time.time() - start):.2f} steps/s", flush=True)
    unet_sd = get_peft_model_state_dict(unet, adapter_name=adapter)
    text_sd = get_peft_model_state_dict(text_encoder, adapter_name=adapter)
    state = kohya_state_dict(unet_sd, text_sd)
    path = out / "Lora" / f"{LORA_NAME}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, path,
              metadata={"ss_network_module": "networks.lora", "ss_network_dim": str(RANK), "ss_network_alpha": str(RANK),
                        "ss_base_model_version": "sd-studio-demo", "ss_output_name": LORA_NAME})
    stats = dict(what="lora", steps=step, seconds=round(time.time() - start), final_loss=round(float(np.mean(running[-100:])), 4),
                 bytes=path.stat().st_size, pool=pool, batch=batch)
    print(json.dumps(stats), flush=True)
    return stats


def kohya_state_dict(unet_sd: dict, text_sd: dict, alpha: float = RANK) -> dict:
    """PEFT keys → the kohya/A1111 names (lora_unet_… / lora_te_text_model_…, lora_down/up, alpha)."""
    out = {}
    for prefix, sd in (("lora_unet_", unet_sd), ("lora_te_text_model_", text_sd)):
        for key, value in sd.items():
            module, kind = key.rsplit(".lora_", 1)
            name = prefix + module.replace(".", "_")
            out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


# ----------------------------------------------------------------------------- embedding
def train_embedding(out: Path, minutes: float, pool: int, batch: int, seed: int, lr: float = 5e-3, t_min: int = 0) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    root = models.MODELS_DIR / models.BASE
    vae = models.load(AutoencoderKL, root / "vae").eval().requires_grad_(False)
    unet = models.load(UNet2DConditionModel, root / "unet").eval().requires_grad_(False)
    text_encoder = models.load(CLIPTextModel, root / "text_encoder").eval().requires_grad_(False)
    tokenizer = models.load_tokenizer()
    placeholders = [f"<{EMBEDDING_NAME}-{i}>" for i in range(EMBEDDING_VECTORS)]
    tokenizer.add_tokens(placeholders)
    ids = tokenizer.convert_tokens_to_ids(placeholders)
    text_encoder.resize_token_embeddings(len(tokenizer))
    table = text_encoder.get_input_embeddings().weight
    # start from the words it should come to mean (what A1111's "initialization text" does)
    init_ids = [tokenizer(w, add_special_tokens=False).input_ids[0] for w in ("large", "yellow", "circle", "right")]
    vectors = torch.nn.Parameter(table[init_ids[:EMBEDDING_VECTORS]].detach().clone())
    _, images, words = sun_scenes(pool, seed)
    moments = encode(vae, images)
    prompts = [w.replace(EMBEDDING_NAME, " ".join(placeholders)) for w in words]
    tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt").input_ids
    schedule = NoiseSchedule("cpu")
    opt = torch.optim.AdamW([vectors], lr=lr, weight_decay=0.0)
    scaling = float(vae.config.scaling_factor)
    base_table = table.detach().clone()
    id_tensor = torch.tensor(ids)
    start, step, running = time.time(), 0, []
    while time.time() - start < minutes * 60:
        idx = torch.randint(pool, (batch,))
        z0 = sample_latents(moments, idx, scaling)
        noise, t = torch.randn_like(z0), torch.randint(t_min, schedule.steps, (batch,))
        weight = base_table.clone()
        weight[id_tensor] = vectors
        context = torch.func.functional_call(text_encoder, {TOKEN_TABLE: weight}, (tokens[idx],))[0]
        loss = F.mse_loss(unet(schedule.add_noise(z0, noise, t), t, context).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())
        step += 1
        if step % 10 == 0:
            print(f"  step {step}  loss {np.mean(running[-10:]):.4f}  {step / (time.time() - start):.2f} steps/s", flush=True)
    path = out / "embeddings" / f"{EMBEDDING_NAME}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.detach().to(torch.float16).contiguous()}, path)  # A1111's .safetensors layout
    stats = dict(what="embedding", steps=step, seconds=round(time.time() - start),
                 final_loss=round(float(np.mean(running[-100:])), 4), bytes=path.stat().st_size)
    print(json.dumps(stats), flush=True)
    return stats


# ----------------------------------------------------------------------------- probes
def classify(mask: np.ndarray) -> int:
    return readback.classify_shape(mask, READ_SHAPES)


def read(image: np.ndarray):
    r = readback.read_single_object(image, READ_SHAPES)
    return r


def heart_probes(n: int, seed: int = 77) -> list[tuple[str, dict]]:
    """Held-out (colour, background) pairs, one heart of either size at any position."""
    pairs = [(c, b) for c in range(len(data.COLOURS)) for b in range(len(data.COLOURS)) if c != b and heart_heldout(c, b)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c, b = pairs[rng.integers(len(pairs))]
        size, pos = data.SIZES[rng.integers(2)], int(rng.integers(9))
        words = [size, data.COLOUR_NAMES[c], HEART] + ([] if pos == data.CENTRE else [data.POSITIONS[pos][0]])
        caption = f"{data.article(size)} {' '.join(words)}{',' if pos != data.CENTRE else ''} on {data.article(data.COLOUR_NAMES[b])} {data.COLOUR_NAMES[b]} background"
        out.append((caption, dict(colour=c, shape=READ_NAMES.index(HEART), background=b, position=pos)))
    return out


def score(images, truths) -> dict:
    hits = {"background": [], "colour": [], "shape": [], "position": []}
    for image, truth in zip(images, truths):
        r = read(image)
        for key in hits:
            hits[key].append(getattr(r, key) == truth[key])
    return {k: round(float(np.mean(v)), 3) for k, v in hits.items()}


def probe(out: Path, n: int, cfg: float = 5.0, steps: int = 20, parts: str = "heart,base,sun") -> dict:
    """Heart probe with vs without the LoRA; sun probe with vs without the embedding; and the
    base's own held-out probe with the LoRA loaded (what it costs the rest of the world)."""
    from diffusers import StableDiffusionPipeline

    from training.evaluate import heldout_probes

    pipe = StableDiffusionPipeline.from_pretrained(models.MODELS_DIR / models.BASE, torch_dtype=torch.float32,
                                                   safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def gen(prompts, seed=0):
        imgs = []
        for s in range(0, len(prompts), 20):
            g = [torch.Generator().manual_seed(seed + s + i) for i in range(len(prompts[s:s + 20]))]
            im = pipe(prompts[s:s + 20], height=128, width=128, num_inference_steps=steps, guidance_scale=cfg,
                      generator=g, output_type="np").images
            imgs.append((np.asarray(im) * 255 + 0.5).clip(0, 255).astype(np.uint8))
        return np.concatenate(imgs)

    hp = heart_probes(n)
    base = heldout_probes(max(1, n // 2))  # what the LoRA costs the seven known shapes
    base_truths = [dict(t, shape=t["shape"]) for _, t in base]  # same indices: the 7 shapes come first
    parts = parts.split(",")
    result = {}
    if "heart" in parts:
        result["heart_without"] = score(gen([p for p, _ in hp]), [t for _, t in hp])
    if "base" in parts:
        result["base_without"] = score(gen([p for p, _ in base]), base_truths)
    sun_truth = dict(colour=data.COLOUR_NAMES.index("yellow"), shape=READ_NAMES.index("circle"),
                     position=[p[0] for p in data.POSITIONS].index(SUN[3]))
    _, _, sun_words = sun_scenes(n, seed + 5 if (seed := 11) else 0, heldout=True)
    sun_backgrounds = [data.COLOUR_NAMES.index(w.split(" on ")[1].split()[1]) for w in sun_words]
    sun_t = [dict(sun_truth, background=b) for b in sun_backgrounds]
    emb = out / "embeddings" / f"{EMBEDDING_NAME}.safetensors"
    if "sun" in parts and emb.is_file():
        result["sun_without"] = score(gen(sun_words), sun_t)
        pipe.load_textual_inversion(str(emb), token=EMBEDDING_NAME)
        result["sun_with"] = score(gen(sun_words), sun_t)
    lora = out / "Lora" / f"{LORA_NAME}.safetensors"
    if lora.is_file():
        from pipelines.adapters import load_lora_into

        load_lora_into(pipe, str(lora), LORA_NAME)
        if "heart" in parts:
            result["heart_with"] = score(gen([p for p, _ in hp]), [t for _, t in hp])
        if "base" in parts:
            result["base_with"] = score(gen([p for p, _ in base]), base_truths)
    result["n"], result["cfg"], result["steps"] = n, cfg, steps
    print(json.dumps(result), flush=True)
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--what", choices=("lora", "embedding", "probe"), required=True)
    p.add_argument("--out", type=Path, default=models.MODELS_DIR)
    p.add_argument("--minutes", type=float, default=8.0)
    p.add_argument("--pool", type=int, default=2048)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=60)
    p.add_argument("--json", type=Path)
    p.add_argument("--parts", default="heart,base,sun", help="probe: which probes")
    p.add_argument("--resume", action="store_true", help="lora: continue from the file in --out")
    p.add_argument("--lr", type=float)
    p.add_argument("--t-min", type=int, default=0, help="lora: train on timesteps ≥ this only")
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)  # denormals in tiny LoRA updates slow CPU matmuls by orders of magnitude
    if args.what == "lora":
        result = train_lora(args.out, args.minutes, args.pool, args.batch, args.seed, args.lr or 1e-3, args.resume, args.t_min)
    elif args.what == "embedding":
        result = train_embedding(args.out, args.minutes, min(args.pool, 512), args.batch, args.seed, args.lr or 5e-3, args.t_min)
    else:
        result = probe(args.out, args.n, parts=args.parts)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
