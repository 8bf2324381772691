"""SDXL-only fields (size/crop conditioning, refiner), shown only while an SDXL model is loaded.

The tabs never branch on the model family: the request carries these fields whatever is
loaded (0 = "the generation size", no refiner), and the pipelines/ side applies them where
the family uses them. This module only decides what the user sees."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from pipelines import catalog

SDXL_FIELDS = ("original_width", "original_height", "target_width", "target_height", "crop_left", "crop_top",
               "refiner", "refiner_switch")  # API parameter names, in order


def family_of(backend) -> str:
    return getattr(backend, "family_name", "SD")


@dataclass
class SDXLControls:
    group: gr.Accordion
    fields: list  # in SDXL_FIELDS order

    def inputs(self) -> list:
        return list(self.fields)


def sdxl_controls(tab: str, backend, refiner: bool = True) -> SDXLControls:
    visible = family_of(backend) == "SDXL"
    with gr.Accordion("SDXL conditioning", open=False, visible=visible, elem_id=f"{tab}_sdxl") as group:
        gr.Markdown("SDXL was trained knowing each image's original size and crop: a small original size "
                    "looks upscaled, a crop offset looks cropped. 0 = the generation size.")
        with gr.Row():
            original_w = gr.Number(0, precision=0, minimum=0, label="Original width", elem_id=f"{tab}_original_width")
            original_h = gr.Number(0, precision=0, minimum=0, label="Original height", elem_id=f"{tab}_original_height")
        with gr.Row():
            target_w = gr.Number(0, precision=0, minimum=0, label="Target width", elem_id=f"{tab}_target_width")
            target_h = gr.Number(0, precision=0, minimum=0, label="Target height", elem_id=f"{tab}_target_height")
        with gr.Row():
            crop_left = gr.Number(0, precision=0, minimum=0, label="Crop left", elem_id=f"{tab}_crop_left")
            crop_top = gr.Number(0, precision=0, minimum=0, label="Crop top", elem_id=f"{tab}_crop_top")
        with gr.Row(visible=refiner):
            choices = ["None", *catalog.refiners()]
            model = gr.Dropdown(choices, value="None", allow_custom_value=True, label="Refiner",
                                info="an SDXL refiner folder: it takes over the last part of the schedule",
                                elem_id=f"{tab}_refiner")
            switch = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at", elem_id=f"{tab}_refiner_switch")
    return SDXLControls(group, [original_w, original_h, target_w, target_h, crop_left, crop_top, model, switch])


def request_fields(values) -> dict:
    """Widget values (SDXL_FIELDS order) → request fields; empty numbers mean 0 (the generation size)."""
    fields = dict(zip(SDXL_FIELDS, values))
    for name in SDXL_FIELDS[:6]:
        fields[name] = 0 if fields[name] is None else fields[name]
    fields["refiner"] = "" if fields["refiner"] in (None, "None") else fields["refiner"]
    return fields


def refresh(backend, groups: list, sizes: list):
    """What the loaded model decides in the UI: the SDXL groups' visibility and the native size
    as the size sliders' value (on page load and after a model load)."""
    def update():
        native = backend.native_size
        xl = family_of(backend) == "SDXL"
        return [gr.update(visible=xl) for _ in groups] + [gr.update(value=native) for _ in sizes]

    return update
