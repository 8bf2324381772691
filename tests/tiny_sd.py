"""Tiny random Stable Diffusion components, built in code in seconds on a CPU.

Same classes and layout as SD 1.5 (f=8 VAE, cross-attention UNet, CLIP text encoder with the
real CLIP BPE tokenizer from assets/tokenizer), so every code path the app takes with real
weights is exercised; only the widths are small. Weights are random but seeded.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "assets" / "tokenizer"

# SD 1.x training schedule: scaled-linear betas, 1000 steps.
SD_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
)


def tiny_unet(in_channels: int = 4, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,  # 3 downsamples: f = 8, as SD
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_text_encoder(seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return CLIPTextModel(config).eval()


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=tiny_vae(seed),
        text_encoder=tiny_text_encoder(seed),
        tokenizer=CLIPTokenizer.from_pretrained(TOKENIZER_DIR),
        unet=tiny_unet(seed=seed),
        scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write a tiny random SD pipeline as a diffusers folder (safetensors) and return it."""
    tiny_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_inpaint_unet(folder: Path, seed: int = 1) -> Path:
    """A 9-channel inpainting UNet ([z_t, mask, masked-image latent]) as a diffusers folder."""
    tiny_unet(in_channels=9, seed=seed).save_pretrained(folder / "unet", safe_serialization=True)
    return folder


def save_tiny_controlnet(folder: Path, unet: UNet2DConditionModel, trained: bool = True, seed: int = 0) -> Path:
    """A ControlNet copied from the UNet's encoder (diffusers ControlNetModel.from_unet). Fresh,
    its output convolutions are zero (the seed's zero convs); trained=True gives them random
    weights, as after training, so the control visibly acts."""
    from diffusers import ControlNetModel

    model = ControlNetModel.from_unet(unet)
    if trained:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for conv in [*model.controlnet_down_blocks, model.controlnet_mid_block]:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    return folder
