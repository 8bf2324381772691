"""SDXL in the running app (`python app.py` over HTTP): a tiny SDXL folder via --model, an SDXL
single file and an SD folder via the Models tab, each generating at the requested size."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import AppServer
from pipelines.core.metadata import infotext_to_fields, parse_infotext, read_infotext

pytestmark = pytest.mark.slow  # builds two tiny SDXLs and starts an app


@pytest.fixture(scope="module")
def xl_files(tmp_path_factory):
    from ldm_checkpoint_xl import save_xl_single_file
    from tiny_sdxl import save_tiny_xl_model, tiny_xl_pipeline

    root = tmp_path_factory.mktemp("xl-http")
    folder = save_tiny_xl_model(root / "tiny-sdxl")
    single = save_xl_single_file(tiny_xl_pipeline(seed=5), root / "tiny-sdxl-file.safetensors")
    return folder, single


@pytest.fixture(scope="module")
def xl_server(xl_files, tmp_path_factory):
    from tiny_sdxl_adapters import save_xl_embedding, save_xl_kohya_lora

    folder, _ = xl_files
    models = tmp_path_factory.mktemp("xl-models")  # an A1111 models folder with an SDXL LoRA and embedding
    save_xl_kohya_lora(models / "Lora" / "xl-lora.safetensors", scale=0.5)
    save_xl_embedding(models / "embeddings" / "xlword.safetensors")
    # The tiny architecture's configs for single files come from its folder (as for SD tests).
    server = AppServer(["--model", str(folder), "--single-file-config", str(folder), "--max-size", "256",
                        "--models-dir", str(models),
                        "--outputs-dir", str(tmp_path_factory.mktemp("xl-out"))],
                       log_path=tmp_path_factory.mktemp("xl-logs") / "app.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def txt2img(client, **kw):
    args = dict(prompt="a red circle", steps=3, seed=4, width=64, height=96)
    args.update(kw)
    _, gallery, notes, infotext = client.predict(**args, api_name="/txt2img")
    return Image.open(gallery[0]["image"]), infotext


SIZE_FIELDS = dict(original_width=16, original_height=24, target_width=48, target_height=40, crop_left=8, crop_top=16)


def test_img2img_and_inpaint_take_the_sdxl_size_fields_and_png_info_reads_them_back(xl_server, xl_files, tmp_path):
    client = Client(xl_server.url, verbose=False)
    client.predict(str(xl_files[0]), api_name="/load_model")  # whatever another test left loaded
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    init = dict(init_image=handle_file(str(tmp_path / "init.png")), strength=0.8)
    editor = {"background": handle_file(str(tmp_path / "init.png")), "layers": [], "composite": None}
    masked = dict(image_and_mask=editor, mask_image=handle_file(str(tmp_path / "mask.png")),
                  **{f"unit{n}_image": None for n in (1, 2, 3)})
    for endpoint, inputs in (("/img2img", init), ("/inpaint", masked)):
        images = []
        for sizes in ({}, SIZE_FIELDS):
            gallery = client.predict(prompt="a red circle", steps=3, seed=4, width=64, height=64, **inputs, **sizes,
                                     api_name=endpoint)[1]
            images.append(Image.open(gallery[0]["image"]))
        assert not np.array_equal(*map(np.asarray, images)), endpoint  # the fields reach the UNet in this tab too
        fields, notes = infotext_to_fields(parse_infotext(read_infotext(images[1])))
        assert {name: fields.get(name) for name in SIZE_FIELDS} == SIZE_FIELDS and notes == [], endpoint
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    for endpoint in ("/txt2img", "/img2img", "/inpaint", "/controlnet"):
        names = {p["parameter_name"] for p in api[endpoint]["parameters"]}
        assert set(SIZE_FIELDS) <= names, endpoint
        assert ("refiner" in names) is (endpoint == "/txt2img"), endpoint  # the refiner hands off in txt2img only


def test_an_sdxl_lora_and_embedding_over_http(xl_server, xl_files):
    client = Client(xl_server.url, verbose=False)
    client.predict(str(xl_files[0]), api_name="/load_model")  # whatever another test left loaded

    def pixels(prompt):
        return np.asarray(txt2img(client, prompt=prompt, height=64)[0], dtype=np.int16)

    plain = pixels("a red circle")
    assert np.abs(pixels("a red circle <lora:xl-lora:1>") - plain).mean() > 1.0
    assert np.array_equal(pixels("a red circle <lora:xl-lora:0>"), plain)
    assert np.array_equal(pixels("a red circle"), plain)  # no leftover weights between requests
    assert np.abs(pixels("a red circle xlword") - pixels("a red circle word")).mean() > 1.0


def test_an_sdxl_folder_via_model_generates_and_switches_through_the_models_tab(xl_server, xl_files, tiny_model_dir,
                                                                                 tmp_path):
    client = Client(xl_server.url, verbose=False)
    image, infotext = txt2img(client)
    assert image.size == (64, 96) and parse_infotext(read_infotext(image))["Size"] == "64x96"
    sent = dict(original_width=16, original_height=24, target_width=64, target_height=88, crop_left=8, crop_top=16)
    conditioned, _ = txt2img(client, **sent)
    assert not np.array_equal(np.asarray(image), np.asarray(conditioned))  # the SDXL fields reach the UNet
    fields, notes = infotext_to_fields(parse_infotext(read_infotext(conditioned)))
    assert {name: fields.get(name) for name in sent} == sent and notes == []  # PNG info reads them back

    Image.new("RGB", (64, 64), "white").save(tmp_path / "init.png")
    _, gallery, _, _ = client.predict(prompt="x", init_image=handle_file(str(tmp_path / "init.png")), strength=0.5,
                                      steps=4, width=64, height=64, api_name="/img2img")
    assert Image.open(gallery[0]["image"]).size == (64, 64)

    from tiny_sdxl import save_tiny_xl_refiner

    refiner = save_tiny_xl_refiner(tmp_path / "tiny-refiner")
    refined, infotext = txt2img(client, refiner=str(refiner), refiner_switch=0.5, height=64)
    assert refined.size == (64, 64) and "Refiner: tiny-refiner" in infotext and str(tmp_path) not in infotext

    _, single = xl_files
    info, status = client.predict(str(single), api_name="/load_model")
    assert "SDXL" in status and "single_file" in status and "MiB" in info
    assert txt2img(client, width=80, height=64)[0].size == (80, 64)

    info, status = client.predict(str(tiny_model_dir), api_name="/load_model")
    assert "(SD," in status
    image, infotext = txt2img(client, width=64, height=64, original_width=16)
    assert image.size == (64, 64) and "Original width" not in infotext  # SD has no size conditioning


def test_the_sdxl_fields_show_only_with_an_sdxl_model(xl_server, app_server):
    import httpx

    def components(server):
        config = httpx.get(server.url + "config", timeout=30).json()
        return {c["props"].get("elem_id"): c["props"] for c in config["components"] if c["props"].get("elem_id")}

    xl, sd = components(xl_server), components(app_server)
    for tab in ("txt2img", "img2img", "inpaint", "controlnet"):
        assert xl[f"{tab}_sdxl"]["visible"] is True and sd[f"{tab}_sdxl"]["visible"] is False, tab
        assert xl[f"{tab}_width"]["value"] == 64, tab  # the tiny SDXL's native size (its UNet's sample size × 8)
        assert f"{tab}_original_width" in xl and f"{tab}_crop_top" in xl, tab
    assert "txt2img_refiner" in xl and not any(f"{tab}_refiner" in xl for tab in ("img2img", "inpaint", "controlnet"))
