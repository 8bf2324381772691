"""Stage vae: AutoencoderKL f=8 on rendered scenes, then its scaling factor measured on the data.

Loss as SD's first stage minus the perceptual/GAN terms (no pretrained nets offline):
mean squared error + 0.1 × L1 on pixels in [−1, 1], + KL to N(0, I) at SD's 1e-6 per-pixel-sum weight.
"""
from __future__ import annotations

import torch

from training import data, models
from training.common import EMA, autocast, run_loop

KL_WEIGHT = 1e-6


@torch.no_grad()
def render_pool(n: int, seed: int, device) -> torch.Tensor:
    scenes = data.sample_scenes(n, seed, heldout="ignore")
    return torch.cat([(data.render_scenes(scenes.select(torch.arange(s, min(s + 1024, n))), device) * 255 + 0.5)
                      .to(torch.uint8) for s in range(0, n, 1024)])


@torch.no_grad()
def measure(vae, images_u8: torch.Tensor, device, batch: int = 256) -> tuple[float, float]:
    """(PSNR of decode(mean) in dB over [0, 1] pixels, std of sampled latents)."""
    mse, zs = [], []
    for s in range(0, len(images_u8), batch):
        x = images_u8[s:s + batch].float() / 127.5 - 1
        with autocast(device):
            dist = vae.encode(x).latent_dist
            rec = vae.decode(dist.mean).sample.float().clamp(-1, 1)
        mse.append(((rec - x) / 2).pow(2).flatten(1).mean(1))
        zs.append(dist.sample().float())
    psnr = (-10 * torch.log10(torch.cat(mse).clamp(min=1e-10))).mean().item()
    return psnr, torch.cat(zs).std().item()


def run(args, device) -> dict:
    torch.manual_seed(args.seed)
    vae = models.build_vae().to(device).train()
    images = render_pool(args.pool_size, args.seed, device)
    held_out = render_pool(max(8, args.pool_size // 32), args.seed + 1, device)
    print(f"vae: {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M params, pool {len(images)} images", flush=True)
    batch = args.batch_size

    def loss_fn(step):
        x = images[torch.randint(len(images), (batch,), device=device)].float() / 127.5 - 1
        x = torch.where(torch.rand(batch, 1, 1, 1, device=device) < 0.5, x.flip(3), x)  # pixels only: flips are free data
        with autocast(device):
            dist = vae.encode(x).latent_dist
            rec = vae.decode(dist.sample()).sample.float()
        kl = dist.kl().mean() / x[0].numel()
        return (rec - x).pow(2).mean() + 0.1 * (rec - x).abs().mean() + KL_WEIGHT * kl

    ema = EMA(vae.parameters(), decay=0.999)
    result = run_loop(vae.parameters(), loss_fn, lr=args.lr or 5e-4, max_steps=args.max_steps,
                      time_budget_s=args.minutes * 60, warmup=300, ema=ema, log_every=args.log_every, device=device,
                      deadline=args.deadline_at)
    ema.copy_to_params()
    vae.eval()
    psnr, std = measure(vae, held_out, device)
    vae.register_to_config(scaling_factor=1.0 / std)
    models.save_fp16(vae, args.out / models.BASE / "vae")
    stats = dict(stage="vae", steps=result.steps, seconds=round(result.seconds, 1), final_loss=result.final_loss,
                 psnr_db=round(psnr, 2), latent_std=round(std, 4), scaling_factor=round(1.0 / std, 5))
    print(stats, flush=True)
    return stats
