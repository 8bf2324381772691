"""Tiny random SDXL components, built in code in seconds on a CPU.

Same classes and layout as SDXL base 1.0: a UNet with addition_embed_type "text_time"
(pooled text embedding + 6 size/crop numbers), two CLIP text encoders (the second with a
projection, whose pooled output conditions the UNet) sharing the real CLIP BPE vocabulary,
tokenizer_2 padding with "!" as SDXL's does, an f=8 VAE. Only the widths are small.
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tiny_sd import TOKENIZER_DIR, tiny_vae

# SDXL base 1.0's schedule: scaled-linear betas 0.00085 → 0.012 over 1000 steps, "leading" spacing.
SDXL_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    steps_offset=1,
    timestep_spacing="leading",
    prediction_type="epsilon",
)
HIDDEN_1, HIDDEN_2, TIME_EMBED = 16, 32, 8  # cross-attention width = HIDDEN_1 + HIDDEN_2


def tiny_xl_unet(in_channels: int = 4, seed: int = 0, time_ids: int = 6) -> UNet2DConditionModel:
    """time_ids: 6 for the base (original size, crop, target size), 5 for a refiner
    (original size, crop, aesthetic score)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN_1 + HIDDEN_2 if time_ids == 6 else HIDDEN_2,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=HIDDEN_2 + time_ids * TIME_EMBED,
        norm_num_groups=32,
    )


def _clip_config(hidden: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=hidden, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )


def tiny_text_encoders(seed: int = 0) -> tuple[CLIPTextModel, CLIPTextModelWithProjection]:
    torch.manual_seed(seed)
    one = CLIPTextModel(_clip_config(HIDDEN_1)).eval()
    two = CLIPTextModelWithProjection(_clip_config(HIDDEN_2)).eval()
    return one, two


def tokenizers() -> tuple[CLIPTokenizer, CLIPTokenizer]:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR), CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")


def tiny_xl_pipeline(seed: int = 0, in_channels: int = 4) -> StableDiffusionXLPipeline:
    one, two = tiny_text_encoders(seed)
    tok1, tok2 = tokenizers()
    return StableDiffusionXLPipeline(
        vae=tiny_vae(seed), text_encoder=one, text_encoder_2=two, tokenizer=tok1, tokenizer_2=tok2,
        unet=tiny_xl_unet(in_channels, seed), scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        add_watermarker=False,
    )


def save_tiny_xl_model(folder: Path, seed: int = 0) -> Path:
    """A tiny random SDXL base as a diffusers folder (safetensors)."""
    tiny_xl_pipeline(seed).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_xl_inpaint_model(folder: Path, seed: int = 1) -> Path:
    """An SDXL inpainting pipeline folder: the 9-channel UNet ([z_t, mask, masked-image latent])."""
    tiny_xl_pipeline(seed, in_channels=9).save_pretrained(folder, safe_serialization=True)
    return folder


def save_tiny_xl_refiner(folder: Path, seed: int = 2) -> Path:
    """An SDXL refiner: only the second text encoder, a UNet conditioned on an aesthetic score."""
    from diffusers import StableDiffusionXLImg2ImgPipeline

    _, two = tiny_text_encoders(seed)
    _, tok2 = tokenizers()
    StableDiffusionXLImg2ImgPipeline(
        vae=tiny_vae(seed), text_encoder=None, text_encoder_2=two, tokenizer=None, tokenizer_2=tok2,
        unet=tiny_xl_unet(seed=seed, time_ids=5), scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER_CONFIG),
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False, add_watermarker=False,
    ).save_pretrained(folder, safe_serialization=True)
    return folder
