"""X/Y grids without a model: A1111 value syntax, expanding one request into the grid's
requests, and the labelled grid image."""
from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from pipelines.core.errors import RequestError
from pipelines.core.grid import (AXES, MAX_GRID_CELLS, axis_values, compose_grid, grid_image, grid_infotext, parse_values,
                            plan_grid)
from pipelines.core.metadata import parse_infotext
from pipelines.core.requests import Control, ControlUnit, Img2ImgRequest, InpaintRequest, Limits, Sampling, Txt2ImgRequest


# ----------------------------------------------------------------- syntax
@pytest.mark.parametrize("axis, text, expected", [
    ("Steps", "1-10 (+2)", [1, 3, 5, 7, 9]),
    ("Steps", "10-20 (+5)", [10, 15, 20]),  # the end is included when a step lands on it
    ("Steps", "1-5", [1, 2, 3, 4, 5]),
    ("Steps", "5-1", [5, 4, 3, 2, 1]),
    ("Steps", "10-1 (-3)", [10, 7, 4, 1]),
    ("Steps", "1-10 [4]", [1, 4, 7, 10]),
    ("Steps", "1-10 [5]", [1, 3, 6, 8, 10]),  # evenly spaced, rounded to whole steps
    ("CFG scale", "3, 7.5, 12", [3.0, 7.5, 12.0]),
    ("CFG scale", "1-2 (+0.25)", [1.0, 1.25, 1.5, 1.75, 2.0]),
    ("CFG scale", "1-2 [3]", [1.0, 1.5, 2.0]),
    ("CFG scale", " 1 - 3 , 9 ", [1.0, 2.0, 3.0, 9.0]),
    ("DDIM η", "0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("Seed", "-1, 7", [-1, 7]),
    ("Scheduler", "euler a, DDIM,DPM++ 2M", ["Euler a", "DDIM", "DPM++ 2M"]),
])
def test_a1111_value_syntax(axis, text, expected):
    assert parse_values(AXES[axis], text) == expected


@pytest.mark.parametrize("axis, text, message", [
    ("Steps", "", "enter the values to try"),
    ("Steps", "1,,2", "empty item"),
    ("Steps", "12.5", "whole numbers"),
    ("Steps", "1.5-4", "whole-number range"),
    ("Steps", "1-10 (-2)", r"steps away from 10: use a step of \+2"),
    ("Steps", "1-10 (0)", "step of 0"),
    ("Steps", "1-10 [0]", "at least 1"),
    ("Steps", "1-500", "at most 100 cells"),
    ("CFG scale", "seven", "cannot read 'seven'"),
    ("CFG scale", "1-3 [x]", "cannot read"),
    ("Scheduler", "Euler, Karras 9000", "unknown scheduler 'Karras 9000'. Choose from: Euler,"),
])
def test_bad_values_get_messages_that_say_what_to_write(axis, text, message):
    with pytest.raises(RequestError, match=message):
        parse_values(AXES[axis], text)


# ----------------------------------------------------------------- expansion
def base_txt2img(**sampling) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt="a red circle", width=64, height=64,
                          sampling=Sampling(**{"steps": 6, "seed": 42, "scheduler": "DDIM", **sampling}))


def differing_fields(a, b, prefix="") -> set[str]:
    """Names of the fields (nested into sampling/control) in which two requests differ."""
    out = set()
    for f in fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("sampling", "control") and x is not None and y is not None:
            out |= differing_fields(x, y, f"{f.name}.")
        elif f.name == "units":
            for u, v in zip(x, y):
                out |= differing_fields(u, v, "units.")
        elif x != y:
            out.add(prefix + f.name)
    return out


def test_each_cell_differs_from_the_base_only_in_its_axes():
    base = Limits().normalize(base_txt2img())
    plan = plan_grid(base, axis_values("CFG scale", "3, 7.5, 12"), axis_values("Steps", "4, 8"))
    assert (plan.rows, plan.columns, len(plan.cells)) == (2, 3, 6)
    for index, cell in enumerate(plan.cells):
        row, column = divmod(index, 3)
        assert (cell.sampling.cfg_scale, cell.sampling.steps) == ((3.0, 7.5, 12.0)[column], (4, 8)[row])
        assert differing_fields(base, cell) <= {"sampling.cfg_scale", "sampling.steps"}
    assert plan.cell_label(4) == "CFG scale: 7.5, Steps: 8"


def test_cells_share_one_drawn_seed_unless_seed_is_an_axis():
    plan = plan_grid(base_txt2img(seed=-1), axis_values("CFG scale", "3, 7"), None)
    seeds = {cell.sampling.seed for cell in plan.cells}
    assert len(seeds) == 1 and seeds.pop() >= 0
    by_seed = plan_grid(base_txt2img(), axis_values("Seed", "5-7"), axis_values("Scheduler", "Euler, DDIM"))
    assert [c.sampling.seed for c in by_seed.cells] == [5, 6, 7, 5, 6, 7]
    assert [c.sampling.scheduler for c in by_seed.cells] == ["Euler"] * 3 + ["DDIM"] * 3


def test_grid_cells_are_single_images_and_say_so():
    plan = plan_grid(base_txt2img(batch_size=2, batch_count=3), axis_values("Steps", "2, 3"), None)
    assert all((c.sampling.batch_size, c.sampling.batch_count) == (1, 1) for c in plan.cells)
    assert any("batch size and batch count are set to 1" in note for note in plan.notes)


def unit(weight=1.0) -> ControlUnit:
    return ControlUnit(model="some/controlnet", image=Image.new("RGB", (64, 64)), weight=weight)


def test_control_weight_and_strength_and_repaint_r_reach_their_fields():
    init, mask = Image.new("RGB", (64, 64), "white"), Image.new("L", (64, 64), 255)
    controlled = Img2ImgRequest(prompt="x", width=64, height=64, init_image=init, sampling=Sampling(seed=1),
                                control=Control(units=(unit(), unit(0.5))))
    plan = plan_grid(controlled, axis_values("Control weight", "0, 1.5"), axis_values("Denoising strength", "0.3, 0.6"))
    assert [[u.weight for u in c.control.units] for c in plan.cells] == [[0.0, 0.0], [1.5, 1.5]] * 2
    assert [c.strength for c in plan.cells] == [0.3, 0.3, 0.6, 0.6]
    base = Limits().normalize(controlled)
    assert all(differing_fields(base, c) <= {"units.weight", "strength"} for c in plan.cells)
    inpaint = InpaintRequest(prompt="x", width=64, height=64, init_image=init, mask=mask, sampling=Sampling(seed=1))
    assert [c.repaint_r for c in plan_grid(inpaint, axis_values("RePaint r", "1-3"), None).cells] == [1, 2, 3]


@pytest.mark.parametrize("base, x, y, message", [
    (base_txt2img(), ("Denoising strength", "0.5"), None, "needs an init image"),
    (base_txt2img(), ("Control weight", "0.5"), None, "needs an enabled ControlNet unit"),
    (base_txt2img(), ("RePaint r", "2"), None, "RePaint mode"),
    (base_txt2img(cfg=False), ("CFG scale", "3, 7"), None, "CFG is off"),
    (base_txt2img(), ("CFG scale", "3, 50"), None, "X axis, CFG scale: 50 — CFG scale must be between 1 and 30"),
    (base_txt2img(scheduler="Euler a"), ("DDIM η", "0, 1"), None, "only acts with the DDIM scheduler"),
    (base_txt2img(), ("Steps", "10, 400"), None, "over this host's limit of 150"),
    (base_txt2img(), ("Steps", "2, 3"), ("Steps", "4"), "X and Y both vary Steps"),
    (base_txt2img(), ("CFG scale", "1-11"), ("Steps", "1-10"), "110 cells; at most 100"),
    (base_txt2img(), None, None, "Choose a parameter"),
])
def test_grids_that_cannot_work_are_refused_with_a_reason(base, x, y, message):
    with pytest.raises(RequestError, match=message):
        plan_grid(base, axis_values(*x) if x else None, axis_values(*y) if y else None)


def test_eta_axis_is_fine_when_the_other_axis_brings_ddim():
    plan = plan_grid(base_txt2img(scheduler="Euler a"), axis_values("DDIM η", "0, 1"), axis_values("Scheduler", "Euler a, DDIM"))
    assert len(plan.cells) == 4 and MAX_GRID_CELLS == 100


# ----------------------------------------------------------------- the image
def tiles(n, size=(64, 48)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_grid_image_places_every_cell_exactly_and_labels_in_the_margins():
    images = tiles(6)
    grid = compose_grid(images, 3, ["CFG scale: 3", "CFG scale: 7.5", "CFG scale: 12"], ["Steps: 10", "Steps: 20"])
    left, top = grid.width - 3 * 64, grid.height - 2 * 48
    assert left > 0 and top > 0  # room for the labels
    array = np.asarray(grid)
    for index, image in enumerate(images):
        row, column = divmod(index, 3)
        cell = array[top + row * 48: top + (row + 1) * 48, left + column * 64: left + (column + 1) * 64]
        assert np.array_equal(cell, np.asarray(image))
    dark = array.max(axis=-1) < 100
    assert dark[:top, left:].any() and dark[top:, :left].any()  # column and row labels were drawn
    assert not dark[:top, :left].any()  # the corner stays empty


def test_grid_without_legend_is_just_the_tiles_and_missing_cells_are_grey():
    images = tiles(3) + [None]
    grid = compose_grid(images, 2, ["a", "b"], ["c", "d"], legend=False)
    assert grid.size == (128, 96)
    assert np.all(np.asarray(grid)[48:, 64:] == 224)


def test_one_axis_grid_has_only_column_labels():
    plan = plan_grid(base_txt2img(), axis_values("Steps", "2, 4, 6"), None)
    grid = grid_image(plan, tiles(3))
    assert grid.width == 3 * 64 and grid.height > 48


def test_grid_infotext_is_a_cell_infotext_plus_the_axes():
    plan = plan_grid(base_txt2img(), axis_values("CFG scale", "3, 7.5"), axis_values("Scheduler", "Euler, DDIM"))
    text = grid_infotext(plan, "a red circle\nSteps: 6, Sampler: Euler, CFG scale: 3, Seed: 42, Version: sd-studio 0.1")
    params = parse_infotext(text)
    assert params["Prompt"] == "a red circle" and params["Seed"] == "42"
    assert (params["X Type"], params["X Values"], params["Y Type"], params["Y Values"]) == (
        "CFG scale", "3, 7.5", "Scheduler", "Euler, DDIM")
    assert text.endswith("Version: sd-studio 0.1")


def test_clip_skip_axis_sets_each_cell_and_refuses_values_outside_1_to_12():
    base = Txt2ImgRequest(prompt="a red circle", width=64, height=64, sampling=Sampling(seed=3))
    plan = plan_grid(base, axis_values("Clip skip", "1, 2"), None)
    assert [cell.clip_skip for cell in plan.cells] == [1, 2]
    with pytest.raises(RequestError, match="Clip skip"):
        plan_grid(base, axis_values("Clip skip", "0, 13"), None)
