"""The everyday workflow in headless Chromium: keyboard, send-to, remembered settings, the
title's percent, the phone layout (issue 13)."""
from __future__ import annotations

import pytest

from test_browser import browser, generate, page  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


def set_number(page, elem: str, value) -> None:
    page.fill(f"#{elem} input[type=number]", str(value))
    page.press(f"#{elem} input[type=number]", "Enter")


def test_ctrl_enter_generates_and_the_tab_title_shows_the_percent_during_the_run(page):
    page.fill("#txt2img_prompt textarea", "a red circle")
    set_number(page, "txt2img_steps", 80)
    set_number(page, "txt2img_width", 128)
    set_number(page, "txt2img_height", 128)
    page.fill("#txt2img_seed input", "4242")
    page.press("#txt2img_seed input", "Tab")
    page.focus("#txt2img_prompt textarea")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(r"() => /^\[\d{1,3}%\] SD Studio$/.test(document.title)", timeout=120_000, polling=50)
    page.wait_for_function("() => document.querySelector('#txt2img_infotext textarea').value.includes('Seed: 4242')",
                           timeout=120_000)
    page.wait_for_function("() => document.title === 'SD Studio'", timeout=10_000)
    assert "a red circle" in page.input_value("#txt2img_infotext textarea")


def test_send_to_carries_the_image_and_prompt_to_img2img_inpaint_and_a_controlnet_unit(page):
    generate(page, "txt2img", "a green triangle", 31)
    page.wait_for_selector("#txt2img_gallery img", timeout=30_000)

    page.click("#txt2img_send_img2img")
    page.wait_for_selector("#img2img_init img", state="visible", timeout=15_000)
    assert page.input_value("#img2img_prompt textarea") == "a green triangle"
    assert page.input_value("#img2img_seed input") == "31"

    page.click("button[role=tab]:has-text('txt2img')")
    page.click("#txt2img_send_inpaint")
    page.wait_for_function("() => document.querySelector('#inpaint_prompt textarea')?.value === 'a green triangle'",
                           timeout=15_000)
    # The editor holds the image (its empty-canvas prompt is gone).
    page.wait_for_function("() => !(document.querySelector('#inpaint_editor')?.innerText ?? 'Upload an image').includes('Upload an image')",
                           timeout=15_000)

    page.click("button[role=tab]:has-text('txt2img')")
    page.click("#txt2img_send_controlnet")
    page.wait_for_selector("#controlnet_cn0_image img", state="visible", timeout=15_000)
    assert page.input_value("#controlnet_prompt textarea") == "a green triangle"
    assert page.is_checked("#controlnet_cn0_enabled input")


def test_a_reload_keeps_the_prompt_and_the_sliders(page):
    page.fill("#txt2img_prompt textarea", "remembered across reloads")
    set_number(page, "txt2img_steps", 33)
    set_number(page, "txt2img_cfg_scale", 4.5)
    set_number(page, "txt2img_width", 128)  # the page load also sets the model's native size: this comes after
    page.click("button[role=tab]:has-text('img2img')")
    page.fill("#img2img_prompt textarea", "an img2img prompt")
    page.wait_for_timeout(500)
    page.reload()
    page.wait_for_selector("#txt2img_generate", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value === 'remembered across reloads'",
                           timeout=15_000)
    assert page.input_value("#txt2img_steps input[type=number]") == "33"
    assert page.input_value("#txt2img_cfg_scale input[type=number]") == "4.5"
    page.wait_for_timeout(500)  # the native-size load event has run by now: the remembered width stays
    assert page.input_value("#txt2img_width input[type=number]") == "128"
    page.click("button[role=tab]:has-text('img2img')")
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value === 'an img2img prompt'",
                           timeout=15_000)


def test_on_a_phone_generate_and_interrupt_are_on_the_first_screen_and_every_tab_is_reachable(browser, app_server):  # noqa: F811
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1, is_mobile=True,
                                  has_touch=True)
    try:
        page = context.new_page()
        page.goto(app_server.url)
        page.wait_for_selector("#txt2img_generate", timeout=60_000)
        for button in ("#txt2img_generate", "#txt2img_interrupt"):
            box = page.locator(button).bounding_box()
            assert box and box["y"] >= 0 and box["y"] + box["height"] <= 844 and box["x"] + box["width"] <= 390, button
        for name, probe in (("img2img", "#img2img_generate"), ("Inpaint", "#inpaint_generate"),
                            ("ControlNet", "#controlnet_generate"), ("Diffusion lab", "#lab_forward_run"),
                            ("PNG info", "#pnginfo_image"), ("Models", "#models_info")):
            tab = page.locator(f"button[role=tab]:text-is('{name}')")
            if not tab.is_visible():  # tabs past the screen's width sit in the "…" menu
                page.click("button[aria-label='More tabs']")
                tab = page.locator(f".overflow-dropdown button:text-is('{name}')")
            tab.first.click()
            page.wait_for_selector(probe, state="visible", timeout=10_000)
            if name in ("img2img", "Inpaint", "ControlNet"):
                box = page.locator(probe).bounding_box()
                assert box["y"] + box["height"] <= 844, f"{name}: Generate below the first screen"
    finally:
        context.close()


def test_continue_from_an_inpaint_result_and_outpainting_extends_the_result_not_the_original(page, tmp_path):
    from PIL import Image

    from test_browser import upload_to_editor

    source = tmp_path / "original.png"  # 96 px: the result is 64 px (the tiny model's size)
    Image.new("RGB", (96, 96), (30, 120, 200)).save(source)
    page.click("button[role=tab]:has-text('Inpaint')")
    upload_to_editor(page, "#inpaint_editor", source)
    box = page.wait_for_selector("#inpaint_editor canvas", timeout=30_000).bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx - 40, cy)
    page.mouse.down()
    page.mouse.move(cx + 40, cy, steps=8)
    page.mouse.up()
    generate(page, "inpaint", "a white stripe", 5)
    set_number(page, "inpaint_mask_blur", 9)
    page.click("#inpaint_continue")
    # The result's parameters came back with it (Mask blur: 4), and its image is the canvas.
    page.wait_for_function("() => document.querySelector('#inpaint_mask_blur input[type=number]').value === '4'",
                           timeout=15_000)
    page.click("button:has-text('Outpainting')")
    set_number(page, "outpaint_right", 32)
    page.click("#outpaint_extend")
    # 64 px result + 32 px on the right (the original would have given 128 × 96).
    page.wait_for_function("() => document.querySelector('#inpaint_width input[type=number]').value === '96'",
                           timeout=30_000)
    assert page.input_value("#inpaint_height input[type=number]") == "64"


def test_save_as_defaults_writes_the_host_config_and_a_new_browser_opens_with_it(browser, app_server):  # noqa: F811
    import json

    config = app_server.outputs_dir.resolve().parent / "ui-config.json"  # beside the outputs folder
    first, second = browser.new_context(), browser.new_context()  # two browsers: no shared localStorage
    try:
        page = first.new_page()
        page.goto(app_server.url)
        page.wait_for_selector("#txt2img_generate", timeout=60_000)
        set_number(page, "txt2img_steps", 27)
        page.click("button[role=tab]:has-text('Models')")
        page.click("#ui_defaults_save")
        page.wait_for_function("() => (document.querySelector('#ui_defaults_message')?.innerText || '').includes('Saved')",
                               timeout=15_000)
        assert json.loads(config.read_text())["txt2img"]["steps"] == 27
        other = second.new_page()
        other.goto(app_server.url)
        other.wait_for_selector("#txt2img_generate", timeout=60_000)
        other.wait_for_function("() => document.querySelector('#txt2img_steps input[type=number]')?.value === '27'",
                                timeout=15_000)
    finally:
        config.unlink(missing_ok=True)  # other tests expect the declared defaults
        first.close()
        second.close()


def start_long_run(page, batch_count: int = 1) -> None:
    """A txt2img run long enough to act on while it goes (the tiny model, 128 px, 150 steps).
    Every text the notes show is logged in window.notesSeen: the final notes and the
    Interrupt/Skip button's own answer land in the same box, in either order."""
    page.fill("#txt2img_prompt textarea", "a long run")
    set_number(page, "txt2img_steps", 150)
    set_number(page, "txt2img_width", 128)
    set_number(page, "txt2img_height", 128)
    set_number(page, "txt2img_batch_count", batch_count)
    page.evaluate("""() => { window.notesSeen = []; const notes = document.querySelector('#txt2img_notes');
        new MutationObserver(() => window.notesSeen.push(notes.innerText)).observe(notes, {subtree: true, childList: true, characterData: true}); }""")
    page.click("#txt2img_generate")
    page.wait_for_function(r"() => /^\[\d{1,3}%\] SD Studio$/.test(document.title)", timeout=120_000, polling=50)


def notes_seen(page, text: str) -> str:
    page.wait_for_function(f"() => window.notesSeen.some((t) => t.includes({text!r}))", timeout=120_000)
    return next(t for t in page.evaluate("() => window.notesSeen") if text in t)


def test_esc_interrupts_the_run(page):
    start_long_run(page)
    page.keyboard.press("Escape")
    assert "interrupted" in notes_seen(page, "Interrupted at step")


def test_skip_finishes_the_current_image_and_the_batch_goes_on(page):
    start_long_run(page, batch_count=2)
    page.click("#txt2img_skip")
    notes = notes_seen(page, "image(s) in")
    assert "2 image(s)" in notes and "Skipped at step" in notes and "interrupted" not in notes
