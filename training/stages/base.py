"""Stage base: text encoder + UNet trained jointly on the simplified ε-loss
L = ‖ε − ε_θ(√ᾱ_t·z_0 + √(1 − ᾱ_t)·ε, t, c)‖², with 10 % empty captions so the same
network also learns ε_θ(x_t, t, ∅) for classifier-free guidance."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from pipelines.diffusion_math import simplified_loss
from training import data, models
from training.common import NoiseSchedule, autocast, compiled, fast_module, train_with_ema
from training.pool import build_pool

EMPTY_CAPTION_PROB = 0.1


def run(args, device) -> dict:
    torch.manual_seed(args.seed)
    root = args.out / models.BASE
    vae = models.load(AutoencoderKL, root / "vae", device).eval().requires_grad_(False)
    if args.resume:  # continue from the saved EMA weights (they become the live weights too)
        unet = models.load(UNet2DConditionModel, root / "unet", device)
        text_encoder = models.load(CLIPTextModel, root / "text_encoder", device)
    else:
        unet, text_encoder = models.build_unet().to(device), models.build_text_encoder().to(device)
    unet.train(), text_encoder.train()
    tokenize = data.CaptionTokenizer(models.load_tokenizer())
    pool = build_pool(args.pool_size, args.seed, vae, tokenize, device)
    empty = tokenize([""]).to(device)
    schedule = NoiseSchedule(device)
    print(f"base: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, text encoder "
          f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M, pool {len(pool)}", flush=True)
    batch = args.batch_size
    net = fast_module(unet, device, args.compile)

    def loss_fn(step):
        idx = torch.randint(len(pool), (batch,), device=device)
        z0 = pool.latents(idx)
        drop = torch.rand(batch, 1, device=device) < EMPTY_CAPTION_PROB
        tokens = torch.where(drop, empty, pool.tokens[idx])
        noise, t = torch.randn_like(z0), schedule.sample_t(batch, device)
        with autocast(device):
            context = text_encoder(tokens)[0]
            pred = net(schedule.add_noise(z0, noise, t), t, context).sample
        return simplified_loss(noise, pred)  # ‖ε − ε_θ‖², per element

    if not compiled(loss_fn, (unet, text_encoder), args, device):
        net = unet
    params = list(unet.parameters()) + list(text_encoder.parameters())
    result = train_with_ema(params, loss_fn, args, device, lr=4e-4, ema_decay=0.9995)
    pool = None  # the rendered data set is no longer needed: free it before saving
    models.save_pipeline(root, vae, text_encoder.eval(), unet.eval())
    stats = dict(stage="base", resumed=bool(args.resume), steps=result.steps, seconds=round(result.seconds, 1),
                 final_loss=round(result.final_loss, 4))
    print(stats, flush=True)
    return stats
