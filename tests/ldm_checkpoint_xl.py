"""Export a diffusers SDXL pipeline as one original-layout (Stability "sgm") checkpoint, the
single ``.safetensors`` file A1111/ComfyUI load and ``StableDiffusionXLPipeline.from_single_file
(path, config=<diffusers SDXL folder>)`` loads back:

    model.diffusion_model.*                 UNet, as SD 1.x plus label_emb.0.{0,2} (add_embedding)
    first_stage_model.*                     VAE, as SD 1.x
    conditioner.embedders.0.transformer.*   CLIP ViT-L (HF CLIPTextModel keys under text_model.)
    conditioner.embedders.1.model.*         OpenCLIP bigG: resblocks with fused in_proj (q;k;v),
                                            ln_final, positional_embedding, text_projection (transposed)

The inverse of diffusers' convert_ldm_unet_checkpoint / convert_ldm_clip_checkpoint /
convert_open_clip_checkpoint. Test-only, as ldm_checkpoint.py: it writes the tiny SDXL single
file that test_sdxl.py loads.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ldm_checkpoint import (CLIP_PREFIX, UNET_PREFIX, _apply_rules, _unet_rules, text_encoder_to_ldm, vae_to_ldm,
                            write_checkpoint)

CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIGG_PREFIX = "conditioner.embedders.1.model."
_ADD_EMBEDDING = {"add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_OPENCLIP_LEAVES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def xl_unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    if unet.config.get("addition_embed_type") != "text_time":
        raise ValueError("unet: not an SDXL UNet (addition_embed_type must be 'text_time')")
    rules = _unet_rules(unet, allowed_embeddings=("addition_embed_type",))
    rules += [(src, dst) for src, dst in _ADD_EMBEDDING.items()]
    return {UNET_PREFIX + k: v for k, v in _apply_rules(unet.state_dict(), rules, "unet").items()}


def open_clip_to_ldm(text_encoder_2) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection → OpenCLIP layout under conditioner.embedders.1.model."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder_2.state_dict().items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    state.pop("embeddings.position_ids", None)
    for i in range(text_encoder_2.config.num_hidden_layers):
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([state.pop(f"{src}self_attn.{p}_proj.{kind}")
                                                          for p in ("q", "k", "v")])
            for leaf_src, leaf_dst in _OPENCLIP_LEAVES.items():
                out[f"{dst}{leaf_dst}.{kind}"] = state.pop(f"{src}{leaf_src}.{kind}")
    if state:
        raise ValueError(f"text_encoder_2: {len(state)} parameter(s) have no place in the OpenCLIP layout: "
                         + ", ".join(list(state)[:8]))
    return {BIGG_PREFIX + k: v for k, v in out.items()}


def save_xl_single_file(pipe, path, dtype: torch.dtype | None = torch.float16) -> Path:
    """unet + vae + both text encoders as one SDXL LDM-layout .safetensors file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single-file checkpoints are written as .safetensors, got {path.name!r}")
    state = {**xl_unet_to_ldm(pipe.unet), **vae_to_ldm(pipe.vae), **open_clip_to_ldm(pipe.text_encoder_2)}
    state.update({CLIP_L_PREFIX + k.removeprefix(CLIP_PREFIX): v for k, v in text_encoder_to_ldm(pipe.text_encoder).items()})
    return write_checkpoint(state, path, dtype)
