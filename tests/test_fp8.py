"""The fast path's fp8 option (pipelines/fp8.py): which UNet layers it takes, and that where
it cannot run (here: a CPU) it is refused with a sentence and generation goes on unchanged.
fp8 matmuls themselves need an Ada/Hopper GPU: bench/gpu_fp8.py measures them."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from pipelines.core import catalog
from pipelines.core.errors import RequestError
from pipelines.core.requests import Sampling, Txt2ImgRequest
from pipelines.fast_path import FastPath
from pipelines.fp8 import fp8_linear_names, fp8_unavailable_reason
from pipelines.manager import PipelineManager
from settings import SD15_CONFIG, Settings
from tiny_adapters import save_kohya_lora
from tiny_sd import tiny_unet

TOKEN_WISE = ("attn1.to_qkv", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")


def sd15_unet_without_weights() -> UNet2DConditionModel:
    with torch.device("meta"):  # SD 1.5's architecture, no memory
        return UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(SD15_CONFIG, subfolder="unet"))


def test_fp8_takes_the_token_wise_linears_of_sd15s_16_transformer_blocks_and_nothing_else():
    unet = sd15_unet_without_weights()
    unfused = fp8_linear_names(unet)
    assert len(unfused) == 16 * 8  # to_q, to_k, to_v, to_out of attn1; to_q, to_out of attn2; 2 feed-forward
    assert not [n for n in unfused if n.endswith(("attn2.to_k", "attn2.to_v"))]  # text tokens: 77 rows
    unet.fuse_qkv_projections()
    names = fp8_linear_names(unet)
    assert len(names) == 16 * 6
    assert {n.split(".transformer_blocks.0.")[1] for n in names} == set(TOKEN_WISE)
    assert not [n for n in names if "time_emb" in n or "attn1.to_q" in n.replace("to_qkv", "")]
    # SD 1.5's proj_in/proj_out are 1x1 convolutions: convolutions stay in fp16
    assert not [n for n in names if "proj_in" in n or "proj_out" in n]


def test_fp8_size_filter_skips_layers_below_the_threshold():
    unet = tiny_unet()  # 32/64 channels
    assert fp8_linear_names(unet) == []  # default 256: nothing in a tiny model is worth it
    unet.fuse_qkv_projections()
    names = fp8_linear_names(unet, min_features=16)
    assert names and all(n.endswith(TOKEN_WISE) for n in names)
    assert not [n for n in names if "time_embedding" in n or "time_emb_proj" in n or n.endswith("to_kv")]
    sides = {n: m for n, m in unet.named_modules() if n in names}
    assert len(fp8_linear_names(unet, min_features=64)) == sum(min(m.in_features, m.out_features) >= 64 for m in sides.values())


def generate(manager, prompt="a red circle", seed=3):
    result = manager.run(Txt2ImgRequest(prompt=prompt, width=64, height=64, sampling=Sampling(scheduler="Euler", steps=3, seed=seed)))
    return np.asarray(result.images[0].image), result.images[0].infotext


def test_fp8_is_refused_on_a_cpu_with_a_sentence_and_the_images_are_those_without_it(tiny_model_dir, caplog):
    assert "compute capability 8.9" in fp8_unavailable_reason("cpu")
    plain = PipelineManager(device="cpu", fast_path=FastPath(compile="none", channels_last=False, fuse_qkv=False))
    plain.load_base(str(tiny_model_dir))
    with caplog.at_level(logging.WARNING):
        asked = PipelineManager(device="cpu", fast_path=FastPath(compile="none", channels_last=False, fuse_qkv=False), fp8=True)
        asked.load_base(str(tiny_model_dir))
    assert asked.fast_path.fp8 and not asked.fast_runtime.fp8
    assert any("fp8 is off" in r.getMessage() and "Generating without it" in r.getMessage() for r in caplog.records)
    assert not [a for a in asked.fast_path_applied if "fp8" in a]
    image, infotext = generate(asked)
    assert np.array_equal(image, generate(plain)[0])
    assert "FP8" not in infotext


def test_fp8_without_the_fast_path_says_so_and_generates(tiny_model_dir, caplog):
    with caplog.at_level(logging.WARNING):
        m = PipelineManager(device="cpu", fp8=True)  # auto: no fast path on a CPU
    assert m.fast_path is None
    assert any("option of the GPU fast path" in r.getMessage() for r in caplog.records)
    m.load_base(str(tiny_model_dir))
    assert generate(m)[0].shape == (64, 64, 3)


def test_fp8_flag_and_environment_variable_reach_the_manager(monkeypatch):
    from app import manager_kwargs

    assert Settings.from_args([]).fp8 is False
    assert manager_kwargs(Settings.from_args(["--fp8"]))["fp8"] is True
    monkeypatch.setenv("SD_STUDIO_FP8", "1")
    assert Settings.from_args([]).fp8 is True
    assert Settings.from_args(["--no-fp8"]).fp8 is False


def test_a_lora_on_an_fp8_unet_is_refused_with_a_sentence_and_the_next_request_runs(tiny_model_dir, tmp_path):
    # fp8 weights need an Ada/Hopper GPU: here the UNet is marked as quantized by hand (the
    # mark quantize_unet_fp8 leaves) to check the refusal and that the manager keeps serving.
    save_kohya_lora(tmp_path / "Lora" / "tiny-kohya.safetensors", tiny_model_dir)
    catalog.configure(tmp_path)
    try:
        m = PipelineManager(device="cpu")
        m.load_base(str(tiny_model_dir))
        m.pipeline("txt2img").unet._sd_studio_fp8 = ["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2"]
        with pytest.raises(RequestError) as refused:
            generate(m, "a red circle <lora:tiny-kohya:1>")
        text = str(refused.value)
        assert "fp8" in text and "--fp8" in text and os.sep + "tmp" not in text
        assert m.adapters.loras.slots == {}  # nothing was loaded into the UNet
        assert generate(m)[0].shape == (64, 64, 3)
    finally:
        catalog.configure(None)


def test_memory_report_counts_fp8_weights_by_their_float8_bytes(tiny_model_dir):
    # torchao's fp8 weight is a wrapper tensor without a storage of its own: the report reads
    # its float8 data and scale. Built here with torchao's own constructor (the fp8 *matmul*
    # needs a GPU; holding the weight does not).
    pytest.importorskip("torchao")
    from torchao.quantization import Float8Tensor, PerTensor

    m = PipelineManager(device="cpu")
    m.load_base(str(tiny_model_dir))
    before = m.memory_report()["base_bytes"]
    unet = m.pipeline("txt2img").unet
    layers = dict(unet.named_modules())
    names = fp8_linear_names(unet, min_features=16)
    saved = 0
    for name in names:
        weight = layers[name].weight
        layers[name].weight = torch.nn.Parameter(Float8Tensor.from_hp(weight.detach(), granularity=PerTensor()), requires_grad=False)
        saved += weight.numel() * (weight.element_size() - 1) - 4  # fp32 -> 1 byte each, plus a 4-byte scale
    assert names and m.memory_report()["base_bytes"] == before - saved
    # every mode derived afterwards shares that UNet, fp8 weights and all (from_pipe moves nothing)
    for task in ("img2img", "inpaint"):
        derived = m.pipeline(task).unet
        assert derived is unet and isinstance(dict(derived.named_modules())[names[0]].weight, Float8Tensor)


def test_torchao_quantize_hands_our_filter_the_module_names_fp8_selects_by():
    pytest.importorskip("torchao")
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerTensor, quantize_

    unet = tiny_unet()
    unet.fuse_qkv_projections()
    names = set(fp8_linear_names(unet, min_features=16))
    seen = []

    def chosen(module, name):
        seen.append(name)
        return name in names

    config = Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor(), set_inductor_config=False)
    try:
        quantize_(unet, config, filter_fn=chosen)
    except AssertionError:  # no Ada/Hopper GPU here: torchao refuses at the first chosen layer
        pass
    assert set(seen) <= set(dict(unet.named_modules())) and names & set(seen)


@pytest.mark.parametrize("per_row", [False, True])
def test_fp8_maths_keeps_the_unets_prediction_within_a_few_percent(per_row):
    # The fp8 weights torchao makes, run by the CPU's torch._scaled_mm (emulate_fp8_on_cpu):
    # e4m3 keeps 3 mantissa bits, so each product is off by up to ~6 %; the UNet's output
    # (residual paths, convs and norms in full precision) moves by about 1 %.
    pytest.importorskip("torchao")
    from pipelines.fp8 import emulate_fp8_on_cpu

    x, c, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.randn(2, 77, 32), torch.tensor(500.0)
    plain, quantized = tiny_unet(), tiny_unet()
    names = emulate_fp8_on_cpu(quantized, min_features=16, per_row=per_row)
    with torch.no_grad():
        a, b = plain(x, t, c).sample, quantized(x, t, c).sample
    error = float((a - b).norm() / a.norm())
    assert names and 0.001 < error < 0.05


def test_fp8_per_tensor_leaves_out_128x128_weights_that_torchao_would_mistake_for_blocks():
    from settings import DEMO_MODEL

    with torch.device("meta"):  # the shipped demo UNet's architecture (64/128/128 channels)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(DEMO_MODEL, subfolder="unet"))
    shapes = {n: tuple(m.weight.shape) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
    per_row, per_tensor = fp8_linear_names(unet, 16, per_row=True), fp8_linear_names(unet, 16)
    assert {shapes[n] for n in set(per_row) - set(per_tensor)} == {(128, 128)}
    assert (128, 128) not in {shapes[n] for n in per_tensor}
