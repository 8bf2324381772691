"""Issue 13 over HTTP on the real server (tiny model): hires fix, variation seed, batch grid,
styles, the inpaint outline view, and the fixed messages."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pipelines.core.metadata import parse_infotext, read_infotext

def t2i(prompt="a red circle", steps=4, seed=5, width=64, height=64, batch_size=1, scheduler="Euler",
        subseed=-1, subseed_strength=0.0, resize_from=(0, 0), hires=None) -> dict:
    """The /txt2img inputs by name (the hires fix off unless hires says otherwise)."""
    return dict(prompt=prompt, scheduler=scheduler, steps=steps, seed=seed, batch_size=batch_size, width=width,
                height=height, subseed=subseed, subseed_strength=subseed_strength, seed_resize_from_w=resize_from[0],
                seed_resize_from_h=resize_from[1], **(hires or {}))


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def image_of(client, **kwargs) -> tuple[np.ndarray, str]:
    _, gallery, notes, infotext = client.predict(**t2i(**kwargs), api_name="/txt2img")
    return np.asarray(Image.open(gallery[0]["image"])), infotext


@pytest.mark.parametrize("hires, size, keys", [
    (dict(hr_upscaler="Latent", hr_scale=2, hr_second_pass_steps=3, denoising_strength=0.6), (128, 128),
     {"Hires upscale": "2", "Hires steps": "3", "Hires upscaler": "Latent", "Denoising strength": "0.6"}),
    (dict(hr_upscaler="Lanczos", hr_resize_x=96, hr_resize_y=0, denoising_strength=0.5), (96, 96),
     {"Hires resize": "96x0", "Hires upscaler": "Lanczos", "Denoising strength": "0.5"}),
])
def test_hires_fix_returns_the_upscaled_size_and_png_info_reads_its_parameters(client, hires, size, keys):
    _, gallery, notes, infotext = client.predict(**t2i(hires=dict(enable_hr=True) | hires), api_name="/txt2img")
    image = Image.open(gallery[0]["image"])
    assert image.size == size
    _, parsed = client.predict(handle_file(gallery[0]["image"]), api_name="/png_info")
    assert parsed["Size"] == "64x64"  # the first pass's size, as A1111 writes it
    assert {k: parsed.get(k) for k in keys} == keys


def test_hires_fix_over_the_host_limit_is_shrunk_with_a_note(client):
    # the fixture's server allows 256 px: 96 × 4 would be 384
    _, gallery, notes, _ = client.predict(**t2i(width=96, height=64, hires=dict(enable_hr=True, hr_scale=4, denoising_strength=0.5)),
                                          api_name="/txt2img")
    assert Image.open(gallery[0]["image"]).size == (256, 168)  # 96 × 8/3, 64 × 8/3 down to a multiple of 8
    assert "over this host's limit" in notes and "upscale by 2.67 instead of 4" in notes


def test_variation_strength_0_is_the_plain_seed_and_1_is_the_variation_seeds_image(client):
    plain, _ = image_of(client, seed=5)
    zero, _ = image_of(client, seed=5, subseed=77, subseed_strength=0.0)
    assert np.array_equal(plain, zero)
    # A deterministic sampler: ancestral ones draw later noise from the main seed (as A1111)
    full, _ = image_of(client, seed=5, subseed=77, subseed_strength=1.0)
    other, _ = image_of(client, seed=77)
    assert np.array_equal(full, other)
    half, infotext = image_of(client, seed=5, subseed=77, subseed_strength=0.5)
    assert not np.array_equal(half, plain) and not np.array_equal(half, other)
    assert "Variation seed: 77, Variation seed strength: 0.5" in infotext


def test_seed_resize_is_recorded_and_changes_the_noise(client):
    plain, _ = image_of(client, seed=5)
    resized, infotext = image_of(client, seed=5, resize_from=(32, 32))
    assert not np.array_equal(plain, resized) and "Seed resize from: 32x32" in infotext


def test_a_batch_also_yields_a_labelled_grid_saved_with_its_parameters(client, app_server):
    _, gallery, notes, _ = client.predict(**t2i(seed=40, batch_size=3), api_name="/txt2img")
    assert len(gallery) == 4 and gallery[-1]["caption"] == "grid"
    grid = Image.open(gallery[-1]["image"])
    assert grid.width >= 2 * 64 and grid.height > 2 * 64  # 2×2 layout plus the seed labels
    assert parse_infotext(read_infotext(grid))["Seed"] == "40"
    assert sorted((app_server.outputs_dir / "txt2img-grids").rglob("*-grid.png"))
    assert "Grid saved to" in notes
    # a single image makes no grid
    assert len(client.predict(**t2i(seed=41), api_name="/txt2img")[1]) == 1


def test_result_note_puts_the_worker_and_the_saved_path_in_separate_paragraphs(client):
    notes = client.predict(**t2i(steps=2), api_name="/txt2img")[2]
    first, *rest = notes.split("\n\n")
    assert " on " in first and "Saved to" not in first and any(p.startswith("Saved to") for p in rest)


def test_seed_out_of_range_message_writes_the_limit_in_full(client):
    with pytest.raises(AppError, match=r"Seed must be between -1 and 4294967295"):
        client.predict(**t2i(seed=2**33), api_name="/txt2img")


def test_styles_import_and_apply(client, tmp_path):
    csv = tmp_path / "styles.csv"
    csv.write_text('name,prompt,negative_prompt\nCinematic,"{prompt}, film grain",blurry\nBright,sunlit,\n')
    assert client.predict(handle_file(str(csv)), api_name="/txt2img_import_styles")[-1] == "Imported 2 style(s)."
    prompt, negative, chosen = client.predict("a cat", "ugly", ["Cinematic", "Bright"], api_name="/txt2img_apply_styles")
    assert (prompt, negative) == ("a cat, film grain, sunlit", "ugly, blurry")
    with pytest.raises(AppError, match="not in the list of choices"):  # Gradio checks the dropdown
        client.predict("a cat", "", ["Nope"], api_name="/txt2img_apply_styles")


def test_mask_outline_is_drawn_on_the_result_preview(client, tmp_path):
    result = Image.new("RGB", (64, 64), (0, 128, 0))
    result.save(tmp_path / "result.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    # the live-preview image is the input: Gradio hands it over as a numpy array (the bug)
    shown = client.predict(True, None, handle_file(str(tmp_path / "mask.png")), False,
                           handle_file(str(tmp_path / "result.png")), api_name="/inpaint_outline")
    assert shown["visible"] is True  # an update: shown, with the picture
    outlined = np.asarray(Image.open(shown["value"]).convert("RGB"))
    magenta = np.all(outlined == (255, 0, 255), axis=-1)
    assert magenta[14:50, 14:50].any() and not magenta[:10].any() and not magenta[24:40, 24:40].any()
