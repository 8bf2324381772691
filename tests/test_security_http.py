"""Hosting the app publicly, tried as an attacker would over real HTTP (issue 11): one test (or
group) per finding — file reads through image inputs, lost images on a failed save, model
fields on a locked host, unbounded inputs, internals in errors, queued jobs, login.

Three servers per module: a laptop-like one with tight host limits, a read-only outputs
folder, and a Space-like one with a login."""
from __future__ import annotations

import json
import os
import time
import uuid
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, PngImagePlugin

from conftest import ROOT, AppServer
from test_app_http import wait_until_running
from test_browser import browser  # noqa: F401 — fixture

REFUSAL = "was not uploaded to this app"
SECRET = "the other user's secret prompt"


def t2i(prompt="a red circle", steps=4, seed=5, **more) -> dict:
    """txt2img inputs by name (the rest at their defaults)."""
    return dict(prompt=prompt, scheduler="Euler a", steps=steps, seed=seed, width=64, height=64) | more
INTERNALS = ("Traceback", "Error:", "Errno", "/tmp/", str(ROOT), "PID", "pid ")


def start(tmp_path_factory, name: str, args: list[str], env: dict | None = None) -> AppServer:
    server = AppServer(args, env=env, log_path=tmp_path_factory.mktemp("logs") / f"{name}.log")
    try:
        return server.wait_ready()
    except BaseException:
        server.stop()  # never leave a half-started server behind
        raise


@pytest.fixture(scope="module")
def host(tiny_model_dir, tmp_path_factory):
    """A laptop-like server (model changes allowed) with tight host limits."""
    outputs = tmp_path_factory.mktemp("outputs")
    server = start(tmp_path_factory, "host", [
        "--model", str(tiny_model_dir), "--outputs-dir", str(outputs), "--max-size", "256",
        "--max-prompt-chars", "300", "--max-upload-megapixels", "1", "--max-upload-mb", "1",
        "--max-grid-megapixels", "0.05"])
    server.outputs_dir = outputs
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(host):
    return Client(host.url, verbose=False)


@pytest.fixture(scope="module")
def api(host) -> dict:
    return httpx.get(host.url + "gradio_api/info").json()["named_endpoints"]


@pytest.fixture(scope="module")
def secret_png(tmp_path_factory) -> Path:
    """An image on the server's disk that no client uploaded, carrying a prompt."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", f"{SECRET}\nSteps: 5, Seed: 1, Size: 64x64")
    path = tmp_path_factory.mktemp("private") / "00000-grid.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, pnginfo=info)
    return path


def body(api: dict, endpoint: str, **values) -> list:
    """Every parameter of a named endpoint: its default, else a plain value, with values set."""
    data = []
    for p in api[endpoint]["parameters"]:
        name, kind = p["parameter_name"], p["python_type"]["type"]
        default = p["parameter_default"] if p.get("parameter_has_default") else ("a" if kind == "str" else None)
        data.append(values.get(name, default))
    return data


def call(server, endpoint: str, raw_json: str) -> str:
    """POST /gradio_api/call/<endpoint> with a hand-written body, then read its event stream."""
    url = f"{server.url}gradio_api/call/{endpoint.strip('/')}"
    response = httpx.post(url, content=raw_json, headers={"content-type": "application/json"})
    if response.status_code != 200:
        return f"HTTP {response.status_code} {response.text}"
    return httpx.get(f"{url}/{response.json()['event_id']}", timeout=120).text


def fn_index(server, api_name: str) -> int:
    config = httpx.get(server.url + "config").json()
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def queue_join(server, api_name: str, raw_data: str) -> str:
    """The browser's route: POST /gradio_api/queue/join, then the session's event stream."""
    session = uuid.uuid4().hex
    joined = httpx.post(f"{server.url}gradio_api/queue/join",
                        content=f'{{"data": {raw_data}, "fn_index": {fn_index(server, api_name)}, '
                                f'"session_hash": "{session}", "event_data": null, "trigger_id": null}}',
                        headers={"content-type": "application/json"})
    if joined.status_code != 200:
        return f"HTTP {joined.status_code} {joined.text}"
    lines = []
    with httpx.stream("GET", f"{server.url}gradio_api/queue/data", params={"session_hash": session}, timeout=120) as r:
        for line in r.iter_lines():
            lines.append(line)
            if "process_completed" in line:
                break
    return "\n".join(lines)


def run(server, api_name: str, raw_data: str) -> httpx.Response:
    return httpx.post(f"{server.url}gradio_api/run/{api_name}", content=f'{{"data": {raw_data}}}',
                      headers={"content-type": "application/json"}, timeout=120)


# ------------------------------------------------ 1. no file read through an image input
IMAGE_INPUTS = [  # (endpoint, parameter, how the path is sent)
    ("/png_info", "image_path", "plain"), ("/img2img", "init_image", "plain"), ("/lab_forward", "image_path", "plain"),
    ("/controlnet_cn0_preview", "image", "plain"), ("/controlnet", "unit1_image", "plain"),
    ("/controlnet", "init_image", "plain"), ("/inpaint", "mask_image", "plain"), ("/inpaint", "image_and_mask", "editor"),
    ("/png_info", "image_path", "meta"), ("/png_info", "image_path", "url"),
]


@pytest.mark.parametrize("endpoint, parameter, form", IMAGE_INPUTS)
def test_an_image_input_naming_a_server_file_gets_the_refusal_and_none_of_the_file(host, api, secret_png, endpoint,
                                                                                    parameter, form):
    file = {"path": str(secret_png) if form != "url" else f"{host.url}never-fetched.png"}
    if form in ("meta", "editor", "url"):  # (an editor payload without "meta" is refused as malformed)
        file["meta"] = {"_type": "gradio.FileData"}
    value = {"background": file, "layers": [], "composite": file, "id": None} if form == "editor" else file
    extra = {"use_init_image": True} if parameter == "init_image" else {}
    result = call(host, endpoint, json.dumps({"data": body(api, endpoint, **{parameter: value}, **extra)}))
    assert "event: error" in result and REFUSAL in result, result
    assert SECRET not in result and str(secret_png) not in result
    assert "never-fetched" not in host.output()  # a URL is refused before Gradio would download it


def test_the_refusal_is_the_same_whether_the_path_exists_or_not(host, api, secret_png):
    messages = set()
    for path in (str(secret_png), "/no/such/file.png", str(secret_png.parent), "/etc/hostname", "x" * 5000):
        result = call(host, "/png_info", json.dumps({"data": [{"path": path}]}))
        messages.add(result.split("data:", 1)[1].strip())
    assert len(messages) == 1 and REFUSAL in messages.pop()


def test_another_users_saved_output_cannot_be_read_through_the_queue_or_run_routes(host, client, api):
    client.predict(**t2i(prompt=SECRET, steps=2), api_name="/txt2img")
    saved = next(host.outputs_dir.rglob("*.png"))
    data = json.dumps([{"path": str(saved)}])
    for result in (queue_join(host, "png_info", data), run(host, "png_info", data).text):
        assert REFUSAL in result and SECRET not in result
    img2img = json.dumps(body(api, "/img2img", init_image={"path": str(saved)}, strength=0.0))
    assert REFUSAL in queue_join(host, "img2img", img2img)


def test_the_file_route_serves_no_server_file(host, secret_png):
    for path in (secret_png, ROOT / "app.py", host.outputs_dir):
        response = httpx.get(f"{host.url}gradio_api/file={path}")
        assert response.status_code in (403, 404) and SECRET not in response.text and "import" not in response.text


def test_uploaded_files_still_work(client, secret_png):
    text, parsed = client.predict(handle_file(str(secret_png)), api_name="/png_info")
    assert parsed["Prompt"] == SECRET  # the user's own upload: read as before


# ------------------------------------------------ 4. bounded inputs, refused before any model call
def test_an_over_long_prompt_is_refused_with_the_limit_and_nothing_is_generated(client, host):
    before = set(host.outputs_dir.rglob("*.png"))
    with pytest.raises(AppError, match="has 10,000 characters; this host accepts up to 300"):
        client.predict(**t2i(prompt="x" * 10_000), api_name="/txt2img")
    with pytest.raises(AppError, match="negative prompt has 301 characters"):  # the negative prompt too
        client.predict(**t2i(prompt="ok", negative_prompt="n" * 301), api_name="/txt2img")
    assert set(host.outputs_dir.rglob("*.png")) == before


def test_an_image_over_the_megapixel_limit_is_refused_from_its_header(client, tmp_path):
    big = tmp_path / "big.png"
    Image.new("1", (3000, 3000)).save(big, optimize=True)  # 9 MP in a few KB: decoding it is what costs
    assert big.stat().st_size < 100_000
    with pytest.raises(AppError, match=r"3000×3000 \(9.0 megapixels\); this host accepts up to 1 megapixels"):
        client.predict(**t2i(steps=2), init_image=handle_file(str(big)), strength=0.5, api_name="/img2img")


def test_an_upload_over_the_file_size_limit_is_refused(host):
    response = httpx.post(host.url + "gradio_api/upload", files={"files": ("big.png", os.urandom(2 * 1024 * 1024))})
    assert response.status_code == 413


def test_a_grid_image_over_the_megapixel_limit_is_refused(client):
    with pytest.raises(AppError, match="grid image would be .* this host draws grids up to 0.05 megapixels"):
        client.predict(**t2i(steps=2), x_type="Seed", x_values="1-16", api_name="/txt2img")


# ------------------------------------------------ 5. no internals in what a client sees
def numeric_nan_body(api: dict, endpoint: str) -> str | None:
    parts = []
    for p in api[endpoint]["parameters"]:
        kind = p["python_type"]["type"]
        default = p["parameter_default"] if p.get("parameter_has_default") else ("a" if kind == "str" else None)
        parts.append("NaN" if kind in ("float", "int") else json.dumps(default))
    return "[" + ", ".join(parts) + "]" if "NaN" in parts else None


def test_nan_and_infinity_over_every_raw_route_get_a_message(host, api):
    checked = 0
    for endpoint in api:
        data = numeric_nan_body(api, endpoint)
        if data is None:
            continue
        name = endpoint.strip("/")
        for result in (call(host, endpoint, f'{{"data": {data}}}'), queue_join(host, name, data),
                       run(host, name, data).text, call(host, endpoint, f'{{"data": {data.replace("NaN", "Infinity")}}}')):
            assert "must be a finite number" in result, (endpoint, result)
            assert not any(part in result for part in INTERNALS), (endpoint, result)
        checked += 1
    assert checked >= 8  # txt2img, img2img, inpaint, controlnet, previews, lab…
    malformed = httpx.post(host.url + "gradio_api/call/v2/txt2img", content='{"data": [NaN]}',
                           headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "could not be read" in malformed.json()["error"]


def test_result_notes_and_config_show_no_server_paths_or_process_ids(client, host):
    notes = client.predict(**t2i(steps=2), api_name="/txt2img")[2]
    assert "Saved to the outputs folder: `txt2img/" in notes
    assert str(host.outputs_dir) not in notes and "/" != notes.split("`")[1][0]
    assert not any(part in notes for part in INTERNALS)
    config = httpx.get(host.url + "config").text
    assert str(ROOT) not in config and str(host.outputs_dir) not in config


def test_a_png_with_an_oversized_text_chunk_gets_a_sentence(client, tmp_path):
    """A zTXt chunk that inflates past Pillow's text limit (Pillow raises on open)."""
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    raw = good.read_bytes()
    chunk = b"zTXt" + b"parameters\x00\x00" + zlib.compress(b"a" * 4_000_000)
    crafted = raw[:33] + len(chunk[4:]).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big") + raw[33:]
    (tmp_path / "crafted.png").write_bytes(crafted)
    with pytest.raises(AppError) as refused:
        client.predict(handle_file(str(tmp_path / "crafted.png")), api_name="/png_info")
    text = str(refused.value)
    assert "not an image this app can read" in text
    assert not any(part in text for part in INTERNALS + ("ValueError", "Decompressed", "MAX_TEXT")), text


# ------------------------------------------------ 6. Interrupt reaches queued jobs
def test_interrupt_also_cancels_the_sessions_queued_job(host):
    alice = Client(host.url, verbose=False)
    running = alice.submit(**t2i(steps=150, scheduler="Euler"), api_name="/txt2img")
    wait_until_running(running)
    waiting = alice.submit(**t2i(steps=2, seed=77), api_name="/txt2img")
    deadline = time.time() + 30
    while waiting.status().code.name not in ("IN_QUEUE",) and time.time() < deadline:
        time.sleep(0.05)
    assert "queued job(s) cancelled" in alice.predict(api_name="/interrupt")
    with pytest.raises(AppError, match="Interrupted before it started"):
        waiting.result(timeout=120)
    assert "interrupted" in running.result(timeout=120)[2]


# ------------------------------------------------ 2. a failed save keeps the images
@pytest.fixture(scope="module")
def unwritable_host(tiny_model_dir, tmp_path_factory):
    """Outputs in a folder no one may create (sysfs refuses even root)."""
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux sysfs for a folder that root cannot write")
    server = start(tmp_path_factory, "readonly", ["--model", str(tiny_model_dir), "--outputs-dir",
                                                  "/sys/kernel/sd-studio-outputs"])
    try:
        yield server
    finally:
        server.stop()


def test_a_read_only_outputs_folder_still_returns_the_images_with_a_note(unwritable_host):
    client = Client(unwritable_host.url, verbose=False)
    status = next(c for c in client.config["components"] if c.get("props", {}).get("elem_id") == "status")
    assert "Images will not be saved: the outputs folder is not writable" in status["props"]["value"]
    _, gallery, notes, infotext = client.predict(**t2i(steps=2, batch_size=2), api_name="/txt2img")
    assert len(gallery) == 2 + 1 and "Seed: 5" in infotext  # both images, then the batch's grid
    assert "Not saved: the outputs folder is not writable" in notes and "/sys/" not in notes
    assert Image.open(gallery[0]["image"]).size == (64, 64)
    assert unwritable_host.output().count("outputs folder /sys/kernel/sd-studio-outputs") == 1  # reported once


# ------------------------------------------------ 3, 6 and 7 on a Space-like host with a login
LOGIN = ("alice", "correct horse:battery")


@pytest.fixture(scope="module")
def space(tiny_model_dir, tmp_path_factory):
    env = {"SPACE_ID": "someone/sd-studio", "SD_STUDIO_MODEL": str(tiny_model_dir),
           "SD_STUDIO_AUTH": f"{LOGIN[0]}:{LOGIN[1]}"}
    server = start(tmp_path_factory, "space", ["--api"], env=env)  # with the REST API on the same port
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def space_client(space):
    return Client(space.url, verbose=False, auth=LOGIN)


def test_without_the_login_every_route_is_refused(space):
    for method, path in [("GET", ""), ("GET", "config"), ("GET", "gradio_api/info"), ("POST", "gradio_api/call/txt2img"),
                         ("POST", "gradio_api/queue/join"), ("POST", "gradio_api/run/txt2img"),
                         ("POST", "gradio_api/upload"), ("GET", "gradio_api/queue/data?session_hash=x"),
                         ("GET", "sdapi/v1/samplers"), ("POST", "sdapi/v1/txt2img")]:
        # Streamed: without a login, /queue/data would be an event stream that never ends.
        with httpx.stream(method, space.url + path, json={"data": ["a"]}, timeout=30) as response:
            text = response.read().decode() if path == "" else ""
        # The page itself is the login form's shell: none of the app's components are in it.
        shows_the_app = "txt2img" in text  # (a bool: pytest's diff of a whole page would take minutes)
        assert response.status_code in (401, 403) or (path == "" and not shows_the_app), (path, response)
    wrong = httpx.post(space.url + "login/", data={"username": LOGIN[0], "password": "guess"})
    assert wrong.status_code == 400


def test_with_the_login_the_api_works(space, space_client):
    assert len(space_client.predict(**t2i(steps=2), api_name="/txt2img")[1]) == 1
    samplers = httpx.get(space.url + "sdapi/v1/samplers", auth=LOGIN)  # the REST API: same login, HTTP Basic
    assert samplers.status_code == 200 and samplers.json()


@pytest.mark.parametrize("model", ["{tiny_cn}", "/no/such/controlnet", "../../etc"])
def test_a_space_refuses_controlnet_models_outside_its_catalogue(space_client, tiny_controlnet_dir, model, tmp_path):
    control = tmp_path / "control.png"
    Image.new("RGB", (64, 64), "white").save(control)
    unit = dict(enabled=True, image=handle_file(str(control)), preprocessor="canny",
                model=model.format(tiny_cn=tiny_controlnet_dir))
    args = (t2i(steps=2) | {f"unit1_{name}": value for name, value in unit.items()}
            | {"unit2_image": None, "unit3_image": None, "init_image": None})
    with pytest.raises(AppError, match=r"accepts only the ControlNet models in its list \(demo-controlnet"):
        space_client.predict(**args, api_name="/controlnet")


def test_a_space_refuses_an_inpainting_model_outside_its_catalogue(space_client, tiny_model_dir, tmp_path):
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), "white").save(image)
    Image.new("L", (64, 64), 255).save(mask)
    editor = {"background": handle_file(str(image)), "layers": [], "composite": handle_file(str(image)), "id": None}
    args = t2i(steps=2) | dict(image_and_mask=editor, mask_image=handle_file(str(mask)), mode="inpainting model",
                               inpaint_model=str(tiny_model_dir)) | {f"unit{n}_image": None for n in (1, 2, 3)}
    with pytest.raises(AppError, match="accepts only the inpainting models in its list"):
        space_client.predict(**args, api_name="/inpaint")


def test_one_client_cannot_fill_the_queue(space, space_client):
    long_job = t2i(steps=50, scheduler="Euler", width=256, height=256, batch_size=4, batch_count=4)  # the Space's caps
    running = space_client.submit(**long_job, api_name="/txt2img")
    try:
        wait_until_running(running)
        waiting = [space_client.submit(**t2i(steps=2), api_name="/txt2img") for _ in range(2)]
        deadline = time.time() + 30
        while any(job.status().code.name != "IN_QUEUE" for job in waiting) and time.time() < deadline:
            time.sleep(0.05)
        login = httpx.post(space.url + "login/", data={"username": LOGIN[0], "password": LOGIN[1]})
        api = httpx.get(space.url + "gradio_api/info", cookies=login.cookies).json()["named_endpoints"]
        refused = httpx.post(space.url + "gradio_api/call/txt2img", json={"data": body(api, "/txt2img", steps=2)},
                             cookies=login.cookies)
        assert refused.status_code == 503 and "this host queues up to 2 per user" in refused.text
    finally:
        space_client.predict(api_name="/interrupt")  # the queued ones are cancelled, the running one stops


@pytest.mark.browser
def test_the_browser_gets_the_login_form_then_the_app(space, browser):  # noqa: F811 — browser: fixture
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(space.url)
        page.wait_for_selector("input[type=password]", timeout=60_000)
        assert page.locator("#txt2img_generate").count() == 0
        page.fill("input[type=text]", LOGIN[0])
        page.fill("input[type=password]", LOGIN[1])
        page.keyboard.press("Enter")
        page.wait_for_selector("#txt2img_generate", timeout=60_000)
    finally:
        context.close()


def test_logins_come_from_flags_the_environment_and_a_file(monkeypatch, tmp_path):
    from settings import Settings, check_credentials

    monkeypatch.setenv("SD_STUDIO_AUTH", "env:one, env2:two")
    assert Settings.from_args([]).auth == (("env", "one"), ("env2", "two"))
    logins = tmp_path / "logins.txt"
    logins.write_text("# who may log in\nfile:pass:with:colons\n")
    settings = Settings.from_args(["--auth", "flag:pw", "--auth-file", str(logins)])
    assert settings.auth == (("flag", "pw"), ("file", "pass:with:colons"))  # flags replace the variable
    assert check_credentials(settings, "file", "pass:with:colons") and not check_credentials(settings, "file", "pass")
    assert not check_credentials(Settings.from_args(["--auth", "a:b"]), "a", "")
    monkeypatch.delenv("SD_STUDIO_AUTH")
    assert Settings.from_args([]).auth == () and not check_credentials(Settings.from_args([]), "", "")
    with pytest.raises(SystemExit):
        Settings.from_args(["--auth", "no-password"])
