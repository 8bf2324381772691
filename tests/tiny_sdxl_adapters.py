"""Tiny random SDXL LoRAs and embeddings for the tiny SDXL of tests/tiny_sdxl.py, built in code,
in the layouts SDXL users bring:

- a kohya/A1111 LoRA: ``lora_unet_*`` (the UNet's SGM names, input_blocks_4_1_…, as kohya's
  sd-scripts write them for SDXL, or diffusers' down_blocks_… names), ``lora_te1_*`` (CLIP
  ViT-L) and ``lora_te2_*`` (OpenCLIP bigG), lora_down/lora_up + alpha;
- an SDXL textual-inversion embedding: one safetensors file with ``clip_l`` and ``clip_g``
  (one vector set per text encoder, as A1111 and ComfyUI read them).
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from tiny_adapters import TEXT_TARGETS, UNET_TARGETS
from tiny_sdxl import HIDDEN_1, HIDDEN_2, tiny_text_encoders, tiny_xl_unet


def _peft_lora(model, targets, rank: int, scale: float, g: torch.Generator) -> dict:
    """Random LoRA tensors for model's target layers, keyed "<module>.lora_A.weight" / lora_B."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from pipelines.adapters import peft_tolerates_old_torchao

    peft_tolerates_old_torchao()
    model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), model)
    return {k: torch.randn(v.shape, generator=g) * scale for k, v in get_peft_model_state_dict(model).items()}


def _sgm_module(unet, module: str) -> str:
    """A UNet module's name in the original (SGM) layout: down_blocks.1.attentions.0.… →
    input_blocks.3.1.…, through the same rules as the single-file export."""
    from ldm_checkpoint import _apply_rules, _unet_rules

    (key,) = _apply_rules({module + ".weight": None}, _unet_rules(unet, allowed_embeddings=("addition_embed_type",)),
                          "lora").keys()
    return key.removesuffix(".weight")


def save_xl_kohya_lora(path: Path, seed: int = 0, rank: int = 4, scale: float = 0.3, sgm: bool = True,
                       parts=("unet", "te1", "te2")) -> Path:
    """A kohya-format SDXL LoRA for the tiny SDXL (model seed 0's shapes; the weights are random)."""
    g = torch.Generator().manual_seed(seed)
    unet = tiny_xl_unet()
    one, two = tiny_text_encoders()
    out = {}
    pieces = {"unet": (unet, UNET_TARGETS), "te1": (one, TEXT_TARGETS), "te2": (two, TEXT_TARGETS)}
    for part in parts:
        model, targets = pieces[part]
        for key, value in _peft_lora(model, targets, rank, scale, g).items():
            module, kind = key.rsplit(".lora_", 1)
            if part == "unet":
                name = "lora_unet_" + (_sgm_module(unet, module) if sgm else module).replace(".", "_")
            else:
                name = f"lora_{part}_text_model_" + module.removeprefix("text_model.").replace(".", "_")
            out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))
    return path


def save_xl_embedding(path: Path, vectors: int = 2, seed: int = 0, scale: float = 1.0) -> Path:
    """An SDXL embedding: {"clip_l": (vectors, 16), "clip_g": (vectors, 32)} for the tiny SDXL."""
    g = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": torch.randn(vectors, HIDDEN_1, generator=g) * scale,
               "clip_g": torch.randn(vectors, HIDDEN_2, generator=g) * scale}, str(path))
    return path
