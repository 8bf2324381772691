"""The X/Y grid accordion every generation tab includes: choose up to two parameters and
their values; Generate then runs the whole grid as one job (GenerationService.stream_grid)
instead of a single request. The grid logic itself lives in pipelines/core/grid.py."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines.core.grid import NO_AXIS, SYNTAX_HELP, axes_for, axis_values, grid_image, plan_grid

from .common import GenerationService
from .fields import Form, take

EXAMPLES = {
    "CFG scale": "3, 7.5, 12", "Steps": "10-40 [4]", "Denoising strength": "0.3-0.9 (+0.2)",
    "Scheduler": "Euler a, DDIM, DPM++ 2M", "DDIM η": "0, 0.5, 1", "Seed": "1-4",
    "Control weight": "0-1.5 [4]", "RePaint r": "1-4", "Clip skip": "1, 2",
}


@dataclass
class GridControls:
    x_type: gr.Dropdown
    x_values: gr.Textbox
    y_type: gr.Dropdown
    y_values: gr.Textbox
    legend: gr.Checkbox


GRID_INPUTS = ("x_type", "x_values", "y_type", "y_values", "draw_legend")  # the grid's API parameter names


def grid_controls(form: Form, *request_classes) -> GridControls:
    """The accordion, offering the axes of the requests this tab makes; its inputs join the form."""
    tab = form.tab
    choices = [NO_AXIS, *axes_for(*request_classes)]
    with gr.Accordion("X/Y grid", open=False, elem_id=f"{tab}_xy"):
        gr.Markdown(f"Vary one or two parameters; Generate then makes one image per cell. Values: {SYNTAX_HELP}.")
        with gr.Row():
            x_type = form.add("x_type", gr.Dropdown(choices, value=NO_AXIS, label="X type", elem_id=f"{tab}_xy_x_type", scale=1))
            x_values = form.add("x_values", gr.Textbox(value="", label="X values", elem_id=f"{tab}_xy_x_values", scale=2))
        with gr.Row():
            y_type = form.add("y_type", gr.Dropdown(choices, value=NO_AXIS, label="Y type", elem_id=f"{tab}_xy_y_type", scale=1))
            y_values = form.add("y_values", gr.Textbox(value="", label="Y values", elem_id=f"{tab}_xy_y_values", scale=2))
        legend = form.add("draw_legend", gr.Checkbox(value=True, label="Draw legend", info="row and column labels on the grid image",
                                                     elem_id=f"{tab}_xy_legend"))

    def example(axis):  # show the syntax for the chosen parameter
        return gr.update(placeholder=EXAMPLES.get(axis, ""))

    x_type.change(example, x_type, x_values, queue=False, api_visibility="private")
    y_type.change(example, y_type, y_values, queue=False, api_visibility="private")
    return GridControls(x_type, x_values, y_type, y_values, legend)


def generate(service: GenerationService, build_request, values: dict, session: str, progress):
    """A tab's Generate: its one request, or — when an axis is set — the grid around it.
    Takes the grid's inputs out of values (build_request reads the rest when it runs)."""
    grid = take(values, GRID_INPUTS)
    x_type, x_text, y_type, y_text = (grid.get(name) for name in GRID_INPUTS[:4])
    legend = grid.get("draw_legend", True)
    if (x_type or NO_AXIS) == NO_AXIS and (y_type or NO_AXIS) == NO_AXIS:
        yield from service.stream(build_request, session, progress)
        return

    def build_plan():
        x, y = axis_values(x_type, x_text or ""), axis_values(y_type, y_text or "")
        return plan_grid(build_request(), x, y, service.limits, max_cells=service.limits.max_grid_cells)

    yield from service.stream_grid(build_plan, lambda plan, images: grid_image(plan, images, bool(legend)),
                                   session, progress)
