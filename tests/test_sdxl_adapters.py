"""LoRAs, embeddings and prompt syntax on SDXL, through both text encoders; LoRAs on the
9-channel inpainting UNet (SD 1.5 and SDXL). Tiny random models and adapters built in code
(tests/tiny_sdxl.py, tests/tiny_sdxl_adapters.py, tests/tiny_adapters.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.core import catalog
from pipelines.core.errors import RequestError
from pipelines.core.requests import InpaintRequest, Sampling, Txt2ImgRequest
from tiny_adapters import UNET_TARGETS, save_embedding, save_kohya_lora
from tiny_sdxl_adapters import save_xl_embedding, save_xl_kohya_lora


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].image, dtype=np.int16)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_model_dir):
    from tiny_sd import save_tiny_inpaint_unet
    from tiny_sdxl import save_tiny_xl_inpaint_model, save_tiny_xl_model

    root = tmp_path_factory.mktemp("xl-models")
    save_tiny_xl_model(root / "Stable-diffusion" / "tiny-sdxl")
    save_tiny_xl_inpaint_model(root / "inpaint" / "tiny-sdxl-inpaint")
    save_tiny_inpaint_unet(root / "inpaint" / "tiny-sd-inpaint")
    save_xl_kohya_lora(root / "Lora" / "xl-kohya.safetensors", seed=0, scale=0.5)  # SGM names, as sd-scripts
    save_xl_kohya_lora(root / "Lora" / "xl-diffusers-names.safetensors", seed=1, scale=0.5, sgm=False)
    save_xl_kohya_lora(root / "Lora" / "xl-unet-only.safetensors", seed=2, scale=0.5, parts=("unet",))
    save_xl_kohya_lora(root / "Lora" / "xl-te1-only.safetensors", seed=3, scale=0.5, parts=("te1",))
    save_xl_kohya_lora(root / "Lora" / "xl-te2-only.safetensors", seed=4, scale=0.5, parts=("te2",))
    save_kohya_lora(root / "Lora" / "sd15-kohya.safetensors", tiny_model_dir, seed=0)
    save_sd_unet_lora_with_conv_in(root / "Lora" / "sd15-unet-conv-in", tiny_model_dir)
    save_xl_embedding(root / "embeddings" / "xlword.safetensors", vectors=2)
    save_embedding(root / "embeddings" / "sd15word.pt", dim=32, vectors=1, fmt="a1111")
    return root


def save_sd_unet_lora_with_conv_in(folder, model_dir, seed: int = 6):
    """A diffusers/PEFT LoRA of the SD UNet that also trains conv_in (4 input channels), as
    LoCon-style LoRAs do: on a 9-channel UNet that layer cannot take it."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    from pipelines.adapters import peft_tolerates_old_torchao

    peft_tolerates_old_torchao()
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    unet = inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=[*UNET_TARGETS, "conv_in"]), unet)
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in get_peft_model_state_dict(unet).items()}
    assert any(k.startswith("conv_in.") for k in state)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=state)
    return folder


@pytest.fixture(scope="module")
def xl(models_dir):
    from pipelines.manager import PipelineManager

    catalog.configure(models_dir)
    m = PipelineManager(device="cpu")
    m.load_base("tiny-sdxl")
    yield m
    catalog.configure(None)


def generate(manager, prompt: str, negative: str = "", seed: int = 4, **kw):
    request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, width=64, height=64,
                             sampling=Sampling(scheduler="DDIM", steps=3, seed=seed), **kw)
    return manager.run(request)


def test_an_sdxl_kohya_lora_changes_the_image_and_leaves_nothing_behind(xl):
    plain = pixels(generate(xl, "a red circle"))
    with_lora = generate(xl, "a red circle <lora:xl-kohya:1>")
    assert np.abs(pixels(with_lora) - plain).mean() > 1.0
    slot = xl.adapters.loras.slots["xl-kohya"]
    assert slot.parts == ["unet", "text_encoder", "text_encoder_2"]  # SGM-named UNet keys mapped, both encoders
    assert "Lora hashes: " in with_lora.images[0].infotext and "xl-kohya: " in with_lora.images[0].infotext
    assert np.array_equal(pixels(generate(xl, "a red circle <lora:xl-kohya:0>")), plain)
    assert np.array_equal(pixels(generate(xl, "a red circle")), plain)  # no leftover weights
    # kohya files with diffusers' layer names (down_blocks_…) load as well
    other = generate(xl, "a red circle <lora:xl-diffusers-names:1>")
    assert xl.adapters.loras.slots["xl-diffusers-names"].parts == ["unet", "text_encoder", "text_encoder_2"]
    assert np.abs(pixels(other) - plain).mean() > 1.0
    assert np.array_equal(pixels(generate(xl, "a red circle")), plain)


def test_each_sdxl_text_encoder_gets_its_own_half_of_a_lora(xl):
    """lora_te1_ acts on CLIP ViT-L's features only, lora_te2_ on OpenCLIP bigG's (and the pooled output)."""
    from pipelines.prompt_encoding import encode_prompts

    base, cpu, loras = xl._base, torch.device("cpu"), xl.adapters.loras
    width_1 = base.text_encoder.config.hidden_size
    plain = encode_prompts(base, "a red circle", "", 1, False, cpu)
    for name, changes_1, changes_2 in (("xl-te1-only", True, False), ("xl-te2-only", False, True)):
        loras.activate(base, [(loras.get(base, name), 1.0)], cpu)
        try:
            e = encode_prompts(base, "a red circle", "", 1, False, cpu)
        finally:
            loras.activate(base, [], cpu)
        assert (not torch.equal(e.cond[..., :width_1], plain.cond[..., :width_1])) is changes_1, name
        assert (not torch.equal(e.cond[..., width_1:], plain.cond[..., width_1:])) is changes_2, name
        assert (not torch.equal(e.pooled, plain.pooled)) is changes_2, name
    assert torch.equal(encode_prompts(base, "a red circle", "", 1, False, cpu).cond, plain.cond)


def test_an_sd15_lora_on_sdxl_is_refused_with_a_sentence(xl):
    plain = pixels(generate(xl, "a red circle"))
    with pytest.raises(RequestError) as error:
        generate(xl, "a red circle <lora:sd15-kohya:1>")
    text = str(error.value)
    assert "sd15-kohya" in text and "SD 1.x or 2.x" in text and "SDXL" in text
    assert "/" not in text and "Error" not in text  # no paths, no class names
    assert np.array_equal(pixels(generate(xl, "a red circle")), plain)  # and the app keeps serving


def test_an_sdxl_embedding_is_a_word_in_both_encoders(xl):
    assert "xlword" in xl.adapters.embeddings.loaded
    base = xl._base
    for tokenizer in (base.tokenizer, base.tokenizer_2):  # a 2-vector embedding: word + word_1, in each
        assert {"xlword", "xlword_1"} <= set(tokenizer.get_vocab())
    with_word = generate(xl, "a red circle xlword")
    assert np.abs(pixels(with_word) - pixels(generate(xl, "a red circle word"))).mean() > 1.0
    assert 'TI hashes: "xlword: ' in with_word.images[0].infotext


def test_an_sd15_embedding_on_sdxl_is_not_used_and_the_result_says_why(xl):
    assert "sd15word" not in xl.adapters.embeddings.loaded
    result = generate(xl, "a red circle sd15word")
    assert result.images[0].image.size == (64, 64)
    note = next(n for n in result.notes if "sd15word" in n)
    assert "SD 1.x or 2.x" in note and "SDXL" in note and "/" not in note


def test_an_sdxl_embedding_or_lora_on_sd15_is_refused(models_dir, tiny_model_dir):
    from tiny_sd import tiny_pipeline

    from pipelines.adapters import lora_family, load_embedding

    with pytest.raises(ValueError, match="made for SDXL"):
        load_embedding(tiny_pipeline(), "xlword", str(models_dir / "embeddings" / "xlword.safetensors"))
    assert lora_family(str(models_dir / "Lora" / "xl-kohya.safetensors")) == "SDXL"
    assert lora_family(str(models_dir / "Lora" / "xl-te2-only.safetensors")) == "SDXL"
    assert lora_family(str(models_dir / "Lora" / "sd15-kohya.safetensors")) == "SD"
    assert lora_family(str(models_dir / "Lora" / "xl-unet-only.safetensors")) is None  # shapes decide then


def test_emphasis_on_sdxl_acts_in_both_encoders(xl):
    from pipelines.prompt_encoding import encode_prompts

    base, cpu = xl._base, torch.device("cpu")
    width_1 = base.text_encoder.config.hidden_size
    plain = encode_prompts(base, "a red circle", "", 1, False, cpu).cond
    stressed = encode_prompts(base, "a (red:1.5) circle", "", 1, False, cpu).cond
    assert not torch.equal(stressed[..., :width_1], plain[..., :width_1])
    assert not torch.equal(stressed[..., width_1:], plain[..., width_1:])
    split = encode_prompts(base, "a red BREAK circle", "", 1, False, cpu).cond
    assert split.shape[1] == 2 * 77 and split.shape[2] == plain.shape[2]  # BREAK: a new chunk in both


def inpaint(manager, prompt: str, model: str, scene):
    init, mask = scene
    return manager.run(InpaintRequest(prompt=prompt, width=64, height=64, init_image=init, mask=mask,
                                      mode="inpainting model", inpaint_model=model,
                                      sampling=Sampling(scheduler="DDIM", steps=3, seed=2)))


def test_a_unet_lora_acts_on_the_sdxl_nine_channel_inpainting_unet(xl, models_dir, scene):
    model = str(models_dir / "inpaint" / "tiny-sdxl-inpaint")
    plain = pixels(inpaint(xl, "a red circle", model, scene))
    with_lora = inpaint(xl, "a red circle <lora:xl-unet-only:1>", model, scene)  # UNet half only: the 9-ch UNet's
    assert np.abs(pixels(with_lora) - plain).mean() > 0.5
    assert not any("does not fit" in n for n in with_lora.notes)
    assert np.array_equal(pixels(inpaint(xl, "a red circle <lora:xl-unet-only:0>", model, scene)), plain)
    assert np.array_equal(pixels(inpaint(xl, "a red circle", model, scene)), plain)


def test_a_unet_lora_acts_on_the_sd15_nine_channel_inpainting_unet_without_its_conv_in(models_dir, tiny_model_dir, scene):
    from pipelines.manager import PipelineManager

    catalog.configure(models_dir)
    try:
        m = PipelineManager(device="cpu")
        m.load_base(str(tiny_model_dir))
        model = str(models_dir / "inpaint" / "tiny-sd-inpaint")
        plain = pixels(inpaint(m, "a red circle", model, scene))
        # loaded before the inpainting UNet: it goes in when that UNet loads
        base_first = pixels(m.run(Txt2ImgRequest(prompt="x <lora:sd15-unet-conv-in:1>", width=64, height=64,
                                                 sampling=Sampling(steps=2, seed=1))))
        assert base_first.shape == (64, 64, 3)
        with_lora = inpaint(m, "a red circle <lora:sd15-unet-conv-in:1>", model, scene)
        assert np.abs(pixels(with_lora) - plain).mean() > 0.5
        unet = m._inpaint_unet[1]
        adapter = m.adapters.loras.slots["sd15-unet-conv-in"].adapter
        assert adapter in unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.lora_A
        assert not hasattr(unet.conv_in, "lora_A")  # 9 input channels: the base's conv_in LoRA is left out
        assert np.array_equal(pixels(inpaint(m, "a red circle <lora:sd15-unet-conv-in:0>", model, scene)), plain)
        assert np.array_equal(pixels(inpaint(m, "a red circle", model, scene)), plain)
    finally:
        catalog.configure(None)



def test_a_lora_on_the_fast_path_is_merged_into_the_inpainting_unet_too(models_dir, tiny_model_dir, scene):
    """With the fast path LoRAs are always merged in place: the 9-channel UNet's matching layers
    get the merge too (fused QKV refreshed), and its weights come back bit for bit afterwards."""
    from pipelines.fast_path import FastPath
    from pipelines.manager import PipelineManager
    from test_fast_path import FakeCompiler

    catalog.configure(models_dir)
    try:
        config = FastPath(compile="full", channels_last=False, fuse_qkv=True, compiler=FakeCompiler())
        m = PipelineManager(device="cpu", fast_path=config)
        m.load_base(str(tiny_model_dir))
        model = str(models_dir / "inpaint" / "tiny-sd-inpaint")
        plain = pixels(inpaint(m, "a red circle", model, scene))
        weights = {k: v.clone() for k, v in m._inpaint_unet[1].state_dict().items() if "lora_" not in k}
        with_lora = pixels(inpaint(m, "a red circle <lora:sd15-unet-conv-in:1>", model, scene))
        assert m.adapters.loras.fused is not None  # merged, not run as extra matmuls
        assert np.abs(with_lora - plain).mean() > 0.5
        assert np.array_equal(pixels(inpaint(m, "a red circle", model, scene)), plain)
        after = {k.replace(".base_layer", ""): v for k, v in m._inpaint_unet[1].state_dict().items() if "lora_" not in k}
        assert after.keys() == weights.keys() and all(torch.equal(after[k], v) for k, v in weights.items())
        assert m.fast_runtime.wait_idle(60)
    finally:
        catalog.configure(None)
