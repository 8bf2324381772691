"""X/Y grid and Diffusion lab in headless Chromium, with golden screenshots (refresh them
with `--update-golden`). Uses test_browser.py's browser set-up and comparison."""
from __future__ import annotations

import base64
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from conftest import ARTIFACTS
from test_browser import VOLATILE_CSS, browser, compare_to_golden, page  # noqa: F401 — pytest fixtures

pytestmark = pytest.mark.browser


def choose(page, dropdown: str, option: str) -> None:
    page.click(f"{dropdown} input")
    page.click(f"li[aria-label='{option}']")


def fetch_image(page, selector: str) -> Image.Image:
    src = page.locator(selector).first.get_attribute("src")
    if src.startswith("data:"):  # matplotlib plots arrive inline
        return Image.open(BytesIO(base64.b64decode(src.split(",", 1)[1])))
    return Image.open(BytesIO(page.request.get(src).body()))


def test_txt2img_grid_in_the_browser_matches_the_golden_screenshot(page, update_golden):
    ARTIFACTS.mkdir(exist_ok=True)
    page.fill("#txt2img_prompt textarea", "a large red circle on a white background")
    page.fill("#txt2img_seed input", "1234")
    page.press("#txt2img_seed input", "Tab")
    page.click("#txt2img_xy button.label-wrap")  # open the X/Y grid accordion
    choose(page, "#txt2img_xy_x_type", "CFG scale")
    page.fill("#txt2img_xy_x_values textarea", "2, 6, 10")
    choose(page, "#txt2img_xy_y_type", "Steps")
    page.fill("#txt2img_xy_y_values textarea", "3-6 [2]")
    page.click("#txt2img_generate")
    page.wait_for_function("() => document.querySelector('#txt2img_notes')?.innerText.includes('X/Y grid: 6 of 6 cells')",
                           timeout=120_000)
    infotext = page.input_value("#txt2img_infotext textarea")
    assert "X Type: CFG scale, X Values: \"2, 6, 10\", Y Type: Steps, Y Values: 3-6 [2]" in infotext
    assert page.locator("#txt2img_gallery img").count() == 1 + 6
    grid = fetch_image(page, "#txt2img_gallery img")
    assert grid.width > 3 * 64 and grid.height > 2 * 64
    page.add_style_tag(content=VOLATILE_CSS)
    page.locator("#txt2img_gallery button.thumbnail-item").first.click()  # the grid, shown whole
    page.wait_for_selector("#txt2img_gallery .preview img", timeout=10_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    shot = ARTIFACTS / "xy_grid.png"
    page.locator("#txt2img_gallery").screenshot(path=str(shot))
    compare_to_golden(shot, "xy_grid.png", update_golden)


def test_diffusion_lab_in_the_browser_matches_the_golden_screenshots(page, update_golden):
    ARTIFACTS.mkdir(exist_ok=True)
    page.click("button[role=tab]:has-text('Diffusion lab')")
    page.click("#lab_forward_run")
    page.wait_for_function("() => document.querySelector('#lab_forward_weights')?.innerText.includes('t = 500 of 1000')",
                           timeout=60_000)
    page.wait_for_selector("#lab_forward_latent img", timeout=30_000)
    page.wait_for_selector("#lab_forward_pixel img", timeout=30_000)
    assert fetch_image(page, "#lab_forward_latent img").size == (256, 256)  # 64 px, enlarged for display
    page.mouse.move(0, 0)
    page.wait_for_timeout(500)
    shot = ARTIFACTS / "lab_forward.png"
    page.locator("#lab_forward_outputs").screenshot(path=str(shot))
    compare_to_golden(shot, "lab_forward.png", update_golden)

    page.click("button[role=tab]:has-text('Schedules')")
    page.click("#lab_schedules_run")
    page.wait_for_selector("#lab_schedules_plot img", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#lab_schedules_table')?.innerText.includes('this model')",
                           timeout=30_000)
    page.wait_for_timeout(500)
    shot = ARTIFACTS / "lab_schedules.png"
    page.locator("#lab_schedules_plot").screenshot(path=str(shot))
    compare_to_golden(shot, "lab_schedules.png", update_golden)
    plot = np.asarray(fetch_image(page, "#lab_schedules_plot img").convert("RGB"))
    assert (np.abs(plot.astype(int) - [31, 119, 180]).sum(-1) < 30).any()  # the first curve's colour was drawn
