"""Issue 13's fixed UI paths in headless Chromium: the inpaint mask outline and the Models
tab's text. Uses test_browser.py's browser set-up."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from test_browser import browser, page, upload_to_editor  # noqa: F401 — pytest fixtures and helper

pytestmark = pytest.mark.browser


def test_the_mask_outline_checkbox_shows_the_outline_without_an_error(page, tmp_path):
    source, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(source)
    mask_image = Image.new("L", (64, 64), 0)
    mask_image.paste(255, (16, 16, 48, 48))
    mask_image.save(mask)
    page.click("button[role=tab]:has-text('Inpaint')")
    upload_to_editor(page, "#inpaint_editor", source)
    page.set_input_files("#inpaint_mask_upload input[type=file]", str(mask))
    page.wait_for_selector("#inpaint_mask_upload img", timeout=30_000)
    page.fill("#inpaint_steps input[type=number]", "3")
    page.press("#inpaint_steps input[type=number]", "Tab")
    page.click("#inpaint_generate")
    page.wait_for_selector("#inpaint_gallery img", timeout=120_000)
    page.click("#inpaint_outline input")
    page.wait_for_selector("#inpaint_outline_image img", timeout=30_000)
    assert page.locator(".toast-body.error").count() == 0  # the old code raised 'int' object is not iterable


def test_the_models_tab_describes_what_is_loaded_when_the_page_opens(browser, app_server, tmp_path):  # noqa: F811
    # An img2img run derives the img2img pipeline after the app started.
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64), "gray").save(init)
    Client(app_server.url, verbose=False).predict(prompt="x", init_image=handle_file(str(init)), strength=0.5,
                                                  scheduler="Euler", steps=2, width=64, height=64, api_name="/img2img")
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    fresh = context.new_page()
    try:
        fresh.goto(app_server.url)
        fresh.click("button[role=tab]:has-text('Models')")
        fresh.wait_for_function("() => (document.querySelector('#models_info') || {}).innerText?.includes('img2img')",
                                timeout=30_000)
    finally:
        context.close()
