"""The app in headless Chromium (Debian package, driven by Playwright): a user's click path,
and a screenshot compared to a golden image. Refresh goldens with `--update-golden`."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ARTIFACTS

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
GOLDEN = Path(__file__).resolve().parent / "golden"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--force-color-profile=srgb", "--font-render-hinting=none", "--hide-scrollbars"]
# Elements whose text changes run to run (timings, saved paths): hidden before screenshots.
VOLATILE_CSS = "#txt2img_notes, footer, .progress-text, .eta-bar { visibility: hidden !important; }"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); .ci/run does.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_server):
    context = browser.new_context(viewport={"width": 1280, "height": 1100}, device_scale_factor=1)
    page = context.new_page()
    page.goto(app_server.url)
    page.wait_for_selector("#txt2img_generate", timeout=60_000)
    yield page
    context.close()


def compare_to_golden(screenshot: Path, name: str, update: bool, max_differing: float = 0.01) -> None:
    """Fail when more than max_differing of the pixels differ by more than 24 grey levels."""
    golden = GOLDEN / name
    if update or not golden.exists():
        GOLDEN.mkdir(exist_ok=True)
        shutil.copy(screenshot, golden)
        if not update:
            pytest.fail(f"no golden image yet: wrote {golden}; review and commit it")
        return
    actual = np.asarray(Image.open(screenshot).convert("RGB"), dtype=np.int16)
    expected = np.asarray(Image.open(golden).convert("RGB"), dtype=np.int16)
    assert actual.shape == expected.shape, f"screenshot size {actual.shape} != golden {expected.shape}"
    differing = np.abs(actual - expected).max(axis=-1) > 24
    if differing.mean() > max_differing:
        diff = np.where(differing[..., None], [255, 0, 255], actual // 3).astype(np.uint8)
        Image.fromarray(diff).save(ARTIFACTS / f"diff-{name}")
        pytest.fail(f"{differing.mean():.2%} of pixels differ from {golden} (diff: {ARTIFACTS / f'diff-{name}'}); "
                    "if the change is intended, rerun with --update-golden")


def generate(page, tab: str, prompt: str, seed: int, wait_for: str | None = None) -> str:
    """Type a prompt and seed into a tab, press Generate, wait for the result's parameters."""
    import json

    page.fill(f"#{tab}_prompt textarea", prompt)
    page.fill(f"#{tab}_seed input", str(seed))
    page.press(f"#{tab}_seed input", "Tab")
    page.click(f"#{tab}_generate")
    marker = json.dumps(wait_for or f"Seed: {seed}")
    page.wait_for_function(
        f"() => (document.querySelector('#{tab}_infotext textarea') || {{}}).value?.includes({marker})", timeout=120_000)
    return page.input_value(f"#{tab}_infotext textarea")


def test_txt2img_in_the_browser_matches_the_golden_screenshot(page, update_golden):
    ARTIFACTS.mkdir(exist_ok=True)
    infotext = generate(page, "txt2img", "a large red circle on a white background", 1234)
    page.wait_for_selector("#txt2img_gallery img", timeout=30_000)
    assert infotext.startswith("a large red circle on a white background\nSteps: 20, Sampler: Euler a")
    page.add_style_tag(content=VOLATILE_CSS)
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)  # let the gallery's image finish painting
    shot = ARTIFACTS / "txt2img.png"
    page.screenshot(path=str(shot), full_page=True)
    compare_to_golden(shot, "txt2img.png", update_golden)


def test_ddim_shows_the_eta_slider_and_cfg_off_disables_the_scale(page):
    assert not page.is_visible("#txt2img_eta")
    page.click("#txt2img_scheduler input")
    page.click("li[aria-label='DDIM']")
    page.wait_for_selector("#txt2img_eta", state="visible", timeout=10_000)
    page.click("#txt2img_cfg input")
    page.wait_for_function("() => document.querySelector('#txt2img_cfg_scale input[type=number]').disabled", timeout=10_000)


def test_png_info_sends_parameters_back_to_txt2img(page, app_server):
    # A generated image (<n>-<seed>.png), not an X/Y grid (<n>-grid.png) another test saved.
    png = next((p for p in app_server.outputs_dir.rglob("*.png") if p.stem.split("-")[-1].isdigit()), None)
    if png is None:  # this test may run alone: make an image first
        page.click("#txt2img_generate")
        page.wait_for_selector("#txt2img_gallery img", timeout=120_000)
        png = next(p for p in app_server.outputs_dir.rglob("*.png") if p.stem.split("-")[-1].isdigit())
    page.click("button[role=tab]:has-text('PNG info')")
    page.set_input_files("#pnginfo_image input[type=file]", str(png))
    page.wait_for_function("() => (document.querySelector('#pnginfo_text textarea') || {}).value?.includes('Steps:')",
                           timeout=30_000)
    page.click("#pnginfo_send_txt2img")
    page.wait_for_selector("#txt2img_prompt", state="visible", timeout=10_000)
    seed = png.stem.split("-")[1]
    page.wait_for_function(f"() => document.querySelector('#txt2img_seed input').value === '{seed}'", timeout=10_000)


def test_img2img_upload_and_generate_in_the_browser(page, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(init)
    page.click("button[role=tab]:has-text('img2img')")
    page.set_input_files("#img2img_init input[type=file]", str(init))
    page.wait_for_selector("#img2img_init img", timeout=30_000)
    page.click("#img2img_use_size")
    page.wait_for_function("() => document.querySelector('#img2img_width input[type=number]').value === '80'", timeout=10_000)
    infotext = generate(page, "img2img", "a blue square", 77)
    assert "Denoising strength: 0.75" in infotext and "Size: 80x96" in infotext


def upload_to_editor(page, selector: str, path: Path, attempts: int = 3) -> None:
    """Gradio's image editor may drop a file set before it finished mounting: set it until
    the editor's empty-canvas prompt disappears."""
    page.wait_for_selector(f"{selector} button[aria-label=Upload]", timeout=30_000)
    for _ in range(attempts):
        page.set_input_files(f"{selector} input[type=file]", str(path))
        try:
            page.wait_for_function(f"() => !document.querySelector('{selector}').innerText.includes('Upload an image')",
                                   timeout=5_000)
            page.wait_for_timeout(500)
            return
        except Exception:
            continue
    pytest.fail(f"the image editor {selector} never showed the uploaded image")


def test_inpaint_a_painted_stroke_matches_the_golden_screenshot(page, update_golden, tmp_path):
    source = tmp_path / "circle.png"
    image = Image.new("RGB", (192, 192), "white")
    from PIL import ImageDraw

    ImageDraw.Draw(image).ellipse((36, 36, 156, 156), fill=(220, 30, 30))
    image.save(source)
    expected = np.asarray(image.resize((64, 64), Image.LANCZOS))  # generation size of the tiny model
    page.click("button[role=tab]:has-text('Inpaint')")
    upload_to_editor(page, "#inpaint_editor", source)
    canvas = page.wait_for_selector("#inpaint_editor canvas", timeout=30_000)
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 60, cy)
    page.mouse.down()
    for step in range(13):
        page.mouse.move(cx - 60 + step * 10, cy + (step % 2) * 4)
    page.mouse.up()
    infotext = generate(page, "inpaint", "a blue square", 99)
    assert "Inpaint mode: RePaint" in infotext and "Mask blur: 4" in infotext
    page.add_style_tag(content=VOLATILE_CSS.replace("#txt2img_notes", "#inpaint_notes"))
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    shot = ARTIFACTS / "inpaint.png"
    page.locator("#inpaint_gallery").screenshot(path=str(shot))
    compare_to_golden(shot, "inpaint.png", update_golden)
    # The result keeps the image outside the stroke: the corners are still white, the
    # stroke across the middle is not.
    from io import BytesIO

    src = page.locator("#inpaint_gallery img").first.get_attribute("src")
    result = np.asarray(Image.open(BytesIO(page.request.get(src).body())).convert("RGB"))
    assert result.shape == (64, 64, 3)
    assert np.array_equal(result[[0, 0, -1, -1], [0, -1, 0, -1]], expected[[0, 0, -1, -1], [0, -1, 0, -1]])
    assert not np.array_equal(result[30:34, 24:40], expected[30:34, 24:40])


def choose(page, dropdown: str, value: str) -> None:
    page.click(f"{dropdown} input")
    page.click(f"li[aria-label='{value}']")


def test_controlnet_canny_preview_and_generate_match_the_golden(page, update_golden, tiny_controlnet_dir, tmp_path):
    source = tmp_path / "squares.png"
    Image.fromarray(np.kron(np.eye(4)[:, :, None] * 255, np.ones((24, 24, 3))).astype(np.uint8)).save(source)
    page.click("button[role=tab]:has-text('ControlNet')")
    page.set_input_files("#controlnet_cn0_image input[type=file]", str(source))
    page.wait_for_selector("#controlnet_cn0_image img", timeout=30_000)
    page.click("#controlnet_cn0_preview")
    page.wait_for_selector("#controlnet_cn0_map img", timeout=30_000)
    page.wait_for_function("() => document.querySelector('#controlnet_cn0_message').innerText.includes('canny')",
                           timeout=30_000)
    model = page.locator("#controlnet_cn0_model input")
    model.fill(str(tiny_controlnet_dir))
    model.press("Enter")
    assert "Module: canny" in generate(page, "controlnet", "a red square", 5, wait_for="ControlNet 0")
    page.add_style_tag(content=VOLATILE_CSS.replace("#txt2img_notes", "#controlnet_notes, #controlnet_cn0_message"))
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    map_shot, result_shot = ARTIFACTS / "controlnet_map.png", ARTIFACTS / "controlnet_result.png"
    page.locator("#controlnet_cn0_map").screenshot(path=str(map_shot))
    page.locator("#controlnet_gallery").screenshot(path=str(result_shot))
    compare_to_golden(map_shot, "controlnet_map.png", update_golden)
    compare_to_golden(result_shot, "controlnet_result.png", update_golden)


def test_pose_editor_detects_a_person_and_a_click_moves_a_joint(page, tmp_path):
    from skimage import data

    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    page.click("button[role=tab]:has-text('ControlNet')")
    page.set_input_files("#controlnet_cn0_image input[type=file]", str(photo))
    page.wait_for_selector("#controlnet_cn0_image img", timeout=30_000)
    choose(page, "#controlnet_cn0_preprocessor", "pose (mediapipe)")
    page.fill("#controlnet_width input[type=number]", "256")
    page.press("#controlnet_width input[type=number]", "Enter")
    page.fill("#controlnet_height input[type=number]", "256")
    page.press("#controlnet_height input[type=number]", "Enter")
    page.click("#controlnet_cn0_preview")
    page.wait_for_function("() => document.querySelector('#controlnet_cn0_message').innerText.includes('pose')",
                           timeout=60_000)
    # The keypoints the page holds, asked of the same endpoint over HTTP (the code editor
    # renders only the lines in view, so the DOM is no place to read JSON from).
    import json

    from gradio_client import Client, handle_file

    pose_json = Client(page.url, verbose=False).predict(image=handle_file(str(photo)), preprocessor="pose (mediapipe)",
                                                         min_visibility=0.5, width=256, height=256,
                                                         api_name="/controlnet_cn0_preview")[1]
    nose = json.loads(pose_json)["people"][0]["pose_keypoints_2d"][:3]
    assert nose[2] > 0  # the nose was found
    image = page.locator("#controlnet_cn0_map img")
    box = image.bounding_box()
    natural = page.evaluate("() => { const i = document.querySelector('#controlnet_cn0_map img'); return [i.naturalWidth, i.naturalHeight]; }")
    scale = min(box["width"] / natural[0], box["height"] / natural[1])
    left = box["x"] + (box["width"] - natural[0] * scale) / 2
    top = box["y"] + (box["height"] - natural[1] * scale) / 2
    page.mouse.click(left + nose[0] * scale, top + nose[1] * scale)
    page.wait_for_function("() => document.querySelector('#controlnet_cn0_message').innerText.includes('Picked nose')",
                           timeout=30_000)
    page.mouse.click(left + 40 * scale, top + 40 * scale)
    page.wait_for_function("() => document.querySelector('#controlnet_cn0_message').innerText.includes('Moved nose')",
                           timeout=30_000)
    message = page.inner_text("#controlnet_cn0_message")
    x, y = (int(v) for v in message.split("(")[1].split(")")[0].split(","))
    assert abs(x - 40) <= 2 and abs(y - 40) <= 2
    page.click("#controlnet_cn0_pose_editor button")  # open the editor: the edited pose is the one used
    assert page.is_checked("#controlnet_cn0_use_edited input")


def test_prompt_boxes_count_tokens_live_as_a1111(page):
    page.fill("#txt2img_prompt textarea", "a (large:1.2) red circle")
    page.wait_for_function("() => document.querySelector('#txt2img_prompt_token_count')?.innerText.trim() === '4/75'",
                           timeout=20_000)
    page.fill("#txt2img_negative textarea", " ".join(["cat"] * 80))
    page.wait_for_function("() => document.querySelector('#txt2img_negative_token_count')?.innerText.trim() === '80/150'",
                           timeout=20_000)
