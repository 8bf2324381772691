"""X/Y grids and the Diffusion lab through the real server (`python app.py` on the tiny model)
with gradio_client, as an API user drives them."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from PIL import Image

from pipelines.core.grid import CELLS_KEY
from pipelines.core.metadata import parse_infotext, read_infotext
from test_app_http import cn_args, control_image, t2i_args, wait_until_running  # noqa: F401 — control_image: fixture


def grid_args(x_type="CFG scale", x_values="3, 9", y_type="Steps", y_values="2, 3", legend=True, **t2i) -> dict:
    """/txt2img's inputs by name (gradio_client fills every other input with its default)."""
    names = ("prompt", "negative_prompt", "scheduler", "steps", "cfg", "cfg_scale", "eta", "seed", "batch_size",
             "batch_count", "width", "height")
    values = dict(zip(names, t2i_args(**{"seed": 8, "scheduler": "DDIM", **t2i})))
    return {**values, "x_type": x_type, "x_values": x_values, "y_type": y_type, "y_values": y_values, "draw_legend": legend}


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def test_txt2img_grid_returns_the_grid_then_every_cell_with_its_infotext(client, app_server):
    preview, gallery, notes, infotext = client.predict(**grid_args(), api_name="/txt2img")
    assert len(gallery) == 1 + 4 and "X/Y grid: 4 of 4 cells" in notes
    grid = Image.open(gallery[0]["image"])
    assert grid.format == "PNG" and grid.width > 2 * 64 and grid.height > 2 * 64  # two columns, two rows, labels
    params = parse_infotext(read_infotext(grid))
    assert (params["X Type"], params["X Values"], params["Y Type"], params["Y Values"]) == ("CFG scale", "3, 9", "Steps", "2, 3")
    assert infotext == read_infotext(grid)
    cell_texts = json.loads(grid.info[CELLS_KEY])
    expected = [("3", "2"), ("9", "2"), ("3", "3"), ("9", "3")]  # row by row: Y outer, X inner
    for item, cell_text, (cfg, steps) in zip(gallery[1:], cell_texts, expected):
        cell = parse_infotext(read_infotext(Image.open(item["image"])))
        assert (cell["CFG scale"], cell["Steps"], cell["Seed"]) == (cfg, steps, "8")
        assert parse_infotext(cell_text)["CFG scale"] == cfg
        assert item["caption"] == f"CFG scale: {float(cfg):g}, Steps: {steps}"
    saved = sorted((app_server.outputs_dir / "txt2img-grids").rglob("*-grid.png"))
    assert saved and parse_infotext(read_infotext(Image.open(saved[-1])))["X Type"] == "CFG scale"


def test_a_grid_cell_is_the_image_the_same_single_request_makes(client):
    gallery = client.predict(**grid_args(x_values="3", y_type="Nothing", y_values=""), api_name="/txt2img")[1]
    args = t2i_args(seed=8, scheduler="DDIM")
    args[5] = 3  # CFG scale
    single = client.predict(*args, api_name="/txt2img")[1]
    assert np.array_equal(np.asarray(Image.open(gallery[1]["image"])), np.asarray(Image.open(single[0]["image"])))


def test_controlnet_grid_over_control_weight(client, control_image, tiny_controlnet_dir):
    from gradio_client import handle_file

    args = cn_args(handle_file(str(control_image)), tiny_controlnet_dir) | dict(x_type="Control weight", x_values="0, 1.5",
                                                                                 draw_legend=False)
    preview, gallery, notes, infotext = client.predict(**args, api_name="/controlnet")
    assert len(gallery) == 1 + 2 and "X/Y grid: 2 of 2 cells" in notes
    weights = [parse_infotext(read_infotext(Image.open(item["image"])))["ControlNet 0"] for item in gallery[1:]]
    assert "Weight: 0," in weights[0] and "Weight: 1.5," in weights[1]
    assert Image.open(gallery[0]["image"]).size == (2 * 64, 64)  # no legend: just the two cells


@pytest.mark.parametrize("change, message", [
    (dict(x_values="3, lots"), "cannot read 'lots'"),
    (dict(x_type="Steps", x_values="2"), "X and Y both vary Steps"),
    (dict(x_type="Seed", x_values="3, -5"), "X axis, Seed: -5 — Seed must be between -1"),
    (dict(x_type="Denoising strength", x_values="0.5"), "not in the list of choices"),  # txt2img offers no strength axis
    (dict(x_values="1-11", y_values="1-10"), "110 cells; at most 100"),
])
def test_bad_grids_get_clear_messages(client, change, message):
    with pytest.raises(AppError, match=message):
        client.predict(**grid_args(**change), api_name="/txt2img")


def test_interrupting_a_grid_keeps_the_finished_cells(app_server):
    client = Client(app_server.url, verbose=False)
    job = client.submit(**grid_args(x_type="Steps", x_values="2, 150, 150", y_type="Nothing", y_values="",
                                   scheduler="Euler"), api_name="/txt2img")
    wait_until_running(job)
    deadline = time.time() + 60
    while not any("Cell 2/3" in (p.desc or "") for p in job.status().progress_data or []):
        assert not job.done() and time.time() < deadline, "the grid finished before it could be interrupted"
        time.sleep(0.05)
    assert client.predict(api_name="/interrupt") == "Interrupting…"
    preview, gallery, notes, infotext = job.result(timeout=120)
    assert "X/Y grid: 1 of 3 cells" in notes and "interrupted" in notes
    assert len(gallery) == 1 + 1 and parse_infotext(infotext)["Steps"] == "2"
    grid = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    assert (grid[-32:, -32:] == 224).all()  # the unfinished cells are left grey


# ----------------------------------------------------------------- the lab's endpoints
def test_lab_forward_endpoint_shows_x_t_and_its_weights(client):
    latent, pixel, weights = client.predict(None, 1000, 0, api_name="/lab_forward")
    assert Image.open(latent).size == Image.open(pixel).size == (256, 256)  # the tiny model's 64 px, enlarged ×4
    assert "t = 1000 of 1000" in weights and "SNR" in weights


def test_lab_schedules_endpoint_plots_and_tabulates(client):
    plot, table = client.predict(api_name="/lab_schedules")
    assert plot["type"] == "matplotlib" and plot["plot"].startswith("data:image/png;base64,")
    assert "scaled-linear, SD" in table and "this model" in table


def test_lab_trajectory_and_cfg_endpoints(client):
    strip, notes = client.predict("a red circle", "", 4, 2, 5, 1, api_name="/lab_trajectory")
    assert Image.open(strip).width > 2 * 64 and "2 frames per run" in notes
    predictions, finals, notes = client.predict("a red circle", "", 4, 2, 5, "1, 5", 1, api_name="/lab_cfg")
    assert Image.open(predictions).width > 3 * 64 and Image.open(finals).width > 2 * 64
    assert "‖ε_cond − ε_uncond‖" in notes
    with pytest.raises(AppError, match="Inspect step must be between 1 and the 4 steps"):
        client.predict("a red circle", "", 4, 9, 5, "1, 5", 1, api_name="/lab_cfg")


def test_interrupt_stops_a_lab_run_between_steps_with_a_message(app_server):
    """The lab runs as this session's job: the session's Interrupt (any tab's, or /interrupt) stops it."""
    client = Client(app_server.url, verbose=False)
    job = client.submit("a red circle", "", 100, 50, 5, 1, api_name="/lab_trajectory")
    wait_until_running(job)
    deadline = time.time() + 60
    while not any("Step" in (p.desc or "") for p in job.status().progress_data or []):
        assert not job.done() and time.time() < deadline, "the trajectory finished before it could be interrupted"
        time.sleep(0.05)
    assert client.predict(api_name="/interrupt") == "Interrupting…"
    with pytest.raises(AppError, match=r"Interrupted at step \d+ of 100"):
        job.result(timeout=120)
    strip, notes = client.predict("a red circle", "", 4, 2, 5, 1, api_name="/lab_trajectory")  # the device is free
    assert "2 frames per run" in notes
