"""Tiny random LoRAs, embeddings and VAEs for a tiny (or the demo) SD model, built in code:
kohya/A1111 and diffusers/PEFT LoRA files, A1111 and diffusers embedding files, a diffusers
VAE folder and an A1111 (LDM-layout) VAE file."""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextModel

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _random_lora_parts(model_dir: Path, seed: int, rank: int, scale: float):
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from pipelines.adapters import peft_tolerates_old_torchao

    peft_tolerates_old_torchao()
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=UNET_TARGETS), unet)
    text_encoder = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TEXT_TARGETS), text_encoder)
    g = torch.Generator().manual_seed(seed)
    parts = []
    for model in (unet, text_encoder):
        state = get_peft_model_state_dict(model)
        parts.append({k: torch.randn(v.shape, generator=g) * scale for k, v in state.items()})
    return parts


def save_kohya_lora(path: Path, model_dir: Path, seed: int = 0, rank: int = 4, scale: float = 0.3) -> Path:
    """An A1111/kohya-format LoRA (lora_unet_… / lora_te_…, lora_down/lora_up, alpha)."""
    from training.adapters import kohya_state_dict

    unet_sd, text_sd = _random_lora_parts(model_dir, seed, rank, scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in kohya_state_dict(unet_sd, text_sd, alpha=rank).items()}, path)
    return path


def save_diffusers_lora(folder: Path, model_dir: Path, seed: int = 1, rank: int = 4, scale: float = 0.3) -> Path:
    """A diffusers/PEFT LoRA folder (pytorch_lora_weights.safetensors, keys unet.… / text_encoder.…)."""
    from diffusers import StableDiffusionPipeline

    unet_sd, text_sd = _random_lora_parts(model_dir, seed, rank, scale)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=unet_sd, text_encoder_lora_layers=text_sd)
    return folder


def save_embedding(path: Path, dim: int, vectors: int = 2, seed: int = 0, fmt: str = "a1111") -> Path:
    """A textual-inversion file: A1111 .pt (string_to_param), A1111 .safetensors (emb_params)
    or diffusers (.bin/.safetensors: {token: tensor})."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(vectors, dim, generator=g)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "a1111" and path.suffix == ".pt":
        torch.save({"string_to_param": {"*": emb}, "name": path.stem, "step": 100}, path)
    elif path.suffix == ".safetensors":
        save_file({"emb_params" if fmt == "a1111" else path.stem: emb}, path)
    else:
        torch.save({path.stem: emb[0]}, path)
    return path


def changed_vae(model_dir: Path, seed: int = 3) -> AutoencoderKL:
    """The model's VAE with its decoder's last conv re-drawn: a visibly different decoder."""
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", torch_dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        vae.decoder.conv_out.weight.add_(torch.randn(vae.decoder.conv_out.weight.shape, generator=g) * 0.05)
        vae.decoder.conv_out.bias.add_(torch.tensor([0.3, -0.2, 0.1]))
    return vae


def save_vae_folder(folder: Path, model_dir: Path) -> Path:
    changed_vae(model_dir).save_pretrained(folder, safe_serialization=True)
    return folder


def save_vae_file(path: Path, model_dir: Path) -> Path:
    """An A1111 VAE file: the LDM layout (encoder.down.0.block.0…), as vae-ft-mse files are."""
    from ldm_checkpoint import vae_to_ldm  # tests/ldm_checkpoint.py

    state = {k.removeprefix("first_stage_model."): v.contiguous() for k, v in vae_to_ldm(changed_vae(model_dir, seed=4)).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path)
    return path
