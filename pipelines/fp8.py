"""fp8 for the UNet's linear layers on Ada/Hopper GPUs (the fast path's `fp8` option).

torchao's float8 dynamic quantization (`Float8DynamicActivationFloat8WeightConfig`): each
chosen `nn.Linear` keeps its weight in float8 e4m3 with a scale, and every call scales its
input to float8 on the fly and multiplies with `torch._scaled_mm` (fp8 tensor cores, twice
the fp16 rate on Hopper), output in the model's dtype.

Which layers (`fp8_linear_names`), and why:
- token-wise linears of the transformer blocks: self-attention Q/K/V (the fused `to_qkv` when
  QKV is fused, else `to_q`/`to_k`/`to_v`), cross-attention Q, every attention output
  `to_out.0`, the feed-forward `ff.net.0.proj` (GEGLU) and `ff.net.2`, and `proj_in`/`proj_out`
  where they are linear (SD 2.x, SDXL; in SD 1.5 they are 1×1 convolutions);
- not the cross-attention keys/values (`attn2.to_k`/`to_v`/`to_kv`): they read the 77 text
  tokens, so their matmuls are tiny and the per-call activation scaling would cost more than
  fp8 saves; not the per-sample vectors (timestep/class/added embeddings, each ResNet's
  `time_emb_proj`: a batch of 2 rows);
- not layers with a side below `min_features` (default 256: tiny layers gain nothing), nor
  sides that are not multiples of 16 (`_scaled_mm` needs them), nor, with per-tensor scales,
  128×128 weights (torchao mistakes them for 128×128-block scaling and fails);
- convolutions (~50 ms of a 194 ms SD 1.5 image on an H200) stay fp16: torchao's fp8
  convolution needs fbgemm's kernels on Blackwell (sm100), not Hopper.

Granularity follows the weights' dtype: per-row scales under bf16, one scale per tensor
under fp16 (torchao 0.15's per-row path and `_scaled_mm`'s row-wise scaling want bf16).
`set_inductor_config=False`: torchao would otherwise switch on inductor's coordinate-descent
tuning process-wide, which multiplies every compile's time (VAE included).
"""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

MIN_FEATURES = 256
# Linears fed one vector per sample (a batch of 1-2 rows): nothing for fp8 to speed up.
PER_SAMPLE = ("time_embedding", "time_emb_proj", "class_embedding", "add_embedding", "encoder_hid_proj")


def fp8_unavailable_reason(device) -> str | None:
    """None when fp8 can run on this device; else a sentence saying why it is off."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"fp8 is off: it needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper); this device is {device.type}."
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return (f"fp8 is off: it needs compute capability 8.9 or newer (Ada, Hopper); "
                f"{torch.cuda.get_device_name(device)} is {major}.{minor}.")
    try:
        import torchao  # noqa: F401
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig  # noqa: F401
    except Exception as error:  # noqa: BLE001 — missing or incompatible: either way fp8 stays off
        return f"fp8 is off: torchao is not usable here ({type(error).__name__}); pip install -r requirements-gpu.txt."
    return None


def _unused_or_cross_kv(unet) -> set[str]:
    """Names of linears that a fused attention never calls, and cross-attention keys/values."""
    skip = set()
    for name, module in unet.named_modules():
        if not hasattr(module, "to_q") or not hasattr(module, "is_cross_attention"):
            continue  # not a diffusers Attention
        prefix = f"{name}." if name else ""
        fused = getattr(module, "fused_projections", False)
        if module.is_cross_attention:
            skip.update(prefix + n for n in ("to_k", "to_v", "to_kv"))
        elif fused:
            skip.update(prefix + n for n in ("to_q", "to_k", "to_v"))  # to_qkv runs instead
        if not fused:
            skip.update(prefix + n for n in ("to_qkv", "to_kv"))  # left from an earlier fuse: not called
    return skip


def fp8_linear_names(unet, min_features: int = MIN_FEATURES, per_row: bool = False) -> list[str]:
    """The UNet's linear layers that fp8 pays off for (module docstring), by module name."""
    skip = _unused_or_cross_kv(unet)
    names = []
    for name, module in unet.named_modules():
        if type(module) is not torch.nn.Linear or name in skip:  # exact type: PEFT/LoRA wrappers excluded
            continue
        if any(part in PER_SAMPLE for part in name.split(".")):
            continue
        sides = (module.in_features, module.out_features)
        if min(sides) < min_features or any(side % 16 for side in sides):
            continue
        if not per_row and sides == (128, 128):
            # torchao 0.15/0.16 reads one scale over a 128×128 weight as 128×128 *blocks*
            # (block_size (128, 128)) and asserts at the first call: left out.
            continue
        names.append(name)
    return names


def quantize_unet_fp8(unet, min_features: int = MIN_FEATURES, per_row: bool | None = None) -> list[str]:
    """Quantize the chosen linears of `unet` in place (call fp8_unavailable_reason first).
    Returns their names; also kept as `unet._sd_studio_fp8` (LoRAs check it). per_row: None
    follows the dtype (per-row under bf16 only); the benchmark sets it to compare the two."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    dtype = next(unet.parameters()).dtype
    per_row = dtype == torch.bfloat16 if per_row is None else per_row
    names = set(fp8_linear_names(unet, min_features, per_row))
    granularity = PerRow() if per_row else PerTensor()
    config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity, set_inductor_config=False)
    quantize_(unet, config, filter_fn=lambda module, name: name in names)
    unet._sd_studio_fp8 = sorted(names)
    log.info("fp8: %d linear layers of the UNet quantized (%s scales, %s activations)", len(names),
             "per-row" if per_row else "per-tensor", dtype)
    return unet._sd_studio_fp8


def emulate_fp8_on_cpu(unet, min_features: int = MIN_FEATURES, per_row: bool = False) -> list[str]:
    """Tests and the CPU bench only: the chosen linears get the same torchao fp8 weights that
    quantize_unet_fp8 makes (float8 e4m3 data, scales, dynamic activation scaling), built
    without torchao's GPU check, so the CPU's torch._scaled_mm runs the fp8 maths."""
    from torchao.float8.inference import Float8MMConfig
    from torchao.quantization import Float8Tensor, PerRow, PerTensor
    from torchao.quantization.quantize_.workflows.float8.float8_tensor import QuantizeTensorToFloat8Kwargs

    granularity = PerRow() if per_row else PerTensor()
    layers = dict(unet.named_modules())
    names = fp8_linear_names(unet, min_features, per_row)
    for name in names:
        weight = Float8Tensor.from_hp(layers[name].weight.detach(), granularity=granularity,
                                      mm_config=Float8MMConfig(use_fast_accum=True),
                                      act_quant_kwargs=QuantizeTensorToFloat8Kwargs(torch.float8_e4m3fn, granularity))
        layers[name].weight = torch.nn.Parameter(weight, requires_grad=False)
    unet._sd_studio_fp8 = names
    return names
