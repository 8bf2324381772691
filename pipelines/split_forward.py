"""The UNet's and the ControlNet's forwards cut where the fast path needs the seams.

UNet, in two halves, so a ControlNet can run beside the first: a ControlNet's residuals are only added after the UNet's down and mid blocks: the UNet's
time embedding, conv_in, down and mid blocks do not read them. Split there, the UNet's first
half and the ControlNet are independent and can run on two CUDA streams at once
(fast_path.py), each filling the SMs the other leaves idle at the low resolutions.

ControlNet, without its hint embedding: the control image's embedding (a stack of
full-resolution convolutions, ~3 % of a ControlNet step) is the same at every step of a
request, so it is computed once per request and the per-step body starts from it.

Every half calls the same submodules with the same operations in the same order as
diffusers' forwards, so ``up(*down_mid(...), residuals)`` equals ``unet(...,
down_block_additional_residuals=..., mid_block_additional_residual=...)`` and
``controlnet_body(..., hint_embedding(...))`` equals the ControlNet at scale 1, bit for bit
(tests/test_split_forward.py). Only the configurations the studio's families use are split
(`splittable`): no class labels, no image hints, no attention masks or adapters.
"""
from __future__ import annotations

import torch


def splittable(module) -> bool:
    """A UNet2DConditionModel or ControlNetModel of the SD 1.x/2.x/SDXL kind."""
    config = module.config
    if getattr(module, "class_embedding", None) is not None or config.addition_embed_type not in (None, "text_time"):
        return False
    if type(module).__name__ == "UNet2DConditionModel":
        return not config.center_input_sample and getattr(module, "position_net", None) is None
    return (type(module).__name__ == "ControlNetModel"
            and config.controlnet_conditioning_channel_order in ("rgb", "bgr"))


def down_mid(unet, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
             added_cond_kwargs: dict | None = None) -> tuple[torch.Tensor, ...]:
    """Time embedding, conv_in, down and mid blocks: (emb, context, mid sample, *skip samples)."""
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=context, added_cond_kwargs=added_cond_kwargs)
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(encoder_hidden_states=context, added_cond_kwargs=added_cond_kwargs)
    sample, skips = _down_and_mid(unet, unet.conv_in(sample), emb, context)
    return (emb, context, sample, *skips)


def _down_and_mid(model, sample, emb, context) -> tuple[torch.Tensor, tuple]:
    """The down blocks and the mid block (a UNet's or a ControlNet's, the same layout), from
    conv_in's output: (mid sample, skips with conv_in's output first)."""
    skips = (sample,)
    for block in model.down_blocks:
        if getattr(block, "has_cross_attention", False):
            sample, res = block(hidden_states=sample, temb=emb, encoder_hidden_states=context)
        else:
            sample, res = block(hidden_states=sample, temb=emb)
        skips += res
    if model.mid_block is not None:
        if getattr(model.mid_block, "has_cross_attention", False):
            sample = model.mid_block(sample, emb, encoder_hidden_states=context)
        else:
            sample = model.mid_block(sample, emb)
    return sample, skips


def up(unet, emb: torch.Tensor, context: torch.Tensor, sample: torch.Tensor, skips: tuple,
       down_residuals: tuple | None = None, mid_residual: torch.Tensor | None = None) -> torch.Tensor:
    """The ControlNet residuals added to the skips and the mid sample, then the up blocks and
    the output layers: the noise prediction."""
    if down_residuals is not None:
        skips = tuple(s + r for s, r in zip(skips, down_residuals))
        sample = sample + mid_residual
    factor = 2 ** unet.num_upsamplers
    forward_size = any(dim % factor for dim in skips[0].shape[-2:])  # conv_in keeps the input's size
    upsample_size = None
    for i, block in enumerate(unet.up_blocks):
        res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
        if i < len(unet.up_blocks) - 1 and forward_size:
            upsample_size = skips[-1].shape[2:]
        if getattr(block, "has_cross_attention", False):
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, encoder_hidden_states=context,
                           upsample_size=upsample_size)
        else:
            sample = block(hidden_states=sample, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
    if unet.conv_norm_out:
        sample = unet.conv_act(unet.conv_norm_out(sample))
    return unet.conv_out(sample)


def hint_embedding(controlnet, cond: torch.Tensor) -> torch.Tensor:
    """The control image's embedding, added to the ControlNet's conv_in output every step."""
    if controlnet.config.controlnet_conditioning_channel_order == "bgr":
        cond = torch.flip(cond, dims=[1])
    return controlnet.controlnet_cond_embedding(cond)


def controlnet_body(controlnet, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                    hint: torch.Tensor, added_cond_kwargs: dict | None = None,
                    guess_mode: bool = False) -> tuple[torch.Tensor, ...]:
    """The ControlNet at conditioning scale 1 from its hint embedding: (*down residuals, mid)."""
    timesteps = timestep[None] if timestep.dim() == 0 else timestep
    t_emb = controlnet.time_proj(timesteps.expand(sample.shape[0])).to(dtype=sample.dtype)
    emb = controlnet.time_embedding(t_emb, None)
    if controlnet.config.addition_embed_type == "text_time":
        text_embeds, time_ids = added_cond_kwargs["text_embeds"], added_cond_kwargs["time_ids"]
        time_embeds = controlnet.add_time_proj(time_ids.flatten()).reshape((text_embeds.shape[0], -1))
        emb = emb + controlnet.add_embedding(torch.concat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
    sample, skips = _down_and_mid(controlnet, controlnet.conv_in(sample) + hint, emb, context)
    outs = [block(skip) for skip, block in zip(skips, controlnet.controlnet_down_blocks)]
    outs.append(controlnet.controlnet_mid_block(sample))
    if guess_mode and not controlnet.config.global_pool_conditions:
        scales = torch.logspace(-1, 0, len(outs), device=sample.device)  # 0.1 to 1.0, as diffusers
        outs = [out * scale for out, scale in zip(outs, scales)]
    if controlnet.config.global_pool_conditions:
        outs = [torch.mean(out, dim=(2, 3), keepdim=True) for out in outs]
    return tuple(outs)
