"""SDXL-only fields (size/crop conditioning, refiner), shown only while an SDXL model is loaded.

The tabs never branch on the model family: the fields are declared on the request
(pipelines/core/requests.py, 0 = "the generation size", empty refiner = none) and the pipelines/
side applies them where the family uses them. This module only decides what the user sees."""
from __future__ import annotations

import gradio as gr

from pipelines.core import catalog
from pipelines.core.requests import SDXL_SIZE_FIELDS

from .fields import Form
from .uploads import model_choices, resolve_model


def family_of(backend) -> str:
    return getattr(backend, "family_name", "SD")


def sdxl_controls(form: Form, backend, refiner: bool = True) -> gr.Accordion:
    """The SDXL accordion of a tab, registered in its form; hidden unless the model is SDXL."""
    with gr.Accordion("SDXL", open=False, visible=family_of(backend) == "SDXL", elem_id=f"{form.tab}_sdxl") as group:
        gr.Markdown("SDXL was trained knowing each image's original size and crop: a small original size "
                    "looks upscaled, a crop offset looks cropped. 0 = the generation size.")
        for pair in zip(SDXL_SIZE_FIELDS[::2], SDXL_SIZE_FIELDS[1::2]):
            with gr.Row():
                for name in pair:
                    form.field(name)
        if refiner:
            with gr.Row():
                # Catalogue refiners, shown relative to the app folder; a typed path only where
                # the host allows model changes (resolve_refiner).
                form.field("refiner", component=gr.Dropdown, choices=[("None", ""), *model_choices(catalog.refiners())],
                           allow_custom_value=True)
                form.field("refiner_switch")
    return group


def resolve_refiner(values: dict) -> dict:
    """The refiner a txt2img request names: a catalogue entry, or the text where the host allows it."""
    if values.get("refiner"):
        values["refiner"] = resolve_model(values["refiner"], catalog.refiners(), "refiner")
    return values


def refresh(backend, groups: list, sizes: list):
    """What the loaded model decides in the UI: the SDXL groups' visibility and the native size
    as the size sliders' value (on page load and after a model load)."""
    def update():
        native = backend.native_size
        xl = family_of(backend) == "SDXL"
        return [gr.update(visible=xl) for _ in groups] + [gr.update(value=native) for _ in sizes]

    return update
