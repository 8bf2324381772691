"""The app as a real server (`python app.py` subprocess) driven over HTTP with gradio_client."""
from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pipelines.core.metadata import parse_infotext, read_infotext


def t2i_args(prompt="a red circle", steps=6, seed=5, width=64, height=64, cfg=True, batch_size=1, batch_count=1, scheduler="Euler a"):
    # prompt, negative, scheduler, steps, cfg, cfg_scale, eta, seed, batch_size, batch_count, width, height
    return [prompt, "", scheduler, steps, cfg, 7, 0, seed, batch_size, batch_count, width, height]


def i2i_args(image, strength, seed=5, steps=10, width=64, height=64) -> dict:
    return dict(prompt="a red circle", init_image=image, resize_mode="crop and resize", strength=strength, scheduler="Euler a",
                steps=steps, seed=seed, width=width, height=height)


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def test_every_tab_has_a_named_api_endpoint(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert {"/txt2img", "/img2img", "/png_info", "/interrupt", "/load_model"} <= set(endpoints)


def test_txt2img_over_http_returns_a_png_with_its_parameters_and_saves_it(client, app_server):
    # outputs: live preview, gallery, notes, infotext (the last-seed state stays server side)
    preview, gallery, notes, infotext = client.predict(*t2i_args(seed=11, batch_size=2), api_name="/txt2img")
    assert len(gallery) == 3 and gallery[2]["caption"] == "grid" and "Seed: 11," in infotext  # 2 images + the batch grid
    image = Image.open(gallery[1]["image"])
    assert image.format == "PNG" and image.size == (64, 64)
    params = parse_infotext(read_infotext(image))
    assert params["Seed"] == "12" and params["Steps"] == "6" and params["Size"] == "64x64"
    saved = sorted(app_server.outputs_dir.rglob("*-12.png"))
    assert saved and parse_infotext(read_infotext(Image.open(saved[-1])))["Prompt"] == "a red circle"
    assert "Saved to" in notes


def test_same_request_twice_gives_the_same_image_over_http(client):
    first = client.predict(*t2i_args(seed=3), api_name="/txt2img")[1][0]["image"]
    second = client.predict(*t2i_args(seed=3), api_name="/txt2img")[1][0]["image"]
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(second)))


def test_img2img_with_strength_zero_returns_the_upload(client, tmp_path):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    source.save(tmp_path / "init.png")
    gallery = client.predict(**i2i_args(handle_file(str(tmp_path / "init.png")), 0.0), api_name="/img2img")[1]
    assert np.array_equal(np.asarray(Image.open(gallery[0]["image"])), np.asarray(source))


def test_png_info_reads_back_what_txt2img_wrote(client):
    gallery = client.predict(*t2i_args(prompt="a blue star", seed=21), api_name="/txt2img")[1]
    text, parsed = client.predict(handle_file(gallery[0]["image"]), api_name="/png_info")
    assert parsed["Prompt"] == "a blue star" and parsed["Seed"] == "21"
    assert text.startswith("a blue star\nSteps: 6")


def test_size_not_a_multiple_of_8_is_rounded_and_said(client):
    _, gallery, notes, infotext = client.predict(*t2i_args(width=100, height=64), api_name="/txt2img")
    assert "Width 100 rounded to 104" in notes
    assert Image.open(gallery[0]["image"]).size == (104, 64)


@pytest.mark.parametrize("args, message", [
    (i2i_args(None, 0.5), "needs an init image"),
])
def test_bad_img2img_input_gets_a_clear_message(client, args, message):
    with pytest.raises(AppError, match=message):
        client.predict(**args, api_name="/img2img")


def test_a_non_image_upload_gets_a_clear_message_and_the_server_keeps_serving(client, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("this is not a picture")
    with pytest.raises(AppError, match="not an image this app can read"):
        client.predict(**i2i_args(handle_file(str(fake)), 0.5), api_name="/img2img")
    assert len(client.predict(*t2i_args(steps=2), api_name="/txt2img")[1]) == 1


def raw_call(app_server, endpoint: str, body: str) -> str:
    """POST a hand-written JSON body (NaN is not producible by gradio_client) and read the result."""
    url = f"{app_server.url}gradio_api/call/{endpoint}"
    event = httpx.post(url, content=body, headers={"content-type": "application/json"}).json()["event_id"]
    return httpx.get(f"{url}/{event}", timeout=60).text


# The inputs after width and height, at their defaults (a raw call sends every input): clip
# skip (1), the hires fix's (off), the variation seed's (none), the VAE, SDXL's size, crop and
# refiner fields, Turbo (off), Token merging ratio (0), then the X/Y grid's (off).
NO_GRID = (', 1, false, "Latent", 2, 0, 0.7, 0, 0, -1, 0, 0, 0, "Automatic", 0, 0, 0, 0, 0, 0, "", 0.8, "Off", 0,'
           ' "Nothing", "", "Nothing", "", true')


def test_nan_and_out_of_range_slider_values_from_the_api_get_clear_messages(app_server):
    nan_steps = raw_call(app_server, "txt2img", '{"data": ["a", "", "Euler a", NaN, true, 7, 0, 5, 1, 1, 64, 64' + NO_GRID + ']}')
    assert "event: error" in nan_steps and "Steps must be a finite number" in nan_steps
    huge_cfg = raw_call(app_server, "txt2img", '{"data": ["a", "", "Euler a", 5, true, 99, 0, 5, 1, 1, 64, 64' + NO_GRID + ']}')
    assert "event: error" in huge_cfg and "greater than maximum value 30" in huge_cfg
    bad_scheduler = raw_call(app_server, "txt2img", '{"data": ["a", "", "Karras 9000", 5, true, 7, 0, 5, 1, 1, 64, 64' + NO_GRID + ']}')
    assert "event: error" in bad_scheduler


def test_sizes_over_the_host_limit_are_refused_with_the_limit_in_the_message(client):
    # The fixture's server runs with --max-size 256: the slider's maximum. (Requests built
    # in code are clamped with a note instead: see test_requests.py.)
    with pytest.raises(AppError, match="greater than maximum value 256"):
        client.predict(*t2i_args(width=4096), api_name="/txt2img")


def test_loading_a_missing_model_says_so_and_keeps_the_current_one(client):
    with pytest.raises(AppError, match="does not exist.*previous model stays loaded"):
        client.predict("/no/such/model", api_name="/load_model")
    assert len(client.predict(*t2i_args(steps=2), api_name="/txt2img")[1]) == 1


def wait_until_running(job, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job.status()
        if status.code.name in ("PROCESSING", "ITERATING") or status.progress_data:
            return
        time.sleep(0.05)
    raise TimeoutError("job never started")


def test_interrupt_stops_only_the_job_of_the_user_who_pressed_it(app_server):
    alice, bob = Client(app_server.url, verbose=False), Client(app_server.url, verbose=False)
    job = alice.submit(*t2i_args(steps=150, scheduler="Euler"), api_name="/txt2img")
    wait_until_running(job)
    assert bob.predict(api_name="/interrupt") == "Nothing of yours is running."
    assert alice.predict(api_name="/interrupt") == "Interrupting…"
    _, gallery, notes, infotext = job.result(timeout=120)
    assert "interrupted" in notes and "Interrupted at step" in notes
    assert len(gallery) == 1


def cn_args(image, model, preprocessor="canny", start=0.0, end=1.0, use_init=False, init=None) -> dict:
    """The ControlNet endpoint's inputs by name: unit 1 on, units 2 and 3 at their defaults (off)."""
    unit = dict(enabled=True, image=image, preprocessor=preprocessor, low=50, high=150, model=str(model), start=start, end=end)
    return dict(prompt="a red square", use_init_image=use_init, init_image=init, strength=0.6, scheduler="Euler", steps=5,
                seed=9, width=64, height=64, **{f"unit1_{name}": value for name, value in unit.items()}, **NO_UNIT_IMAGES)


NO_UNIT_IMAGES = {"unit2_image": None, "unit3_image": None}  # image inputs have no default: the API asks for them


@pytest.fixture(scope="module")
def control_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("control") / "squares.png"
    Image.fromarray(np.kron(np.eye(4)[:, :, None] * 255, np.ones((16, 16, 3))).astype(np.uint8)).save(path)
    return path


def test_controlnet_tab_generates_with_a_canny_unit_and_records_it(client, control_image, tiny_controlnet_dir):
    _, gallery, notes, infotext = client.predict(**cn_args(handle_file(str(control_image)), tiny_controlnet_dir),
                                                 api_name="/controlnet")
    assert len(gallery) == 1
    assert 'ControlNet 0: "Module: canny' in infotext and "low: 50, high: 150" in infotext


def test_controlnet_with_an_init_image_runs_img2img(client, control_image, tiny_controlnet_dir):
    args = cn_args(handle_file(str(control_image)), tiny_controlnet_dir, use_init=True, init=handle_file(str(control_image)))
    infotext = client.predict(**args, api_name="/controlnet")[3]
    assert "Denoising strength: 0.6" in infotext and "ControlNet 0" in infotext


@pytest.mark.parametrize("change, message", [
    (dict(start=0.9, end=0.1), "must come before guidance end"),
    (dict(image=None), "needs a control image"),
    (dict(model="/no/such/controlnet"), "does not exist"),
])
def test_bad_controlnet_units_get_clear_messages(client, control_image, tiny_controlnet_dir, change, message):
    kwargs = dict(image=handle_file(str(control_image)), model=tiny_controlnet_dir) | change
    with pytest.raises(AppError, match=message):
        client.predict(**cn_args(**kwargs), api_name="/controlnet")


def test_control_map_preview_over_http(client, control_image):
    control_map, pose_json, message, use_edited = client.predict(
        image=handle_file(str(control_image)), preprocessor="canny", low=50, high=150, width=64, height=64,
        api_name="/controlnet_cn0_preview")
    edges = np.asarray(Image.open(control_map).convert("L"))
    assert edges.shape == (64, 64) and 0 < (edges > 0).mean() < 0.5
    assert pose_json in ("", None) and "canny" in message
