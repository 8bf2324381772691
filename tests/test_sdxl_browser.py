"""In Chromium: the SDXL accordion of every generation tab appears when an SDXL model is loaded
through the Models tab and goes away when an SD 1.x model is loaded again."""
from __future__ import annotations

import pytest

from conftest import AppServer
from test_browser import browser  # noqa: F401 — the shared Chromium fixture

pytestmark = [pytest.mark.browser, pytest.mark.slow]

TABS = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "Inpaint", "controlnet": "ControlNet"}


@pytest.fixture(scope="module")
def sd_server(tiny_model_dir, tmp_path_factory):
    server = AppServer(["--model", str(tiny_model_dir), "--outputs-dir", str(tmp_path_factory.mktemp("xlb-out"))],
                       log_path=tmp_path_factory.mktemp("xlb-logs") / "app.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def load(page, source: str, family: str) -> None:
    page.click("button[role=tab]:has-text('Models')")
    box = page.locator("#models_source input")
    box.fill(source)
    box.press("Enter")
    page.click("#models_load")
    page.wait_for_function(f"document.querySelector('#status').innerText.includes('({family},')", timeout=120_000)


def expect_sdxl_fields(page, shown: bool) -> None:
    """Every generation tab shows (or hides) its SDXL accordion; waits for the load event's update."""
    for tab, title in TABS.items():
        page.click(f"button[role=tab]:has-text('{title}')")
        page.wait_for_selector(f"#{tab}_generate", state="visible")
        page.wait_for_selector(f"#{tab}_sdxl", state="visible" if shown else "hidden", timeout=30_000)
        assert page.locator(f"#{tab}_sdxl").is_visible() is shown, tab


def test_the_sdxl_fields_appear_in_every_tab_with_an_sdxl_model_and_go_with_it(browser, sd_server, tmp_path,  # noqa: F811
                                                                               tiny_model_dir):
    from tiny_sdxl import save_tiny_xl_model

    xl = save_tiny_xl_model(tmp_path / "tiny-sdxl")
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    page = context.new_page()
    try:
        page.goto(sd_server.url)
        page.wait_for_selector("#txt2img_generate", timeout=60_000)
        expect_sdxl_fields(page, False)
        load(page, str(xl), "SDXL")
        expect_sdxl_fields(page, True)
        page.click("button[role=tab]:has-text('img2img')")
        page.click("#img2img_sdxl button.label-wrap")  # open the accordion
        page.wait_for_selector("#img2img_original_width", state="visible", timeout=10_000)
        assert page.locator("#img2img_refiner").count() == 0  # the refiner is txt2img's
        load(page, str(tiny_model_dir), "SD")
        expect_sdxl_fields(page, False)
    finally:
        context.close()
