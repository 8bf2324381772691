"""The shipped demo LoRA, demo embedding and a VAE choice, over HTTP on the real server
(`python app.py` on the embedded demo model, a models folder with one extra VAE):
<lora:demo-heart:1> teaches the model hearts (read back from pixels on held-out captions),
weight 0 and a later request without the tag are the plain image bit for bit, the word
demo-sun draws what it was trained to mean, and the VAE is chosen per request and read back."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from pipelines.core.metadata import parse_infotext, read_infotext
from tiny_adapters import save_vae_folder
from training import adapters as demo, data, models

pytestmark = pytest.mark.skipif(not (models.MODELS_DIR / "Lora" / f"{demo.LORA_NAME}.safetensors").is_file(),
                                reason="demo LoRA not present")
STEPS, CFG = 20, 5.0  # what docs/models.md measured with
# docs/models.md: on 24 held-out heart captions (these 8 first, same seeds) the LoRA lifts the
# heart read-back from 0.00 to 1.00; the test asks for a lift of at least 0.75 (6 of 8).
HEART_CASES = 8
MARGIN = 0.75


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import AppServer

    models_dir = tmp_path_factory.mktemp("models")
    save_vae_folder(models_dir / "VAE" / "demo-vae-changed", models.MODELS_DIR / models.BASE)
    server = AppServer(["--models-dir", str(models_dir), "--no-save-outputs", "--max-size", "256"],
                       log_path=tmp_path_factory.mktemp("logs") / "app.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url, verbose=False)


def txt2img(client, prompt: str, seed: int = 0, vae: str = "Automatic", negative: str = ""):
    _, gallery, _, infotext = client.predict(prompt=prompt, negative_prompt=negative, scheduler="DDIM", steps=STEPS,
                                             cfg=True, cfg_scale=CFG, seed=seed, width=128, height=128, vae=vae,
                                             api_name="/txt2img")
    path = gallery[0]["image"]
    return np.asarray(Image.open(path).convert("RGB")), infotext, path


def test_demo_lora_draws_hearts_its_weight_zero_and_absence_are_the_plain_model(client):
    hearts = demo.READ_NAMES.index(demo.HEART)
    with_lora, without = [], []
    for index, (caption, truth) in enumerate(demo.heart_probes(HEART_CASES)):
        plain, plain_info, _ = txt2img(client, caption, seed=index)
        lora, info, _ = txt2img(client, f"{caption} <lora:{demo.LORA_NAME}:1>", seed=index)
        without.append(demo.read(plain).shape == hearts)
        with_lora.append(demo.read(lora).shape == hearts)
        if index == 0:
            assert (np.abs(lora.astype(int) - plain).max(-1) > 40).sum() > 30  # the object's outline moved
            zero, _, _ = txt2img(client, f"{caption} <lora:{demo.LORA_NAME}:0>", seed=index)
            assert np.array_equal(zero, plain), "<lora:demo-heart:0> must be the plain prompt bit for bit"
            params = parse_infotext(info)
            assert params["Prompt"].endswith(f"<lora:{demo.LORA_NAME}:1>")
            assert params["Lora hashes"].startswith(f"{demo.LORA_NAME}: ") and "Lora hashes" not in plain_info
            # the next request has no tag: the plain image again, with no LoRA left behind
            again, _, _ = txt2img(client, caption, seed=index)
            assert np.array_equal(again, plain)
    assert np.mean(with_lora) - np.mean(without) >= MARGIN, (with_lora, without)


def test_demo_embedding_word_draws_the_sun_it_stands_for(client):
    sun_hits = 0
    for seed, background in enumerate(demo.SUN_HELDOUT_BACKGROUNDS):
        image, info, _ = txt2img(client, f"{demo.EMBEDDING_NAME} on {data.article(background)} {background} background",
                                 seed=seed)
        r = demo.read(image)
        sun_hits += (data.COLOUR_NAMES[r.colour] == "yellow" and demo.READ_NAMES[r.shape] == "circle"
                     and data.POSITIONS[r.position][0] == demo.SUN[3])
        assert parse_infotext(info)["TI hashes"].startswith(f"{demo.EMBEDDING_NAME}: ")
    assert sun_hits >= 2


def test_vae_choice_changes_the_image_and_png_info_reads_it_back(client):
    caption = "a large red circle on a white background"
    plain, _, _ = txt2img(client, caption)
    changed, info, path = txt2img(client, caption, vae="demo-vae-changed")
    after, _, _ = txt2img(client, caption)
    assert np.abs(changed.astype(int) - plain).mean() > 2
    assert np.array_equal(after, plain)
    assert parse_infotext(info)["VAE"] == "demo-vae-changed"
    _, parsed = client.predict(handle_file(path), api_name="/png_info")
    assert parsed["VAE"] == "demo-vae-changed" and parse_infotext(read_infotext(Image.open(path)))["VAE"] == "demo-vae-changed"


def test_unknown_vae_or_lora_over_http_is_a_message_and_the_server_keeps_serving(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Unknown VAE"):
        txt2img(client, "a red circle", vae="../../etc/passwd")
    with pytest.raises(AppError, match="Unknown LoRA"):
        txt2img(client, "a red circle <lora:../secret:1>")
    assert txt2img(client, "a red circle")[0].shape == (128, 128, 3)
