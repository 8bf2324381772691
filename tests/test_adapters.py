"""Users' own models on a tiny SD model: the catalogue of an A1111 models folder, LoRAs
(kohya and diffusers/PEFT files) switched per request with no leftovers, textual-inversion
embeddings as prompt words, a VAE per request, and their A1111 infotext."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.core import catalog
from pipelines.core.errors import RequestError, StudioError
from pipelines.core.metadata import infotext_to_fields, parse_infotext
from pipelines.core.requests import Sampling, Txt2ImgRequest
from pipelines.core.schedulers import SCHEDULER_NAMES
from tiny_adapters import (save_diffusers_lora, save_embedding, save_kohya_lora, save_vae_file, save_vae_folder)


@pytest.fixture(scope="module")
def models_dir(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("a1111-models")
    save_kohya_lora(root / "Lora" / "tiny-kohya.safetensors", tiny_model_dir, seed=0)
    save_kohya_lora(root / "Lora" / "styles" / "tiny-second.safetensors", tiny_model_dir, seed=5)
    save_diffusers_lora(root / "Lora" / "tiny-peft", tiny_model_dir, seed=1)
    (root / "Lora" / "broken.safetensors").write_bytes(b"not a safetensors file")
    save_embedding(root / "embeddings" / "tinyword.pt", dim=32, vectors=2, fmt="a1111")
    save_embedding(root / "embeddings" / "tinyword2.safetensors", dim=32, vectors=1, fmt="diffusers")
    save_embedding(root / "embeddings" / "wrongdim.pt", dim=768, vectors=1, fmt="a1111")
    save_vae_folder(root / "VAE" / "tiny-vae-folder", tiny_model_dir)
    save_vae_file(root / "VAE" / "tiny-vae.safetensors", tiny_model_dir)
    (root / "Stable-diffusion").mkdir()
    os.symlink(tiny_model_dir, root / "Stable-diffusion" / "tiny-sd")
    return root


@pytest.fixture(scope="module")
def adapter_manager(models_dir, tiny_model_dir):
    from pipelines.manager import PipelineManager

    catalog.configure(models_dir)
    m = PipelineManager(device="cpu")
    m.load_base("tiny-sd")  # a catalogue name
    yield m
    catalog.configure(None)


def generate(manager, prompt: str, negative: str = "", vae: str = "Automatic", seed: int = 4):
    request = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, width=64, height=64, vae=vae,
                             sampling=Sampling(scheduler="DDIM", steps=3, seed=seed))
    result = manager.run(request)
    return np.asarray(result.images[0].image).astype(np.int16), result.images[0].infotext


def test_catalogue_lists_every_kind_by_short_name_and_resolves_names_only(models_dir):
    cat = catalog.scan(models_dir)
    assert {"tiny-kohya", "styles/tiny-second", "tiny-peft", "broken"} <= set(cat.names("lora"))
    assert {"tinyword", "tinyword2", "wrongdim"} <= set(cat.names("embedding"))
    assert {"tiny-vae-folder", "tiny-vae"} <= set(cat.names("vae"))
    assert "tiny-sd" in cat.names("checkpoint")
    # the embedded demo family is always there
    assert "demo" in cat.names("checkpoint") and "demo-inpaint" in cat.names("inpaint")
    assert {"demo-controlnet-canny", "demo-controlnet-pose"} <= set(cat.names("controlnet"))
    assert cat.resolve("lora", "tiny-kohya") == str(models_dir / "Lora" / "tiny-kohya.safetensors")
    assert cat.resolve("lora", "tiny-peft").endswith("pytorch_lora_weights.safetensors")
    assert cat.resolve("lora", "/etc/passwd") is None and cat.resolve("vae", "../VAE/tiny-vae") is None
    assert cat.resolve("nonsense-kind", "x") is None


def test_catalogue_takes_the_hub_cache_revision_refs_main_points_at(tmp_path, monkeypatch):
    repo = tmp_path / "hub" / "models--someone--tiny-controlnet"
    for commit, cls in (("0000aaaa", "ControlNetModel"), ("ffff9999", "UNet2DConditionModel")):
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True)
        (snap / "config.json").write_text('{"_class_name": "%s"}' % cls)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0000aaaa")  # main is the alphabetically *first* snapshot
    (repo / "blobs").mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cat = catalog.scan(tmp_path / "no-models-here")
    assert cat.resolve("controlnet", "someone/tiny-controlnet") == "someone/tiny-controlnet"


def test_lora_changes_the_image_and_leaves_nothing_behind(adapter_manager):
    plain, plain_info = generate(adapter_manager, "a red circle")
    with_lora, info = generate(adapter_manager, "a red circle <lora:tiny-kohya:1>")
    zero, _ = generate(adapter_manager, "a red circle <lora:tiny-kohya:0>")
    after, _ = generate(adapter_manager, "a red circle")
    assert np.abs(with_lora - plain).mean() > 1.0
    assert np.array_equal(zero, plain), "weight 0 must be the plain model, bit for bit"
    assert np.array_equal(after, plain), "a request without the tag must not see the previous request's LoRA"
    slot = adapter_manager.adapters.loras.slots["tiny-kohya"]
    assert set(slot.parts) == {"unet", "text_encoder"}  # kohya's lora_te_ part went into the text encoder
    params = parse_infotext(info)
    assert params["Prompt"] == "a red circle <lora:tiny-kohya:1>"  # A1111 keeps the tags in the prompt
    assert params["Lora hashes"] == f"tiny-kohya: {slot.hash}" and len(slot.hash) == 12
    assert "Lora hashes" not in parse_infotext(plain_info)


def test_lora_weight_scales_its_effect_and_several_add_up(adapter_manager):
    plain, _ = generate(adapter_manager, "a red circle")
    half, _ = generate(adapter_manager, "a red circle <lora:tiny-kohya:0.5>")
    full, _ = generate(adapter_manager, "a red circle <lora:tiny-kohya:1>")
    both, info = generate(adapter_manager, "a red circle <lora:tiny-kohya:1> <lora:styles/tiny-second:0.7>")
    negative, _ = generate(adapter_manager, "a red circle", negative="<lora:tiny-kohya:1>")
    assert 0 < np.abs(half - plain).mean() < np.abs(full - plain).mean()
    assert not np.array_equal(both, full)
    assert np.array_equal(negative, full), "a LoRA in the negative prompt acts on the whole network, as in A1111"
    assert parse_infotext(info)["Lora hashes"].count(":") == 2


def test_diffusers_peft_lora_folder_loads_too(adapter_manager):
    plain, _ = generate(adapter_manager, "a red circle")
    peft, _ = generate(adapter_manager, "a red circle <lora:tiny-peft:1>")
    assert np.abs(peft - plain).mean() > 1.0
    assert set(adapter_manager.adapters.loras.slots["tiny-peft"].parts) == {"unet", "text_encoder"}


def test_unknown_or_broken_lora_is_a_clear_message_and_the_app_keeps_serving(adapter_manager):
    plain, _ = generate(adapter_manager, "a red circle")
    with pytest.raises(RequestError, match="Unknown LoRA “nope”"):
        generate(adapter_manager, "a red circle <lora:nope:1>")
    with pytest.raises(StudioError, match="LoRA “broken” could not be loaded") as error:
        generate(adapter_manager, "<lora:broken:1> a red circle")
    assert "/" not in str(error.value).split("loaded:")[1]  # no server paths in the message
    with pytest.raises(RequestError, match="not a number"):
        Txt2ImgRequest(prompt="<lora:tiny-kohya:abc>")
    assert np.array_equal(generate(adapter_manager, "a red circle")[0], plain)


def test_embedding_word_in_the_prompt_is_the_embedding(adapter_manager):
    report = adapter_manager.adapters.embeddings
    assert {"tinyword", "tinyword2"} <= set(report.loaded)
    assert "wrongdim" in report.failed  # a 768-wide SD 1.5 embedding does not fit a 32-wide encoder
    plain, _ = generate(adapter_manager, "a red circle")
    word, info = generate(adapter_manager, "a red circle tinyword")
    word2, _ = generate(adapter_manager, "a red circle", negative="tinyword2")
    assert np.abs(word - plain).mean() > 0.5 and not np.array_equal(word2, plain)
    assert parse_infotext(info)["TI hashes"] == f"tinyword: {report.loaded['tinyword']}"
    # the word is the embedding, not its BPE pieces
    tokenizer = adapter_manager.pipeline("txt2img").tokenizer
    assert "tinyword" in tokenizer.get_added_vocab()


@pytest.mark.parametrize("vae", ["tiny-vae-folder", "tiny-vae"])
def test_vae_choice_changes_the_decode_only_for_that_request(adapter_manager, vae):
    plain, _ = generate(adapter_manager, "a red circle")
    chosen, info = generate(adapter_manager, "a red circle", vae=vae)
    after, _ = generate(adapter_manager, "a red circle")
    assert np.abs(chosen - plain).mean() > 1.0
    assert np.array_equal(after, plain)
    params = parse_infotext(info)
    assert params["VAE"] == vae and len(params["VAE hash"]) == 10
    assert infotext_to_fields(params, SCHEDULER_NAMES)[0]["vae"] == vae
    report = adapter_manager.memory_report()
    assert vae in report["vaes"] and report["vae_bytes"] > 0
    assert adapter_manager.pipeline("txt2img").vae is adapter_manager.pipeline("img2img").vae  # own VAE back, shared


def test_unknown_vae_is_a_clear_message(adapter_manager):
    with pytest.raises(RequestError, match="Unknown VAE “/etc/passwd”"):
        generate(adapter_manager, "a red circle", vae="/etc/passwd")


def test_lora_layers_add_little_memory_and_copy_no_base_weight(adapter_manager):
    generate(adapter_manager, "a red circle <lora:tiny-kohya:1>")
    report = adapter_manager.memory_report()
    assert 0 < report["lora_bytes"] < 0.2 * report["base_bytes"]
    unet = adapter_manager.pipeline("txt2img").unet
    assert unet is adapter_manager.pipeline("img2img").unet


def test_refresh_picks_up_a_new_embedding(adapter_manager, models_dir):
    save_embedding(models_dir / "embeddings" / "lateword.pt", dim=32, vectors=1, seed=9)
    adapter_manager.refresh_models()
    assert "lateword" in adapter_manager.adapters.embeddings.loaded
    plain, _ = generate(adapter_manager, "a red circle")
    assert not np.array_equal(generate(adapter_manager, "a red circle lateword")[0], plain)
