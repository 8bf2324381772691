"""Export a diffusers Stable Diffusion 1.x pipeline as one original-layout (LDM/CompVis) checkpoint.

Test-only: the single-file loading tests (test_single_file.py, test_manager.py) write their
checkpoints with it; the app itself only reads single files (pipelines/loading.py).

The result is the single ``.safetensors`` file that AUTOMATIC1111 and ComfyUI load, and that
``StableDiffusionPipeline.from_single_file(path, config=<diffusers folder>)`` loads back:

    model.diffusion_model.*              UNet (openaimodel: input_blocks / middle_block / output_blocks)
    first_stage_model.*                  VAE  (encoder.down.N / decoder.up.N, counted bottom-up)
    cond_stage_model.transformer.*       CLIP text encoder (HF CLIPTextModel keys under text_model.)

This is the inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
``convert_ldm_clip_checkpoint`` (loaders/single_file_utils.py). The key mapping is built from each
model's config and module tree (block counts, layers per block, which blocks carry attention),
so any width or depth diffusers allows maps, including the 9-channel inpainting UNet. Every
parameter must land on exactly one LDM key; anything the LDM layout cannot express raises
``ValueError`` instead of writing a checkpoint that loads with missing weights.

Pure torch/diffusers/safetensors: never imports gradio.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

# openaimodel ResBlock names vs diffusers ResnetBlock2D (in_layers = [norm, SiLU, conv], ...).
_UNET_RESNET_LEAVES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# The VAE ResnetBlock keeps its names in LDM except the 1x1 shortcut.
_VAE_RESNET_LEAVES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# LDM's VAE AttnBlock uses 1x1 Conv2d for q/k/v/proj_out; diffusers uses Linear.
_VAE_ATTN_LEAVES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
_UNET_DOWN_TYPES = {"CrossAttnDownBlock2D", "DownBlock2D"}
_UNET_UP_TYPES = {"CrossAttnUpBlock2D", "UpBlock2D"}


# --------------------------------------------------------------------------------------------
# generic: a list of (diffusers module prefix -> LDM module prefix [, leaf renames]) rules
# --------------------------------------------------------------------------------------------


def _apply_rules(state_dict: Mapping[str, torch.Tensor], rules: list[tuple], what: str) -> dict:
    """Rename every key by the rule whose diffusers prefix matches; refuse leftovers.

    A rule is (src_prefix, dst_prefix) or (src_prefix, dst_prefix, leaf_map); with a leaf map
    the part after the prefix must start with one of its keys (e.g. "conv1." -> "in_layers.2.").
    """
    out: dict[str, torch.Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        new_key = None
        for rule in rules:
            src, dst = rule[0], rule[1]
            if not key.startswith(src + "."):
                continue
            rest = key[len(src) + 1:]
            if len(rule) == 2:
                new_key = f"{dst}.{rest}"
            else:
                for leaf_src, leaf_dst in rule[2].items():
                    if rest.startswith(leaf_src + "."):
                        new_key = f"{dst}.{leaf_dst}.{rest[len(leaf_src) + 1:]}"
                        break
            break  # prefixes are disjoint: the first match is the only candidate
        if new_key is None:
            unmapped.append(key)
        elif new_key in out:
            raise ValueError(f"{what}: two parameters map to the same LDM key {new_key!r}")
        else:
            out[new_key] = tensor
    if unmapped:
        shown = ", ".join(unmapped[:8]) + (" ..." if len(unmapped) > 8 else "")
        raise ValueError(
            f"{what}: {len(unmapped)} parameter(s) have no place in the original LDM checkpoint "
            f"layout: {shown}"
        )
    return out


def _uniform_layers(value, n_blocks: int, what: str) -> int:
    """openaimodel (and diffusers' converter back) assume one num_res_blocks for every level."""
    values = [value] * n_blocks if isinstance(value, int) else list(value)
    if len(set(values)) != 1:
        raise ValueError(f"{what}: layers_per_block={value!r} differs per block; the LDM layout "
                         "needs one value for all blocks")
    return values[0]


# --------------------------------------------------------------------------------------------
# UNet
# --------------------------------------------------------------------------------------------


def _check_unet(unet, allowed_embeddings: tuple[str, ...] = ()) -> None:
    """allowed_embeddings: config fields another layout maps itself (SDXL: addition_embed_type)."""
    cfg = unet.config
    name = type(unet).__name__
    if name != "UNet2DConditionModel":
        raise ValueError(f"unet: expected UNet2DConditionModel, got {name}")
    problems = []
    bad_down = [t for t in cfg.down_block_types if t not in _UNET_DOWN_TYPES]
    bad_up = [t for t in cfg.up_block_types if t not in _UNET_UP_TYPES]
    if bad_down or bad_up:
        problems.append(f"block types {bad_down + bad_up} (supported: {sorted(_UNET_DOWN_TYPES | _UNET_UP_TYPES)})")
    if cfg.mid_block_type != "UNetMidBlock2DCrossAttn":
        problems.append(f"mid_block_type={cfg.mid_block_type!r} (needs UNetMidBlock2DCrossAttn)")
    for field in ("class_embed_type", "addition_embed_type", "num_class_embeds", "encoder_hid_dim",
                  "time_cond_proj_dim"):
        if cfg.get(field) is not None and field not in allowed_embeddings:
            problems.append(f"{field}={cfg.get(field)!r} (SD 1.x has no such embedding)")
    if cfg.get("time_embedding_type", "positional") != "positional":
        problems.append(f"time_embedding_type={cfg.time_embedding_type!r}")
    # These change the SpatialTransformer's own submodules, which are copied key for key.
    if cfg.get("attention_type", "default") != "default":
        problems.append(f"attention_type={cfg.attention_type!r}")
    if cfg.get("dual_cross_attention"):
        problems.append("dual_cross_attention=True")
    if problems:
        raise ValueError("unet: config not expressible as an SD 1.x LDM checkpoint: " + "; ".join(problems))


def _unet_rules(unet, allowed_embeddings: tuple[str, ...] = ()) -> list[tuple]:
    _check_unet(unet, allowed_embeddings)
    n_levels = len(unet.down_blocks)
    layers = _uniform_layers(unet.config.layers_per_block, n_levels, "unet")
    rules: list[tuple] = [
        ("time_embedding.linear_1", "time_embed.0"),
        ("time_embedding.linear_2", "time_embed.2"),
        ("conv_in", "input_blocks.0.0"),
        ("conv_norm_out", "out.0"),
        ("conv_out", "out.2"),
    ]

    # input_blocks: slot 0 is conv_in, then per level `layers` x [ResBlock, SpatialTransformer?]
    # followed by one Downsample slot on every level but the last.
    slot = 1
    for b, block in enumerate(unet.down_blocks):
        if len(block.resnets) != layers:
            raise ValueError(f"unet: down block {b} has {len(block.resnets)} resnets, expected {layers}")
        attentions = getattr(block, "attentions", None)
        for j in range(layers):
            rules.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{slot}.0", _UNET_RESNET_LEAVES))
            if attentions is not None:
                rules.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{slot}.1"))
            slot += 1
        has_down = getattr(block, "downsamplers", None) is not None
        if has_down != (b < n_levels - 1):
            # the slot arithmetic (and diffusers' reader) relies on this standard placement
            raise ValueError(f"unet: down block {b} downsampler placement is not the SD layout")
        if has_down:
            rules.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{slot}.0.op"))
            slot += 1

    # middle_block: ResBlock, SpatialTransformer, ResBlock
    mid = unet.mid_block
    if len(mid.resnets) != 2 or len(mid.attentions) != 1:
        raise ValueError("unet: mid block must have exactly 2 resnets and 1 attention (num_layers=1)")
    rules += [
        ("mid_block.resnets.0", "middle_block.0", _UNET_RESNET_LEAVES),
        ("mid_block.attentions.0", "middle_block.1"),
        ("mid_block.resnets.1", "middle_block.2", _UNET_RESNET_LEAVES),
    ]

    # output_blocks: per level (layers + 1) x [ResBlock, SpatialTransformer?, Upsample on the last]
    slot = 0
    for b, block in enumerate(unet.up_blocks):
        if len(block.resnets) != layers + 1:
            raise ValueError(f"unet: up block {b} has {len(block.resnets)} resnets, expected {layers + 1}")
        attentions = getattr(block, "attentions", None)
        has_up = getattr(block, "upsamplers", None) is not None
        if has_up != (b < n_levels - 1):
            raise ValueError(f"unet: up block {b} upsampler placement is not the SD layout")
        for j in range(layers + 1):
            rules.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{slot}.0", _UNET_RESNET_LEAVES))
            sub = 1
            if attentions is not None:
                rules.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{slot}.1"))
                sub = 2
            if has_up and j == layers:
                rules.append((f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{slot}.{sub}.conv"))
            slot += 1
    return rules


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> ``model.diffusion_model.*`` keys."""
    mapped = _apply_rules(unet.state_dict(), _unet_rules(unet), "unet")
    return {UNET_PREFIX + k: v for k, v in mapped.items()}


# --------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------


def _vae_rules(vae) -> list[tuple]:
    cfg = vae.config
    name = type(vae).__name__
    if name != "AutoencoderKL":
        raise ValueError(f"vae: expected AutoencoderKL, got {name}")
    problems = []
    if any(t != "DownEncoderBlock2D" for t in cfg.down_block_types):
        problems.append(f"down_block_types={list(cfg.down_block_types)}")
    if any(t != "UpDecoderBlock2D" for t in cfg.up_block_types):
        problems.append(f"up_block_types={list(cfg.up_block_types)}")
    if not cfg.get("mid_block_add_attention", True):
        problems.append("mid_block_add_attention=False (LDM's VAE always has the mid attention)")
    if not cfg.get("use_quant_conv", True) or not cfg.get("use_post_quant_conv", True):
        problems.append("no quant_conv/post_quant_conv (LDM's VAE always has both)")
    if problems:
        raise ValueError("vae: config not expressible as an LDM first_stage_model: " + "; ".join(problems))

    rules: list[tuple] = [("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")]
    for part in ("encoder", "decoder"):
        rules += [
            (f"{part}.conv_in", f"{part}.conv_in"),
            (f"{part}.conv_out", f"{part}.conv_out"),
            (f"{part}.conv_norm_out", f"{part}.norm_out"),
            (f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", _VAE_RESNET_LEAVES),
            (f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", _VAE_RESNET_LEAVES),
            (f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", _VAE_ATTN_LEAVES),
        ]
    for i, block in enumerate(vae.encoder.down_blocks):
        for j in range(len(block.resnets)):
            rules.append((f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", _VAE_RESNET_LEAVES))
        if block.downsamplers is not None:
            rules.append((f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv"))
    # LDM numbers decoder levels from the lowest resolution up: diffusers up_blocks[i] is up[n-1-i].
    n_up = len(vae.decoder.up_blocks)
    for i, block in enumerate(vae.decoder.up_blocks):
        level = n_up - 1 - i
        for j in range(len(block.resnets)):
            rules.append((f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{level}.block.{j}", _VAE_RESNET_LEAVES))
        if block.upsamplers is not None:
            rules.append((f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{level}.upsample.conv"))
    return rules


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> ``first_stage_model.*`` keys (mid attention as 1x1 convs)."""
    mapped = _apply_rules(vae.state_dict(), _vae_rules(vae), "vae")
    out = {}
    for key, tensor in mapped.items():
        # q/k/v/proj_out weights: Linear [C, C] -> Conv2d 1x1 [C, C, 1, 1]. diffusers' reader
        # squeezes either form; A1111/ComfyUI's AttnBlock needs the conv shape.
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[VAE_PREFIX + key] = tensor
    return out


# --------------------------------------------------------------------------------------------
# CLIP text encoder
# --------------------------------------------------------------------------------------------


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> ``cond_stage_model.transformer.text_model.*`` keys."""
    name = type(text_encoder).__name__
    if name != "CLIPTextModel":
        raise ValueError(f"text_encoder: SD 1.x stores a CLIPTextModel (ViT-L/14 text tower), got {name}")
    out = {}
    for key, tensor in text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel (no "text_model." level); the LDM file,
        # like every SD 1.x checkpoint in the wild, keeps the older nested names.
        if not key.startswith("text_model."):
            key = "text_model." + key
        out[CLIP_PREFIX + key] = tensor
    return out


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def to_ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """All three components in the original single-file layout (tensors are not copied)."""
    state = {}
    state.update(unet_to_ldm(unet))
    state.update(vae_to_ldm(vae))
    state.update(text_encoder_to_ldm(text_encoder))
    return state


def _components(pipe_or_components):
    if isinstance(pipe_or_components, Mapping):
        get = pipe_or_components.get
    else:
        def get(name):
            return getattr(pipe_or_components, name, None)
    parts = {name: get(name) for name in ("unet", "vae", "text_encoder")}
    missing = [name for name, module in parts.items() if module is None]
    if missing:
        raise ValueError(f"cannot export a single-file checkpoint without {', '.join(missing)}")
    return parts


def save_single_file(pipe_or_components, path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write unet + vae + text_encoder as one LDM-layout ``.safetensors`` file and return its path.

    ``pipe_or_components``: a diffusers pipeline or a mapping with ``unet``, ``vae`` and
    ``text_encoder`` (``pipe.components`` works). ``dtype`` casts floating tensors (fp16 is the
    usual distribution format); ``None`` keeps each tensor's dtype, for a bit-exact export.
    The file is written next to its target and renamed into place, so a crash never leaves a
    truncated checkpoint under the final name.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single-file checkpoints are written as .safetensors, got {path.name!r}")
    return write_checkpoint(to_ldm_state_dict(**_components(pipe_or_components)), path, dtype)


def write_checkpoint(state: dict[str, torch.Tensor], path: Path, dtype: torch.dtype | None) -> Path:
    """An LDM state dict as a .safetensors file, written beside its target and renamed into place."""
    tensors = {}
    for key, tensor in state.items():
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise ValueError(f"{key} is on the meta device (weights not loaded); nothing to save")
        tensor = tensor.to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        tensors[key] = tensor.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
