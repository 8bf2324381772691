"""The AUTOMATIC1111-compatible REST API (--api) over real HTTP, on a started app server:
same pixels as the UI, inpainting, ControlNet units, progress/interrupt/skip, options, PNG
info, errors, login, and a published A1111 client library (webuiapi) used unchanged."""
from __future__ import annotations

import base64
import io
import json
import shutil
import struct
import threading
import time
import zlib

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import AppServer

USER, PASSWORD = "alice", "wonderland"
AUTH = (USER, PASSWORD)
CONTROLNET_ID = "test/tiny-controlnet"  # the tiny ControlNet, found in the server's Hub cache


def hub_cache(root, repo_id: str, folder):
    """folder laid out as a cached Hub snapshot, so the server's catalogue lists it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(folder, repo / "snapshots" / ("0" * 40))


@pytest.fixture(scope="module")
def api_server(tiny_model_dir, tiny_controlnet_dir, tmp_path_factory):
    cache = tmp_path_factory.mktemp("hub")
    hub_cache(cache, CONTROLNET_ID, tiny_controlnet_dir)
    outputs = tmp_path_factory.mktemp("api-outputs")
    styles = tmp_path_factory.mktemp("styles") / "styles.csv"
    styles.write_text('name,prompt,negative_prompt\nCinematic,"{prompt}, film grain",blurry\n')
    server = AppServer(["--model", str(tiny_model_dir), "--outputs-dir", str(outputs), "--max-size", "256",
                        "--max-batch-size", "4", "--max-upload-megapixels", "0.25", "--max-prompt-chars", "500", "--styles-file", str(styles), "--api", "--api-auth", f"{USER}:{PASSWORD}"],
                       env={"HF_HUB_CACHE": str(cache)}, log_path=tmp_path_factory.mktemp("logs") / "api.log")
    try:
        server.wait_ready()
        server.outputs_dir = outputs
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(api_server):
    with httpx.Client(base_url=api_server.url.rstrip("/"), auth=AUTH, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def ui(api_server):
    return Client(api_server.url, verbose=False)


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unb64(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def pixels(image) -> np.ndarray:
    return np.asarray(Image.open(image) if isinstance(image, str) else image.convert("RGB"))


def txt2img(api, **fields):
    body = dict(prompt="a red circle", steps=6, width=64, height=64, seed=5, sampler_name="Euler a", cfg_scale=7) | fields
    response = api.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    return data, json.loads(data["info"])


UI_T2I = ["a red circle", "", "Euler a", 6, True, 7, 0, 5, 1, 1, 64, 64]  # the txt2img tab's inputs, in order


def test_txt2img_returns_the_same_pixels_as_the_ui_tab(api, ui):
    data, info = txt2img(api)
    gallery, infotext = ui.predict(*UI_T2I, api_name="/txt2img")[1::2]
    assert np.array_equal(pixels(unb64(data["images"][0])), pixels(gallery[0]["image"]))
    assert info["infotexts"][0] == infotext and info["seed"] == 5 and info["all_seeds"] == [5]
    assert "Seed: 5" in unb64(data["images"][0]).info["parameters"]  # the PNG carries its parameters


def test_sampler_and_separate_scheduler_field_match_the_old_combined_name(api, ui):
    new, _ = txt2img(api, sampler_name="DPM++ 2M", scheduler="Karras")
    old, info = txt2img(api, sampler_name="DPM++ 2M Karras")
    gallery = ui.predict(*UI_T2I[:2], "DPM++ 2M Karras", *UI_T2I[3:], api_name="/txt2img")[1]
    assert new["images"][0] == old["images"][0]
    assert np.array_equal(pixels(unb64(new["images"][0])), pixels(gallery[0]["image"]))
    assert info["sampler_name"] == "DPM++ 2M Karras"


def test_inpainting_through_img2img_keeps_every_pixel_outside_the_mask(api):
    init = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    body = dict(prompt="a blue square", init_images=[b64(init)], mask=b64(Image.fromarray(mask)), steps=6, width=64,
                height=64, seed=3, denoising_strength=0.9, mask_blur=4, inpainting_fill=1, inpaint_full_res=False,
                sampler_name="Euler")
    response = api.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    result, original = pixels(unb64(response.json()["images"][0])), pixels(init)
    outside = mask == 0
    assert np.array_equal(result[outside], original[outside])
    assert np.abs(result[~outside].astype(int) - original[~outside]).mean() > 5
    assert "Inpaint mode: RePaint" in json.loads(response.json()["info"])["infotexts"][0]


def test_unknown_fields_are_ignored_and_said(api):
    _, info = txt2img(api, steps=2, my_extension_field=3, override_settings={"some_extension_option": True})
    assert "Ignored (unknown here): field my_extension_field, override setting some_extension_option." in info["sd_studio"]["notes"]


def test_repaint_extras_reach_the_request(api):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    body = dict(init_images=[b64(init)], mask=b64(mask), steps=4, width=64, height=64, seed=1, sampler_name="DDIM",
                inpaint_full_res=False, script_name="repaint", script_args=[2, 1], cfg=False, eta=0.5)
    infotext = json.loads(api.post("/sdapi/v1/img2img", json=body).json()["info"])["infotexts"][0]
    assert "RePaint r: 2" in infotext and "CFG: off" in infotext and "Eta: 0.5" in infotext


@pytest.fixture(scope="module")
def control_image():
    return Image.fromarray(np.kron(np.eye(4)[:, :, None] * 255, np.ones((16, 16, 3))).astype(np.uint8))


def test_a_controlnet_unit_changes_the_image_as_the_ui_unit_does(api, ui, control_image, tmp_path):
    unit = dict(image=b64(control_image), module="canny", model=CONTROLNET_ID, weight=1.0, threshold_a=50,
                threshold_b=150, guidance_start=0.0, guidance_end=1.0, control_mode=0, resize_mode="Crop and Resize",
                processor_res=512, pixel_perfect=False)
    fields = dict(prompt="a red square", sampler_name="Euler", steps=5, seed=9)
    controlled, info = txt2img(api, **fields, alwayson_scripts={"controlnet": {"args": [unit]}})
    plain, _ = txt2img(api, **fields)
    assert controlled["images"][0] != plain["images"][0]
    control_image.save(tmp_path / "control.png")
    on = dict(enabled=True, image=handle_file(str(tmp_path / "control.png")), preprocessor="canny", low=50, high=150,
              model=CONTROLNET_ID, weight=1.0, start=0.0, end=1.0)
    gallery = ui.predict(prompt="a red square", scheduler="Euler", steps=5, cfg_scale=7, seed=9, width=64, height=64,
                         **{f"unit1_{name}": value for name, value in on.items()}, init_image=None, unit2_image=None, unit3_image=None,
                         api_name="/controlnet")[1]
    assert np.array_equal(pixels(unb64(controlled["images"][0])), pixels(gallery[0]["image"]))
    assert 'Module: canny' in info["infotexts"][0]


def test_controlnet_lists_and_detect(api, control_image):
    assert CONTROLNET_ID in api.get("/controlnet/model_list").json()["model_list"]
    assert {"none", "canny", "openpose"} <= set(api.get("/controlnet/module_list").json()["module_list"])
    response = api.post("/controlnet/detect", json={"controlnet_module": "canny", "controlnet_input_images": [b64(control_image)],
                                                    "controlnet_threshold_a": 50, "controlnet_threshold_b": 150})
    edges = pixels(unb64(response.json()["images"][0]))
    assert edges.shape[:2] == (64, 64) and 0 < (edges > 0).mean() < 0.5


def wait_for(predicate, api, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = api.get("/sdapi/v1/progress").json()
        if predicate(state):
            return state
        time.sleep(0.05)
    raise TimeoutError("the job never got there")


def in_background(api, **fields):
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(zip(("data", "info"), txt2img(api, **fields))))
    thread.start()
    return thread, outcome


def test_progress_reports_a_running_job_and_interrupt_stops_it(api):
    assert api.get("/sdapi/v1/progress").json()["state"]["job"] == ""
    thread, outcome = in_background(api, steps=150, n_iter=4, sampler_name="Euler")
    state = wait_for(lambda s: s["state"]["sampling_step"] >= 2, api)
    assert state["state"]["job"] == "txt2img" and state["state"]["sampling_steps"] == 150 and 0 < state["progress"] < 1
    assert state["current_image"] is not None and unb64(state["current_image"]).size == (64, 64)
    assert api.post("/sdapi/v1/interrupt").status_code == 200
    thread.join(60)
    notes = outcome["info"]["sd_studio"]["notes"]
    assert outcome["info"]["sd_studio"]["interrupted"] and any("Interrupted at step" in n for n in notes)
    assert len(outcome["data"]["images"]) == 1  # the image so far; the later batches never ran
    assert api.get("/sdapi/v1/progress").json()["state"]["job"] == ""


def test_skip_ends_the_current_batch_and_the_job_goes_on(api):
    thread, outcome = in_background(api, steps=150, n_iter=2, sampler_name="Euler")
    wait_for(lambda s: s["state"]["job_no"] == 0 and s["state"]["sampling_step"] >= 2, api)
    assert api.post("/sdapi/v1/skip").status_code == 200
    thread.join(60)
    assert len(outcome["data"]["images"]) == 2 and not outcome["info"]["sd_studio"]["interrupted"]
    assert any("Skipped at step" in note for note in outcome["info"]["sd_studio"]["notes"])


def test_options_switch_the_model(api):
    names = [model["title"] for model in api.get("/sdapi/v1/sd-models").json()]
    start = api.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert start in names and "demo" in names
    assert api.post("/sdapi/v1/options", json={"sd_model_checkpoint": "demo"}).status_code == 200
    try:
        assert api.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "demo"
        assert "Model: demo" in txt2img(api, steps=2)[1]["infotexts"][0]
    finally:
        api.post("/sdapi/v1/options", json={"sd_model_checkpoint": start})
    assert api.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == start


def test_options_eta_ddim_is_the_default_eta_of_later_requests(api):
    assert api.post("/sdapi/v1/options", json={"eta_ddim": 0.5}).status_code == 200
    try:
        assert api.get("/sdapi/v1/options").json()["eta_ddim"] == 0.5
        assert "Eta: 0.5" in txt2img(api, sampler_name="DDIM", steps=2)[1]["infotexts"][0]
        assert "Eta: 0.25" in txt2img(api, sampler_name="DDIM", steps=2, eta=0.25)[1]["infotexts"][0]  # the field wins
    finally:
        api.post("/sdapi/v1/options", json={"eta_ddim": 0})
    assert api.post("/sdapi/v1/options", json={"eta_ddim": 7}).status_code == 422


def test_png_info_reads_back_a_generated_image(api):
    data, _ = txt2img(api, prompt="a blue star", seed=21, negative_prompt="blurry")
    info = api.post("/sdapi/v1/png-info", json={"image": data["images"][0]}).json()
    assert info["info"].startswith("a blue star\nNegative prompt: blurry\nSteps: 6")
    assert info["parameters"]["Seed"] == "21" and info["parameters"]["Sampler"] == "Euler a"


def png_claiming(width: int, height: int) -> str:
    """A small PNG whose header claims a huge size (a decompression bomb's first bytes)."""
    data = bytearray(io.BytesIO().getvalue())
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return base64.b64encode(bytes(data)).decode()


@pytest.mark.parametrize("path, body, status, message", [
    ("txt2img", '{"steps": NaN}', 422, "NaN"),
    ("txt2img", '{"cfg_scale": Infinity}', 422, "Infinity"),
    ("txt2img", '{"steps": "many"}', 422, "steps"),
    ("txt2img", '{"width": 64, "height": 64, "sampler_name": "Karras 9000"}', 422, "Unknown sampler"),
    ("txt2img", '{"width": 64, "height": 64, "sampler_name": "Euler", "scheduler": "Karras"}', 422, "not offered"),
    ("txt2img", '{"width": 4096, "height": 64}', 422, "limit of 256"),
    ("txt2img", '{"width": 64, "height": 64, "steps": 500}', 422, "steps 500 is over"),
    ("txt2img", '{"width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "/etc/passwd"}}', 422, "Unknown model"),
    ("img2img", '{"width": 64, "height": 64, "init_images": ["%s"], "enable_hr": true}' % b64(Image.new("RGB", (8, 8))), 422,
     "Hires fix is a txt2img option"),
    ("txt2img", '{"width": 64, "height": 64, "enable_hr": true, "hr_prompt": "other"}', 422, "separate hires prompt"),
    ("txt2img", '{"width": 64, "height": 64, "enable_hr": true, "hr_scale": 8}', 422, "hires width (hr_scale, hr_resize_x) 512 is over"),
    ("txt2img", '{"width": 64, "height": 64, "styles": ["Nope"]}', 422, "Unknown style"),
    ("txt2img", '{"width": 64, "height": 64, "override_settings": {"sd_vae": "other.vae.pt"}}', 422, "VAE"),
    ("txt2img", '{"width": 64, "height": 64, "alwayson_scripts": {"controlnet": {"args": [{"module": "canny", "model": "/x"}]}}}',
     422, "needs an image"),
    ("txt2img", '{"width": 64, "height": 64, "prompt": "%s"}' % ("red " * 200), 422, "prompt (characters)"),
    ("img2img", '{"width": 64, "height": 64}', 422, "init_images"),
    ("img2img", '{"width": 64, "height": 64, "init_images": ["not base64!"]}', 422, "base64"),
    ("img2img", '{"width": 64, "height": 64, "init_images": ["http://example.com/a.png"]}', 422, "does not fetch URLs"),
    ("img2img", '{"width": 64, "height": 64, "init_images": ["%s"]}' % png_claiming(60000, 60000), 422, "megapixels"),
    ("img2img", '{"width": 64, "height": 64, "init_images": ["%s"]}' % png_claiming(1000, 1000), 422, "megapixels"),
    ("img2img", '{"width": 64, "height": 64, "inpaint_model": "/etc"}', 422, "Unknown inpaint_model"),
    ("png-info", '{"image": 5}', 422, "image"),
    ("png-info", '{"image": "aGVsbG8gd29ybGQ="}', 422, "not an image"),
    ("txt2img", "{", 422, "not valid JSON"),
])
def test_bad_requests_get_a_4xx_json_message_and_the_server_keeps_serving(api, path, body, status, message):
    response = api.post(f"/sdapi/v1/{path}", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    detail = response.json()["detail"]
    assert isinstance(detail, str) and message in detail
    assert "Traceback" not in detail and "/tmp" not in detail and "Error:" not in detail


def test_a_body_over_the_cap_is_refused_before_it_is_read(api_server):
    import socket

    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    with socket.create_connection(("127.0.0.1", api_server.port), timeout=30) as connection:
        connection.sendall((f"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n"
                            "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n{").encode())
        reply = ""
        while "larger than" not in reply and (chunk := connection.recv(65536)):
            reply += chunk.decode()
    assert reply.startswith("HTTP/1.1 413") and "larger than" in reply


def test_the_api_needs_the_login_and_the_ui_does_not(api_server, ui):
    base = api_server.url.rstrip("/")
    assert httpx.get(f"{base}/sdapi/v1/options").status_code == 401
    assert httpx.get(f"{base}/sdapi/v1/options", auth=(USER, "wrong")).status_code == 401
    assert httpx.get(f"{base}/internal/ping").status_code == 200
    assert "/sdapi/v1/txt2img" in httpx.get(f"{base}/openapi.json").json()["paths"]
    assert httpx.get(f"{base}/docs").status_code == 200
    assert len(ui.predict(*UI_T2I, api_name="/txt2img")[1]) == 1  # Gradio's own API is untouched


def test_the_webuiapi_client_library_drives_the_api_unchanged(api_server, control_image):
    import webuiapi

    client = webuiapi.WebUIApi(host="127.0.0.1", port=api_server.port, username=USER, password=PASSWORD,
                               sampler="Euler a", steps=6)
    assert "Euler a" in client.util_get_sampler_names() and "Karras" in [s["label"] for s in client.get_schedulers()]
    assert client.util_get_current_model() in client.util_get_model_names()
    result = client.txt2img(prompt="a red circle", seed=5, width=64, height=64, cfg_scale=7)
    assert result.image.size == (64, 64) and result.info["seed"] == 5
    assert client.png_info(result.image).parameters["Seed"] == "5"
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = client.img2img(images=[result.image], mask_image=mask, inpainting_fill=1, inpaint_full_res=False,
                               denoising_strength=0.8, seed=2, width=64, height=64)
    assert np.array_equal(pixels(inpainted.image)[:16], pixels(result.image)[:16])
    unit = webuiapi.ControlNetUnit(image=control_image, module="canny", model=CONTROLNET_ID, threshold_a=50, threshold_b=150)
    controlled = client.txt2img(prompt="a red square", seed=9, width=64, height=64, controlnet_units=[unit])
    assert "ControlNet 0" in controlled.info["infotexts"][0]
    assert client.get_progress()["state"]["job"] == ""
    client.interrupt()
    client.skip()


def test_a_controlnet_unit_without_an_image_uses_the_img2img_init_image(api, control_image):
    unit = dict(module="canny", model=CONTROLNET_ID, threshold_a=50, threshold_b=150)
    body = dict(prompt="a red square", init_images=[b64(control_image)], steps=4, width=64, height=64, seed=4,
                denoising_strength=0.6, alwayson_scripts={"ControlNet": {"args": [unit]}})
    response = api.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "ControlNet 0" in infotext and "Denoising strength: 0.6" in infotext


def test_the_api_package_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, api, api.routes, api.convert, api.http; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=__import__("conftest").ROOT)


def test_api_flags_and_environment(monkeypatch):
    from api.http import parse_accounts
    from settings import Settings

    monkeypatch.setenv("SD_STUDIO_API", "1")
    settings = Settings.from_args(["--api-auth", "alice:pa:ss,bob:x"])
    assert settings.api is True and parse_accounts(settings.api_auth) == [("alice", "pa:ss"), ("bob", "x")]
    assert Settings.from_args(["--no-api"]).api is False
    with pytest.raises(ValueError):
        parse_accounts("no-colon")


def test_hires_fix_and_variation_seeds_through_the_api(api):
    data, info = txt2img(api, sampler_name="Euler", enable_hr=True, hr_scale=2, hr_upscaler="Latent (nearest)",
                         hr_second_pass_steps=3, denoising_strength=0.5, subseed=77, subseed_strength=0.5)
    assert unb64(data["images"][0]).size == (128, 128)
    assert info["subseed"] == 77 and info["subseed_strength"] == 0.5 and info["denoising_strength"] == 0.5
    assert "Hires upscale: 2, Hires steps: 3, Hires upscaler: Latent (nearest)" in info["infotexts"][0]
    plain, _ = txt2img(api, sampler_name="Euler", seed=77)
    full, _ = txt2img(api, sampler_name="Euler", subseed=77, subseed_strength=1, seed_resize_from_w=-1)
    assert np.array_equal(pixels(unb64(plain["images"][0])), pixels(unb64(full["images"][0])))  # the variation seed's image
    assert {"name": "Latent (nearest)"} in api.get("/sdapi/v1/latent-upscale-modes").json()
    assert "Lanczos" in [u["name"] for u in api.get("/sdapi/v1/upscalers").json()]


def test_prompt_styles_from_the_hosts_styles_file_apply_by_name(api):
    assert api.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "Cinematic", "prompt": "{prompt}, film grain", "negative_prompt": "blurry"}]
    _, info = txt2img(api, steps=2, prompt="a cat", negative_prompt="ugly", styles=["Cinematic"])
    assert info["prompt"] == "a cat, film grain" and info["negative_prompt"] == "ugly, blurry"


def test_turbo_field_reaches_the_image_and_an_unknown_mode_is_a_422(api):
    plain, _ = txt2img(api, steps=4)
    fast, info = txt2img(api, steps=4, turbo="DeepCache 2")
    assert "Turbo: DeepCache 2" in info["infotexts"][0]
    assert not np.array_equal(pixels(unb64(fast["images"][0])), pixels(unb64(plain["images"][0])))
    response = api.post("/sdapi/v1/txt2img", json={"prompt": "a", "turbo": "DeepCache 9"})
    assert response.status_code == 422 and "Unknown turbo 'DeepCache 9'" in response.text


def test_token_merging_ratio_from_override_settings_reaches_the_image_and_a_bad_one_is_a_422(api):
    plain, _ = txt2img(api, steps=4)
    merged, info = txt2img(api, steps=4, override_settings={"token_merging_ratio": 0.5})
    assert "Token merging ratio: 0.5" in info["infotexts"][0]
    assert not np.array_equal(pixels(unb64(merged["images"][0])), pixels(unb64(plain["images"][0])))
    response = api.post("/sdapi/v1/txt2img", json={"prompt": "a", "override_settings": {"token_merging_ratio": 2}})
    assert response.status_code == 422 and "Token merging ratio must be between 0 and 0.9, got 2" in response.text
    response = api.post("/sdapi/v1/txt2img", content=b'{"prompt": "a", "override_settings": {"token_merging_ratio": NaN}}',
                        headers={"content-type": "application/json"})
    assert response.status_code == 422 and "send a finite number" in response.text  # refused as JSON already
    response = api.post("/sdapi/v1/txt2img", json={"prompt": "a", "override_settings": {"token_merging_ratio": "half"}})
    assert response.status_code == 422 and "Token merging ratio must be a number, got 'half'" in response.text
    assert api.post("/sdapi/v1/options", json={"token_merging_ratio": 1.5}).status_code == 422  # not stored
    assert api.get("/sdapi/v1/options").json()["token_merging_ratio"] == 0.0


def test_clip_skip_from_override_settings_and_options_reaches_the_image(api):
    plain, plain_info = txt2img(api, steps=2)
    skipped, info = txt2img(api, steps=2, override_settings={"CLIP_stop_at_last_layers": 2})
    assert "Clip skip: 2" in info["infotexts"][0] and info["clip_skip"] == 2 and plain_info["clip_skip"] == 1
    assert not np.array_equal(pixels(unb64(skipped["images"][0])), pixels(unb64(plain["images"][0])))
    assert api.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
    try:
        assert api.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert "Clip skip: 2" in txt2img(api, steps=2)[1]["infotexts"][0]
    finally:
        api.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})
    assert api.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 13}).status_code == 422
