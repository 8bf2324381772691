"""Stage inpaint: the 9-channel UNet, input [z_t, mask, masked-image latent], fine-tuned from
the base with random boxes, brush strokes and full masks; text encoder and VAE stay frozen
(they are shared with the base model)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from pipelines.diffusion_math import scale_latents, simplified_loss
from training import data, masks, models
from training.common import NoiseSchedule, autocast, compiled, fast_module, train_with_ema
from training.pool import build_pool

EMPTY_CAPTION_PROB = 0.1


def masked_inputs(vae, images_u8, mask, device):
    """As diffusers' inpainting pipeline prepares them: masked image = image·(mask < 0.5) in
    [−1, 1] (the hole becomes grey), its sampled latent scaled, mask resized to the latent grid."""
    image = images_u8.float() / 127.5 - 1
    masked = image * (mask < 0.5)
    with torch.no_grad(), autocast(device):
        masked_latent = scale_latents(vae.encode(masked).latent_dist.sample().float(), vae.config)
    return F.interpolate(mask, size=masked_latent.shape[-2:]), masked_latent


def run(args, device) -> dict:
    torch.manual_seed(args.seed)
    root = args.out / models.BASE
    vae = models.load(AutoencoderKL, root / "vae", device).eval().requires_grad_(False)
    text_encoder = models.load(CLIPTextModel, root / "text_encoder", device).eval().requires_grad_(False)
    if args.resume:
        unet = models.load(UNet2DConditionModel, args.out / models.INPAINT / "unet", device)
    else:
        unet = models.inpaint_unet_from(models.load(UNet2DConditionModel, root / "unet")).to(device)
    unet.train()
    tokenize = data.CaptionTokenizer(models.load_tokenizer())
    pool = build_pool(args.pool_size, args.seed, vae, tokenize, device, keep_images=True)
    empty = tokenize([""]).to(device)
    schedule = NoiseSchedule(device)
    batch = args.batch_size
    print(f"inpaint: unet in_channels {unet.config.in_channels}, pool {len(pool)}", flush=True)
    net = fast_module(unet, device, args.compile)

    def loss_fn(step):
        idx = torch.randint(len(pool), (batch,), device=device)
        z0 = pool.latents(idx)
        mask = masks.random_masks(batch, data.IMAGE_SIZE, device)
        mask_latent, masked_latent = masked_inputs(vae, pool.images[idx], mask, device)
        drop = torch.rand(batch, 1, device=device) < EMPTY_CAPTION_PROB
        tokens = torch.where(drop, empty, pool.tokens[idx])
        noise, t = torch.randn_like(z0), schedule.sample_t(batch, device)
        with torch.no_grad(), autocast(device):
            context = text_encoder(tokens)[0]
        with autocast(device):
            x = torch.cat([schedule.add_noise(z0, noise, t), mask_latent, masked_latent], dim=1)
            pred = net(x, t, context).sample
        return simplified_loss(noise, pred)  # ‖ε − ε_θ‖², per element

    if not compiled(loss_fn, (unet,), args, device):
        net = unet
    result = train_with_ema(unet.parameters(), loss_fn, args, device, lr=1e-4, ema_decay=0.999)
    models.save_fp16(unet.eval(), args.out / models.INPAINT / "unet")
    stats = dict(stage="inpaint", steps=result.steps, seconds=round(result.seconds, 1),
                 final_loss=round(result.final_loss, 4))
    print(stats, flush=True)
    return stats
