"""Stages controlnet-canny / controlnet-pose: a trainable copy of the base UNet's encoder joined
to the frozen base by zero convolutions (diffusers ControlNetModel.from_unet), trained on the
ε-loss with the control map as extra input and 50 % empty prompts, so it must read the map."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import CLIPTextModel

from pipelines.diffusion_math import simplified_loss
from training import data, models
from training.common import NoiseSchedule, autocast, compiled, fast_module, train_with_ema
from training.pool import build_pool

EMPTY_CAPTION_PROB = 0.5


def run(args, device, kind: str) -> dict:
    torch.manual_seed(args.seed)
    root = args.out / models.BASE
    vae = models.load(AutoencoderKL, root / "vae", device).eval().requires_grad_(False)
    text_encoder = models.load(CLIPTextModel, root / "text_encoder", device).eval().requires_grad_(False)
    unet = models.load(UNet2DConditionModel, root / "unet", device).eval().requires_grad_(False)
    folder = args.out / models.CONTROLNETS[kind]
    controlnet = models.load(ControlNetModel, folder, device) if args.resume else models.build_controlnet(unet).to(device)
    controlnet.train()
    tokenize = data.CaptionTokenizer(models.load_tokenizer())
    # The pose map only exists for figures: that ControlNet sees figures alone.
    pool = build_pool(args.pool_size, args.seed, vae, tokenize, device, control=kind,
                      person_fraction=1.0 if kind == "pose" else data.PERSON_FRACTION)
    empty = tokenize([""]).to(device)
    schedule = NoiseSchedule(device)
    batch = args.batch_size
    print(f"controlnet-{kind}: {sum(p.numel() for p in controlnet.parameters()) / 1e6:.2f} M params, pool {len(pool)}",
          flush=True)
    net, control_net = fast_module(unet, device, args.compile), fast_module(controlnet, device, args.compile)

    def loss_fn(step):
        idx = torch.randint(len(pool), (batch,), device=device)
        z0 = pool.latents(idx)
        drop = torch.rand(batch, 1, device=device) < EMPTY_CAPTION_PROB
        tokens = torch.where(drop, empty, pool.tokens[idx])
        noise, t = torch.randn_like(z0), schedule.sample_t(batch, device)
        with torch.no_grad(), autocast(device):
            context = text_encoder(tokens)[0]
        with autocast(device):
            z_t = schedule.add_noise(z0, noise, t)
            down, mid = control_net(z_t, t, context, controlnet_cond=pool.control(idx), return_dict=False)
            pred = net(z_t, t, context, down_block_additional_residuals=down,
                        mid_block_additional_residual=mid).sample
        return simplified_loss(noise, pred)  # ‖ε − ε_θ‖², per element

    if not compiled(loss_fn, (controlnet,), args, device):
        net, control_net = unet, controlnet
    result = train_with_ema(controlnet.parameters(), loss_fn, args, device, lr=2e-4, ema_decay=0.999)
    models.save_fp16(controlnet.eval(), folder)
    stats = dict(stage=f"controlnet-{kind}", steps=result.steps, seconds=round(result.seconds, 1),
                 final_loss=round(result.final_loss, 4))
    print(stats, flush=True)
    return stats
